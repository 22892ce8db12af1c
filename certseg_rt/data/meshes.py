"""Labels given as closed surface meshes (Wavefront OBJ) -> a label volume on an image's voxel grid.

Some sources ship their organ labels as meshes built from the label image (CamiTK's AMOS case), not as the
label image itself.  A voxel belongs to a mesh when its centre is inside the closed surface, decided by
ray parity: a ray along the third axis through each column of voxel centres crosses the surface an even
number of times, and the voxels between the 1st and 2nd crossing, the 3rd and 4th, ... are inside.  A
column crossed an odd number of times (a hole in the mesh, or a ray grazing an edge) is left empty and
counted, so that a damaged mesh shows in the record instead of filling a column to the end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

_JITTER = np.array([1.3e-4, 2.9e-4])  # rays pass just off the voxel centres: never exactly through a vertex


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float, triangles (T, 3) int, 0-based) of a Wavefront OBJ file; polygons are fanned."""
    vertices, faces = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("v "):
            vertices.append([float(t) for t in line.split()[1:4]])
        elif line.startswith("f "):
            idx = [int(t.split("/")[0]) for t in line.split()[1:]]
            faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    v, f = np.asarray(vertices, np.float64).reshape(-1, 3), np.asarray(faces, np.int64).reshape(-1, 3)
    f = np.where(f < 0, f + len(v), f - 1)  # OBJ counts from 1; negative indices count back from the last vertex
    if len(f) == 0 or f.min() < 0 or f.max() >= len(v):
        raise InputError(f"{Path(path).name}: no triangles, or faces name vertices it does not have")
    return v, f


def _crossings(tri: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(column index i * ny + j, depth z) of every crossing of a ray through the voxel centres (i, j, .) with a
    triangle; tri (T, 3, 3) in voxel units.  Triangles are handled in groups of equal bounding-box size."""
    nx, ny, _ = shape
    xy = tri[:, :, :2] - _JITTER
    lo = np.ceil(xy.min(axis=1)).astype(np.int64)
    extent = np.floor(xy.max(axis=1)).astype(np.int64) - lo + 1
    cols, depths = [], []
    for ex, ey in {tuple(e) for e in extent if e.min() > 0}:
        sel = np.nonzero((extent[:, 0] == ex) & (extent[:, 1] == ey))[0]
        gi, gj = np.meshgrid(np.arange(ex), np.arange(ey), indexing="ij")
        px = lo[sel, 0, None] + gi.ravel()  # (T, ex * ey) candidate columns
        py = lo[sel, 1, None] + gj.ravel()
        (x0, y0), (x1, y1), (x2, y2) = (xy[sel, k].T[..., None] for k in range(3))
        det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = ((y1 - y2) * (px - x2) + (x2 - x1) * (py - y2)) / det
            b = ((y2 - y0) * (px - x2) + (x0 - x2) * (py - y2)) / det
        c = 1 - a - b
        hit = (det != 0) & (a >= 0) & (b >= 0) & (c >= 0) & (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        z = a * tri[sel, 0, 2, None] + b * tri[sel, 1, 2, None] + c * tri[sel, 2, 2, None]
        cols.append((px * ny + py)[hit])
        depths.append(z[hit])
    if not cols:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(cols), np.concatenate(depths)


def voxelize(vertices: np.ndarray, triangles: np.ndarray, shape: tuple[int, int, int],
             spacing) -> tuple[np.ndarray, int]:
    """(bool volume of `shape`, columns left empty for an odd number of crossings) of a closed mesh whose
    vertices are in millimetres of the image's own frame: voxel (i, j, k) has its centre at
    (i, j, k) * spacing."""
    nx, ny, nz = shape
    cols, z = _crossings(vertices[triangles] / np.asarray(spacing, np.float64), shape)
    order = np.lexsort((z, cols))
    cols, z = cols[order], z[order]
    starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]]) if len(cols) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(cols)])
    even = np.repeat(counts % 2 == 0, counts)
    rank = np.arange(len(cols)) - np.repeat(starts, counts)  # position of each crossing in its column
    enter, leave = (even & (rank % 2 == 0)), (even & (rank % 2 == 1))
    first = np.clip(np.ceil(z[enter]), 0, nz).astype(np.int64)  # voxels first..last (centres inside) are filled
    last = np.clip(np.floor(z[leave]), -1, nz - 1).astype(np.int64)
    fill = np.zeros(nx * ny * (nz + 1), np.int32)  # +1 at first, -1 after last, per column; cumulative sum > 0
    ok = last >= first
    np.add.at(fill, cols[enter][ok] * (nz + 1) + first[ok], 1)
    np.add.at(fill, cols[enter][ok] * (nz + 1) + last[ok] + 1, -1)
    inside = np.cumsum(fill.reshape(nx * ny, nz + 1), axis=1)[:, :nz] > 0
    return inside.reshape(nx, ny, nz), int(np.count_nonzero(counts % 2))


def label_volume(meshes: dict[int, Path], shape: tuple[int, int, int], spacing) -> tuple[np.ndarray, dict]:
    """The label volume (uint8) of meshes {label value: OBJ file}; where meshes overlap the lower value keeps
    the voxel.  Also {value: {"voxels": ..., "odd_columns": ...}} for the record."""
    labels = np.zeros(shape, np.uint8)
    record = {}
    for value in sorted(meshes):
        inside, odd = voxelize(*read_obj(meshes[value]), shape, spacing)
        labels[inside & (labels == 0)] = value
        record[str(value)] = {"voxels": int(inside.sum()), "odd_columns": odd}
    return labels, record

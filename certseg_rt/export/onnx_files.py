"""Our ONNX graphs on disk: one file, or, above protobuf's 2 GB limit, the graph plus one external-data file.

A serialised ONNX model is one protobuf message, and protobuf cannot write (or parse) a message over
2 GiB: the 552M-parameter guided-diffusion 256x256 UNet alone is 2.2 GB of float32 weights.  Such a graph
is written as ``NAME.onnx`` (the graph, small) plus ``NAME.onnx.data`` beside it (every tensor of 1 KiB
or more, at the offsets ``NAME.onnx`` records), ONNX's external-data format, which ONNX Runtime, TensorRT's
parser and OpenVINO read given the graph's path.  The engine manifest hashes every file of the directory,
so the data file is checked like the graph.  Tests lower ``EXTERNAL_DATA_THRESHOLD`` to exercise the path
on small models.
"""
from __future__ import annotations

import os
from pathlib import Path

# Above this many bytes a graph is written with external data.  Below protobuf's 2 GiB hard limit, with room
# for the graph itself, metadata and what an optimisation pass may add.
EXTERNAL_DATA_THRESHOLD = (1 << 31) - (1 << 27)
MIN_EXTERNAL_TENSOR_BYTES = 1024  # smaller tensors stay inside the graph (onnx's default)


def data_path(path: Path) -> Path:
    """Where the external data of the graph at `path` goes: NAME.onnx -> NAME.onnx.data beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def _tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_locations(model) -> set[str]:
    """The `location`s of a loaded (load_external_data=False) model's external tensors."""
    from onnx import TensorProto

    return {entry.value for t in _tensors(model.graph) if t.data_location == TensorProto.EXTERNAL
            for entry in t.external_data if entry.key == "location"}


def external_data_files(path: Path) -> list[Path]:
    """The files the graph at `path` keeps its tensors in, besides itself (none for a single-file graph)."""
    import onnx

    path = Path(path)
    return sorted(path.parent / loc for loc in external_locations(onnx.load(str(path), load_external_data=False)))


def serialized_bytes(model) -> int:
    """The size of the model as one protobuf message (2 GiB where protobuf cannot even size it)."""
    from google.protobuf.message import EncodeError

    try:
        return model.ByteSize()
    except EncodeError:  # upb refuses to size a message over 2 GiB (seen with protobuf 6 / onnx 1.23)
        return 1 << 31


def save_onnx(model, path: Path) -> list[Path]:
    """Write `model` to `path`, with its tensors in NAME.onnx.data when it is over the threshold.

    Returns the files written.  A stale data file of an earlier graph at the same path is removed first
    (onnx appends to an existing data file).
    """
    import onnx

    path, data = Path(path), data_path(path)
    if data.exists():
        data.unlink()
    if serialized_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=MIN_EXTERNAL_TENSOR_BYTES)
    return [path, data]


def move_onnx(src: Path, dst: Path) -> list[Path]:
    """Move a graph and its single external-data file (if any) to `dst` and NAME.onnx.data beside it."""
    import onnx
    from onnx import TensorProto

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    locations = external_locations(model)
    stale = data_path(dst)
    if not locations:
        os.replace(src, dst)
        if stale.exists():
            stale.unlink()
        return [dst]
    if len(locations) != 1:
        raise ValueError(f"{src} keeps its tensors in {len(locations)} files; expected one")
    (location,) = locations
    for tensor in _tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = stale.name
    os.replace(src.parent / location, stale)
    onnx.save_model(model, str(dst))
    if src != dst:
        src.unlink()
    return [dst, stale]

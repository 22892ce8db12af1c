"""Peak memory of certifying a whole CT volume: 512x512x300 int16 NIfTI, slices resized to the model's 128x128.

    python benchmarks/volume_memory.py [--slices 300] [--size 512] [--n 100]

The model is a stand-in (a GraphBackend whose 'network' quantises 8x8 block means of the noisy slice into 4
classes), so the figure is what certseg-rt itself holds: the volume read slice by slice, resized slices streamed
through the sampling loop (batches spanning slices), the stacked counts (C, D, 128, 128) in the smallest integer
type, the joint statistics, the mask mapped back to 512x512 and written as NIfTI.  A real model adds its own runtime and activations (see
benchmarks/memory_budget.py).  The certify runs in a fresh process; its peak RSS is the kernel's VmHWM (Linux).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
from pathlib import Path
from certseg_rt.runtime.sampling import GraphBackend
from certseg_rt.volumes import open_volume

class Quantise(GraphBackend):
    name = "stand-in"
    def __init__(self):
        super().__init__(sigma=0.25, num_classes=4, channels=1, size_multiple=1, batch_size=16)
        self.input_size = (128, 128)
        self.record = {"backend": self.name}
    def infer(self, x):  # 8x8 block means (noise std / 8) quantised: most voxels certify, as with a real model
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        means = x[:, 0].reshape(b, h // 8, 8, w // 8, 8).mean(axis=(2, 4))
        return np.digitize(means, [0.25, 0.5, 0.75]).astype(np.uint8).repeat(8, 1).repeat(8, 2)

def hwm_mb(field="VmHWM"):  # this process's own peak (ru_maxrss may carry the parent's across fork)
    return int(dict(l.split(":", 1) for l in open("/proc/self/status"))[field].split()[0]) / 1024

path, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
base = hwm_mb()
start = time.perf_counter()
from certseg_rt.cli.volume_commands import certify_volume_file, open_volume_for_certify
prepared = open_volume_for_certify(path, out, None)
backend = Quantise()
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()) as captured:
    certify_volume_file(prepared, backend, ["a", "b", "c", "d"], n0=10, n=n, tau=0.75, alpha=0.001, seed=0,
                        correction="holm", out=out, as_json=True)
summary = json.loads(captured.getvalue())
print(json.dumps({"rss_after_imports_mb": base, "peak_rss_mb": hwm_mb(),
                  "seconds": time.perf_counter() - start, "abstain_fraction": summary["abstain_fraction"],
                  "hypotheses": summary["family"]["hypotheses"]}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    import nibabel as nib

    with tempfile.TemporaryDirectory(prefix="certseg-volume-") as tmp:
        path = Path(tmp) / "ct.nii.gz"
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:args.size, :args.size]
        body = ((yy - args.size / 2) ** 2 + (xx - args.size / 2) ** 2 < (0.45 * args.size) ** 2)
        data = np.empty((args.size, args.size, args.slices), np.int16)  # (x, y, z) as NIfTI stores it
        for k in range(args.slices):  # a disc of soft tissue with an organ that moves along z, and noise
            centre = args.size * (0.4 + 0.2 * k / args.slices)
            organ = (yy - centre) ** 2 + (xx - args.size * 0.6) ** 2 < (0.12 * args.size) ** 2
            hu = np.where(body, 40, -1000) + np.where(organ, 60, 0) + rng.normal(0, 20, body.shape)
            data[:, :, k] = hu.T.astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 1.5, 1.0])), str(path))
        del data
        written = path.stat().st_size
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(Path(tmp) / "mask.nii.gz"),
                                 str(args.n)], capture_output=True, text=True)
        if result.returncode:
            sys.exit(result.stderr)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        figures.update({"volume": f"{args.size}x{args.size}x{args.slices} int16 NIfTI (.nii.gz, {written / 2**20:.0f} "
                                  f"MiB on disk, {args.size ** 2 * args.slices * 2 / 2**20:.0f} MiB as int16, "
                                  f"{args.size ** 2 * args.slices * 4 / 2**20:.0f} MiB as float32)",
                        "counts_held_mb": 2 * 4 * args.slices * 128 * 128 / 2**20,
                        "wall_seconds": time.perf_counter() - start})
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

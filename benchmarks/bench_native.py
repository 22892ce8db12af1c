"""Native runtime vs the Python runtime on the same OpenVINO engine: certify latency (paired, one run), start-up,
size of what a user ships, and resident memory over repeated certifies.

    .venv/bin/python benchmarks/bench_native.py [--rounds 5] [--soak] [--out bench-native.json]

* Latency: one process holds both runtimes (the native one through its C API, ctypes; the Python one as
  ``CertifiedSegmenter.load(engine)``), each with the engine compiled once and warmed up; they certify
  the same phantom with the same seed alternately, `rounds` times each, and the table gives the medians and the
  median of the paired ratios.  Both certificates are checked equal on every round.
* Start-up: wall time of one process that opens the engine and certifies with n0 = 1, n = 1: `certseg-run`
  against `certseg-rt certify --engine` (interpreter, imports, compile), median of three, and the peak
  resident memory of that process (GNU time's %M).
* Size: certseg-run + libcertseg_runtime.so, the shared libraries ldd resolves for it, and what OpenVINO loads at
  run time (the CPU plugin and the IR frontend).
* --soak: 200 certifies (n0 1, n 2) of the chest engine in one process, resident memory after 20 and after 200.

The machine may be shared: quote ratios measured in one run, not absolute times.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from native_helpers import build_native, cpu_has_bf16, openvino_engine


class Native:
    """The native runtime through its C API (the same library certseg-run links)."""

    class Options(ctypes.Structure):
        _fields_ = [("n0", ctypes.c_int64), ("n", ctypes.c_int64), ("tau", ctypes.c_double),
                    ("alpha", ctypes.c_double), ("seed", ctypes.c_uint64), ("correction", ctypes.c_int),
                    ("progress", ctypes.c_void_p), ("progress_user", ctypes.c_void_p)]

    def __init__(self, library: Path, engine: Path):
        self.lib = lib = ctypes.CDLL(str(library))
        lib.certseg_runtime_last_error.restype = ctypes.c_char_p
        lib.certseg_engine_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.certseg_certify.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                        ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.POINTER(ctypes.c_char_p)]
        lib.certseg_engine_close.argtypes = [ctypes.c_void_p]
        self.handle = ctypes.c_void_p()
        start = time.perf_counter()
        if lib.certseg_engine_open(str(engine).encode(), None, ctypes.byref(self.handle)) != 0:
            raise RuntimeError(lib.certseg_runtime_last_error().decode())
        self.open_seconds = time.perf_counter() - start

    def certify(self, x: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
        opt = self.Options()
        self.lib.certseg_certify_options_init(ctypes.byref(opt))
        opt.seed = seed
        labels = np.empty(x.shape[1:], np.uint8)
        text = ctypes.c_char_p()
        if self.lib.certseg_certify(self.handle, x.ctypes.data, *x.shape, ctypes.byref(opt), labels.ctypes.data,
                                    None, ctypes.byref(text)) != 0:
            raise RuntimeError(self.lib.certseg_runtime_last_error().decode())
        return json.loads(text.value), labels

    def close(self):
        self.lib.certseg_engine_close(self.handle)


def latency(native_lib: Path, engine: Path, image: Path, rounds: int) -> dict:
    from certseg_rt.io import read_image

    x = np.ascontiguousarray(read_image(image, 1))
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    start = time.perf_counter()
    python = CertifiedSegmenter.load(engine)
    python_open = time.perf_counter() - start
    native = Native(native_lib, engine)
    python.certify(x, seed=0)  # warm-up: first inferences allocate
    native.certify(x, 0)
    times = {"native": [], "python": []}
    for r in range(rounds):
        order = ("native", "python") if r % 2 == 0 else ("python", "native")
        certs = {}
        for which in order:
            start = time.perf_counter()
            if which == "native":
                certs[which], labels = native.certify(x, seed=r)
            else:
                cert = python.certify(x, seed=r)
                certs[which], py_labels = cert.summary(python.classes), cert.labels
            times[which].append(time.perf_counter() - start)
        fields = ("radius", "abstain_fraction", "certified_pixels", "seed", "backend", "precision", "batch_size")
        assert all(certs["native"][k] == certs["python"][k] for k in fields), "certificates differ"
        assert np.array_equal(labels, py_labels), "labels differ"
    native.close()
    ratios = [p / n for p, n in zip(times["python"], times["native"])]
    return {"native_s": statistics.median(times["native"]), "python_s": statistics.median(times["python"]),
            "python_over_native": statistics.median(ratios), "rounds": rounds,
            "open_native_s": native.open_seconds, "open_python_s": python_open}


TIME = Path("/usr/bin/time").exists()  # GNU time, for the children's peak resident memory


def startup(program: Path, engine: Path, image: Path) -> dict:
    commands = {"native": [str(program), str(engine), str(image), "--n0", "1", "--n", "1"],
                "python": [sys.executable, "-m", "certseg_rt.cli", "certify", str(image), "--engine", str(engine),
                           "--n0", "1", "--n", "1"]}
    out = {}
    for name, command in commands.items():
        walls, peaks = [], []
        for _ in range(3):
            with tempfile.NamedTemporaryFile("r") as peak:
                # GNU time's child starts small: a child forked from this (large) Python process would inherit
                # its resident high-water mark across exec, and ru_maxrss would report ours.
                timed = ["/usr/bin/time", "-f", "%M", "-o", peak.name, *command] if TIME else command
                start = time.perf_counter()
                subprocess.run(timed, check=True, capture_output=True)
                walls.append(time.perf_counter() - start)
                if TIME:
                    peaks.append(int(peak.read().split()[-1]) / 1024)
        out[f"{name}_s"] = statistics.median(walls)
        out[f"{name}_peak_mb"] = max(peaks) if peaks else float("nan")
    return out


def shipped_size(program: Path, library: Path) -> dict:
    """Bytes of the program, its library, what ldd resolves and what OpenVINO dlopens (CPU plugin, IR frontend)."""
    ldd = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
    resolved = {}
    for line in ldd.splitlines():
        if "=>" in line and "/" in line.split("=>")[1]:
            path = Path(line.split("=>")[1].split("(")[0].strip())
            resolved[path.name] = os.path.realpath(path)
    ov_libs = Path(resolved.get("libopenvino.so.2641", next(p for n, p in resolved.items() if "libopenvino" in n))).parent
    loaded = {p.name: str(p) for p in ov_libs.glob("*") if p.name.startswith(("libopenvino_intel_cpu_plugin",
                                                                                "libopenvino_ir_frontend"))}
    system = {n: p for n, p in resolved.items() if p.startswith(("/lib", "/usr/lib"))}
    pip = {n: p for n, p in resolved.items() if n not in system and n != library.name}
    def size(paths):
        return sum(os.path.getsize(p) for p in paths)

    return {"program_and_runtime_mb": size([program, library]) / 1e6,
            "openvino_linked_mb": size(pip.values()) / 1e6, "openvino_loaded_at_run_mb": size(loaded.values()) / 1e6,
            "system_libraries_mb": size(system.values()) / 1e6, "linked": sorted(resolved), "loaded": sorted(loaded)}


def soak(program: Path, engine: Path, image: Path) -> dict:
    from certseg_rt.io import read_image

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "image.f32"
        read_image(image, 1).astype("<f4").tofile(raw)
        words = subprocess.run([str(program), str(engine), str(raw), "200", "20", "1", "2"], check=True,
                               capture_output=True, text=True).stdout.split()
    return {"rss_after_20_mb": int(words[1]) / 1024, "rss_after_200_mb": int(words[3]) / 1024,
            "identical": words[5] == "1"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="paired certifies per precision")
    ap.add_argument("--soak", action="store_true", help="also 200 certifies in one process (resident memory)")
    ap.add_argument("--work", type=Path, default=None, help="keep the build and engines here (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-native-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    build = build_native(work / "build")
    cpu_build = build["seconds"]
    print(f"built the native runtime in {cpu_build:.1f} s (wall, {os.cpu_count()} cores)", file=sys.stderr)
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.io import write_png

    image = work / "phantom.png"
    write_png(image, np.round(make_phantom(HELD_OUT_SEEDS[0], size=128).image[0] * 255).astype(np.uint8))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                          f"(shared with other work: ratios, not absolute times)",
               "build_wall_s": cpu_build, "precisions": {}}
    for precision in ["fp32"] + (["bf16"] if cpu_has_bf16() else []):
        engine = work / f"ov-{precision}"
        if not engine.exists():
            openvino_engine(engine, precision)
        row = latency(build["library"], engine, image, args.rounds)
        row["startup"] = startup(build["certseg_run"], engine, image)
        results["precisions"][precision] = row
        print(f"{precision}: certify native {row['native_s']:.2f} s, python {row['python_s']:.2f} s "
              f"(python / native {row['python_over_native']:.3f}); start-up native {row['startup']['native_s']:.2f} s,"
              f" python {row['startup']['python_s']:.2f} s", file=sys.stderr)
    results["size"] = shipped_size(build["certseg_run"], build["library"])
    if args.soak:
        results["soak"] = soak(build["soak"], work / "ov-fp32", image)
    results["total_s"] = time.perf_counter() - start
    print(markdown(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def markdown(r: dict) -> str:
    lines = [f"machine: {r['machine']}", "",
             ("| engine | certify native (s) | certify Python (s) | Python / native (paired) | open native (s) "
              "| open Python (s) | start-up native (s) | start-up Python (s) | peak native (MB) | peak Python (MB) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p, row in r["precisions"].items():
        up = row["startup"]
        lines.append(f"| {p} | {row['native_s']:.2f} | {row['python_s']:.2f} | {row['python_over_native']:.3f} | "
                     f"{row['open_native_s']:.2f} | {row['open_python_s']:.2f} | {up['native_s']:.2f} | "
                     f"{up['python_s']:.2f} | {up['native_peak_mb']:.0f} | {up['python_peak_mb']:.0f} |")
    s = r["size"]
    lines += ["", (f"shipped: certseg-run + libcertseg_runtime.so {s['program_and_runtime_mb']:.2f} MB; OpenVINO "
                   f"linked {s['openvino_linked_mb']:.1f} MB + loaded at run time (CPU plugin, IR frontend) "
                   f"{s['openvino_loaded_at_run_mb']:.1f} MB; system libraries {s['system_libraries_mb']:.1f} MB"),
              f"build: {r['build_wall_s']:.1f} s wall"]
    if "soak" in r:
        k = r["soak"]
        lines.append(f"200 certifies in one process: resident {k['rss_after_20_mb']:.1f} MB after 20, "
                     f"{k['rss_after_200_mb']:.1f} MB after 200, identical certificates: {k['identical']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""``build-engine --precision auto``: build every precision this CPU runs natively, measure a certify of each
here, keep the fastest whose parity passes.

Which precision is fastest depends on the CPU and the image size (on a Xeon with AMX bf16 beat int8; on an AMD
EPYC without AMX int8 beat bf16 at 256x256), so it is measured rather than guessed.  The candidates are what the
builder says this CPU runs natively (``native_precisions()``: OpenVINO's fp32; bf16 only where its CPU plugin
reports native BF16; int8 where NNCF is installed).  Each is built from the one exported ONNX graph and
parity-checked against torch fp32 with its own floor; each is then opened by the runtime as a user would open it
and times a default certify (n0 10 + n 100, the engine's batch and threads) of a held-out phantom at the
engine's size, warm, the candidates in turn for 3 rounds (a shared machine's load falls on all of them), 4 more
when the two fastest that passed parity are within 5% of each other, the median kept.  The fastest that passed
parity is the engine; ties go to the higher precision.  The manifest's
``precision_choice`` records every candidate's times and parity, and what was not tried and why.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..errors import CertsegError

ROUNDS = 3  # timed certifies per candidate (after one warm-up), interleaved
MORE_ROUNDS, CLOSE = 4, 0.05  # more rounds when the two fastest passing candidates are within 5%
TIMING_PHANTOM = 900  # HELD_OUT_SEEDS index of the timed phantom (parity uses 500..507)
PREFERENCE = ("fp32", "bf16", "fp16", "int8")  # ties go to the first: the closer to the model as trained


def choose(candidates: list[dict]) -> dict:
    """The fastest candidate whose parity passed (ties: the higher precision), or a one-line refusal."""
    passing = [c for c in candidates if c["passed"]]
    if not passing:
        found = ", ".join(f"{c['precision']} {c['label_agreement']:.3%} (floor {c['parity_floor']:.1%})"
                          for c in candidates)
        raise CertsegError(f"--precision auto: no precision passes parity with torch fp32 here ({found}); name one "
                           f"with --precision and --force to keep it anyway (it is certified as itself)")
    return min(passing, key=lambda c: (c["seconds"], PREFERENCE.index(c["precision"])))


def measure(engine_dirs: dict[str, Path], image, passing: set[str]) -> dict[str, list[float]]:
    """Seconds of a default certify of ``image`` with each engine, warm, the engines in turn each round; more
    rounds when the two fastest of ``passing`` are close."""
    from ..runtime.segmenter import CertifiedSegmenter

    # Compiled here, not from the user's cache: measuring leaves nothing behind but the engine.
    opened = {p: CertifiedSegmenter.load(d, cache_dir=False) for p, d in engine_dirs.items()}
    for seg in opened.values():
        seg.certify(image)
    times = {p: [] for p in opened}

    def rounds(count):
        for _ in range(count):
            for p, seg in opened.items():
                start = time.perf_counter()
                seg.certify(image)
                times[p].append(time.perf_counter() - start)
    rounds(ROUNDS)
    if too_close(times, passing):
        rounds(MORE_ROUNDS)
    return times


def too_close(times: dict[str, list[float]], passing: set[str]) -> bool:
    """Whether the two fastest of ``passing`` (by median) are within CLOSE of each other."""
    best = sorted(statistics.median(times[p]) for p in passing if p in times)
    return len(best) > 1 and best[1] <= best[0] * (1 + CLOSE)


def build_auto(make, stage: Path, graphs, *, source, sigma, batch_sizes, threads, options, log,
               manifest_fields) -> tuple[str, dict]:
    """Build each native precision into a hidden folder of ``stage``, measure, move the chosen one's files into
    ``stage``; returns (precision, the builder's manifest fields with ``precision_choice``).  ``manifest_fields``
    (precision -> fields) completes each candidate's manifest so the runtime can open it."""
    import shutil

    from ..data import HELD_OUT_SEEDS
    from ..manifest import write_manifest

    native, not_tried = make.native_precisions()
    built, candidates = {}, []
    for precision in native:
        folder = stage / f".candidate-{precision}"
        folder.mkdir()
        log(f"precision auto: building {precision}")
        fields = make.build(folder, graphs, source=source, sigma=sigma, precision=precision, batch_sizes=batch_sizes,
                            threads=threads, parity=True, force=True, options=options, log=log)
        agreement = fields["parity"]["label_agreement"]
        floor = make.PARITY_FLOOR[precision]
        fields["parity"]["floor"] = floor
        write_manifest(folder, manifest_fields(precision, fields))
        built[precision] = (folder, fields)
        candidates.append({"precision": precision, "label_agreement": agreement, "parity_floor": floor,
                           "passed": agreement >= floor})
    phantom = source.phantom(HELD_OUT_SEEDS[TIMING_PHANTOM])
    log(f"precision auto: timing a certify of each ({', '.join(native)}) on a held-out phantom")
    passing = {c["precision"] for c in candidates if c["passed"]}
    times = measure({p: built[p][0] for p in native}, phantom.image, passing)
    for c in candidates:
        c["seconds_each"] = [round(t, 4) for t in times[c["precision"]]]
        c["seconds"] = round(statistics.median(times[c["precision"]]), 4)
    chosen = choose(candidates)
    precision = chosen["precision"]
    folder, fields = built[precision]
    for f in folder.iterdir():
        if f.name != "manifest.json":
            shutil.move(str(f), stage / f.name)
    for p in native:
        shutil.rmtree(built[p][0], ignore_errors=True)
    others = ", ".join(f"{c['precision']} {c['seconds']:.3f} s{'' if c['passed'] else ' (failed parity)'}"
                       for c in candidates if c is not chosen)
    size = f"{source.height}x{source.width}"
    log(f"precision auto: {precision} ({chosen['seconds']:.3f} s per certify at {size}"
        f"{'; ' + others if others else ''}"
        f"{'; not tried: ' + '; '.join(f'{p} ({why})' for p, why in not_tried.items()) if not_tried else ''})")
    fields["precision_choice"] = {
        "requested": "auto", "chosen": precision,
        "timing": {"image": f"held-out {source.modality or 'phantom'} phantom (seed {HELD_OUT_SEEDS[TIMING_PHANTOM]})",
                   "size": [source.height, source.width], "n0": 10, "n": 100, "batch_size": batch_sizes[1],
                   "threads": threads, "rounds": len(chosen["seconds_each"]),
                   "statistic": "median of the warm certifies, candidates interleaved", "cpu": make.cpu_name()},
        "candidates": candidates, "not_tried": not_tried}
    return precision, fields

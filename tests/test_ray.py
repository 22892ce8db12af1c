"""certseg-rt evaluate --ray: the same records as on one machine, resumable across modes, faults in one line.

The tests start a local Ray cluster of 2 CPUs in this process (so `--ray` with no address finds it)
and shut it down at the end.
"""
import json
import shutil

import pytest
from click.testing import CliRunner

from certseg_rt.cli import main

pytest.importorskip("torch")
pytest.importorskip("ray", reason="Ray is not installed (pip install 'certseg-rt[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'certseg-rt[ray]')")

# As tests/test_evaluate.py, with the plain segmenter (no denoiser) so that the module stays fast.
FAST = ["--n0", "3", "--n", "30", "--tau", "0.6", "--alpha", "0.5", "--no-denoiser"]
COMPARED = ("certified_dice", "certified_iou", "abstain_rate", "radius", "clean_dice", "sigma", "parameters",
            "model_files", "backend")


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray") / "data"
    assert CliRunner().invoke(main, ["make-phantoms", str(d), "--count", "3"]).exit_code == 0
    # Two images that fail as on one machine: one without its mask, one that is not a PNG.
    shutil.copy(d / "images" / "chest_10000000.png", d / "images" / "orphan.png")
    (d / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return d


def _records(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").rglob("*.json"))}


def _evaluate(dataset, out, *extra):
    return CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(out), *FAST, *extra])


def test_ray_records_equal_single_machine_and_resume_across_modes(cluster, dataset, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    a = _evaluate(dataset, here)
    b = _evaluate(dataset, there, "--ray")
    assert a.exit_code == b.exit_code == 1, a.output + b.output  # the two bad images
    ra, rb = _records(here), _records(there)
    assert sorted(ra) == sorted(rb) == ["chest_10000000", "chest_10000001", "chest_10000002"]
    for name in ra:
        for key in COMPARED:
            assert ra[name][key] == rb[name][key], (name, key)
    sa, sb = (json.loads((o / "summary.json").read_text()) for o in (here, there))
    assert sa["failed"] == sb["failed"] and [f["image"] for f in sb["failed"]] == ["broken", "orphan"]
    assert "no mask" in sb["failed"][1]["reason"]
    assert str(dataset / "images" / "broken.png") in sb["failed"][0]["reason"]  # named as on the driver
    assert sa["overall"] == sb["overall"]
    assert (there / "per_image.csv").read_text().splitlines()[0] == (here / "per_image.csv").read_text().splitlines()[0]
    assert (there / "overlays.png").stat().st_size > 1000
    assert "failed: orphan" in b.stderr and "Traceback" not in b.output

    # Resume across modes: each mode skips what the other finished.
    stamps = {p: p.stat().st_mtime_ns for p in (there / "records").rglob("*.json")}
    assert _evaluate(dataset, there).exit_code == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    stamps = {p: p.stat().st_mtime_ns for p in (here / "records").rglob("*.json")}
    assert _evaluate(dataset, here, "--ray").exit_code == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_worker_that_cannot_open_the_model_is_one_line(cluster, dataset, tmp_path, chest_dir):
    model = tmp_path / "model"
    shutil.copytree(chest_dir, model, ignore=shutil.ignore_patterns("denoiser"))
    (model / "segmenter.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "out"
    r = _evaluate(dataset, out, "--model", str(model), "--ray")
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "a Ray worker failed" in lines[0] and "safetensors" in lines[0], r.stderr
    assert not (out / "records").exists()


def test_ray_options_are_checked_before_any_work(dataset, tmp_path):
    for args, needle in ((["--ray-workers", "2"], "need --ray"), (["--ray", "--ray-cpus", "0"], "--ray-cpus"),
                         (["--ray", "--ray-workers", "0"], "--ray-workers")):
        r = _evaluate(dataset, tmp_path / "o", *args)
        assert r.exit_code == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "o").exists()


def test_engine_on_ray_equals_engine_here(cluster, dataset, engine_dir, tmp_path):
    fast = FAST[:-1]  # an engine has its denoiser built in
    args = ["--engine", str(engine_dir)]
    here = CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(tmp_path / "a"), *fast, *args])
    there = CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(tmp_path / "b"), *fast, *args,
                                      "--ray", "auto", "--ray-workers", "1"])
    assert here.exit_code == there.exit_code == 1, here.output + there.output
    ra, rb = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert len(ra) == 3 and all(ra[k][key] == rb[k][key] for k in ra for key in COMPARED)
    assert rb["chest_10000000"]["backend"] == "onnxruntime:cpu"


def test_openvino_engine_on_ray_equals_engine_here(cluster, dataset, openvino_engines, tmp_path):
    args = ["--engine", str(openvino_engines["fp32"]), "--batch-size", "8"]
    here = CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(tmp_path / "a"), *FAST[:-1], *args])
    there = CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(tmp_path / "b"), *FAST[:-1], *args,
                                      "--ray", "auto", "--ray-workers", "1"])
    assert here.exit_code == there.exit_code == 1, here.output + there.output
    ra, rb = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert len(ra) == 3 and all(ra[k][key] == rb[k][key] for k in ra for key in COMPARED)
    assert rb["chest_10000000"]["backend"] == "openvino:cpu"


def test_a_directory_missing_on_the_worker_is_shipped(cluster, engine_dir, tmp_path):
    from certseg_rt.distributed import ship_directory
    from certseg_rt.manifest import load_manifest

    origin = tmp_path / "engine"
    shutil.copytree(engine_dir, origin)
    shipped = ship_directory(cluster, origin)
    assert shipped.local() == origin.resolve()  # identical here: used in place
    (origin / "manifest.json").write_text("{}")  # no longer identical: the worker takes the shipped copy
    copy = shipped.local()
    assert copy != origin.resolve() and load_manifest(copy)["sigma"] == 0.25
    assert shipped.local() == copy  # one copy per machine, shared by its workers
    shutil.rmtree(copy.parent)

"""Every route a user brings a segmenter by, through the CLI: build-engine, then certify --engine.

Users' networks are built here, as users have them: MONAI UNet and SegResNet (scripted, traced, state dicts),
plain torch modules with the graph patterns of segmentation_models_pytorch (DeepLabV3+'s image pooling) exported
by torch's exporters at opsets 13-22, with external data, with a fixed batch.  Each case ends in exit 0, or
exit 1 with exactly one stderr line and no traceback.  Engines are built once per module, at 64x64, with
--no-parity where parity is not what a case is about.
"""
import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from certseg_rt.cli import main

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 64
CERTIFY = ["--n0", "4", "--n", "13", "--alpha", "0.1"]  # 13: a partial last batch for every batch size > 1


def _export_dynamo(module, path, opset=None, dynamic=True, **kw):
    args = {"dynamo": True, **({"opset_version": opset} if opset else {}), **kw}
    if dynamic:
        args["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, 1, SIZE, SIZE),), str(path), verbose=False, **args)


def _export_torchscript(module, path, opset, batch=None, channels=1):
    axes = None if batch else {"x": {0: "b"}, "y": {0: "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(batch or 1, channels, SIZE, SIZE),), str(path), dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=["y"], dynamic_axes=axes)


def _relocated(src_dir, dst_dir, location):
    """A copy of an external-data model whose tensors name `location` (as a hand-edited or hostile file would)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    shutil.copytree(src_dir, dst_dir)
    model = onnx.load(str(dst_dir / "m.onnx"), load_external_data=False)
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
    onnx.save(model, str(dst_dir / "m.onnx"))
    return dst_dir / "m.onnx"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The files users bring, made from their libraries (random init)."""
    from monai.networks.nets import SegResNet, UNet
    from safetensors.torch import save_file
    from user_nets import pool_seg

    d = tmp_path_factory.mktemp("user_models")
    f = {"dir": d}
    pool = pool_seg()
    # torch's default exporter (dynamo): weights in m.onnx.data, and a batch of 1 fixed in the graph
    (d / "default").mkdir()
    _export_dynamo(pool, d / "default" / "m.onnx", dynamic=False)
    f["onnx default"] = d / "default" / "m.onnx"
    for opset in (18, 20, 22):
        _export_dynamo(pool, d / f"pool{opset}.onnx", opset=opset, external_data=False)
        f[f"onnx opset {opset}"] = d / f"pool{opset}.onnx"
    _export_torchscript(pool, d / "pool13.onnx", 13)
    f["onnx opset 13"] = d / "pool13.onnx"
    _export_torchscript(pool, d / "fixed2.onnx", 17, batch=2)
    f["onnx fixed batch 2"] = d / "fixed2.onnx"
    _export_torchscript(pool, d / "dynamic17.onnx", 17)
    f["onnx dynamic 17"] = d / "dynamic17.onnx"
    (d / "ext").mkdir()
    _export_dynamo(pool, d / "ext" / "m.onnx", external_data=True)
    f["onnx external data"] = d / "ext" / "m.onnx"
    f["onnx location absolute"] = _relocated(d / "ext", d / "abs", str((d / "ext" / "m.onnx.data").resolve()))
    f["onnx location .."] = _relocated(d / "ext", d / "dotdot", "../ext/m.onnx.data")
    link = _relocated(d / "ext", d / "link", "link.data")
    os.symlink((d / "ext" / "m.onnx.data").resolve(), d / "link" / "link.data")
    f["onnx location symlink out"] = link
    f["onnx sidecar missing"] = _relocated(d / "ext", d / "missing", "gone.data")
    _export_torchscript(pool_seg(in_ch=3), d / "rgb.onnx", 17, channels=3)
    f["onnx 3 channels"] = d / "rgb.onnx"
    _export_torchscript(pool_seg(), d / "fixed_size.onnx", 17)  # 64x64 fixed (no dynamic axes beyond the batch)
    f["onnx fixed 64x64"] = d / "fixed_size.onnx"

    torch.manual_seed(0)
    segresnet = SegResNet(spatial_dims=2, in_channels=1, out_channels=4, init_filters=8, blocks_down=(1, 2, 2),
                          blocks_up=(1, 1)).eval()
    unet = UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(8, 16, 32), strides=(2, 2),
                num_res_units=1).eval()
    torch.jit.save(torch.jit.script(segresnet), str(d / "segresnet_scripted.pt"))
    torch.jit.save(torch.jit.script(unet), str(d / "unet_scripted.pt"))
    torch.jit.save(torch.jit.trace(unet, torch.rand(1, 1, SIZE, SIZE)), str(d / "unet_traced.pt"))
    torch.jit.save(torch.jit.trace(pool_seg(in_ch=3), torch.rand(1, 3, SIZE, SIZE)), str(d / "rgb_traced.pt"))
    f.update({"segresnet scripted": d / "segresnet_scripted.pt", "unet scripted": d / "unet_scripted.pt",
              "unet traced": d / "unet_traced.pt", "torchscript 3 channels": d / "rgb_traced.pt"})
    state = pool.state_dict()
    torch.save(state, d / "pool_state.pt")
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}, d / "ddp.pth")
    torch.save({"model": {k: v for k, v in state.items() if k != "head.bias"}}, d / "partial.pt")
    torch.save(pool, d / "pickled_module.pt")
    save_file(state, str(d / "pool.safetensors"))
    from user_nets import Unexportable

    save_file(Unexportable().state_dict(), str(d / "unexportable.safetensors"))
    torch.save(unet.state_dict(), d / "unet_state.bin")
    f.update({name: d / name for name in ("pool_state.pt", "ddp.pth", "partial.pt", "pickled_module.pt",
                                          "pool.safetensors", "unet_state.bin", "unexportable.safetensors")})
    # a small diffusers DDPM (attention, GroupNorm, time embedding: the denoiser graph's op set at opset 17)
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=4, attention_head_dim=8).save_pretrained(d / "denoiser" / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(d / "denoiser" / "scheduler")
    f["denoiser"] = d / "denoiser"
    # a model file inside a package whose __init__ imports a GUI toolkit that is not installed (as napari plugins
    # do): named as a file, it loads alone
    (d / "guipkg_certseg").mkdir()
    (d / "guipkg_certseg" / "__init__.py").write_text("import qtpy_is_not_installed_here\n")
    (d / "guipkg_certseg" / "models.py").write_text(FILE_SEG)
    namespace = {}
    exec(FILE_SEG, namespace)
    torch.manual_seed(1)
    torch.save(namespace["FileSeg"]().state_dict(), d / "fileseg.pth")
    f.update({"models.py": d / "guipkg_certseg" / "models.py", "fileseg.pth": d / "fileseg.pth"})
    (d / "syntax.py").write_text("import torch\nclass Net(torch.nn.Module:\n    pass\n")
    (d / "needs_missing.py").write_text("import torch\nimport not_a_module_here.sub\n")
    png = d / "image.png"
    from certseg_rt.data.phantom import make_phantom

    Image.fromarray((make_phantom(10_000_005, size=SIZE).image[0] * 255).astype(np.uint8)).save(png)
    f["png"] = png
    sys.path.append(str(d))  # guipkg_certseg importable as a package, as an installed plugin is
    yield f
    sys.path.remove(str(d))


FILE_SEG = """import torch
from torch import nn


class FileSeg(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def forward(self, x):
        return self.body(x)
"""


def file_factory(f, spec, weights="fileseg.pth"):
    return ["--segmenter", spec, "--segmenter-weights", f[weights], "--no-parity"]


def factory(weights, kwargs=None):
    return ["--segmenter", "user_nets:PoolSeg", "--segmenter-weights", weights,
            *(["--segmenter-kwargs", json.dumps(kwargs)] if kwargs else [])]


# route -> (build-engine arguments, None for exit 0 or the text the one error line must contain)
ROUTES = {
    "onnx default": (lambda f: ["--segmenter", f["onnx default"], "--no-parity"], None),
    "onnx opset 13": (lambda f: ["--segmenter", f["onnx opset 13"], "--no-parity"], None),
    "onnx opset 18": (lambda f: ["--segmenter", f["onnx opset 18"], "--no-parity"], None),
    "onnx opset 20": (lambda f: ["--segmenter", f["onnx opset 20"]], None),  # with parity
    "onnx opset 22": (lambda f: ["--segmenter", f["onnx opset 22"], "--no-parity"], None),
    "onnx fixed batch 2": (lambda f: ["--segmenter", f["onnx fixed batch 2"]], None),  # with parity
    "onnx dynamic 17": (lambda f: ["--segmenter", f["onnx dynamic 17"], "--no-parity"], None),
    "onnx external data": (lambda f: ["--segmenter", f["onnx external data"], "--no-parity"], None),
    "onnx external data int8": (lambda f: ["--segmenter", f["onnx external data"], "--precision", "int8",
                                           "--no-parity"], None),
    "onnx plain smoothing": (lambda f: ["--segmenter", f["onnx external data"], "--denoiser", "none",
                                        "--no-parity"], None),
    "segresnet scripted": (lambda f: ["--segmenter", f["segresnet scripted"], "--batch-sizes", "1,4,8"], None),
    "unet scripted": (lambda f: ["--segmenter", f["unet scripted"], "--no-parity"], None),
    "unet traced": (lambda f: ["--segmenter", f["unet traced"], "--no-parity"], None),
    "factory safetensors": (lambda f: factory(f["pool.safetensors"]), None),  # with parity
    "factory state dict": (lambda f: factory(f["pool_state.pt"]) + ["--no-parity"], None),
    "factory DDP checkpoint": (lambda f: factory(f["ddp.pth"]) + ["--no-parity"], None),
    "factory MONAI UNet .bin": (lambda f: ["--segmenter", "monai.networks.nets:UNet", "--segmenter-weights",
                                           f["unet_state.bin"], "--segmenter-kwargs", json.dumps(
                                               {"spatial_dims": 2, "in_channels": 1, "out_channels": 4,
                                                "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}),
                                           "--no-parity"], None),
    "factory in a file": (lambda f: file_factory(f, f"{f['models.py']}:FileSeg"), None),
    # refused, in one line
    "factory file missing": (lambda f: file_factory(f, f"{f['dir']}/nosuch.py:Net"),
                             "segmenter factory file"),
    "factory file syntax error": (lambda f: file_factory(f, f"{f['dir']}/syntax.py:Net"),
                                  "syntax.py has a syntax error at line 2"),
    "factory file without the name": (lambda f: file_factory(f, f"{f['models.py']}:Unet3plus"),
                                       "defines no 'Unet3plus' (it defines FileSeg)"),
    "factory file import fails": (lambda f: file_factory(f, f"{f['dir']}/needs_missing.py:Net"),
                                  "needs_missing.py imports not_a_module_here, which is not installed"),
    "package __init__ import fails": (lambda f: file_factory(f, "guipkg_certseg.models:FileSeg"),
                                      "needs qtpy_is_not_installed_here, which is not installed: pip install "
                                      "qtpy_is_not_installed_here, or name the model's file alone (--segmenter "
                                      "'path/to/models.py:FileSeg'"),
    "onnx location absolute": (lambda f: ["--segmenter", f["onnx location absolute"]], "outside the model's folder"),
    "onnx location ..": (lambda f: ["--segmenter", f["onnx location .."]], "outside the model's folder"),
    "onnx location symlink out": (lambda f: ["--segmenter", f["onnx location symlink out"]], "resolves outside"),
    "onnx sidecar missing": (lambda f: ["--segmenter", f["onnx sidecar missing"]], "'gone.data' is missing"),
    "onnx 3 channels": (lambda f: ["--segmenter", f["onnx 3 channels"]], "the segmenter takes 3"),
    "onnx fixed 64x64 at 128": (lambda f: ["--segmenter", f["onnx fixed 64x64"], "--image-size", "128"],
                                "pass --image-size 64x64"),
    "torchscript 3 channels": (lambda f: ["--segmenter", f["torchscript 3 channels"]], "the segmenter takes 3"),
    "state dict as --segmenter": (lambda f: ["--segmenter", f["pool_state.pt"]], "package.module:factory"),
    "pickled module as --segmenter": (lambda f: ["--segmenter", f["pickled_module.pt"]], "never unpickles"),
    "pickled module as weights": (lambda f: factory(f["pickled_module.pt"]), "never unpickles"),
    "TorchScript as weights": (lambda f: factory(f["unet scripted"]), "give it as --segmenter"),
    "unknown factory kwarg": (lambda f: factory(f["pool.safetensors"], {"widht": 32}), "no parameter 'widht'"),
    "weights of another width": (lambda f: factory(f["pool.safetensors"], {"width": 16}), "of other shapes"),
    "weights missing a tensor": (lambda f: factory(f["partial.pt"]), "1 of its tensors missing (e.g. 'head.bias')"),
    "factory without weights": (lambda f: ["--segmenter", "user_nets:PoolSeg"], "--segmenter-weights"),
    "weights without a factory": (lambda f: ["--segmenter", f["unet traced"], "--segmenter-weights",
                                             f["pool.safetensors"]], "are for a factory"),
    "no such file": (lambda f: ["--segmenter", f["dir"] / "nosuch.pt"], "does not exist"),
    # refused once export has begun: after the build's progress lines, one error line
    "factory torch cannot export": (lambda f: ["--segmenter", "user_nets:Unexportable", "--segmenter-weights",
                                               f["unexportable.safetensors"]], "torch cannot export the model"),
}
PROGRESS = ("exporting ONNX graphs",)  # what a build prints on stderr before its error


def _one_line_error(r, needle):
    assert r.exit_code == 1, r.output
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith(PROGRESS)]
    assert len(lines) == 1 and "Traceback" not in r.output, r.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def build(files, tmp_path_factory):
    """route -> (CliRunner result, engine directory), built once per module."""
    root, done = tmp_path_factory.mktemp("engines"), {}

    def get(route):
        if route not in done:
            out = root / route.replace(" ", "_")
            args = [str(a) for a in ROUTES[route][0](files)]
            denoiser = [] if "--denoiser" in args else ["--denoiser", str(files["denoiser"])]
            r = CliRunner().invoke(main, ["build-engine", "--image-size", str(SIZE), *denoiser, *args,
                                          "--out", str(out), "--json"])
            done[route] = (r, out)
        return done[route]
    return get


@pytest.mark.parametrize("route", list(ROUTES))
def test_route_builds_and_certifies_or_says_why_in_one_line(route, build, files, tmp_path):
    r, out = build(route)
    needle = ROUTES[route][1]
    if needle is not None:
        _one_line_error(r, needle)
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))
        return
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    c = CliRunner().invoke(main, ["certify", str(files["png"]), "--engine", str(out), *CERTIFY, "--json",
                                  "--out", str(tmp_path / "mask.png")])
    assert c.exit_code == 0 and "Traceback" not in c.output, c.output
    cert = json.loads(c.stdout)
    assert cert["n"] == 13 and np.asarray(Image.open(tmp_path / "mask.png")).shape == (SIZE, SIZE)


def _manifest(build, route):
    r, out = build(route)
    assert r.exit_code == 0, r.output
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("route,opset", [("onnx opset 13", 17), ("onnx opset 18", 18), ("onnx opset 20", 20),
                                         ("onnx opset 22", 22)])
def test_fused_graph_is_composed_at_the_higher_opset(build, route, opset):
    m = _manifest(build, route)
    fused = onnx.load(str(build(route)[1] / "model.onnx"))
    assert next(o.version for o in fused.opset_import if o.domain == "") == opset == m["graphs_made"]["fused"]["opset"]
    # the user's graph is copied as it is: never converted down
    seg = onnx.load(str(build(route)[1] / "segmenter.onnx"))
    assert next(o.version for o in seg.opset_import if o.domain == "") == m["intake"]["opset"]
    if opset > 17:
        assert m["graphs_made"]["fused"]["denoiser_graph_converted"] == f"opset 17 -> {opset}"
    else:
        assert m["graphs_made"]["fused"]["segmenter_graph_converted"] == "opset 13 -> 17"


def test_onnx_parity_reports_what_it_measured(build, files, tmp_path):
    r, _ = build("onnx opset 20")
    parity = json.loads(r.stdout)["parity"]
    assert parity["label_agreement_with_separate_graphs"] == 1.0 and parity["denoised_max_abs_diff"] < 1e-4
    small = ["--image-size", str(SIZE), "--denoiser", str(files["denoiser"])]
    text = CliRunner().invoke(main, ["build-engine", *small, "--segmenter", str(files["onnx opset 20"]),
                                     "--out", str(tmp_path / "e")])
    assert text.exit_code == 0, text.output
    assert "nan" not in text.stdout and "composed graph agrees" in text.stdout and "denoiser max abs diff" in text.stdout
    skipped = CliRunner().invoke(main, ["build-engine", *small, "--segmenter", str(files["onnx opset 20"]),
                                        "--no-parity", "--out", str(tmp_path / "e")])
    assert skipped.exit_code == 0 and "parity not checked (--no-parity)" in skipped.stdout, skipped.output
    m = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert m["parity"]["skipped"] is True and "--no-parity" in m["parity"]["reason"]


def test_external_data_is_copied_hashed_and_loads_from_the_engine_alone(build, files, tmp_path):
    m = _manifest(build, "onnx external data")
    assert m["intake"]["external_data"] == ["m.onnx.data"]
    assert {"segmenter.onnx", "segmenter.onnx.data", "model.onnx", "model.onnx.data"} <= set(m["files"])
    assert "segmenter.onnx:m.onnx.data" in m["source_model_files"]
    moved = shutil.copytree(build("onnx external data")[1], tmp_path / "elsewhere")
    for name in ("model.onnx", "segmenter.onnx"):  # every tensor is inline or in the sidecar beside its graph
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        graph = onnx.load(str(moved / name), load_external_data=False)
        assert {e.value for t in _get_all_tensors(graph) if uses_external_data(t)
                for e in t.external_data if e.key == "location"} == {f"{name}.data"}
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    seg = CertifiedSegmenter.load(moved)
    a = seg.backend.sample_counts(np.full((1, SIZE, SIZE), 0.5, np.float32), 6, seed=1, offset=0)
    b = CertifiedSegmenter.load(build("onnx external data")[1]).backend.sample_counts(
        np.full((1, SIZE, SIZE), 0.5, np.float32), 6, seed=1, offset=0)
    assert np.array_equal(a, b)
    # the user's graph is copied unchanged (its weights, in its sidecar)
    ours = onnx.load(str(moved / "segmenter.onnx"))
    theirs = onnx.load(str(files["onnx external data"]))
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in ours.graph.initializer} == \
        {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in theirs.graph.initializer}


def test_fixed_batch_builds_for_that_batch_and_pads_the_last_one(build):
    r, out = build("onnx fixed batch 2")
    m = json.loads(r.stdout)
    assert m["batch_sizes"] == {"min": 2, "opt": 2, "max": 2, "fixed": True}
    assert "fixed batch of 2" in r.stderr and "pads" in r.stderr
    runners = m["parity"]["batching"]["runners"]
    assert runners and all(v["chunk"] == 2 for v in runners.values())  # parity ran the engine's batch only
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    fixed = CertifiedSegmenter.load(out, batch_size=16)  # a fixed engine runs its own batch whatever is asked
    assert fixed.backend.batch_size == 2 and fixed.backend.fixed_batch
    dynamic = CertifiedSegmenter.load(build("onnx dynamic 17")[1], batch_size=5)
    from certseg_rt.data.phantom import make_phantom

    image = make_phantom(10_000_007, size=SIZE).image
    a = fixed.backend.sample_counts(image, 13, seed=4, offset=3)  # 13 = 6 batches of 2 + 1 padded
    b = dynamic.backend.sample_counts(image, 13, seed=4, offset=3)
    assert a.sum() == b.sum() == 13 * SIZE * SIZE and np.abs(a - b).sum() <= 0.001 * a.sum()
    assert fixed.segment(image).shape == (SIZE, SIZE)
    assert _manifest(build, "onnx default")["batch_sizes"]["fixed"] is True  # torch's default export: batch 1


def test_scripted_module_falls_back_to_dynamo_and_records_it(build):
    r, out = build("segresnet scripted")
    m = json.loads(r.stdout)
    made = m["graphs_made"]["segmenter"]
    assert made["exporter"] == "dynamo" and made["fixed_batch"] == 4 and "ONNX Runtime" in made["why"]
    assert m["batch_sizes"] == {"min": 4, "opt": 4, "max": 4, "fixed": True}
    assert m["parity"]["label_agreement"] >= 0.999 and "dynamo exporter" in r.stderr
    assert _manifest(build, "unet scripted")["graphs_made"]["segmenter"]["exporter"] == "torchscript"


def test_checkpoint_layout_is_recorded(build):
    assert "'module.'" in _manifest(build, "factory DDP checkpoint")["intake"]["weights"]
    hashed = _manifest(build, "factory state dict")["source_model_files"]
    assert {k for k in hashed if k.startswith("segmenter")} == {"segmenter.pt"}


def test_a_factory_file_is_hashed_with_its_weights(build, files):
    manifest = _manifest(build, "factory in a file")
    assert manifest["intake"]["segmenter"] == f"factory {files['models.py']}:FileSeg"
    assert set(manifest["source_model_files"]) >= {"segmenter.py", "segmenter.pth"}
    import hashlib

    assert manifest["source_model_files"]["segmenter.py"] == hashlib.sha256(files["models.py"].read_bytes()).hexdigest()

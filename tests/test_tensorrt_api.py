"""TensorRT API conformance: the project's TensorRT code against the real TensorRT 10 and 11 Python bindings.

TensorRT's libraries cannot be installed here, but its Python bindings are ordinary wheels on PyPI
(``tensorrt-cu12-bindings`` 10.x, ``tensorrt-cu13-bindings`` 11.x, ~1.3 MB each).  Both install the package
``tensorrt_bindings``, so each is unpacked into a folder of its own and imported in a subprocess.  Its
extension links libnvinfer, libnvinfer_plugin and libnvonnxparser; those are stood in for by stub libraries,
built here with the C compiler, that define the factory functions it imports (read off the module with
``readelf -d`` and ``nm -D``) and return NULL.  Nothing of TensorRT runs: the classes, enums and
pybind11 signatures become introspectable, and tests/tensorrt_api.py checks every class, method, enum
member and keyword that the project's TensorRT modules use (found by walking their source) against them.

The wheels come from the package index once and are kept in a cache: ``$CERTSEG_TRT_WHEELS`` or
``~/.cache/certseg-rt/tensorrt-bindings`` (``pip download`` for this Python; a folder already holding the
two wheels needs no network).  Without the wheels and without network the tests skip with the reason, except
under CI (``CI`` set), where they fail: there the check must run.
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TENSORRT_CODE = [ROOT / f"certseg_rt/{name}.py" for name in (
    "export/builders/tensorrt", "runtime/backends/tensorrt", "runtime/backends/cuda_device")]
BINDINGS = {"10": ("tensorrt-cu12-bindings", "10.16.1.11"), "11": ("tensorrt-cu13-bindings", "11.4.0.106")}
CACHE = Path(os.environ.get("CERTSEG_TRT_WHEELS") or Path.home() / ".cache" / "certseg-rt" / "tensorrt-bindings")
TOOLS = {"cc": os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"),
         "readelf": shutil.which("readelf"), "nm": shutil.which("nm")}


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"TensorRT API conformance cannot run in CI: {reason}")
    pytest.skip(reason)


def _wheel(dist: str, version: str) -> Path:
    """The bindings wheel for this Python from the cache, downloaded into it if missing."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    pattern = f"{dist.replace('-', '_')}-{version}-{tag}-*.whl"
    found = sorted(CACHE.glob(pattern))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:  # the cache only ever holds whole wheels
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", "-d", tmp, f"{dist}=={version}"],
                           capture_output=True, text=True, timeout=300)
        got = sorted(Path(tmp).glob(pattern))
        if r.returncode != 0 or not got:
            last = (r.stderr.strip().splitlines() or ["no wheel for this Python"])[-1]
            _unavailable(f"cannot download {dist}=={version} ({last}); put its {tag} wheel in {CACHE} "
                         f"or set CERTSEG_TRT_WHEELS to a folder holding it")
        os.replace(got[0], CACHE / got[0].name)
    return CACHE / got[0].name


def _unpacked(wheel: Path) -> Path:
    dest = CACHE / "unpacked" / wheel.stem
    if not (dest / "tensorrt_bindings").is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(tmp)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            os.mkdir(tmp)  # for TemporaryDirectory's cleanup
    return dest


def _tool_output(*cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def needed_stubs(module: Path) -> tuple[list[str], list[str]]:
    """(sonames of TensorRT's libraries the module links, the symbols it imports from them)."""
    sonames = [line.split("[", 1)[1].rstrip("]") for line in _tool_output(TOOLS["readelf"], "-d", str(module))
               .splitlines() if "(NEEDED)" in line and "[libnv" in line]
    process = ctypes.CDLL(None)  # what this process already provides (libc, libpython, ...) is not TensorRT's
    symbols = []
    for line in _tool_output(TOOLS["nm"], "-D", "--undefined-only", str(module)).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1] and not hasattr(process, parts[1]):
            symbols.append(parts[1])
    return sonames, symbols


def build_stubs(module: Path, out: Path) -> tuple[list[str], list[str]]:
    """Stub libraries for every TensorRT soname the module links, each defining every symbol it imports as a
    function returning NULL (none is called at import)."""
    sonames, symbols = needed_stubs(module)
    out.mkdir(parents=True, exist_ok=True)
    source = out / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    for soname in sonames:
        subprocess.run([TOOLS["cc"], "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}",
                        str(source)], check=True, capture_output=True)
    return sonames, symbols


_CHECK = textwrap.dedent("""
    import json, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import tensorrt_bindings as trt
    import tensorrt_api
    print(json.dumps(tensorrt_api.check(trt, sys.argv[3:])))
""")


@pytest.fixture(scope="module", params=sorted(BINDINGS), ids=lambda v: f"tensorrt{v}")
def bindings(request, tmp_path_factory):
    """(major, unpacked wheel folder, environment whose LD_LIBRARY_PATH holds the stubs) for one TensorRT."""
    missing = [t for t, path in TOOLS.items() if path is None]
    if missing:
        _unavailable(f"no {', '.join(missing)} here to build the stub libraries")
    major = request.param
    folder = _unpacked(_wheel(*BINDINGS[major]))
    module = next((folder / "tensorrt_bindings").glob("tensorrt*.so"))
    stubs = tmp_path_factory.mktemp(f"trt{major}-stubs")
    sonames, symbols = build_stubs(module, stubs)
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(stubs),
                                                                          os.environ.get("LD_LIBRARY_PATH")]))}
    return {"major": major, "folder": folder, "env": env, "sonames": sonames, "symbols": symbols}


def _check(bindings, files) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHECK, str(bindings["folder"]), str(ROOT / "tests"), *map(str, files)],
                       capture_output=True, text=True, env=bindings["env"], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_stub_libraries_stand_in_for_what_the_bindings_link(bindings):
    major = bindings["major"]
    assert sorted(bindings["sonames"]) == sorted(f"lib{n}.so.{major}" for n in
                                                 ("nvinfer", "nvinfer_plugin", "nvonnxparser"))
    # Only TensorRT's C factory functions are missing from a plain process: nothing of Python or libc is stubbed.
    assert 5 <= len(bindings["symbols"]) <= 20
    assert {"createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createNvOnnxParser_INTERNAL",
            "getNvOnnxParserVersion"} <= set(bindings["symbols"])
    assert not any(s.startswith(("Py", "_Py", "dl", "pthread")) for s in bindings["symbols"])


def test_project_tensorrt_code_matches_the_real_bindings(bindings):
    result = _check(bindings, TENSORRT_CODE)
    assert result["version"] == BINDINGS[bindings["major"]][1]
    assert result["problems"] == [], "\n".join(result["problems"])
    assert result["untyped"] == [], ("TensorRT members read on objects of unknown class (name the class in "
                                     "tests/tensorrt_api.py RECEIVERS, or NOT_TENSORRT): " + ", ".join(
                                         result["untyped"]))
    assert result["unused_receivers"] == [], "stale entries in tests/tensorrt_api.py: " + ", ".join(
        result["unused_receivers"])
    assert result["optional_missing"] == []  # every hasattr/getattr-guarded use exists in both, as of these versions
    # The walk found the API it is about (a checker that finds nothing would pass everything).
    for use in ("IBuilderConfig.set_memory_pool_limit()", "Builder.create_network()", "tensorrt.OnnxParser()",
                "IOptimizationProfile.set_shape()", "Runtime.deserialize_cuda_engine()",
                "Runtime.engine_host_code_allowed =", "IBuilderConfig.hardware_compatibility_level =",
                "IExecutionContext.execute_async_v3()", "IExecutionContext.set_input_shape()",
                "ICudaEngine.get_tensor_profile_shape()", "ICudaEngine.num_io_tensors", "ITimingCache.serialize()",
                "tensorrt.BuilderFlag.VERSION_COMPATIBLE", "tensorrt.HardwareCompatibilityLevel.AMPERE_PLUS",
                "tensorrt.ILogger.Severity.ERROR", "ILogger.log (overridden)", "ParserError.desc()",
                "ITensor.dtype"):
        assert use in result["checked"], use
    assert len(result["checked"]) >= 50


DRIFTED = textwrap.dedent('''
    def build(trt, logger, path):
        builder = trt.Builder(logger)
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)                      # removed in TensorRT 11
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # one argument short
        config.set_timing_cache(cache=None, ignore_mismatch=False, strict=True)  # no such keyword
        config.num_optimization_profiles = 2                      # read-only property
        runtime = trt.Runtime()                                   # needs its logger
        if hasattr(builder, "platform_has_fast_fp16"):            # guarded: optional
            builder.platform_has_fast_fp16
        engine = runtime.deserialize_cuda_engine(b"")
        engine.num_io_tensors()                                   # a property, called
        ctx = engine.create_execution_context()
        ctx.set_input_shape("x", (1, 2))
        other = make()
        other.set_tensor_address("x", 0)                          # a TensorRT method on an object of unknown class
''')


def test_checker_reports_api_drift(bindings, tmp_path):
    """The checker itself, on code written against the wrong API: each mistake is named."""
    path = tmp_path / "drifted.py"
    path.write_text(DRIFTED)
    result = _check(bindings, [path])
    problems = "\n".join(result["problems"])
    if bindings["major"] == "11":
        assert "tensorrt.BuilderFlag.FP16 does not exist" in problems
        assert result["optional_missing"] == ["Builder.platform_has_fast_fp16"]
    else:
        assert "FP16" not in problems and result["optional_missing"] == []
    assert "IBuilderConfig.set_memory_pool_limit called with 1 positional" in problems
    assert "IBuilderConfig.set_timing_cache called with 0 positional and keywords ['cache', " in problems
    assert "IBuilderConfig.num_optimization_profiles is assigned but is not a settable property" in problems
    assert "tensorrt.Runtime called with 0 positional" in problems
    assert "ICudaEngine.num_io_tensors is a property, and the code calls it" in problems
    assert "IExecutionContext.set_input_shape()" in result["checked"]  # ctx: typed from the bindings' return type
    assert result["untyped"] == ["drifted.py:17: other.set_tensor_address"]

"""Helpers the engine tests share: copy an engine directory, edit its manifest by hand (as a user might), run
the runtime in a Python where torch cannot be imported."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

# Makes torch, diffusers, safetensors and onnx unimportable, as in an environment where they are not installed.
_BLOCK_EXPORT_DEPENDENCIES = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers", "safetensors", "onnx"):
                raise ImportError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())
""")


def copy_engine(engine_dir, dst):
    shutil.copytree(engine_dir, dst)
    return dst


def edit_manifest(d, edit):
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


def run_without_torch(script, *args):
    """Run `script` (its sys.argv[1:] = args) in a fresh Python that cannot import torch or diffusers; the
    script fails if they were imported anyway."""
    script = _BLOCK_EXPORT_DEPENDENCIES + textwrap.dedent(script) + textwrap.dedent("""
        assert not any(m.split(".")[0] in ("torch", "diffusers") for m in sys.modules), "torch was imported"
    """)
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})

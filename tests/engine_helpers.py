"""Helpers the engine tests share: copy an engine directory, edit its manifest by hand (as a user might)."""
import json
import shutil


def copy_engine(engine_dir, dst):
    shutil.copytree(engine_dir, dst)
    return dst


def edit_manifest(d, edit):
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))

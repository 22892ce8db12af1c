"""Real scans from package registries: obtain a package by exact name and version, verify it, convert its scans.

The sources (scan_sources.json) are packages on PyPI or Debian that happen to ship medical scans with labels.  For
each, the file of one release is named with its sha256 (computed once from the real download and
committed), and so is every file used from inside it.  ``fetch`` downloads the release file (or takes a
local copy, ``from_file``), refuses it unless both hashes match, converts its scans (scans.py) into a
staging folder beside the output and renames that into place at the end: an error leaves nothing behind.

Downloads use the simple repository API (PEP 691 JSON, what pip reads) of the index pip is set up with
($PIP_INDEX_URL, pip's configuration, else PyPI) and fetch only the release file: an sdist is never built, so no code of the package runs (``pip download``
would run an sdist's build backend just to read its metadata, and pyradiomics' cannot even do that).  A
Debian package comes from the pool of a Debian mirror (apt's own, else deb.debian.org) by its recorded path;
a .deb is an ar archive whose data.tar.* holds the files, read here without dpkg.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from ..errors import CertsegError
from .scans import CT_WINDOW, convert_scan

SOURCES_FILE = Path(__file__).with_name("scan_sources.json")
READERS = {".mrc": "mrcfile", ".nrrd": "nrrd", ".nii": "nibabel", ".nii.gz": "nibabel", ".mhd": "numpy", ".obj": "numpy",
           "dicom": "pydicom"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def sources() -> dict[str, dict]:
    return json.loads(SOURCES_FILE.read_text())


def get_source(name: str) -> dict:
    known = sources()
    if name not in known:
        raise CertsegError(f"unknown source {name!r}; the sources are: {', '.join(known)}")
    return known[name]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def required_modules(source: dict) -> list[str]:
    """The readers a source's conversion needs (checked before anything is downloaded), plus nibabel (output)."""
    mods = {"nibabel"}
    for scan in source["scans"]:
        for member in (scan["image"], scan.get("label"), *(scan.get("label_meshes") or {}).values()):
            if member:
                name = member.lower()
                key = next((s for s in READERS if name.endswith(s)), "dicom")
                mods.add(READERS[key])
    return sorted(mods)


def check_readers(source: dict) -> None:
    import importlib.util

    missing = [m for m in required_modules(source) if importlib.util.find_spec(m) is None]
    if missing:
        names = {"nrrd": "pynrrd"}
        raise CertsegError(f"converting this source needs {', '.join(names.get(m, m) for m in missing)}, not "
                           f"installed: pip install 'certseg-rt[data]'")


# --- obtaining the release file ---------------------------------------------------------------------------------------

def default_index() -> str:
    """The index pip would use: $PIP_INDEX_URL, pip's configured index-url, else pip's own default (PyPI)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    try:
        from pip._internal.configuration import Configuration
        from pip._internal.models.index import PyPI

        config = Configuration(isolated=False)
        config.load()
        configured = dict(config.items())
        return configured.get("global.index-url") or configured.get("download.index-url") or PyPI.simple_url
    except Exception as e:  # noqa: BLE001 - pip absent or its internals changed: say how to name the index
        raise CertsegError(f"cannot find pip's package index ({type(e).__name__}); pass --index-url URL or set "
                           f"PIP_INDEX_URL")


def _registry_file(archive: dict, index: str) -> tuple[str, str | None]:
    """(download URL, the registry's sha256) of the release file, from the simple API's JSON page."""
    project = archive["package"].lower().replace("_", "-").replace(".", "-")
    page = f"{index.rstrip('/')}/{project}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        listing = json.load(r)
    for f in listing.get("files", []):
        if f.get("filename") == archive["filename"]:
            return urllib.parse.urljoin(page, f["url"]), (f.get("hashes") or {}).get("sha256")
    raise CertsegError(f"{index} lists no file {archive['filename']} for {archive['package']}=="
                       f"{archive['version']}; the release may have been removed: download it elsewhere and pass "
                       f"--from FILE")


def default_debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt is set up with (deb822 .sources or one-line lists), else deb.debian.org."""
    candidates = []
    for f in [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]:
        try:
            text = f.read_text() if f.suffix in (".list", ".sources") or f.name == "sources.list" else ""
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#")[0].split()
            if words[:1] == ["URIs:"]:
                candidates += words[1:]
            elif words[:1] == ["deb"]:
                candidates += [w for w in words[1:] if "://" in w][:1]
    return next((u.rstrip("/") for u in candidates if u.rstrip("/").endswith("/debian")), DEBIAN_MIRROR)


def _download(url: str, dest: Path, size: int | None) -> None:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=120) as r, open(dest, "wb") as f, \
            tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr, leave=False,
                 disable=None) as bar:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            f.write(chunk)
            bar.update(len(chunk))


def obtain(archive: dict, tmp: Path, from_file: Path | None = None, index: str | None = None) -> tuple[Path, dict]:
    """The verified release file and how it was obtained."""
    what = f"{archive['package']}{'=' if archive['registry'] == 'debian' else '=='}{archive['version']} " \
           f"({archive['filename']})"
    if from_file is not None:
        if not from_file.is_file():
            raise CertsegError(f"--from {from_file} is not a file; give the downloaded {archive['filename']}")
        path, record = from_file, {"obtained": "local file", "path": str(from_file.resolve())}
    else:
        debian = archive["registry"] == "debian"
        index = index or (default_debian_mirror() if debian else default_index())
        try:
            if debian:  # the pool path is the address; the recorded sha256 below is the check
                url, registry_sha = f"{index.rstrip('/')}/{archive['pool_path']}", None
            else:
                url, registry_sha = _registry_file(archive, index)
            path = tmp / archive["filename"]
            _say(f"downloading {what} from {urllib.parse.urlsplit(url).netloc} ({archive['size'] / 1e6:.1f} MB)")
            _download(url, path, archive.get("size"))
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            elsewhere = " (or from snapshot.debian.org)" if debian else ""
            raise CertsegError(f"cannot download {what} from {index} ({reason}); check the network, or download "
                               f"the file elsewhere{elsewhere} and pass --from FILE")
        if registry_sha is not None and registry_sha != archive["sha256"]:
            raise CertsegError(f"{index} gives sha256 {registry_sha} for {archive['filename']}, not the recorded "
                               f"{archive['sha256']}: the release was replaced; certseg-rt only takes the file it knows")
        record = {"obtained": "download", "url": url, "index": index, "registry_sha256": registry_sha}
    digest = sha256_of(path)
    if digest != archive["sha256"]:
        raise CertsegError(f"{path.name} has sha256 {digest}, not the recorded {archive['sha256']} of {what}: the file "
                           f"is corrupt or another release; delete it and fetch again")
    return path, record


def extract(archive_path: Path, members: dict[str, str], dest: Path) -> None:
    """Only the recorded members, each checked against its recorded sha256, written under dest by name."""
    def write(name: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != members[name]:
            raise CertsegError(f"{name} in {archive_path.name} has sha256 {digest}, not the recorded {members[name]}")
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    found = set()
    try:
        with open(archive_path, "rb") as f:
            is_deb = f.read(8) == b"!<arch>\n"
        if is_deb:  # a Debian package
            with _deb_data(archive_path) as t:
                for m in t.getmembers():
                    name = m.name.removeprefix("./")
                    if name in members and m.isfile():
                        write(name, t.extractfile(m).read())
                        found.add(name)
        elif zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as z:
                for name in members:
                    if name in z.namelist():
                        write(name, z.read(name))
                        found.add(name)
        else:
            with tarfile.open(archive_path) as t:
                for m in t.getmembers():
                    if m.name in members and m.isfile():
                        write(m.name, t.extractfile(m).read())
                        found.add(m.name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise CertsegError(f"cannot read {archive_path.name} ({e}); the file is damaged: fetch it again")
    if found != set(members):
        missing = sorted(set(members) - found)
        raise CertsegError(f"{archive_path.name} lacks {len(missing)} recorded file(s), e.g. {missing[0]}")


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data.tar.* of a .deb (an ar archive: 60-byte member headers, members padded to even sizes); only
    that member is read into memory."""
    with open(path, "rb") as f:
        f.seek(8)
        while len(header := f.read(60)) == 60:
            name, size = header[:16].decode("ascii").strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(f.read(size)), mode="r:*")
            f.seek(size + (size & 1), 1)
    raise ValueError("no data.tar member")


# --- the whole job -----------------------------------------------------------------------------------------------------

def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CertsegError(f"{out} exists and is not an empty folder; choose a new folder (nothing is overwritten)")
    parent = out.absolute().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK) or not probe.is_dir():
        raise CertsegError(f"cannot write to {parent}; choose a writable folder for the data")


def fetch(name: str, out: Path, from_file: Path | None = None, window=CT_WINDOW, index: str | None = None) -> dict:
    """Fetch, verify and convert source `name` into the new folder `out`; returns the provenance record."""
    from .. import __version__

    source = get_source(name)
    out = Path(out)
    _check_output(out)
    check_readers(source)
    archive = source["archive"]
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.absolute().parent))
    except OSError as e:
        raise CertsegError(f"cannot write to {out.absolute().parent}: {e.strerror}; choose a writable folder")
    try:
        with tempfile.TemporaryDirectory(prefix="certseg-fetch-") as tmp:
            tmp = Path(tmp)
            path, obtained = obtain(archive, tmp, from_file, index)
            _say(f"verified {archive['filename']} (sha256 {archive['sha256'][:16]}...)")
            extract(path, source["members"], tmp / "unpacked")
            scans = []
            for i, scan in enumerate(source["scans"]):
                _say(f"converting {scan['name']} ({i + 1}/{len(source['scans'])})")
                label = tmp / "unpacked" / scan["label"] if scan.get("label") else None
                meshes = {int(v): tmp / "unpacked" / m for v, m in scan.get("label_meshes", {}).items()} or None
                scans.append({**scan, **convert_scan(scan, tmp / "unpacked" / scan["image"], label, stage, window,
                                                     label_meshes=meshes)})
            licence = archive.get("licence_file")
            if licence:
                shutil.copyfile(tmp / "unpacked" / licence, stage / f"LICENSE-{archive['package']}.txt")
        provenance = {
            "source": name, "description": source["description"],
            "archive": {**archive, **obtained}, "members": source["members"], "scans": scans,
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "certseg_rt": __version__,
            "layout": "<scan>/images/<scan>_<k>.png (16-bit, [0, 1] intensities) + <scan>/masks/<scan>_<k>.png "
                      "(class indices): a data set for certseg-rt evaluate; a scan without labels has "
                      "<scan>/unlabelled/ instead; volumes/<scan>.nii.gz (source units, HU for CT), "
                      "<scan>_unit.nii.gz (the slices' [0, 1] intensities), <scan>_label.nii.gz (class indices) "
                      "and <scan>_source_label.nii.gz (the source's label values), all in (L, P, S) array order "
                      "with the scan's affine; axial slice k is volume[:, :, k].T (radiological display)",
            "not_part_of_certseg_rt": "this data comes from the package named above under its stated licence and "
                                      "terms; certseg-rt does not redistribute it",
        }
        (stage / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(stage, out)
        return provenance
    except OSError as e:
        raise CertsegError(f"cannot write the data to {out} ({e.strerror or e}); free space or choose another folder")
    finally:
        shutil.rmtree(stage, ignore_errors=True)

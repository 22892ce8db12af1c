"""A user's ONNX segmenter: the graph and its external data, checked before anything is built.

External data may only be read from the model's own folder: a tensor whose ``location`` is absolute,
contains ``..`` or resolves (through links) outside that folder is refused, so a model file cannot make
the build read other files.  Messages name the user's file, never a staging copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ...errors import CertsegError

FIX_EXTERNAL = "keep the .onnx and its external data files together in one folder and export again"


@dataclass
class OnnxSegmenterFile:
    path: Path  # the user's file
    model: object  # onnx.ModelProto with its external data loaded
    input_name: str
    channels: int | None  # None where the graph leaves a dimension dynamic
    classes: int | None
    batch: int | None  # a fixed batch dimension, or None (dynamic)
    height: int | None
    width: int | None
    opset: int
    external_files: list[str]  # sidecars, relative to the model's folder

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return (self.height, self.width) if self.height and self.width else None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def external_data_files(model, path: Path) -> list[str]:
    """The sidecar files the graph's tensors name, each checked to lie inside the model's folder."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    folder = path.parent.resolve()
    names = set()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        parts = PurePosixPath(location.replace("\\", "/")).parts
        if not location or PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() \
                or ".." in parts:
            raise CertsegError(f"ONNX segmenter {path}: tensor {tensor.name!r} reads external data from "
                               f"{location!r}, outside the model's folder (absolute or with '..'); {FIX_EXTERNAL}")
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise CertsegError(f"ONNX segmenter {path}: tensor {tensor.name!r} reads external data from "
                               f"{location!r}, which resolves outside the model's folder; {FIX_EXTERNAL}")
        if not target.is_file():
            raise CertsegError(f"ONNX segmenter {path}: its external data file {location!r} is missing from "
                               f"{path.parent}; {FIX_EXTERNAL}")
        names.add(location)
    return sorted(names)


def external_data_names(path: Path) -> list[str]:
    """The external data files a graph file of ours names (no data is read)."""
    import onnx

    from ..onnx_files import external_locations

    return sorted(external_locations(onnx.load(str(path), load_external_data=False)))


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def graph_inputs(model) -> list:
    """The graph's real inputs (initializers listed as inputs, as old exporters do, are not)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def load_onnx_segmenter(path: Path, name: str | None = None) -> OnnxSegmenterFile:
    """Read an ONNX segmenter with its external data; one CertsegError naming `name` (default: the path)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise CertsegError(f"ONNX segmenter {name} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - DecodeError, OSError...
        raise CertsegError(f"cannot load ONNX segmenter {name} ({_first_line(e)}); the file is corrupt or not ONNX")
    external = external_data_files(model, path)
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # noqa: BLE001 - onnx raises OSError, ValueError, its own types
        raise CertsegError(f"cannot read the external data of ONNX segmenter {name} ({_first_line(e)}); "
                           f"{FIX_EXTERNAL}")
    try:
        # Checked from the file so that a graph over 2 GB (external data) is checked too.
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - ValidationError, OSError
        raise CertsegError(f"ONNX segmenter {name} is not a valid ONNX model ({_first_line(e)}); the file is "
                           f"corrupt or not ONNX")
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise CertsegError(f"ONNX segmenter {name} must have one input (B, C, H, W) and one output "
                           f"(B, classes, H, W); it has {len(inputs)} inputs and {len(model.graph.output)} outputs")
    in_dims, out_dims = _dims(inputs[0]), _dims(model.graph.output[0])
    if len(in_dims) != 4 or (out_dims and len(out_dims) != 4):
        raise CertsegError(f"ONNX segmenter {name} takes a {len(in_dims)}-d input and gives a {len(out_dims)}-d "
                           f"output; it must map (B, C, H, W) images to (B, classes, H, W) logits")
    return OnnxSegmenterFile(path=path, model=model, input_name=inputs[0].name, channels=in_dims[1],
                             classes=out_dims[1] if out_dims else None, batch=in_dims[0], height=in_dims[2],
                             width=in_dims[3], opset=default_opset(model), external_files=external)


def save_copy(seg: OnnxSegmenterFile, dst: Path) -> list[str]:
    """Write the user's graph to `dst`, unchanged; external data (if it had any) goes to one sidecar next to it,
    ``<dst name>.data``.  Returns the files written (names relative to dst's folder)."""
    import onnx

    dst = Path(dst)
    model = onnx.ModelProto()
    model.CopyFrom(seg.model)  # saving with external data empties the tensors of the proto it is given
    if not seg.external_files:
        onnx.save(model, str(dst))
        return [dst.name]
    sidecar = f"{dst.name}.data"
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=sidecar,
                    size_threshold=1024)
    return [dst.name, sidecar]

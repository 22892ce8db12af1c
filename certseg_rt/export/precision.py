"""ONNX-level reduced precision: cast a float32 graph to fp16 or bf16, keeping fragile ops in fp32.

TensorRT 11 builds strongly typed networks only (``BuilderFlag.FP16``/``BF16`` were removed; TensorRT
10 keeps them but they are weak typing), so an engine's precision is whatever the ONNX graph says.
This pass says it, explicitly and reviewably, with Casts at the boundaries:

* Computed in the reduced type: every float32 node not listed below (Conv, Gemm, elementwise,
  activations, Resize, pooling, ArgMax ...), with its float32 initializers and Constants converted
  (values outside the target's finite range are clipped to it, and counted).
* Kept in float32, with a Cast in and a Cast out:
  - normalisations and reductions, whose sums lose the most: ``InstanceNormalization``,
    ``GroupNormalization``, ``LayerNormalization``, ``Softmax``/``LogSoftmax``, ``Reduce*`` except
    ``ReduceMax``/``ReduceMin`` (a maximum is exact in any type);
  - transcendental functions: ``Exp``, ``Log``, ``Pow``, ``Sqrt``, ``Sin``, ``Cos``, ``Erf``;
  - a GroupNorm decomposed as Reshape -> InstanceNormalization -> Reshape [-> Mul -> Add by
    constants] (what torch exports for ``nn.GroupNorm``), as one unit;
  - every *static* node: one whose inputs do not depend on the values of the graph inputs (only on
    constants and on their shapes).  That is the denoiser's timestep embedding, Sin/Cos of t * freq
    with arguments of up to ~1000 radians, and its MLP: per-batch vectors, free at runtime, exact;
  - anything whose ONNX schema does not accept the target type at the model's opset (and ops of
    other domains), so the cast graph always passes ``onnx.checker``.
* The graph's interface does not change: float32 inputs get a Cast after them, float outputs a Cast
  back to float32; the fused graph's ``labels`` (uint8 from ArgMax) are untouched.

bf16 needs ONNX opset 22 (the first where Conv, ConvTranspose, MaxPool and InstanceNormalization
accept bfloat16); older models are converted with ``onnx.version_converter`` first.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np

from ..errors import CertsegError

PRECISIONS = ("fp16", "bf16")
KEEP_FP32_OPS = frozenset({
    "InstanceNormalization", "GroupNormalization", "LayerNormalization",
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceProd", "ReduceL1",
    "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "Exp", "Log", "Pow", "Sqrt", "Sin", "Cos", "Erf",
    # outputs typed by an attribute, not by their inputs
    "ConstantOfShape", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
})
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})  # read a tensor's shape, never its values
BF16_MIN_OPSET = 22
METADATA_KEY = "certseg_precision"


def _tensor_proto():
    from onnx import TensorProto

    return TensorProto


def _target(precision: str) -> tuple[int, str, str]:
    """(TensorProto type, schema type string, short tag)."""
    TensorProto = _tensor_proto()
    if precision == "fp16":
        return TensorProto.FLOAT16, "tensor(float16)", "fp16"
    if precision == "bf16":
        return TensorProto.BFLOAT16, "tensor(bfloat16)", "bf16"
    raise CertsegError(f"precision must be one of {', '.join(PRECISIONS)} for the cast pass, got {precision!r}")


def _convert_values(values: np.ndarray, precision: str) -> tuple[bytes, bool]:
    """float32 values -> raw little-endian bytes of the target type, clipped to its finite range."""
    values = np.asarray(values, np.float32).reshape(-1)
    if precision == "fp16":
        limit = np.float32(np.finfo(np.float16).max)
    else:
        limit = np.float32(3.3895313892515355e38)  # the largest finite bfloat16
    finite = np.isfinite(values)
    clipped = bool(np.any(np.abs(values[finite]) > limit))
    values = np.where(finite, np.clip(values, -limit, limit), values)  # infinities and NaN stay what they are
    if precision == "fp16":
        return values.astype("<f2").tobytes(), clipped
    # bfloat16: the upper half of float32, rounded to nearest even (NaN stays a quiet NaN)
    bits = values.astype("<f4").view("<u4").astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    rounded[np.isnan(values)] = 0x7FC0
    return rounded.tobytes(), clipped


def _low_tensor(tensor, precision: str, name: str | None = None):
    """A float32 TensorProto converted to the target type (same dims), and whether values were clipped."""
    from onnx import TensorProto, numpy_helper

    out = TensorProto()
    out.name = tensor.name if name is None else name
    out.dims.extend(tensor.dims)
    out.data_type = _target(precision)[0]
    out.raw_data, clipped = _convert_values(numpy_helper.to_array(tensor), precision)
    return out, clipped


def _value_types(model) -> dict[str, int]:
    """elem_type of every tensor in the graph (after strict shape inference)."""
    from onnx import helper, shape_inference

    try:
        inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # onnx raises InferenceError / ValidationError
        raise CertsegError(f"the cast pass needs a graph ONNX can type-check: {str(e).strip().splitlines()[0][:200]}")
    g = inferred.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                types[node.output[0]] = attr["value"].t.data_type
            elif "value_float" in attr or "value_floats" in attr:
                types[node.output[0]] = _tensor_proto().FLOAT
        for a in node.attribute:
            if a.type in (helper.AttributeProto.GRAPH, helper.AttributeProto.GRAPHS):
                raise CertsegError(f"the cast pass does not handle control flow ({node.op_type} node {node.name!r}); "
                                   f"build with --precision fp32")
    return types


def _formal(schema, index: int, outputs: bool):
    params = schema.outputs if outputs else schema.inputs
    if not params:
        return None
    if index >= len(params):
        from onnx.defs import OpSchema

        last = params[-1]
        return last if last.option == OpSchema.FormalParameterOption.Variadic else None
    return params[index]


class _Classifier:
    """Decides, per node, whether it computes in the reduced type (``low[i]``) or in float32."""

    def __init__(self, model, types: dict[str, int], precision: str, keep_ops: frozenset[str]):
        self.graph = model.graph
        self.types = types
        self.keep_ops = keep_ops
        self.low_type, self.low_str, _ = _target(precision)
        self.FLOAT = _tensor_proto().FLOAT
        self.opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        self.nodes = list(self.graph.node)
        self.sources = {t.name for t in self.graph.initializer} - {i.name for i in self.graph.input}
        self.sources |= {n.output[0] for n in self.nodes if n.op_type == "Constant"}
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for slot, name in enumerate(n.input):
                if name:
                    self.consumers[name].append((i, slot))
        self.schemas = [self._schema(n) for n in self.nodes]
        self.dynamic = self._data_dependent()
        keep = [self._keep(i) for i in range(len(self.nodes))]
        self._mark_groupnorms(keep)
        # Nodes without float outputs (ArgMax, Shape, Cast to int, comparisons) take their float inputs in
        # whichever type they arrive: reduced if any does, so that no Cast is added only to feed them.
        self.low = [not k and self.nodes[i].op_type != "Constant" for i, k in enumerate(keep)]
        for i, n in enumerate(self.nodes):
            if self.low[i] and not any(self.is_float(o) for o in n.output):
                self.low[i] = any(self._arrives_low(name) for name in n.input)

    def _schema(self, node):
        from onnx import defs

        domain = node.domain or ""
        try:
            return defs.get_schema(node.op_type, self.opset.get(domain or "ai.onnx", 1), domain)
        except Exception:  # another domain, or an op ONNX does not know: leave it as it is
            return None

    def is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == self.FLOAT

    def _arrives_low(self, name: str) -> bool:
        i = self.producer.get(name)
        if not self.is_float(name) or name in self.sources or i is None or not self.low[i]:
            return False
        return self.allows_low(i, list(self.nodes[i].output).index(name), outputs=True)

    def _data_dependent(self) -> set[str]:
        """Values that depend on the values (not only the shapes) of the graph inputs."""
        dynamic = {i.name for i in self.graph.input} - self.sources
        for n in self.nodes:
            if n.op_type not in SHAPE_ONLY_OPS and any(name in dynamic for name in n.input):
                dynamic.update(o for o in n.output if o)
        return dynamic

    def allows_low(self, i: int, slot: int, outputs: bool) -> bool:
        schema = self.schemas[i]
        formal = schema and _formal(schema, slot, outputs)
        if formal is None:
            return False
        allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
        return self.low_str in allowed.get(formal.type_str, {formal.type_str})

    def _keep(self, i: int) -> bool:
        n = self.nodes[i]
        if n.op_type == "Constant":
            return False  # a source: converted or not by what its consumers want
        float_out = [slot for slot, o in enumerate(n.output) if self.is_float(o)]
        if not float_out and not any(self.is_float(x) for x in n.input):
            return False  # no float data passes through: nothing to decide
        if n.op_type in self.keep_ops or self.schemas[i] is None:
            return True
        if not any(o in self.dynamic for o in n.output if o):
            return True  # static: constants and shapes only
        return not all(self.allows_low(i, slot, outputs=True) for slot in float_out)

    def _single(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        if len(users) == 1 and self.nodes[users[0][0]].op_type == op_type:
            return users[0][0]
        return None

    def _mark_groupnorms(self, keep: list[bool]) -> None:
        """Reshape -> InstanceNormalization -> Reshape [-> Mul -> Add (by constants)] stays fp32 as one unit."""
        graph_outputs = {o.name for o in self.graph.output}
        for i, n in enumerate(self.nodes):
            if n.op_type != "InstanceNormalization":
                continue
            before = self.producer.get(n.input[0])
            if before is not None and self.nodes[before].op_type == "Reshape" \
                    and self._single(n.input[0], "InstanceNormalization") == i:
                keep[before] = True
            after = self._single(n.output[0], "Reshape")
            if after is None:
                continue
            keep[after] = True
            tail = after
            for op in ("Mul", "Add"):
                out = self.nodes[tail].output[0]
                nxt = None if out in graph_outputs else self._single(out, op)
                if nxt is None:
                    break
                other = [x for x in self.nodes[nxt].input if x != out]
                if not other or any(x in self.dynamic for x in other):
                    break  # an affine by constants only
                keep[nxt] = True
                tail = nxt

    def wants_low(self, i: int, slot: int) -> bool:
        """Whether input `slot` of node i should arrive in the reduced type."""
        return self.low[i] and self.allows_low(i, slot, outputs=False)

    def output_low(self, i: int, slot: int) -> bool:
        return self.low[i] and self.allows_low(i, slot, outputs=True)


def cast_precision(model, precision: str, *, keep_ops: frozenset[str] = KEEP_FP32_OPS):
    """A copy of `model` computing in `precision` ("fp16" | "bf16") except where float32 is kept (module doc).

    The returned graph passes ``onnx.checker.check_model(full_check=True)`` and strict shape inference;
    its metadata ``certseg_precision`` records what was done (node counts, casts, clipped constants).
    """
    import onnx
    from onnx import helper, version_converter

    low_type, _, tag = _target(precision)
    FLOAT = _tensor_proto().FLOAT
    work = onnx.ModelProto()
    work.CopyFrom(model)
    opset = _opset(work)
    if precision == "bf16" and opset < BF16_MIN_OPSET:
        try:
            work = version_converter.convert_version(work, BF16_MIN_OPSET)
        except Exception as e:
            raise CertsegError(f"bf16 needs ONNX opset {BF16_MIN_OPSET} and this graph (opset {opset}) cannot be "
                               f"converted ({str(e).strip().splitlines()[0][:160]}); use --precision fp16")
    types = _value_types(work)
    cls = _Classifier(work, types, precision, keep_ops)
    g, nodes = work.graph, cls.nodes
    taken = set(types) | {o for n in nodes for o in n.output} | {n.name for n in nodes}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    # 1. Sources (initializers, Constants): converted in place, kept, or (consumers disagree) both.
    graph_outputs = {o.name for o in g.output}
    renamed: dict[tuple[int, int], str] = {}  # (node, slot) -> the low copy's name
    extra_constants: dict[str, object] = {}  # Constant output -> a Constant node holding its low copy
    inits = {t.name: t for t in g.initializer}
    const_nodes = {n.output[0]: n for n in nodes if n.op_type == "Constant"}
    clipped = 0
    for name in sorted(cls.sources):
        users = cls.consumers.get(name, [])
        low_users = [(i, s) for i, s in users if cls.wants_low(i, s)]
        if not cls.is_float(name) or not low_users:
            continue
        in_place = len(low_users) == len(users) and name not in graph_outputs
        if name in inits:
            low, was_clipped = _low_tensor(inits[name], precision, None if in_place else fresh(f"{name}__{tag}"))
            if in_place:
                inits[name].CopyFrom(low)
            else:
                g.initializer.append(low)
                renamed.update({key: low.name for key in low_users})
        else:
            node = const_nodes[name]
            low, was_clipped = _low_tensor(_constant_value(node), precision, name="")
            if in_place:
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", low))
            else:
                copy = helper.make_node("Constant", [], [fresh(f"{name}__{tag}")], name=fresh(f"{node.name}__{tag}"),
                                        value=low)
                extra_constants[name] = copy
                renamed.update({key: copy.output[0] for key in low_users})
        clipped += was_clipped

    # 2. Float graph outputs computed in the reduced type get a Cast back to float32 under their own name.
    out_casts = []
    for out in g.output:
        i = cls.producer.get(out.name)
        if i is None or not cls.is_float(out.name) or out.name in cls.sources:
            continue
        slot = list(nodes[i].output).index(out.name)
        if not cls.output_low(i, slot):
            continue
        inner = fresh(f"{out.name}__{tag}")
        types[inner] = FLOAT
        nodes[i].output[slot] = inner
        for j, s in cls.consumers.get(out.name, []):
            nodes[j].input[s] = inner
        out_casts.append(helper.make_node("Cast", [inner], [out.name], name=fresh(f"{out.name}__cast_fp32"), to=FLOAT))

    # 3. Nodes in order, with a Cast wherever a value arrives in the other type than its consumer takes.
    current = {name: FLOAT for name in types if cls.is_float(name)}  # then updated as producers are rewritten
    casts: dict[tuple[str, int], str] = {}
    new_nodes = []
    for i, node in enumerate(nodes):
        for slot, name in enumerate(node.input):
            if (i, slot) in renamed:
                node.input[slot] = renamed[(i, slot)]
            elif name in current and name not in cls.sources:
                want = low_type if cls.wants_low(i, slot) else FLOAT
                if current[name] != want:
                    suffix = tag if want == low_type else "fp32"
                    if (name, want) not in casts:
                        casts[(name, want)] = fresh(f"{name}__{suffix}")
                        new_nodes.append(helper.make_node("Cast", [name], [casts[(name, want)]], to=want,
                                                          name=fresh(f"{name}__cast_{suffix}")))
                    node.input[slot] = casts[(name, want)]
        if node.op_type == "Cast" and cls.low[i]:
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = low_type
        for slot, name in enumerate(node.output):
            if cls.is_float(name):
                current[name] = low_type if cls.output_low(i, slot) else FLOAT
        new_nodes.append(node)
        if node.op_type == "Constant" and node.output[0] in extra_constants:
            new_nodes.append(extra_constants[node.output[0]])
    new_nodes.extend(out_casts)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]

    fp32_ops = Counter(n.op_type for i, n in enumerate(nodes) if not cls.low[i] and n.op_type != "Constant"
                       and (any(cls.is_float(x) for x in n.output)))
    summary = {"precision": precision, "opset": _opset(work),
               "nodes_reduced": sum(1 for i, n in enumerate(nodes) if cls.low[i]),
               "nodes_fp32": sum(fp32_ops.values()), "fp32_ops": dict(sorted(fp32_ops.items())),
               "casts_inserted": len(casts) + len(out_casts), "constants_clipped": int(clipped)}
    for prop in [p for p in work.metadata_props if p.key == METADATA_KEY]:
        work.metadata_props.remove(prop)
    entry = work.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(summary)
    try:
        onnx.checker.check_model(work, full_check=True)
    except Exception as e:
        raise CertsegError(f"the {precision} cast graph fails the ONNX checker "
                           f"({str(e).strip().splitlines()[0][:200]}); build with --precision fp32 and report "
                           f"the model")
    return work


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constant_value(node):
    """A float Constant node's value as a TensorProto (from `value`, `value_float` or `value_floats`)."""
    from onnx import helper

    attr = {a.name: a for a in node.attribute}
    if "value" in attr:
        return attr["value"].t
    if "value_float" in attr:
        return helper.make_tensor("value", _tensor_proto().FLOAT, [], [attr["value_float"].f])
    return helper.make_tensor("value", _tensor_proto().FLOAT, [len(attr["value_floats"].floats)],
                              list(attr["value_floats"].floats))


def precision_summary(model) -> dict | None:
    """What cast_precision recorded in the model's metadata, or None for a graph it did not produce."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None

"""The ONNX graph as the static oracles read it: constants, shapes, MACs and tensor liveness.

Plain functions over an ONNX model (bytes, a path or a ModelProto) that run
nothing: ``count_params``, ``weight_bytes``, ``infer_shapes`` (every tensor's
static shape, by ``onnx.shape_inference``), ``count_macs`` and ``peak_memory``
(activation bytes by liveness over the execution order). They need only the
``onnx`` package; ``oracles.static`` wraps them as oracles.

>>> from oracles.onnx_graph import count_macs
>>> count_macs("resnet18.onnx", {"input": (1, 3, 224, 224)}).total  # doctest: +SKIP
1814073344
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from oracles.errors import MeasurementFailedError, ModelInputError
from oracles.model import _onnx, graph_inputs, load_onnx, resolve_input_shapes

log = logging.getLogger(__name__)

__all__ = [
    "MacCount",
    "PeakMemory",
    "count_params",
    "count_macs",
    "weight_bytes",
    "peak_memory",
    "infer_shapes",
    "WEIGHT_OPS",
    "ELEMENTWISE_OPS",
]

Shapes = Mapping[str, tuple[int, ...]]

# --------------------------------------------------------------------------- dtypes

# Bits per element of each ONNX tensor type (sub-byte types are packed).
_BITS = {
    "FLOAT": 32,
    "UINT8": 8,
    "INT8": 8,
    "UINT16": 16,
    "INT16": 16,
    "INT32": 32,
    "INT64": 64,
    "BOOL": 8,
    "FLOAT16": 16,
    "DOUBLE": 64,
    "UINT32": 32,
    "UINT64": 64,
    "COMPLEX64": 64,
    "COMPLEX128": 128,
    "BFLOAT16": 16,
    "FLOAT8E4M3FN": 8,
    "FLOAT8E4M3FNUZ": 8,
    "FLOAT8E5M2": 8,
    "FLOAT8E5M2FNUZ": 8,
    "FLOAT8E8M0": 8,
    "UINT4": 4,
    "INT4": 4,
    "FLOAT4E2M1": 4,
    "UINT2": 2,
    "INT2": 2,
    "FLOAT6E2M3": 6,
    "FLOAT6E3M2": 6,
}
_FLOAT_TYPES = {
    "FLOAT",
    "FLOAT16",
    "DOUBLE",
    "BFLOAT16",
    "FLOAT8E4M3FN",
    "FLOAT8E4M3FNUZ",
    "FLOAT8E5M2",
    "FLOAT8E5M2FNUZ",
    "FLOAT8E8M0",
    "FLOAT4E2M1",
    "FLOAT6E2M3",
    "FLOAT6E3M2",
}


def _type_name(elem_type: int) -> str:
    return _onnx().TensorProto.DataType.Name(elem_type)


def _nbytes(numel: int, elem_type: int) -> int:
    """Bytes taken by ``numel`` elements of an ONNX type (strings and unknown types: 0)."""
    return math.ceil(numel * _BITS.get(_type_name(elem_type), 0) / 8)


def _prod(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


# --------------------------------------------------------------------------- weights

#: Input slots that hold learned weights, per operator: a float constant
#: there counts as parameters even when it has a single element (a PReLU
#: slope, a 1x1 conv).
WEIGHT_OPS: Mapping[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}),
    "ConvTranspose": frozenset({1, 2}),
    "Gemm": frozenset({0, 1, 2}),
    "MatMul": frozenset({0, 1}),
    "BatchNormalization": frozenset({1, 2}),
    "InstanceNormalization": frozenset({1, 2}),
    "LayerNormalization": frozenset({1, 2}),
    "GroupNormalization": frozenset({1, 2}),
    "RMSNormalization": frozenset({1}),
    "SkipLayerNormalization": frozenset({2, 3}),
    "PRelu": frozenset({1}),
    "Embedding": frozenset({0}),
    "DequantizeLinear": frozenset({0}),
}

# Float inputs that are settings or statistics, not learned weights: batch
# norm's running mean/var (torch buffers, not parameters), clip bounds, pad
# values, resize scales, quantisation scales; and inputs whose values are
# never read, only their shape or type (Shape, CastLike's target).
_NOT_WEIGHT_SLOTS: Mapping[str, frozenset[int]] = {
    "Shape": frozenset({0}),
    "Size": frozenset({0}),
    "CastLike": frozenset({1}),
    "BatchNormalization": frozenset({3, 4}),
    "Clip": frozenset({1, 2}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "DequantizeLinear": frozenset({1, 2}),
    "QuantizeLinear": frozenset({1, 2}),
    "Dropout": frozenset({1, 2}),
}


@dataclass(frozen=True)
class _Const:
    """One constant tensor of the graph: an initializer, a Constant node's value, or an alias."""

    name: str
    dims: tuple[int, ...]
    elem_type: int
    stored: bool  # False for an Identity alias of another constant (no extra storage)
    source: Any = field(default=None, compare=False, repr=False)  # TensorProto, None for aliases

    @property
    def numel(self) -> int:
        return _prod(self.dims)


def _constant_value_tensor(node: Any) -> Any | None:
    """The TensorProto a Constant node produces (scalar/list attributes made into tensors)."""
    onnx = _onnx()
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = onnx.helper.get_attribute_value(a)
            dtype = onnx.TensorProto.FLOAT if "float" in a.name else onnx.TensorProto.INT64
            dims = [] if not isinstance(value, list) else [len(value)]
            vals = value if isinstance(value, list) else [value]
            return onnx.helper.make_tensor(node.output[0], dtype, dims, vals)
    return None  # sparse_value / strings: not weights


def _constants(proto: Any) -> dict[str, _Const]:
    """Every constant tensor of the main graph, by name, following Identity chains.

    Exporters deduplicate equal initializers (torch's exporter does, e.g. the
    all-ones batch-norm scales of an untrained model) and hand the copies out
    through ``Identity`` nodes; those outputs are constants too, marked as not
    stored.
    """
    consts: dict[str, _Const] = {}
    for t in proto.graph.initializer:
        consts[t.name] = _Const(t.name, tuple(int(d) for d in t.dims), t.data_type, True, t)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            t = _constant_value_tensor(node)
            if t is not None:
                consts[node.output[0]] = _Const(
                    node.output[0], tuple(int(d) for d in t.dims), t.data_type, True, t
                )
        elif node.op_type == "Identity" and node.input and node.input[0] in consts:
            src = consts[node.input[0]]
            consts[node.output[0]] = _Const(node.output[0], src.dims, src.elem_type, False, None)
    return consts


def _uses(proto: Any) -> dict[str, list[tuple[str, int]]]:
    """For each tensor name, the (op_type, input slot) of every node that reads it."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in proto.graph.node:
        for slot, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node.op_type, slot))
    return uses


def _is_weight_use(const: _Const, op: str, slot: int) -> bool:
    """Whether a node reading ``const`` at input ``slot`` reads it as a learned weight."""
    type_name = _type_name(const.elem_type)
    if op == "Identity":
        return False  # the Identity's output is a constant of its own, judged where it is read
    if type_name not in _FLOAT_TYPES:
        # Integer tensors are weights only as the quantised input of DequantizeLinear.
        return op == "DequantizeLinear" and slot == 0
    if slot in WEIGHT_OPS.get(op, ()):
        return True
    if slot in _NOT_WEIGHT_SLOTS.get(op, ()):
        return False
    # Elsewhere (Add, Mul, Where ...) a float tensor is a weight unless it is a
    # scalar: exporters write 0.5, eps, 6.0 as one-element constants, while a
    # learned bias or layer scale has one value per channel.
    return const.numel > 1


def _values(const: _Const) -> Any:
    onnx = _onnx()
    try:
        return onnx.numpy_helper.to_array(const.source)
    except Exception as exc:  # external data that was not loaded, unsupported type
        raise MeasurementFailedError(
            f"could not read the values of weight {const.name!r} ({exc}); "
            "counting non-zero weights needs the weights stored inside the model"
        ) from None


def count_params(model: Any, *, nonzero: bool = False) -> int:
    """Number of learned weight elements in an ONNX model (rules: ``static.ParamsOracle``).

    With ``nonzero`` only the non-zero elements are counted.
    """
    proto = load_onnx(model)
    consts = _constants(proto)
    # An Identity alias has the values of the constant it copies.
    root_of: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in consts:
            root_of[node.output[0]] = root_of.get(node.input[0], node.input[0])
    nonzeros: dict[str, int] = {}
    total = 0
    for node in proto.graph.node:
        counted: set[str] = set()  # a node reading one tensor in two slots counts it once
        for slot, name in enumerate(node.input):
            const = consts.get(name)
            if const is None or name in counted or not _is_weight_use(const, node.op_type, slot):
                continue
            counted.add(name)
            if not nonzero:
                total += const.numel
                continue
            root = root_of.get(name, name)
            if root not in nonzeros:
                nonzeros[root] = int((_values(consts[root]) != 0).sum())
            total += nonzeros[root]
    return total


def weight_bytes(model: Any) -> int:
    """Bytes of the constant tensors an ONNX model stores and uses (``WeightMemoryOracle``)."""
    proto = load_onnx(model)
    consts = _constants(proto)
    used = set(_uses(proto))
    return _stored_bytes(consts, used)


def _stored_bytes(consts: Mapping[str, _Const], used: set[str]) -> int:
    total = 0
    for name, const in consts.items():
        if const.stored and name in used:
            total += _nbytes(const.numel, const.elem_type)
    return total


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class _TensorInfo:
    elem_type: int
    dims: tuple[int, ...] | None  # None when shape inference could not tell


def infer_shapes(
    model: Any, input_shapes: Shapes | None = None, *, batch: int | None = None
) -> tuple[dict[str, tuple[int, ...] | None], dict[str, tuple[int, ...]]]:
    """Static shape of every tensor in the main graph (None where inference cannot tell).

    Returns ``(shapes_by_tensor, input_shapes)``; the input shapes resolved as
    ``oracles.model.resolve_input_shapes`` does (a symbolic dimension without
    a given shape is a ModelInputError naming the input).
    """
    proto = load_onnx(model)
    resolved = resolve_input_shapes(proto, input_shapes, batch=batch)
    infos = _infer(proto, resolved)
    return {k: v.dims for k, v in infos.items()}, resolved


def _infer(proto: Any, resolved: Mapping[str, tuple[int, ...]]) -> dict[str, _TensorInfo]:
    skeleton = _skeleton(proto, resolved)
    infos = _infer_skeleton(skeleton)
    # ONNX's data propagation stops at Where, Equal, ConstantOfShape...: an Expand whose
    # target is computed from constants and the input's shape (BERT's token type ids
    # broadcast to the batch) loses the batch dimension. Those values are known once the
    # input shapes are: fold them and infer again. A shape read from a tensor whose own shape
    # was only found that way (a Swin block's window partition, reshaped twice) folds in the
    # next round, so rounds repeat while one folds something.
    for _ in range(_FOLD_ROUNDS):
        if all(infos.get(o) is not None and infos[o].dims is not None
               for n in skeleton.graph.node for o in n.output if o):  # fmt: skip
            break
        folded = _fold_constants(skeleton, infos)
        if folded is None:
            break
        skeleton = folded
        infos = {**infos, **_infer_skeleton(folded)}
    return infos


#: Most rounds of folding and inference (each folds what the last one sized; a Swin V2 at 224
#: needs 24, about 0.5 s in all; the loop stops as soon as a round folds nothing).
_FOLD_ROUNDS = 256


#: Largest constant (elements) computed while folding: shape arithmetic, never activations.
_FOLD_LIMIT = 4096


def _fold_constants(skeleton: Any, infos: Mapping[str, _TensorInfo]) -> Any | None:
    """``skeleton`` with every node whose value follows from constants and known shapes
    replaced by that value (an initializer); None when nothing folds."""
    import numpy as np

    onnx = _onnx()
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    values: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in skeleton.graph.initializer}
    folded: list[Any] = []
    kept: list[Any] = []
    for node in skeleton.graph.node:
        value = None
        src = infos.get(node.input[0]) if node.input else None
        if node.op_type == "Shape" and src is not None and src.dims is not None:
            attrs = {a.name: a.i for a in node.attribute}
            dims = np.array(src.dims, dtype=np.int64)
            value = [dims[attrs.get("start", 0) : attrs.get("end", len(dims))]]
        elif (
            node.domain in ("", "ai.onnx")
            and node.op_type not in DATA_DEPENDENT_OPS
            and all(i in values for i in node.input if i)
            and not any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute)
        ):
            try:
                feed = {i: values[i] for i in node.input if i}
                value = ReferenceEvaluator(node).run(None, feed)
            except Exception:  # an operator the reference runtime lacks: leave it to inference
                value = None
        if value is None or any(np.asarray(v).size > _FOLD_LIMIT for v in value):
            kept.append(node)
            continue
        for name, v in zip(node.output, value, strict=False):
            values[name] = np.asarray(v)
        folded.append(node)
    if not folded:
        return None
    model = onnx.ModelProto()
    model.CopyFrom(skeleton)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    have = {t.name for t in model.graph.initializer}
    for node in folded:
        for name in node.output:
            if name and name in values and name not in have:
                model.graph.initializer.append(numpy_helper.from_array(values[name], name))
    return model


def _infer_skeleton(skeleton: Any) -> dict[str, _TensorInfo]:
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(
            skeleton, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as exc:
        raise MeasurementFailedError(f"ONNX shape inference failed on the model: {exc}") from None
    infos: dict[str, _TensorInfo] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        dims: tuple[int, ...] | None
        if not tt.HasField("shape"):
            dims = None
        else:
            ds = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    ds.append(int(d.dim_value))
                else:
                    ds = None
                    break
            dims = tuple(ds) if ds is not None else None
        prev = infos.get(vi.name)
        if prev is None or prev.dims is None:
            infos[vi.name] = _TensorInfo(tt.elem_type, dims)
    for t in g.initializer:
        infos[t.name] = _TensorInfo(t.data_type, tuple(int(d) for d in t.dims))
    return infos


def _skeleton(proto: Any, resolved: Mapping[str, tuple[int, ...]]) -> Any:
    """A copy of the model for shape inference that leaves the big weights behind.

    Copying a 500 MB VGG to infer shapes would be slow; large float
    initializers are declared as typed graph inputs instead (their values
    never decide a shape), small and integer ones (reshape targets, resize
    scales) are kept because data propagation reads them.
    """
    onnx = _onnx()
    g = proto.graph
    graph = onnx.GraphProto()
    graph.name = g.name
    graph.node.extend(_topological(proto))  # inference reads nodes in order
    inits = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name in inits:
            continue
        new = graph.input.add()
        new.CopyFrom(inp)
        if inp.name in resolved:
            tt = new.type.tensor_type
            tt.shape.Clear()
            for d in resolved[inp.name]:
                tt.shape.dim.add().dim_value = d
    for t in g.initializer:
        if _type_name(t.data_type) in _FLOAT_TYPES and _prod(t.dims) > 64:
            graph.input.append(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            )
        else:
            graph.initializer.append(t)
    for out in g.output:
        new = graph.output.add()
        new.name = out.name
        new.type.tensor_type.elem_type = out.type.tensor_type.elem_type
    model = onnx.ModelProto()
    model.ir_version = max(proto.ir_version, 4)
    model.opset_import.extend(proto.opset_import)
    model.graph.CopyFrom(graph)
    for f in proto.functions:
        model.functions.append(f)
    return model


def _topological(proto: Any) -> list[Any]:
    """The graph's nodes in an execution order (ONNX requires it; sort if an exporter did not)."""
    nodes = list(proto.graph.node)
    known = {t.name for t in proto.graph.initializer} | {i.name for i in proto.graph.input}
    ordered = True
    seen = set(known)
    for node in nodes:
        if any(n and n not in seen for n in node.input):
            ordered = False
            break
        seen.update(node.output)
    if ordered:
        return nodes
    produced_by = {o: i for i, node in enumerate(nodes) for o in node.output}
    out: list[Any] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(i: int) -> None:
        stack = [(i, iter(nodes[i].input))]
        state[i] = 1
        while stack:
            j, it = stack[-1]
            for name in it:
                k = produced_by.get(name)
                if k is not None and state.get(k) is None:
                    state[k] = 1
                    stack.append((k, iter(nodes[k].input)))
                    break
                if k is not None and state.get(k) == 1 and k != j:
                    raise ModelInputError(
                        "the model's graph has a cycle; ONNX graphs must be acyclic"
                    )
            else:
                state[j] = 2
                out.append(nodes[j])
                stack.pop()

    for i in range(len(nodes)):
        if state.get(i) is None:
            visit(i)
    return out


# --------------------------------------------------------------------------- MACs

#: Operators counted at one operation per output element when ``elementwise``
#: is on (it is off by default): activations, arithmetic, normalisation,
#: pooling, resizing.
ELEMENTWISE_OPS: frozenset[str] = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Clip",
        "Elu",
        "Selu",
        "Celu",
        "Gelu",
        "Erf",
        "Softplus",
        "Softsign",
        "Mish",
        "ThresholdedRelu",
        "Exp",
        "Log",
        "Sqrt",
        "Reciprocal",
        "Neg",
        "Abs",
        "Pow",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Where",
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "LpNormalization",
        "Softmax",
        "LogSoftmax",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "LpPool",
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceL2",
        "ReduceProd",
        "Resize",
        "Upsample",
    }
)

# Operators that move or reinterpret data without arithmetic: zero MACs.
_FREE_OPS: frozenset[str] = frozenset(
    {
        "Identity",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Shape",
        "Size",
        "Constant",
        "ConstantOfShape",
        "Cast",
        "CastLike",
        "Expand",
        "Tile",
        "Pad",
        "Dropout",
        "DepthToSpace",
        "SpaceToDepth",
        "Range",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Not",
        "And",
        "Or",
        "NonZero",
        "TopK",
        "ArgMax",
        "ArgMin",
        "ScatterND",
        "ScatterElements",
        "QuantizeLinear",
        "DequantizeLinear",
        "Trilu",
        "OneHot",
    }
)


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of a model: the total and its split by operator type (non-zero only)."""

    total: int
    by_op: Mapping[str, int]
    input_shapes: Mapping[str, tuple[int, ...]]
    uncounted_ops: tuple[str, ...] = ()


#: Operators whose output's size depends on the values of their input (a mask's true
#: entries, the boxes non-maximum suppression keeps): no input shape fixes what follows them.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})


def data_dependent_sources(proto: Any) -> dict[str, Any]:
    """For each tensor of the main graph computed after a ``DATA_DEPENDENT_OPS`` node, the
    first such node upstream of it (tensors before any are left out)."""
    found: dict[str, Any] = {}
    for node in _topological(proto):
        src = node if node.op_type in DATA_DEPENDENT_OPS else None
        if src is None:
            src = next((found[i] for i in node.input if i in found), None)
        if src is not None:
            for out in node.output:
                found[out] = src
    return found


def _need(
    infos: Mapping[str, _TensorInfo],
    name: str,
    node: Any,
    sources: Mapping[str, Any] | None = None,
) -> tuple[int, ...]:
    info = infos.get(name)
    if info is not None and info.dims is not None:
        return info.dims
    where = f"{node.op_type} node {node.name or '(unnamed)'}"
    src = (sources or {}).get(name)
    if src is not None:
        raise MeasurementFailedError(
            f"the size of tensor {name!r} (at the {where}) depends on the input's values: "
            f"it follows the {src.op_type} node {src.name or '(unnamed)'}; the static oracles "
            "cannot count it: budget this model with a timed oracle (e.g. latency on "
            "onnxruntime:cpu), or pass the model without its post-processing (the backbone and "
            "head whose outputs feed it)"
        )
    # Every input's shape is fixed by now (resolve_input_shapes refuses a symbolic one), so
    # the gap is ONNX shape inference's, even after folding the shape arithmetic: say so,
    # and what measures the model instead.
    raise MeasurementFailedError(
        f"ONNX shape inference could not work out the shape of {name!r} ({where}) from the "
        "fixed input shapes, even with the shape arithmetic folded; the static oracles cannot "
        "count this model: budget it with a timed oracle (e.g. latency on onnxruntime:cpu)"
    )


def _node_macs(
    node: Any,
    infos: Mapping[str, _TensorInfo],
    elementwise: bool,
    sources: Mapping[str, Any] | None = None,
) -> int | None:
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w_idx = 3 if op == "QLinearConv" else 1
        w = _need(infos, node.input[w_idx], node, sources)
        y = _need(infos, node.output[0], node, sources)
        # N*Cout*prod(out spatial) outputs, each (Cin/groups)*prod(kernel) MACs.
        return _prod(y) * _prod(w[1:])
    if op == "ConvTranspose":
        x = _need(infos, node.input[0], node, sources)
        w = _need(infos, node.input[1], node, sources)
        # Every input element scatters into (Cout/groups)*prod(kernel) outputs.
        return _prod(x) * _prod(w[1:])
    if op == "Gemm":
        a = _need(infos, node.input[0], node, sources)
        y = _need(infos, node.output[0], node, sources)
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[0] if trans_a else a[1]
        return _prod(y) * k
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = _need(infos, node.input[0], node, sources)
        y = _need(infos, node.output[0], node, sources)
        # Broadcast batch dims are in the output; each output element is K MACs.
        return _prod(y) * (a[-1] if a else 1)
    if op in _FREE_OPS:
        return 0
    if op in ELEMENTWISE_OPS:
        if not elementwise:
            return 0
        return _prod(_need(infos, node.output[0], node, sources))
    return None


def count_macs(
    model: Any,
    input_shapes: Shapes | None = None,
    *,
    batch: int | None = None,
    elementwise: bool = False,
) -> MacCount:
    """Multiply-accumulates of one inference of an ONNX model (rules: ``static.FlopsOracle``)."""
    proto = load_onnx(model)
    resolved = resolve_input_shapes(proto, input_shapes, batch=batch)
    infos = _infer(proto, resolved)
    by_op: dict[str, int] = {}
    uncounted: set[str] = set()
    consts = _constants(proto)
    sources = data_dependent_sources(proto)
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.output and node.output[0] in consts:
            continue
        if node.domain not in ("", "ai.onnx", "com.microsoft"):
            uncounted.add(f"{node.domain}.{node.op_type}")
            continue
        macs = _node_macs(node, infos, elementwise, sources)
        if macs is None:
            uncounted.add(node.op_type)
            continue
        if macs:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    if uncounted:
        log.debug("operators not counted as MACs: %s", ", ".join(sorted(uncounted)))
    return MacCount(
        total=sum(by_op.values()),
        by_op=dict(sorted(by_op.items())),
        input_shapes=resolved,
        uncounted_ops=tuple(sorted(uncounted)),
    )


# --------------------------------------------------------------------------- peak memory

# Operators whose output is a view of their input in ONNX Runtime and torch
# (same buffer, no copy): the output shares the input's allocation.
_VIEW_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of one inference: activations by liveness, plus the stored weights."""

    total_bytes: int
    activation_bytes: int
    weight_bytes: int
    peak_node: str
    input_bytes: int
    output_bytes: int
    input_shapes: Mapping[str, tuple[int, ...]]


def _walk_peak(
    step_nodes: list[Any],
    new_buffers: list[list[str]],
    buffer_size: Mapping[str, int],
    last_use: Mapping[str, int],
    pinned: set[str],
    *,
    start_bytes: int,
) -> tuple[int, str]:
    """The largest live byte count over the steps and the node where it occurs: each step
    allocates its new buffers, then frees those it read last (pinned buffers are never freed)."""
    free_at: dict[int, list[str]] = {}
    for b, i in last_use.items():
        if b not in pinned:
            free_at.setdefault(i, []).append(b)
    live = start_bytes
    peak = live
    peak_node = "(inputs)"
    for i, node in enumerate(step_nodes):
        live += sum(buffer_size[b] for b in new_buffers[i])
        if live > peak:
            peak = live
            peak_node = node.name or f"{node.op_type}#{i}"
        live -= sum(buffer_size[b] for b in free_at.get(i, ()))
    return peak, peak_node


def peak_memory(
    model: Any, input_shapes: Shapes | None = None, *, batch: int | None = None
) -> PeakMemory:
    """Peak bytes of one inference by tensor liveness (rules: ``static.PeakMemoryOracle``)."""
    proto = load_onnx(model)
    resolved = resolve_input_shapes(proto, input_shapes, batch=batch)
    infos = _infer(proto, resolved)
    consts = _constants(proto)
    nodes = _topological(proto)

    def size(name: str, node: Any | None) -> int:
        info = infos.get(name)
        if info is None or info.dims is None:
            if node is None:
                raise MeasurementFailedError(f"no static shape for graph input {name!r}")
            _need(infos, name, node, data_dependent_sources(proto))  # raises, naming the node
        return _nbytes(_prod(info.dims), info.elem_type)

    # Buffers: each activation maps to a buffer id; view ops alias their input's buffer.
    buffer_of: dict[str, str] = {}
    buffer_size: dict[str, int] = {}
    last_use: dict[str, int] = {}
    # Buffers live to the end: graph inputs (the caller holds them), outputs.
    pinned: set[str] = set()

    real_inputs = [i.name for i in graph_inputs(proto)]
    for name in real_inputs:
        buffer_of[name] = name
        buffer_size[name] = size(name, None)
        pinned.add(name)
    input_total = sum(buffer_size.values())

    step_nodes = [n for n in nodes if not (n.output and all(o in consts for o in n.output if o))]
    new_buffers: list[list[str]] = []
    for i, node in enumerate(step_nodes):
        made: list[str] = []
        for name in node.input:
            if name in buffer_of:
                last_use[buffer_of[name]] = i
        for j, out in enumerate(node.output):
            if not out:
                continue
            src = node.input[0] if node.input else ""
            if node.op_type in _VIEW_OPS and j == 0 and src in buffer_of:
                buffer_of[out] = buffer_of[src]
                continue
            buffer_of[out] = out
            buffer_size[out] = size(out, node)
            last_use.setdefault(out, i)  # an output nobody reads is freed after its node
            made.append(out)
        new_buffers.append(made)
    output_total = 0
    for out in proto.graph.output:
        if out.name in buffer_of:
            b = buffer_of[out.name]
            if b not in pinned:
                output_total += buffer_size[b]
            pinned.add(b)

    peak, peak_node = _walk_peak(
        step_nodes, new_buffers, buffer_size, last_use, pinned, start_bytes=input_total
    )
    wbytes = _stored_bytes(consts, set(_uses(proto)))
    return PeakMemory(
        total_bytes=peak + wbytes,
        activation_bytes=peak,
        weight_bytes=wbytes,
        peak_node=peak_node,
        input_bytes=input_total,
        output_bytes=output_total,
        input_shapes=resolved,
    )

"""Parity of outputs whose size depends on the input's values, checked before the step that sets it.

A detector's boxes after non-maximum suppression are no fair comparison: two faithful
runtimes that differ in the last bit of one score keep other boxes, or the same in another
order (a difference of hundreds with nothing wrong), and torch in float64 keeps others again,
so it vouches for nothing either. Such an output is checked where its size is still fixed:
the outputs of the submodules that run before it (a detector's backbone, anchor generator and
head), read from the ONNX graph by the scope names the exporter gives its nodes ("/head/...")
and compared with torch's, caught by forward hooks. A submodule whose own output already
depends on the input's values (Faster R-CNN's region proposals) is looked into one level down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hwprune.errors import ExportError

__all__ = ["data_dependent_outputs", "data_dependent_dims", "same_fixed_dims", "check_before"]

log = logging.getLogger(__name__)

#: How deep submodules are looked into for outputs of a fixed size.
_DEPTH = 2


def data_dependent_outputs(proto: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Each graph output whose size the input shapes do not fix, with the node it follows
    (``the NonMaxSuppression node '...'``)."""
    from oracles.errors import OracleError
    from oracles.onnx_graph import data_dependent_sources, infer_shapes

    sources = data_dependent_sources(proto)
    if not sources:
        return {}
    try:
        inferred, _ = infer_shapes(proto, shapes)
    except OracleError:
        inferred = {}
    return {
        o.name: f"the {sources[o.name].op_type} node {sources[o.name].name or '(unnamed)'!r}"
        for o in proto.graph.output
        if o.name in sources and inferred.get(o.name) is None
    }


def data_dependent_dims(module: Any, inputs: Any) -> dict[str, frozenset[int]]:
    """For each output of ``module`` whose size depends on the input's values (a detector's
    boxes after NMS), the positions of the dimensions that do: those its ONNX export leaves
    symbolic. Empty when there are none, or when the model does not export (then every
    dimension is compared, as before)."""
    import onnx

    from hwprune.export.onnx import export_onnx
    from oracles.onnx_graph import data_dependent_sources

    try:
        proto = onnx.load_from_string(
            export_onnx(
                module,
                example_inputs=inputs,
                check=False,
                fold_shapes=False,
                allow_trace_warnings=True,
            )  # fmt: skip
        )
    except Exception as exc:  # not exportable: nothing is known to vary, compare all
        log.info("data-dependent output sizes unknown (%s)", str(exc).strip()[:200])
        return {}
    sources = data_dependent_sources(proto)
    out = {}
    for o in proto.graph.output:
        if o.name not in sources:
            continue
        shape = o.type.tensor_type.shape
        free = [i for i, d in enumerate(shape.dim) if not d.HasField("dim_value")]
        # A shape the exporter did not declare: the detection count leads, by convention.
        out[o.name] = frozenset(free) if shape.dim else frozenset({0})
    return out


def same_fixed_dims(
    dense: tuple[int, ...] | None, other: tuple[int, ...] | None, free: frozenset[int]
) -> bool:
    """Whether two shapes of one output agree on rank and every dimension not in ``free``."""
    if dense is None or other is None or len(dense) != len(other):
        return dense == other
    return all(a == b for i, (a, b) in enumerate(zip(dense, other, strict=True)) if i not in free)


def _scope_outputs(proto: Any, path: str) -> list[str]:
    """The tensors a submodule's nodes (named "/a/b/...") hand to the rest of the graph."""
    prefix = "/" + path.replace(".", "/") + "/"
    inside = [n for n in proto.graph.node if n.name.startswith(prefix)]
    made = {o for n in inside for o in n.output if o}
    used_outside = {i for n in proto.graph.node if not n.name.startswith(prefix) for i in n.input}
    used_outside |= {o.name for o in proto.graph.output}
    return [o for n in inside for o in n.output if o in made and o in used_outside]


def _with_outputs(proto: Any, names: Sequence[str]) -> bytes:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy.SerializeToString()


def _candidates(module: Any, proto: Any) -> list[tuple[str, Any]]:
    """Submodules (to ``_DEPTH`` levels) whose nodes the graph names, outermost first."""
    names = {n.name for n in proto.graph.node}
    out = []
    for path, sub in module.named_modules():
        if path and path.count(".") < _DEPTH:
            prefix = "/" + path.replace(".", "/") + "/"
            if any(n.startswith(prefix) for n in names):
                out.append((path, sub))
    return out


def _torch_outputs(module: Any, subs: Sequence[tuple[str, Any]], x: Any) -> dict[str, list[Any]]:
    """What each submodule returned when ``module`` ran on ``x`` (its float tensors)."""
    import torch

    from hwprune.inputs import flatten_outputs

    seen: dict[str, list[Any]] = {}

    def hook(path: str):
        def record(_m: Any, _a: Any, out: Any) -> None:
            try:
                leaves = [t for _, t in flatten_outputs(out)]
            except Exception:  # an ImageList or another object: nothing to compare
                leaves = []
            seen.setdefault(path, []).extend(t for t in leaves if t.is_floating_point())

        return record

    handles = [sub.register_forward_hook(hook(path)) for path, sub in subs]
    try:
        with torch.no_grad():
            x.call(module)
    finally:
        for h in handles:
            h.remove()
    return seen


def check_before(
    module: Any, proto: Any, inputs: Any, *, draws: Sequence[Any], steps: Mapping[str, str]
) -> list[tuple[str, tuple[int, ...], float, float, float]]:
    """(name, shape, max |diff|, scale, worst relative) of each submodule output compared
    before the data-dependent ``steps``; ExportError when none can be compared."""
    import numpy as np
    import onnxruntime as ort

    from hwprune.inputs import output_scale
    from oracles.onnx_graph import data_dependent_sources

    subs = _candidates(module, proto)
    after = data_dependent_sources(proto)
    # A submodule's tensor computed after the step (Faster R-CNN's proposals) is no fixed point.
    scoped = {path: [t for t in _scope_outputs(proto, path) if t not in after]
              for path, _ in subs}  # fmt: skip
    extra = [t for names in scoped.values() for t in names]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(
        _with_outputs(proto, extra), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    graph_inputs = [i.name for i in session.get_inputs()]
    worst: dict[str, tuple[tuple[int, ...], float, float, float]] = {}
    failed: set[str] = set()
    for x in draws:
        got = dict(zip(names, session.run(None, {n: v for n, v in x.numpy_feed().items()
                                                 if n in graph_inputs}), strict=True))  # fmt: skip
        for path, tensors in _torch_outputs(module, subs, x).items():
            pool = [got[n] for n in scoped.get(path, []) if n in got]
            for i, want in enumerate(tensors):
                key = f"{path}[{i}]"
                w = want.detach().double().cpu().numpy()
                same = [p for p in pool if tuple(p.shape) == tuple(w.shape)]
                if not same:
                    failed.add(key)
                    continue
                diff = min(float(np.max(np.abs(p.astype(np.float64) - w))) if w.size else 0.0
                           for p in same)  # fmt: skip
                scale = output_scale(want)
                rel = diff / scale if math.isfinite(diff) else math.inf
                prev = worst.get(key, (tuple(w.shape), 0.0, 1.0, 0.0))
                worst[key] = (prev[0], max(prev[1], diff), max(prev[2], scale), max(prev[3], rel))
    # A submodule counts when every one of its tensors matched in every draw; an outer one
    # that did covers what its inner ones compute.
    whole = {k.rsplit("[", 1)[0] for k in worst} - {k.rsplit("[", 1)[0] for k in failed}
    kept = [p for p in whole if not any(p.startswith(q + ".") for q in whole)]
    found = [(k, *v) for k, v in sorted(worst.items()) if k.rsplit("[", 1)[0] in kept]
    unchecked = [
        name
        for name, sub in module.named_modules()
        if any(True for _ in sub.parameters(recurse=False))
        and not any(name == p or name.startswith(p + ".") for p in kept)
    ]
    if found and unchecked:
        name, step = next(iter(steps.items()))
        raise ExportError(
            f"ONNX output {name!r} has a size that depends on the input's values (it follows "
            f"{step}), and the layer {unchecked[0]!r} runs after that step, where no tensor of a "
            "fixed size can be compared with torch; the export cannot be checked: export the "
            "model without its post-processing"
        )
    if not found:
        name, step = next(iter(steps.items()))
        raise ExportError(
            f"ONNX output {name!r} has a size that depends on the input's values (it follows "
            f"{step}), and no submodule output of a fixed size before it could be matched in "
            "the graph; the export cannot be checked: export the model without its "
            "post-processing"
        )
    return found

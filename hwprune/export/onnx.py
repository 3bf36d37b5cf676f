"""ONNX export of a candidate module: fixed input shape, eval mode, CPU, checked.

The search exports every evaluated candidate once, so this path is kept
lean: the TorchScript-based exporter (``dynamo=False``), which in torch 2.14
is faster than the torch.export-based one on CNNs and needs no extra
package (the dynamo exporter needs ``onnxscript``). Simplification and the
torch-vs-ONNX Runtime comparison belong to the final export, not here.
"""

from __future__ import annotations

import copy
import io
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from hwprune.config import DEFAULT_OPSET
from hwprune.errors import ConfigError, ExportError, WriteError
from hwprune.export.trace import watch_values
from hwprune.files import write_atomic
from hwprune.inputs import ExampleInputs, flatten_outputs

log = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME", "OUTPUT_NAME", "export_onnx", "output_names", "resolve_inputs", "simplify",
]  # fmt: skip

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

_OPERATOR = re.compile(r"operator '?([\w.:]+)'?", re.IGNORECASE)
_ATEN = re.compile(r"\b(aten::\w+|prim::\w+|onnx::\w+)")


def _operator_in(message: str) -> str | None:
    found = _OPERATOR.search(message) or _ATEN.search(message)
    return found.group(1) if found else None


def resolve_inputs(
    example_inputs: object | None, input_shape: Sequence[int] | None, *, what: str = "export"
) -> ExampleInputs:
    """ExampleInputs from either ``example_inputs`` (any form) or a single ``input_shape``."""
    if example_inputs is not None:
        try:
            return ExampleInputs.from_user(example_inputs)
        except ConfigError as exc:
            raise ExportError(str(exc)) from exc
    if input_shape is None:
        raise ExportError(f"{what} needs example_inputs or an input_shape such as (1, 3, 32, 32)")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ExportError(f"input_shape must be positive sizes such as (1, 3, 32, 32), got {shape}")
    return ExampleInputs.from_shape(shape)


def output_names(outputs: object) -> list[str]:
    """The ONNX output names of a model's outputs: "logits" for a lone tensor, else flatten_outputs'."""
    return [n for n, _ in flatten_outputs(outputs, single=OUTPUT_NAME)]


def _keyword_call(module, names: Sequence[str]):
    """A module taking ``names`` positionally and calling ``module(**named)``: the exporter's form."""
    import torch

    class KeywordCall(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args):
            return self.inner(**dict(zip(names, args, strict=True)))

    return KeywordCall()


# Places accepted with allow_trace_warnings already logged: once each, not once per candidate.
_ACCEPTED: set[tuple[str, int]] = set()


def _judge_trace(found: Sequence, caught: Sequence, *, allow: bool) -> None:
    """ExportError for the first input-dependent conversion (unless ``allow``: a warning, once)."""
    for w in caught:
        log.debug("tracer: %s:%s: %s", w.filename, w.lineno, str(w.message).splitlines()[0])
    if not found:
        return
    if not allow:
        raise ExportError(found[0].message(others=len(found) - 1))
    for f in found:
        if (f.filename, f.lineno) not in _ACCEPTED:
            _ACCEPTED.add((f.filename, f.lineno))
            log.warning("%s", f.message(accepted=True))


def export_onnx(
    model,
    *,
    input_shape: Sequence[int] | None = None,
    example_inputs: object | None = None,
    path: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    fold_shapes: bool = True,
    allow_trace_warnings: bool = False,
) -> bytes:
    """The ONNX bytes of ``model`` for fixed input shapes, every input and output named.

    Inputs come from ``example_inputs`` (a tensor, a tuple of tensors, a dict
    of named tensors or an ExampleInputs) or, for a single float input, from
    ``input_shape``. A single input is named "input", a tuple's "input_0",
    "input_1", ..., a dict's by its keys. A single output is named "logits";
    several are named as ``flatten_outputs`` names them ("output_0", ... or
    a dict's keys). The module is exported in eval mode on the CPU; its own
    mode and device are left as they were. ``check`` runs onnx's checker.
    ``path``, when given, receives the bytes too. ``fold_shapes`` folds the
    shape arithmetic the tracer records (Shape -> Gather -> Div ...) into
    constants with the simplifier, so that static oracles see every shape. An operator the exporter
    cannot express raises ExportError naming it.

    A forward that turns a tensor computed from its input into a Python value (a branch
    on ``y.mean() > 0.1``, ``float(t)``, ``t.item()``) cannot be exported faithfully: the
    graph keeps that one input's branch or value. That raises ExportError naming the file,
    line and code (see hwprune.export.trace); ``allow_trace_warnings`` exports it anyway,
    with a logged warning.

    Example::

        data = export_onnx(space.apply(policy), input_shape=(1, 3, 32, 32))
        data = export_onnx(detector, example_inputs={"image": x, "mask": m})
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    inputs = resolve_inputs(example_inputs, input_shape).to("cpu")
    if example_inputs is None:
        # A shape alone: zeros trace the same graph and keep the export deterministic.
        inputs = ExampleInputs(
            kind="tensor", names=inputs.names, tensors=(torch.zeros(inputs.first_shape),)
        )
    data = _traced(model, inputs, opset=opset, allow_trace_warnings=allow_trace_warnings)
    data = _checked(data, inputs, check=check, fold_shapes=fold_shapes)
    if path is not None:
        try:
            write_atomic(path, data, what="the ONNX file")
        except WriteError as exc:
            raise ExportError(str(exc)) from exc
    log.debug("exported %s: %d bytes, opset %d", type(model).__name__, len(data), opset)
    return data


# What to do about an operator that has no ONNX form, where the fix is known.
_HINTS = {
    # transformers decoders look for packed sequences in the positions when no mask is given.
    "aten::diff": "; a transformers decoder computes it when called without an attention mask: "
    "pass attention_mask=torch.ones_like(input_ids) with the example inputs",
}


def _traced(model, inputs: ExampleInputs, *, opset: int, allow_trace_warnings: bool) -> bytes:
    """The TorchScript exporter's bytes of ``model`` (eval mode, CPU; its own mode and device
    are left as they were); ExportError for an operator it cannot express or a forward that
    decides on its input's values (unless ``allow_trace_warnings``)."""
    import torch

    on_cpu = all(t.device.type == "cpu" for t in model.state_dict().values())
    module = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    # nn.MultiheadAttention's fused inference kernel has no ONNX form; the exporter needs
    # the composite path (same arithmetic).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            names_out = output_names(inputs.call(module))
        target = module if inputs.kind != "dict" else _keyword_call(module, inputs.names)
        watch = watch_values(n_inputs=len(inputs.tensors))
        with warnings.catch_warnings(record=True) as caught:
            # The TorchScript exporter is deprecated in favour of dynamo; chosen on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            # Tracer warnings are recorded, not shown: their text cannot tell a shape check
            # (harmless at fixed shapes) from a decision on the input's values; ``watch``
            # finds the latter by what the converted tensor depends on.
            warnings.simplefilter("always", torch.jit.TracerWarning)
            with torch.no_grad(), watch:
                torch.onnx.export(
                    target,
                    inputs.args(),
                    buffer,
                    input_names=list(inputs.names),
                    output_names=names_out,
                    opset_version=int(opset),
                    dynamo=False,
                    do_constant_folding=True,
                )
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises several unrelated types
        op = _operator_in(str(exc))
        what = f"operator {op}" if op else type(exc).__name__
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ExportError(
            f"cannot export {type(model).__name__} to ONNX opset {opset}: {what} is not "
            f"supported ({first}){_HINTS.get(op or '', '')}{_opset_hint(str(exc), int(opset))}"
        ) from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        module.train(was_training)
    _judge_trace(watch.found, caught, allow=allow_trace_warnings)
    return buffer.getvalue()


def _opset_hint(message: str, opset: int) -> str:
    """Where the exporter says a later opset has the operator, how to ask for it."""
    found = re.search(r"added in (?:opset )?version (\d+)", message)
    if found is None or int(found.group(1)) <= opset:
        return ""
    n = int(found.group(1))
    return f"; opset {n} has it: pass --opset {n} (opset={n} in the library)"


def _checked(data: bytes, inputs: ExampleInputs, *, check: bool, fold_shapes: bool) -> bytes:
    """The exported bytes with their shape arithmetic folded (``fold_shapes``), checked by
    onnx's checker (``check``); ExportError when the graph lost one of the named inputs."""
    import onnx

    proto = onnx.load_from_string(data)
    if fold_shapes and any(n.op_type == "Shape" for n in proto.graph.node):
        # The tracer records x.size() / chunk sizes as Shape -> Gather -> Div ... chains, and
        # ONNX's shape inference cannot propagate values through Div: the static oracles would
        # not know the shapes after them (ShuffleNet's chunk). With fixed input shapes the
        # chains are constants; the simplifier folds them.
        folded, ok = simplify(data)
        if ok:
            data, proto = folded, onnx.load_from_string(folded)
    if check:
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ExportError(f"the exported ONNX model fails onnx's checker: {exc}") from exc
    missing = [n for n in inputs.names if n not in {i.name for i in proto.graph.input}]
    if missing:
        # The exporter drops inputs the graph never reads; the oracles feed every named input.
        raise ExportError(
            f"the exported ONNX graph has no input {missing[0]!r}: the model does not use it; "
            "pass only the inputs the model reads"
        )
    ranges = {n: r for n, r in zip(inputs.names, inputs.ranges, strict=True) if r is not None}
    if ranges:
        # The timed oracles draw integer inputs (token ids, type ids) from the example's own
        # range: a draw past an embedding table's size is an out-of-range index, not a model.
        from oracles.model import set_input_ranges

        set_input_ranges(proto, ranges)
        data = proto.SerializeToString()
    return data


def simplify(onnx_bytes: bytes) -> tuple[bytes, bool]:
    """The model simplified by onnxslim (constant folding, dead nodes); the input when it fails."""
    import onnx

    try:
        import onnxslim
    except ImportError:
        log.info("onnxslim is not installed; exporting the unsimplified graph")
        return onnx_bytes, False
    try:
        slim = onnxslim.slim(onnx.load_from_string(onnx_bytes))
    except Exception as exc:  # a simplifier bug must not lose a valid export
        log.warning("onnxslim failed (%s); exporting the unsimplified graph", exc)
        return onnx_bytes, False
    if slim is None:
        return onnx_bytes, False
    return slim.SerializeToString(), True

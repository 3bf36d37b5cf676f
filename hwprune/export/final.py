"""The deliverable export: ONNX checked, simplified and compared with torch; a TensorRT engine where possible.

``final_export(module, example_inputs=..., onnx_path=...)`` (or
``input_shape=`` for one float input) writes the ONNX file only after onnx's
checker accepts it and ONNX Runtime reproduces *every* torch output on random
inputs within ``atol`` relative to that output's scale (ExportError otherwise,
naming the output and the difference). The engine is built where TensorRT is
installed; elsewhere ``tensorrt_message`` says how to get it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwprune.config import DEFAULT_OPSET
from hwprune.errors import ExportError, WriteError
from hwprune.export.onnx import export_onnx, resolve_inputs, simplify
from hwprune.files import write_atomic

log = logging.getLogger(__name__)

__all__ = [
    "TENSORRT_HINT",
    "ExportResult",
    "OutputParity",
    "compare_with_torch",
    "final_export",
    "parity",
    "simplify",
]

TENSORRT_HINT = (
    'TensorRT is not installed; for a TensorRT engine run: pip install "hwprune[tensorrt]"'
)


#: An export whose error against torch in float64 is within this many times torch's own
#: float32 error is as faithful as torch itself (see ``OutputParity.faithful``).
FLOAT64_FACTOR = 10.0


@dataclass(frozen=True)
class OutputParity:
    """How closely ONNX Runtime reproduced one torch output, over every trial."""

    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float  # max(1, max |torch output|) over the trials
    # Against torch in float64 (computed only when the float32 comparison fails), in the
    # worst trial: how far ONNX Runtime and torch's own float32 result each are from it,
    # relative to that trial's scale.
    onnx_vs_float64: float | None = None
    torch_vs_float64: float | None = None
    # The largest difference of one trial relative to that trial's scale (None: the
    # figures above are one trial's, and max_abs_diff / scale is it).
    worst_rel_diff: float | None = None
    # For an output whose size depends on the input's values: the node it follows. It is
    # not compared (its figures are 0); the tensors before that node are, as outputs of
    # their own named "path[i] (before ...)" (hwprune.export.before_steps).
    follows: str | None = None

    @property
    def rel_diff(self) -> float:
        """The difference judged against ``atol``: each trial relative to its own output's
        scale, so that a trial of large outputs does not excuse one of small outputs."""
        if self.worst_rel_diff is not None:
            return self.worst_rel_diff
        return self.max_abs_diff / self.scale

    def faithful(self, atol: float) -> bool:
        """ONNX Runtime matches torch within ``atol``, or is as close to float64 as torch itself.

        Where a model amplifies float32 rounding (activations of 1e5 cancelling to a small
        output: BN statistics estimated on data narrower than the random check inputs),
        torch's float32 result is itself far from the exact one, and a difference from it
        says nothing about the export. Then the export is judged against torch in float64:
        faithful when its error is within ``FLOAT64_FACTOR`` times torch's own.
        """
        if self.follows is not None or self.rel_diff <= atol:
            return True
        if self.onnx_vs_float64 is None or self.torch_vs_float64 is None:
            return False
        return self.onnx_vs_float64 <= max(atol, FLOAT64_FACTOR * self.torch_vs_float64)


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely ONNX Runtime matched torch.

    ``max_abs_diff`` is the largest absolute difference over every output;
    ``max_rel_diff`` the largest relative to its output's scale (the gate);
    ``outputs`` the per-output figures, in ONNX output order.
    """

    onnx_path: Path
    engine_path: Path | None
    max_abs_diff: float
    simplified: bool
    opset: int
    tensorrt_message: str
    max_rel_diff: float = 0.0
    outputs: tuple[OutputParity, ...] = ()
    input_names: tuple[str, ...] = ()


def check_inputs(inputs: Any, *, seed: int, trial: int) -> Any:
    """The parity check's ``trial``-th random inputs of ``inputs``' form, seeded.

    Float inputs cycle through three kinds of draw: standard normal, small (N(0, 0.1^2))
    and non-negative (uniform in [0, 1), like images). A graph that recorded one branch of
    data-dependent control flow, or an input-derived value as a constant, is right for the
    inputs that took it; inputs of another scale or sign are the ones likely to take the
    other (a threshold on a mean activation). Integer and boolean inputs are drawn as
    ``ExampleInputs.random`` draws them.
    """
    import torch

    x = inputs.random(seed + trial)
    kind = trial % 3
    if kind == 0:
        return x
    g = torch.Generator().manual_seed(seed + trial)
    drawn = []
    for t in x.tensors:
        if t.dtype.is_floating_point:
            t = 0.1 * t if kind == 1 else torch.rand(t.shape, generator=g).to(t.dtype)
        drawn.append(t)
    return x._with(drawn)


def parity(
    module: Any,
    onnx_bytes: bytes,
    *,
    example_inputs: Any = None,
    input_shape: tuple[int, ...] | None = None,
    trials: int = 3,
    seed: int = 0,
    atol: float | None = None,
) -> tuple[OutputParity, ...]:
    """ONNX Runtime against torch on every output, over ``trials`` random inputs of the example's form.

    The inputs are ``check_inputs``' draws (normal, small, non-negative). With ``atol``,
    an output whose difference relative to its scale exceeds it is also compared with
    torch in float64 (``OutputParity.faithful``). Raises ExportError when
    the ONNX graph's outputs are not the torch outputs (a different count or shape):
    such a graph is not that model.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from hwprune.export.before_steps import data_dependent_outputs
    from hwprune.inputs import flatten_outputs, output_scale

    inputs = resolve_inputs(example_inputs, input_shape, what="the parity check").to("cpu")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
    )
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    steps = data_dependent_outputs(proto := onnx.load_from_string(onnx_bytes), inputs.shapes)
    module = module.to("cpu").eval()
    worst: dict[int, tuple[float, float, float]] = {}  # max |diff|, max scale, max relative
    shapes: dict[int, tuple[int, ...]] = {}
    for trial in range(trials):
        x = check_inputs(inputs, seed=seed, trial=trial)
        with torch.no_grad():
            expected = flatten_outputs(x.call(module))
        if len(expected) != len(graph_outputs):
            raise ExportError(
                f"the ONNX graph has {len(graph_outputs)} outputs but the torch model returns "
                f"{len(expected)} tensors; the export is not that model"
            )
        feed = {n: v for n, v in x.numpy_feed().items() if n in graph_inputs}
        got = session.run(None, feed)
        for i, ((_, want), have) in enumerate(zip(expected, got, strict=True)):
            want_np = want.detach().float().numpy()
            shapes[i] = tuple(int(s) for s in want_np.shape)
            if graph_outputs[i] in steps:
                continue  # checked before the step that sets its size, below
            if tuple(have.shape) != tuple(want_np.shape):
                raise ExportError(
                    f"ONNX output {graph_outputs[i]!r} has shape {tuple(have.shape)} but torch's "
                    f"has {tuple(want_np.shape)}; the export is not that model"
                )
            diff = (
                float(np.max(np.abs(have.astype(np.float64) - want_np.astype(np.float64))))
                if have.size
                else 0.0
            )
            if not np.isfinite(diff):
                diff = float("inf")
            prev = worst.get(i, (0.0, 1.0, 0.0))
            scale = output_scale(want)
            rel = diff / scale
            rel = math.inf if math.isnan(rel) else rel  # inf / inf: nothing to vouch for
            worst[i] = (max(prev[0], diff), max(prev[1], scale), max(prev[2], rel))
    found = tuple(
        _output_parity(graph_outputs[i], shapes[i], figures, follows=steps.get(graph_outputs[i]))
        for i, figures in sorted({**{i: (0.0, 1.0, 0.0) for i in shapes}, **worst}.items())
    )
    if atol is not None and any(p.rel_diff > atol for p in found):
        found = _against_float64(
            module, session, found, inputs, trials=trials, seed=seed, atol=atol
        )
    return found + _before(module, proto, inputs, steps=steps, trials=trials, seed=seed)


def _before(
    module: Any, proto: Any, inputs: Any, *, steps: dict[str, str], trials: int, seed: int
) -> tuple[OutputParity, ...]:
    """The submodule outputs compared before the steps whose output size follows the input's
    values (``hwprune.export.before_steps``); none where there are no such steps."""
    from hwprune.export.before_steps import check_before

    if not steps:
        return ()
    draws = [check_inputs(inputs, seed=seed, trial=t) for t in range(trials)]
    before = check_before(module, proto, inputs, draws=draws, steps=steps)
    step = " or ".join(sorted(set(steps.values())))
    return tuple(
        _output_parity(f"{k} (before {step})", sh, (d, sc, r)) for k, sh, d, sc, r in before
    )


def _output_parity(
    name: str,
    shape: tuple[int, ...],
    figures: tuple[float, float, float],
    *,
    follows: str | None = None,
) -> OutputParity:
    """One output's figures (max |diff|, scale, worst relative); an output whose size follows
    the input's values is not compared (checked before that step instead)."""
    if follows is not None:
        return OutputParity(name, shape, 0.0, 1.0, follows=follows)
    diff, scale, rel = figures
    return OutputParity(name, shape, diff, scale, worst_rel_diff=rel)


def _against_float64(
    module: Any,
    session: Any,
    found: tuple[OutputParity, ...],
    inputs: Any,
    *,
    trials: int,
    seed: int,
    atol: float,
) -> tuple[OutputParity, ...]:
    """``found`` with each output's distance of ONNX Runtime and of torch float32 to torch float64.

    Judged draw by draw: the figures kept for an output are those of its worst draw among
    the draws where ONNX Runtime is past ``atol`` from torch float32 (worst: the largest
    ONNX error for the error torch itself makes there). A draw where torch float32 is far
    from float64 (rounding amplified) says nothing about another draw, where ONNX Runtime
    may be wrong while torch is exact: taking each figure's maximum over all draws would
    let the first excuse the second.
    """
    import copy

    import numpy as np
    import torch

    from hwprune.inputs import flatten_outputs, output_scale

    try:
        exact = copy.deepcopy(module).double()
    except Exception as exc:  # a module that cannot be copied or cast: the float32 verdict holds
        log.info("no float64 reference for the parity check: %s", _first_line(exc))
        return found
    graph_inputs = [i.name for i in session.get_inputs()]
    # Per output: (how far past its allowance the worst draw is, its onnx and torch errors).
    worst: list[tuple[float, float, float] | None] = [None] * len(found)
    for trial in range(trials):
        x = check_inputs(inputs, seed=seed, trial=trial)
        x64 = x._with([t.double() if t.dtype.is_floating_point else t for t in x.tensors])
        try:
            with torch.no_grad():
                ref = flatten_outputs(x64.call(exact))
                f32 = flatten_outputs(x.call(module))
        except Exception as exc:  # an op without a float64 kernel: the float32 verdict holds
            log.info("no float64 reference for the parity check: %s", _first_line(exc))
            return found
        feed = {n: v for n, v in x.numpy_feed().items() if n in graph_inputs}
        got = session.run(None, feed)
        for i, ((_, r), (_, t), o) in enumerate(zip(ref, f32, got, strict=True)):
            if not o.size or found[i].follows is not None:
                continue  # an output whose size follows the input's values is judged before
            scale = output_scale(t)
            r64 = r.detach().double().numpy()
            t64 = t.detach().double().numpy()
            o64 = o.astype(np.float64)
            if float(np.max(np.abs(o64 - t64))) / scale <= atol:
                continue  # this draw passes on its own
            onnx_err = _finite(float(np.max(np.abs(o64 - r64))) / scale)
            torch_err = _finite(float(np.max(np.abs(t64 - r64))) / scale)
            excess = onnx_err / max(atol, FLOAT64_FACTOR * torch_err)
            if worst[i] is None or excess > worst[i][0]:
                worst[i] = (excess, onnx_err, torch_err)
    return tuple(
        p if w is None else dataclasses.replace(p, onnx_vs_float64=w[1], torch_vs_float64=w[2])
        for p, w in zip(found, worst, strict=True)
    )


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("inf")


def compare_with_torch(
    module: Any,
    onnx_bytes: bytes,
    *,
    input_shape: tuple[int, ...] | None = None,
    example_inputs: Any = None,
    trials: int = 3,
    seed: int = 0,
) -> float:
    """Largest absolute difference between torch and ONNX Runtime over every output, random inputs."""
    found = parity(
        module,
        onnx_bytes,
        example_inputs=example_inputs,
        input_shape=input_shape,
        trials=trials,
        seed=seed,
    )
    return max((p.max_abs_diff for p in found), default=0.0)


def _export(module: Any, inputs: Any, opset: int, *, allow_trace_warnings: bool) -> bytes:
    try:
        return export_onnx(
            module, example_inputs=inputs, opset=opset, allow_trace_warnings=allow_trace_warnings
        )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"the model cannot be exported to ONNX: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def final_export(
    module: Any,
    *,
    onnx_path: str | Path,
    input_shape: tuple[int, ...] | None = None,
    example_inputs: Any = None,
    engine_path: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-3,
    seed: int = 0,
    precision: str = "fp32",
    allow_trace_warnings: bool = False,
) -> ExportResult:
    """Export ``module`` to ONNX (checked, simplified, compared with torch) and TensorRT where installed.

    ``example_inputs`` (a tensor, tuple or dict of tensors) or ``input_shape``
    (one float input) fix the graph's inputs. Every output is compared with
    torch on random inputs of the same form; the largest difference relative
    to the output's scale (max(1, max |output|)) must be within ``atol``, or
    ExportError is raised and nothing is written. A forward that decides on its input's
    values is refused unless ``allow_trace_warnings`` (see ``export_onnx``); the
    comparison holds either way.
    """
    import onnx

    inputs = resolve_inputs(example_inputs, input_shape, what="final_export")
    onnx_bytes = _export(
        module,
        example_inputs if example_inputs is not None else inputs,
        opset,
        allow_trace_warnings=allow_trace_warnings,
    )
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX fails onnx's checker: {_first_line(exc)}") from exc
    onnx_bytes, simplified = simplify(onnx_bytes)
    found = parity(module, onnx_bytes, example_inputs=inputs, seed=seed, atol=atol)
    _judge_parity(found, atol=atol)
    diff = max((p.max_abs_diff for p in found if p.follows is None), default=0.0)
    rel = max((p.rel_diff for p in found if p.follows is None), default=0.0)
    try:
        onnx_path = write_atomic(onnx_path, onnx_bytes, what="the ONNX file")
    except WriteError as exc:  # an export's failures are ExportErrors, this one too
        raise ExportError(str(exc)) from exc
    log.info("wrote %s (max |onnx - torch| = %.3g, relative %.3g)", onnx_path, diff, rel)

    engine_out, message = _engine(onnx_bytes, engine_path, inputs=inputs, precision=precision)
    return ExportResult(
        onnx_path=onnx_path,
        engine_path=engine_out,
        max_abs_diff=diff,
        simplified=simplified,
        opset=opset,
        tensorrt_message=message,
        max_rel_diff=rel,
        outputs=found,
        input_names=tuple(inputs.names),
    )


def _judge_parity(found: Sequence[OutputParity], *, atol: float) -> None:
    """ExportError for the worst output that is not faithful (``OutputParity.faithful``); a
    warning for one beyond ``atol`` of torch float32 that is as close to float64 as torch."""
    unfaithful = [p for p in found if not p.faithful(atol)]
    if unfaithful:
        bad = max(unfaithful, key=lambda p: p.rel_diff)
        own = (
            f"; against torch in float64 it is {bad.onnx_vs_float64:.3g} off, torch's own "
            f"float32 result {bad.torch_vs_float64:.3g}"
            if bad.onnx_vs_float64 is not None
            else ""
        )
        raise ExportError(
            f"ONNX Runtime's output {bad.name!r} differs from torch's by up to "
            f"{bad.max_abs_diff:.3g} (scale {bad.scale:.3g}, relative {bad.rel_diff:.3g}, "
            f"tolerance {atol:g}{own}); the export is not faithful"
        )
    for p in found:
        if p.rel_diff > atol:
            log.warning(
                "output %r: ONNX Runtime differs from torch float32 by %.3g relative, but torch "
                "float32 is itself %.3g off torch float64 and ONNX Runtime %.3g: the model "
                "amplifies rounding at these inputs; the export is as faithful as torch",
                p.name, p.rel_diff, p.torch_vs_float64, p.onnx_vs_float64,
            )  # fmt: skip


def _engine(
    onnx_bytes: bytes, engine_path: str | Path | None, *, inputs: Any, precision: str
) -> tuple[Path | None, str]:
    """The TensorRT engine written to ``engine_path`` where TensorRT is installed (None and
    why not, otherwise), and the line the report shows."""
    engine_out: Path | None = None
    if engine_path is None:
        message = "no TensorRT engine requested"
    elif importlib.util.find_spec("tensorrt") is None:
        message = TENSORRT_HINT
    else:
        from oracles.trt import build_engine

        engine = build_engine(onnx_bytes, input_shapes=inputs.shapes, precision=precision)
        try:
            engine_out = write_atomic(engine_path, engine, what="the TensorRT engine")
        except WriteError as exc:
            raise ExportError(str(exc)) from exc
        message = f"TensorRT engine written to {engine_out}"
    return engine_out, message

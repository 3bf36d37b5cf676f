"""The deliverable export: ONNX checked, simplified and compared with torch; a TensorRT engine where possible.

``final_export(module, input_shape=..., onnx_path=...)`` writes the ONNX file
only after onnx's checker accepts it and ONNX Runtime reproduces the torch
outputs on random inputs within ``atol`` (ExportError otherwise, with the
maximum absolute difference). The engine is built where TensorRT is
installed; elsewhere ``tensorrt_message`` says how to get it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwprune.errors import ExportError

log = logging.getLogger(__name__)

__all__ = ["ExportResult", "final_export", "simplify", "compare_with_torch", "TENSORRT_HINT"]

TENSORRT_HINT = (
    'TensorRT is not installed; for a TensorRT engine run: pip install "hwprune[tensorrt]"'
)


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely ONNX Runtime matched torch."""

    onnx_path: Path
    engine_path: Path | None
    max_abs_diff: float
    simplified: bool
    opset: int
    tensorrt_message: str


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


def compare_with_torch(
    module: Any, onnx_bytes: bytes, *, input_shape: tuple[int, ...], trials: int = 3, seed: int = 0
) -> float:
    """Largest absolute difference between torch and ONNX Runtime outputs on random inputs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    g = torch.Generator().manual_seed(seed)
    module = module.to("cpu").eval()
    worst = 0.0
    for _ in range(trials):
        x = torch.randn(*input_shape, generator=g)
        with torch.no_grad():
            expected = module(x)
        if isinstance(expected, (tuple, list)):
            expected = expected[0]
        got = session.run(None, {name: x.numpy()})[0]
        diff = float(np.max(np.abs(got - expected.numpy()))) if got.size else 0.0
        worst = max(worst, diff)
    return worst


def _export(module: Any, input_shape: tuple[int, ...], opset: int) -> bytes:
    from hwprune.export.onnx import export_onnx

    try:
        return export_onnx(module, input_shape=input_shape, opset=opset)
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
    input_shape: tuple[int, ...],
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    opset: int = 17,
    atol: float = 1e-3,
    seed: int = 0,
    precision: str = "fp32",
) -> ExportResult:
    """Export ``module`` to ONNX (checked, simplified, compared with torch) and TensorRT where installed."""
    import onnx

    onnx_bytes = _export(module, tuple(input_shape), opset)
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX fails onnx's checker: {_first_line(exc)}") from exc
    onnx_bytes, simplified = simplify(onnx_bytes)
    diff = compare_with_torch(module, onnx_bytes, input_shape=tuple(input_shape), seed=seed)
    if not diff <= atol:
        raise ExportError(
            f"ONNX Runtime's outputs differ from torch's by up to {diff:.3g} (tolerance {atol:g}); "
            "the export is not faithful"
        )
    onnx_path = Path(onnx_path)
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    try:
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(onnx_bytes)
        tmp.replace(onnx_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        raise ExportError(f"cannot write the ONNX file {str(onnx_path)!r}: {exc}") from exc
    log.info("wrote %s (max |onnx - torch| = %.3g)", onnx_path, diff)

    engine_out: Path | None = None
    if engine_path is None:
        message = "no TensorRT engine requested"
    elif importlib.util.find_spec("tensorrt") is None:
        message = TENSORRT_HINT
    else:
        from oracles.trt import build_engine

        engine = build_engine(
            onnx_bytes, input_shapes={"input": tuple(input_shape)}, precision=precision
        )
        engine_out = Path(engine_path)
        engine_out.write_bytes(engine)
        message = f"TensorRT engine written to {engine_out}"
    return ExportResult(
        onnx_path=onnx_path,
        engine_path=engine_out,
        max_abs_diff=diff,
        simplified=simplified,
        opset=opset,
        tensorrt_message=message,
    )

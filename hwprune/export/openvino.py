"""OpenVINO IR of a verified ONNX model, checked against torch (or ONNX Runtime) before it is kept.

``export_openvino(onnx, out_dir, module=...)`` converts the ONNX model with
``openvino.convert_model``, writes ``<name>.xml`` / ``<name>.bin`` with
``openvino.save_model`` (FP32 weights unless ``compress_to_fp16``), reads the
written IR back, runs it on OpenVINO's CPU at FP32 on seeded random inputs and
compares its outputs with the torch module's (or, without a module, with ONNX
Runtime's on the same ONNX). Beyond ``atol`` it raises ExportError and leaves
``out_dir`` as it was.

A prune run calls it after the ONNX export when a budget's oracle ships an
OpenVINO IR (``oracles.capabilities(spec).export_format == "openvino-ir"``),
with the run's example inputs (any form: one tensor, a tuple, named tensors;
random inputs of that form feed both sides)::

    if any(oracles.capabilities(s).export_format == "openvino-ir" for s in budget_specs):
        export_openvino(onnx_path, run_dir / "openvino", module=model,
                        example_inputs=example_inputs)
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwprune.errors import ConfigError, ExportError
from hwprune.files import write_error
from oracles.openvino import first_line as _first_line

log = logging.getLogger(__name__)

__all__ = [
    "OpenVINOExportResult",
    "export_openvino",
    "require_openvino",
    "OPENVINO_HINT",
]

OPENVINO_HINT = 'OpenVINO is not installed; for an OpenVINO IR run: pip install "hwprune[openvino]"'


@dataclass(frozen=True)
class OpenVINOExportResult:
    """Where the IR went and how closely OpenVINO reproduced the reference outputs."""

    xml_path: Path
    bin_path: Path
    max_abs_diff: float
    reference: str  # "torch" or "onnxruntime"
    openvino_version: str
    fp16_weights: bool


def require_openvino() -> Any:
    """The openvino module; ExportError naming the extra where it is not installed."""
    try:
        import openvino
    except ImportError as exc:
        raise ExportError(OPENVINO_HINT) from exc
    return openvino


def _onnx_bytes(onnx_model: bytes | str | Path) -> bytes:
    if isinstance(onnx_model, (bytes, bytearray, memoryview)):
        return bytes(onnx_model)
    path = Path(onnx_model)
    if not path.is_file():
        raise ConfigError(f"no ONNX file at {path}; give the path of a .onnx file or its bytes")
    return path.read_bytes()


def _reference_outputs(
    onnx_bytes: bytes, module: Any, feed: dict[str, Any], names: Sequence[str], example: Any
) -> list[Any]:
    import numpy as np

    if module is not None and example is not None:  # the user's call form, flattened as exported
        import torch

        from hwprune.inputs import flatten_outputs

        with torch.no_grad():
            return [v.detach().float().numpy() for _, v in flatten_outputs(example.call(module))]
    if module is None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(
            onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        return [np.asarray(x) for x in session.run(None, feed)]
    import torch

    module = module.to("cpu").eval()
    with torch.no_grad():
        out = module(*(torch.from_numpy(feed[n]) for n in names))
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o.detach().numpy() for o in outs]


def _max_abs_diff(
    xml: Path,
    onnx_bytes: bytes,
    module: Any,
    shapes: dict[str, tuple[int, ...]],
    *,
    inputs: Any,
    trials: int,
    seed: int,
) -> float:
    import numpy as np
    import openvino.properties as props
    import openvino.properties.hint as hints

    ov = require_openvino()
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(xml)),
        "CPU",
        {props.inference_num_threads: 1, hints.inference_precision: ov.Type.f32},
    )
    names = [p.get_any_name() for p in compiled.inputs]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for trial in range(trials):
        example = None
        if inputs is not None:  # the example's form: integer inputs stay valid ids
            example = inputs.random(seed + trial)
            feed = {n: v for n, v in example.numpy_feed().items() if n in names}
        else:
            feed = {n: rng.standard_normal(shapes[n], dtype=np.float32) for n in names}
        got = compiled(feed)
        got_list = [np.asarray(got[p]) for p in compiled.outputs]
        expected = _reference_outputs(onnx_bytes, module, feed, names, example)
        if len(expected) != len(got_list):
            raise ExportError(
                f"the OpenVINO IR has {len(got_list)} outputs, the reference "
                f"{len(expected)}; the export is not faithful"
            )
        for a, b in zip(got_list, expected, strict=True):
            if a.shape != b.shape:
                raise ExportError(
                    f"the OpenVINO IR's output shape {a.shape} differs from the reference "
                    f"{b.shape}; the export is not faithful"
                )
            if a.size:
                diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                worst = diff if not np.isfinite(diff) else max(worst, diff)
    return worst


def export_openvino(
    onnx_model: bytes | str | Path,
    out_dir: str | Path,
    *,
    module: Any = None,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    name: str = "model",
    atol: float = 1e-3,
    trials: int = 3,
    seed: int = 0,
    compress_to_fp16: bool = False,
) -> OpenVINOExportResult:
    """Write the OpenVINO IR of ``onnx_model`` to ``out_dir`` once it reproduces the reference.

    ``onnx_model`` is the verified ONNX (bytes or a path); ``module`` the torch
    model it came from (the reference; without it ONNX Runtime on the same ONNX
    is). ``input_shape`` fixes a single input's shape where the ONNX has a
    dynamic one; ``example_inputs`` (a tensor, a tuple or a dict of tensors, as
    the module is called) fixes every input's shape and the form of the random
    inputs, the way the ONNX export's check draws them. Raises ExportError when
    OpenVINO is missing, the conversion fails, or an output differs by more
    than ``atol``.
    """
    from oracles.model import fix_input_shapes, graph_inputs, load_onnx

    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"name must be a plain file name such as 'model', got {name!r}")
    if not atol >= 0:
        raise ConfigError(f"atol must be 0 or more, got {atol}")
    ov = require_openvino()
    data = _onnx_bytes(onnx_model)
    given = {"input": tuple(int(s) for s in input_shape)} if input_shape is not None else None
    inputs = None
    if example_inputs is not None:
        from hwprune.export.onnx import resolve_inputs

        inputs = resolve_inputs(example_inputs, None, what="the OpenVINO check").to("cpu")
    try:
        if inputs is not None:  # graph inputs only: the ONNX export drops unused ones
            present = {i.name for i in graph_inputs(load_onnx(data))}
            given = {n: s for n, s in inputs.shapes.items() if n in present}
        proto, shapes = fix_input_shapes(data, given)
    except Exception as exc:
        raise ExportError(f"cannot read the ONNX model: {_first_line(exc)}") from exc
    data = proto.SerializeToString()
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        xml, weights, diff, reference = _convert_and_check(
            ov,
            data,
            out,
            name=name,
            module=module,
            shapes=shapes,
            inputs=inputs,
            atol=atol,
            trials=trials,
            seed=seed,
            compress_to_fp16=compress_to_fp16,
        )
    except BaseException:
        if created:  # a refused export leaves no empty folder behind
            out.rmdir()
        raise
    log.info("wrote %s (max |openvino - %s| = %.3g)", xml, reference, diff)
    return OpenVINOExportResult(
        xml_path=xml,
        bin_path=weights,
        max_abs_diff=diff,
        reference=reference,
        openvino_version=ov.__version__,
        fp16_weights=compress_to_fp16,
    )


def _convert_and_check(
    ov: Any,
    data: bytes,
    out: Path,
    *,
    name: str,
    module: Any,
    shapes: dict[str, tuple[int, ...]],
    inputs: Any,
    atol: float,
    trials: int,
    seed: int,
    compress_to_fp16: bool,
) -> tuple[Path, Path, float, str]:
    with tempfile.TemporaryDirectory(dir=out, prefix=".openvino-") as tmp:
        staging = Path(tmp)
        onnx_file = staging / "source.onnx"
        try:
            onnx_file.write_bytes(data)
        except OSError as exc:  # the staging folder goes with the error
            raise ExportError(
                str(write_error(out, exc, size=len(data), what="the OpenVINO IR in"))
            ) from exc
        try:
            ov_model = ov.convert_model(str(onnx_file))
            ov.save_model(ov_model, str(staging / f"{name}.xml"), compress_to_fp16=compress_to_fp16)
        except Exception as exc:
            raise ExportError(f"OpenVINO cannot convert the model: {_first_line(exc)}") from exc
        try:
            diff = _max_abs_diff(
                staging / f"{name}.xml",
                data,
                module,
                shapes,
                inputs=inputs,
                trials=trials,
                seed=seed,
            )
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"the OpenVINO IR cannot be run: {_first_line(exc)}") from exc
        reference = "torch" if module is not None else "onnxruntime"
        if not diff <= atol:
            raise ExportError(
                f"OpenVINO's outputs differ from {reference}'s by up to {diff:.3g} "
                f"(tolerance {atol:g}); the export is not faithful"
            )
        xml, weights = out / f"{name}.xml", out / f"{name}.bin"
        # The .bin first: a reader that finds the .xml finds its weights beside it.
        (staging / f"{name}.bin").replace(weights)
        (staging / f"{name}.xml").replace(xml)
    return xml, weights, diff, reference

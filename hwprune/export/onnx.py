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

from hwprune.errors import ExportError

log = logging.getLogger(__name__)

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

_OPERATOR = re.compile(r"operator '?([\w.:]+)'?", re.IGNORECASE)
_ATEN = re.compile(r"\b(aten::\w+|prim::\w+|onnx::\w+)")


def _operator_in(message: str) -> str | None:
    found = _OPERATOR.search(message) or _ATEN.search(message)
    return found.group(1) if found else None


def export_onnx(
    model,
    *,
    input_shape: Sequence[int],
    path: str | Path | None = None,
    opset: int = 17,
    check: bool = True,
) -> bytes:
    """The ONNX bytes of ``model`` for one fixed input shape (input "input", output "logits").

    The module is exported in eval mode on the CPU; its own mode and device
    are left as they were (a module on another device is copied to the CPU).
    ``check`` runs onnx's checker. ``path``, when given, receives the bytes
    too. An operator the exporter cannot express raises ExportError naming it.

    Example::

        data = export_onnx(space.apply(policy), input_shape=(1, 3, 32, 32))
    """
    import onnx
    import torch

    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ExportError(f"input_shape must be positive sizes such as (1, 3, 32, 32), got {shape}")
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"expected a torch.nn.Module to export, got {type(model).__name__}")

    on_cpu = all(t.device.type == "cpu" for t in model.state_dict().values())
    module = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = module.training
    module.eval()
    example = torch.zeros(shape)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo; chosen on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    (example,),
                    buffer,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=int(opset),
                    dynamo=False,
                    do_constant_folding=True,
                )
    except Exception as exc:  # the exporter raises several unrelated types
        op = _operator_in(str(exc))
        what = f"operator {op}" if op else type(exc).__name__
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ExportError(
            f"cannot export {type(model).__name__} to ONNX opset {opset}: {what} is not "
            f"supported ({first})"
        ) from exc
    finally:
        module.train(was_training)

    data = buffer.getvalue()
    if check:
        try:
            onnx.checker.check_model(onnx.load_from_string(data))
        except Exception as exc:
            raise ExportError(f"the exported ONNX model fails onnx's checker: {exc}") from exc
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    log.debug("exported %s: %d bytes, opset %d", type(model).__name__, len(data), opset)
    return data

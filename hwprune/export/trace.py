"""What a traced ONNX export cannot keep: Python decisions on values computed from the input.

The TorchScript exporter runs the model once and records the tensor operations it sees.
A tensor turned into a Python value on the way (``if y.mean() > 0.1``, ``float(t)``,
``t.item()``, ``range(int(t))``, a list indexed by a tensor) leaves no operation behind:
the graph keeps the branch, or the constant, of that one example input, and for inputs
that would decide otherwise ONNX and torch silently differ.

torch warns (``TracerWarning``) on every such conversion, but also on those that are
harmless for a fixed-shape export: shape checks (``torch._assert(h == self.image_size)``
in torchvision's ViT, ``F.multi_head_attention_forward``), sizes used as indices, and
values derived from parameters alone (the same for every input). The warning's text is
the same for both ("Converting a tensor to a Python boolean ..."), so it cannot tell them
apart. ``watch_values`` looks at the tensor itself instead: while the exporter traces, it
follows the converted tensor back through the recorded graph, and only a value that
reaches one of the model's inputs other than through its shape (``aten::size`` ...) is a
decision the export cannot keep.

Example::

    with watch_values(n_inputs=1) as watch:
        torch.onnx.export(model, (x,), buffer, dynamo=False)
    if watch.found:
        raise ExportError(watch.found[0].message())
"""

from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["OPTION", "DataDependence", "watch_values"]

# The option a user passes to accept such an export knowingly (PruneConfig field, CLI flag).
OPTION = "allow_trace_warnings=True (--allow-trace-warnings)"

# Graph operations whose output depends only on their input's shape, never its values.
_SHAPE_OPS = frozenset(
    {"aten::size", "aten::sym_size", "aten::numel", "aten::sym_numel", "aten::dim",
     "prim::shape", "aten::len"}
)  # fmt: skip
# Operations whose first input contributes only its shape, dtype and device.
_LIKE_OPS = frozenset(
    {"aten::zeros_like", "aten::ones_like", "aten::empty_like", "aten::full_like",
     "aten::rand_like", "aten::randn_like", "aten::new_zeros", "aten::new_ones",
     "aten::new_empty", "aten::new_full"}
)  # fmt: skip


@dataclass(frozen=True)
class DataDependence:
    """One place where the forward turned a tensor computed from its input into Python."""

    kind: str  # "bool" (a branch), "number", "index", "list"
    filename: str
    lineno: int
    function: str  # "Module.forward" or the function's name

    @property
    def code(self) -> str:
        line = linecache.getline(self.filename, self.lineno).strip()
        return line[:-1].rstrip() if line.endswith(":") else line

    @property
    def location(self) -> str:
        path = self.filename
        try:
            rel = os.path.relpath(path)
            if not rel.startswith(".."):
                path = rel
        except ValueError:  # another drive (Windows)
            pass
        return f"{path}:{self.lineno} in {self.function}"

    def message(self, *, others: int = 0, accepted: bool = False) -> str:
        """One line: what, where (file:line, the code), why it matters, the way out (or, when
        ``accepted``, that it was accepted)."""
        code = f" (`{self.code}`)" if self.code else ""
        more = f" (and {others} more place{'s' if others > 1 else ''})" if others else ""
        if self.kind == "bool":
            what = f"has data-dependent control flow at {self.location}{code}{more}"
            why = (
                "an ONNX export records only the branch the example input takes, and inputs "
                "that take the other get other outputs than torch's"
            )
            fix = "compute both branches and pick with torch.where"
        else:
            what = (
                f"turns a tensor computed from its input into a Python {self.kind} at "
                f"{self.location}{code}{more}"
            )
            why = (
                "an ONNX export records the example input's value as a constant, and other "
                "inputs get other outputs than torch's"
            )
            fix = "keep the value a tensor"
        if accepted:
            return f"the model's forward {what}: {why} (accepted: allow_trace_warnings)"
        return f"the model's forward {what}: {why}; {fix}, or pass {OPTION} to accept it"


def _conversions() -> dict[Any, str]:
    import torch

    t = torch.Tensor
    return {
        t.__bool__: "bool",
        t.item: "number",
        t.__int__: "number",
        t.__float__: "number",
        t.__complex__: "number",
        t.__index__: "index",
        t.tolist: "list",
        t.numpy: "list",
    }


def _skipped_dirs() -> tuple[str, ...]:
    import torch

    # torch's own frames (torch._assert, Tensor methods) are not where the user decides.
    return (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def _caller(frame: Any) -> tuple[str, int, str]:
    skipped = _skipped_dirs()
    first = frame
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        frame = frame.f_back
    frame = frame or first
    owner = frame.f_locals.get("self")
    name = frame.f_code.co_name
    if owner is not None and hasattr(owner, "forward"):
        name = f"{type(owner).__name__}.{name}"
    return frame.f_code.co_filename, frame.f_lineno, name


def _reaches_input(value: Any, inputs: set[int]) -> bool:
    """Whether the traced ``value`` depends on the values (not only the shape) of an input."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        key = v.unique()
        if key in seen:
            continue
        seen.add(key)
        if key in inputs:
            return True
        node = v.node()
        kind = node.kind()
        if kind in _SHAPE_OPS:
            continue
        args = list(node.inputs())
        stack.extend(args[1:] if kind in _LIKE_OPS else args)
    return False


def watch_values(*, n_inputs: int) -> Any:
    """A TorchFunctionMode (made here: torch is imported lazily) that records each conversion of an input-derived tensor to Python
    while a trace is recorded (``found``: DataDependence, in order, one per code line).

    ``n_inputs``: how many of the traced graph's first inputs are the model's inputs (the
    exporter appends the parameters after them).
    """
    from torch.overrides import TorchFunctionMode

    class _ValueWatch(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[DataDependence] = []
            self._kinds = _conversions()
            self._lines: set[tuple[str, int]] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kind = self._kinds.get(func)
            if kind is not None and args:
                self._check(kind, args[0])
            return func(*args, **(kwargs or {}))

        def _check(self, kind: str, tensor: Any) -> None:
            import torch

            if not torch._C._is_tracing() or not isinstance(tensor, torch.Tensor):
                return
            try:
                value = torch._C._get_value_trace(tensor)
                graph = torch._C._get_tracing_state().graph()
            except RuntimeError:  # a tensor the trace never saw: a constant to it
                return
            inputs = {v.unique() for v in list(graph.inputs())[:n_inputs]}
            if not _reaches_input(value, inputs):
                return
            filename, lineno, function = _caller(sys._getframe(2))
            if (filename, lineno) in self._lines:
                return
            self._lines.add((filename, lineno))
            self.found.append(DataDependence(kind, filename, lineno, function))

    return _ValueWatch()

"""A model's example inputs and outputs, whatever their shape: one tensor, several, or named ones.

Tracing (Torch-Pruning), MAC counting, ONNX export and the parity check all
need to call the model and to name what goes in and out. ``ExampleInputs``
holds the inputs once, with the names the ONNX graph gets; ``flatten_outputs``
lists a model's outputs (a tensor, a nested tuple/list, a dict) in the order
the ONNX exporter writes them, with their names.

Example::

    inputs = ExampleInputs.from_user({"image": torch.randn(1, 3, 64, 64), "mask": m})
    inputs.names                  # ("image", "mask"): the ONNX input names
    out = inputs.call(model)      # model(image=..., mask=...)
    flatten_outputs(out)          # [("logits", t1), ("boxes", t2)] for a dict output
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hwprune.errors import ConfigError

__all__ = ["ExampleInputs", "check_model_device", "flatten_outputs", "none_output"]

KINDS = ("tensor", "tuple", "list", "dict")
#: Where a model's tensors and its example inputs must live: devices that hold data (not
#: ``meta``, whose tensors have shapes and no values) and that hwprune runs on.
REAL_DEVICES = ("cpu", "cuda")
SINGLE_INPUT = "input"
SINGLE_OUTPUT = "output"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"unknown tensor dtype {name!r} in example inputs")
    return dtype


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


@dataclass(frozen=True, eq=False)
class ExampleInputs:
    """The inputs a model is called with: one tensor, a tuple of tensors, a list, or named tensors.

    ``kind`` is "tensor" (called as ``model(x)``, ONNX input "input"), "tuple"
    (``model(*xs)``, inputs "input_0", "input_1", ...), "list" (``model([x0, x1])``, one
    list argument as torchvision's detectors take their images; inputs "input_0", ...) or
    "dict" (``model(**named)``, inputs named by the keys). ``ranges`` holds, for each
    integer input, the (low, high) of the values seen, so ``random`` draws
    valid token ids or indices; it is ``None`` for other dtypes.
    """

    kind: str
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    ranges: tuple[tuple[int, int] | None, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"example inputs kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if not self.tensors or len(self.names) != len(self.tensors):
            raise ConfigError(
                f"example inputs need one name per tensor, got {len(self.names)} names for "
                f"{len(self.tensors)} tensors"
            )
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"example input names must be distinct, got {list(self.names)}")
        if self.kind == "tensor" and len(self.tensors) != 1:
            raise ConfigError("example inputs of kind 'tensor' hold exactly one tensor")
        for name, t in zip(self.names, self.tensors, strict=True):
            if t.device.type not in REAL_DEVICES:
                raise ConfigError(
                    f"example input {name!r} is a tensor on the {t.device.type} device; "
                    "example inputs must be real tensors on cpu or cuda"
                )
        if not self.ranges:
            ranges = tuple(
                (int(t.min()), int(t.max())) if _is_integer(t.dtype) and t.numel() else None
                for t in self.tensors
            )
            object.__setattr__(self, "ranges", ranges)

    # ------------------------------------------------------------ building
    @classmethod
    def from_user(cls, obj: Any, *, model: Any = None) -> ExampleInputs:
        """Example inputs from a tensor, a tuple/list of tensors or a dict of named tensors.

        A list is the model's one argument (``model([x0, x1])``, kind "list") when it comes
        wrapped as ``([x0, x1],)``, or when ``model``'s forward declares its first parameter
        a list (torchvision's detectors: ``images: List[Tensor]``); otherwise its tensors
        are positional arguments, as a tuple's are.
        """
        if isinstance(obj, ExampleInputs):
            return obj
        accepted = "a tensor, a tuple/list of tensors or a dict of named tensors"
        if isinstance(obj, torch.Tensor):
            return cls(kind="tensor", names=(SINGLE_INPUT,), tensors=(obj,))
        if isinstance(obj, (tuple, list)) and len(obj) == 1 and isinstance(obj[0], list):
            return cls._listed(obj[0], accepted=accepted)
        if isinstance(obj, list) and obj and _takes_list(model):
            return cls._listed(obj, accepted=accepted)
        if isinstance(obj, (tuple, list)):
            bad = [type(t).__name__ for t in obj if not isinstance(t, torch.Tensor)]
            if not obj or bad:
                got = (
                    f"a {type(obj).__name__} holding {bad[0]}"
                    if bad
                    else f"an empty {type(obj).__name__}"
                )
                raise ConfigError(f"example inputs must be {accepted}, got {got}")
            if len(obj) == 1:
                return cls(kind="tuple", names=(f"{SINGLE_INPUT}_0",), tensors=(obj[0],))
            names = tuple(f"{SINGLE_INPUT}_{i}" for i in range(len(obj)))
            return cls(kind="tuple", names=names, tensors=tuple(obj))
        if isinstance(obj, Mapping):
            bad_keys = [k for k in obj if not isinstance(k, str) or not k.isidentifier()]
            bad = [
                f"{k}: {type(v).__name__}"
                for k, v in obj.items()
                if not isinstance(v, torch.Tensor)
            ]
            if not obj or bad or bad_keys:
                why = (
                    "an empty dict"
                    if not obj
                    else f"key {bad_keys[0]!r}, not a Python identifier"
                    if bad_keys
                    else f"a dict with {bad[0]}"
                )
                raise ConfigError(f"example inputs must be {accepted}, got {why}")
            return cls(kind="dict", names=tuple(obj), tensors=tuple(obj.values()))
        raise ConfigError(f"example inputs must be {accepted}, got {type(obj).__name__}")

    @classmethod
    def _listed(cls, items: list[Any], *, accepted: str) -> ExampleInputs:
        bad = [type(t).__name__ for t in items if not isinstance(t, torch.Tensor)]
        if not items or bad:
            got = f"a list holding {bad[0]}" if bad else "an empty list"
            raise ConfigError(f"example inputs must be {accepted}, got {got}")
        names = tuple(f"{SINGLE_INPUT}_{i}" for i in range(len(items)))
        return cls(kind="list", names=names, tensors=tuple(items))

    @classmethod
    def from_shape(cls, shape: Sequence[int], *, seed: int = 0) -> ExampleInputs:
        """One float input of ``shape`` (random normal, fixed seed), as ``model(x)`` takes it."""
        try:
            dims = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"an input shape must be a sequence of sizes, got {shape!r}") from exc
        if len(dims) < 1 or any(s < 1 for s in dims):
            raise ConfigError(
                f"an input shape must be positive sizes such as (1, 3, 32, 32), got {dims}"
            )
        g = torch.Generator().manual_seed(seed)
        return cls(kind="tensor", names=(SINGLE_INPUT,), tensors=(torch.randn(*dims, generator=g),))

    # ------------------------------------------------------------ reading
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's full shape, by ONNX input name."""
        return {
            n: tuple(int(s) for s in t.shape) for n, t in zip(self.names, self.tensors, strict=True)
        }

    @property
    def dtypes(self) -> dict[str, str]:
        return {n: _dtype_name(t.dtype) for n, t in zip(self.names, self.tensors, strict=True)}

    @property
    def first_shape(self) -> tuple[int, ...]:
        """The first input's shape (the only one for single-input models)."""
        return tuple(int(s) for s in self.tensors[0].shape)

    @property
    def batch(self) -> int:
        """The leading size of the first input (1 for a scalar input); for a list, its
        length (each item is one sample, as torchvision's detectors take images)."""
        if self.kind == "list":
            return len(self.tensors)
        shape = self.first_shape
        return max(1, shape[0]) if shape else 1

    def args(self) -> tuple[Any, ...]:
        """The exporter's positional arguments: the tensors in ``names`` order (one list of
        them for kind "list", which the exporter flattens to one graph input per tensor)."""
        if self.kind == "list":
            return (list(self.tensors),)
        return self.tensors

    def as_user(self) -> Any:
        """The inputs in the form the user gave them (what Torch-Pruning's tracer takes)."""
        if self.kind == "tensor":
            return self.tensors[0]
        if self.kind == "tuple":
            return tuple(self.tensors)
        if self.kind == "list":
            return (list(self.tensors),)
        return dict(zip(self.names, self.tensors, strict=True))

    def call(self, module: Any) -> Any:
        """``module(x)``, ``module(*xs)``, ``module([x0, x1])`` or ``module(**named)``, as the
        inputs were given."""
        if self.kind == "dict":
            return module(**dict(zip(self.names, self.tensors, strict=True)))
        if self.kind == "list":
            return module(list(self.tensors))
        return module(*self.tensors)

    def numpy_feed(self) -> dict[str, Any]:
        """The inputs as an ONNX Runtime feed: name -> numpy array."""
        return {n: t.detach().cpu().numpy() for n, t in zip(self.names, self.tensors, strict=True)}

    # ----------------------------------------------------------- deriving
    def _with(self, tensors: Sequence[torch.Tensor]) -> ExampleInputs:
        return ExampleInputs(
            kind=self.kind, names=self.names, tensors=tuple(tensors), ranges=self.ranges
        )

    def to(self, device: Any) -> ExampleInputs:
        """The same inputs on ``device``."""
        return self._with([t.to(device) for t in self.tensors])

    def random(self, seed: int = 0) -> ExampleInputs:
        """New inputs of the same shapes and dtypes: floats normal, integers within the seen range."""
        g = torch.Generator().manual_seed(int(seed))
        out = []
        for t, rng in zip(self.tensors, self.ranges, strict=True):
            if t.dtype.is_floating_point:
                x = torch.randn(t.shape, generator=g).to(t.dtype)
            elif t.dtype == torch.bool:
                x = torch.rand(t.shape, generator=g) < 0.5
            elif rng is not None:
                low, high = rng
                x = torch.randint(low, high + 1, t.shape, generator=g).to(t.dtype)
            else:
                x = t.clone()
            out.append(x.to(t.device))
        return self._with(out)

    # ------------------------------------------------------------- files
    def to_json(self) -> dict[str, Any]:
        """Names, shapes, dtypes, kind and integer ranges (no values, nothing pickled)."""
        return {
            "kind": self.kind,
            "names": list(self.names),
            "shapes": [list(self.shapes[n]) for n in self.names],
            "dtypes": [self.dtypes[n] for n in self.names],
            "ranges": [list(r) if r is not None else None for r in self.ranges],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, seed: int = 0) -> ExampleInputs:
        """Inputs rebuilt from ``to_json``: the same names, shapes and dtypes, random values."""
        try:
            kind = str(data["kind"])
            names = tuple(str(n) for n in data["names"])
            shapes = [tuple(int(s) for s in shape) for shape in data["shapes"]]
            dtypes = [_dtype(d) for d in data["dtypes"]]
            raw = data.get("ranges") or [None] * len(names)
            ranges = tuple((int(r[0]), int(r[1])) if r is not None else None for r in raw)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(
                "example inputs in a file need kind, names, shapes and dtypes "
                f"(as ExampleInputs.to_json writes them), got {dict(data)!r}"
            ) from exc
        if not (len(names) == len(shapes) == len(dtypes) == len(ranges)):
            raise ConfigError("example inputs in a file need one shape, dtype and range per name")
        tensors = []
        for shape, dtype, rng in zip(shapes, dtypes, ranges, strict=True):
            if dtype.is_floating_point:
                tensors.append(torch.zeros(shape, dtype=dtype))
            elif rng is not None:
                tensors.append(torch.full(shape, rng[0], dtype=dtype))
            else:
                tensors.append(torch.zeros(shape, dtype=dtype))
        base = cls(kind=kind, names=names, tensors=tuple(tensors), ranges=ranges)
        return base.random(seed)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{n}: {'x'.join(map(str, s)) or 'scalar'} {self.dtypes[n]}"
            for n, s in self.shapes.items()
        )
        return f"ExampleInputs({self.kind}; {parts})"


def _takes_list(model: Any) -> bool:
    """Whether ``model``'s forward declares its first parameter a list (``List[Tensor]``)."""
    import inspect
    import typing

    forward = getattr(model, "forward", None)
    if forward is None:
        return False
    try:
        params = list(inspect.signature(forward).parameters.values())
        hints = typing.get_type_hints(forward)
    except (TypeError, ValueError, NameError):
        return False
    if not params:
        return False
    hint = hints.get(params[0].name, params[0].annotation)
    if hint is inspect.Parameter.empty:
        # TorchScript-style type comments (``# type: (List[Tensor], ...)``: RetinaNet's).
        try:
            types, _ = torch.jit.annotations.get_signature(forward, None, None, True) or ([], 0)
        except Exception:  # a forward whose source cannot be read or parsed
            return False
        hint = types[0] if len(types) == len(params) else None
        return isinstance(hint, torch.ListType)
    return hint is list or typing.get_origin(hint) is list


def check_model_device(model: torch.nn.Module) -> None:
    """ConfigError naming the first parameter or buffer of ``model`` that is not a real tensor
    on cpu or cuda (a model built on the ``meta`` device has shapes and no weights)."""
    tensors = itertools.chain(
        (("parameter", n, t) for n, t in model.named_parameters()),
        (("buffer", n, t) for n, t in model.named_buffers()),
    )
    for kind, name, t in tensors:
        if t.device.type not in REAL_DEVICES:
            raise ConfigError(
                f"{type(model).__name__}'s {kind} {name!r} is a tensor on the {t.device.type} "
                "device; "
                "the model's parameters and buffers must be real tensors on cpu or cuda (load "
                "its weights first, e.g. model.to_empty(device='cpu') then load_state_dict)"
            )


def none_output(out: Any, *, path: str = "output") -> str | None:
    """Where a model's output holds None (``output``, ``output['aux']``, ``output[1]``), or
    None when every leaf is something else. The first such place, depth first."""
    if out is None:
        return path
    if isinstance(out, Mapping):
        items: Any = ((f"{path}[{k!r}]", v) for k, v in out.items())
    elif isinstance(out, (tuple, list)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(out))
    else:
        return None
    for where, value in items:
        found = none_output(value, path=where)
        if found is not None:
            return found
    return None


def flatten_outputs(out: Any, *, single: str = SINGLE_OUTPUT) -> list[tuple[str, torch.Tensor]]:
    """A model's output tensors with names, in the order the ONNX exporter writes them.

    A lone tensor is named ``single`` ("output"); a tuple/list (nested ones
    flattened depth-first) gives "output_0", "output_1", ...; a dict gives its
    keys (a nested container under key ``k`` gives "k_0", "k_1", ...). Entries
    that are not tensors (None, ints) are left out, as the exporter drops them.
    """
    if isinstance(out, torch.Tensor):
        return [(single, out)]
    found: list[tuple[str, torch.Tensor]] = []

    def walk(value: Any) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, Mapping):
            leaves: list[torch.Tensor] = []
            for v in value.values():
                leaves.extend(walk(v))
            return leaves
        if isinstance(value, (tuple, list)):
            leaves = []
            for v in value:
                leaves.extend(walk(v))
            return leaves
        return []

    if isinstance(out, Mapping):
        for key, value in out.items():
            leaves = walk(value)
            if isinstance(value, torch.Tensor):
                found.append((str(key), value))
            else:
                found.extend((f"{key}_{i}", t) for i, t in enumerate(leaves))
        return found
    if isinstance(out, (tuple, list)):
        leaves = walk(out)
        return [(f"{SINGLE_OUTPUT}_{i}", t) for i, t in enumerate(leaves)]
    raise ConfigError(
        f"model outputs must be a tensor, a tuple/list or a dict of tensors, got {type(out).__name__}"
    )


def output_scale(value: torch.Tensor) -> float:
    """The scale a parity difference is measured against: max(1, max |value|)."""
    if not value.numel():
        return 1.0
    top = float(value.detach().abs().max())
    return max(1.0, top) if math.isfinite(top) else math.inf

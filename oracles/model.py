"""Reading ONNX models handed to oracles, fixing their input shapes, and keying their structure."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oracles.errors import ModelInputError

__all__ = [
    "load_onnx",
    "fix_input_shapes",
    "resolve_input_shapes",
    "graph_inputs",
    "structure_key",
    "model_bytes",
    "available_memory",
    "check_memory",
    "input_bytes",
    "random_feeds",
    "INPUT_RANGES_KEY",
    "input_ranges",
    "set_input_ranges",
]

#: The model metadata entry that names the value range of integer inputs (JSON
#: ``{"input_ids": [0, 99]}``): random inputs then stay valid indices into the model's
#: tables. It travels inside the ONNX bytes, so a remote oracle reads it as well, and
#: structure keys leave metadata out, so it changes no cache key.
INPUT_RANGES_KEY = "oracles.input_ranges"

Shapes = Mapping[str, tuple[int, ...]]


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # a dependency of the base install, but say so plainly
        from oracles.errors import BackendUnavailableError

        raise BackendUnavailableError("the 'onnx' package is required: pip install onnx") from exc
    return onnx


def load_onnx(model: Any) -> Any:
    """Return an ``onnx.ModelProto`` from bytes, a path or a ModelProto.

    Raises ModelInputError for a missing file or content that is not ONNX.
    """
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ModelInputError(f"model file not found: {str(path)!r}")
        if path.is_dir():
            raise ModelInputError(f"expected an ONNX file, got the directory {str(path)!r}")
        if not path.is_file():  # a device or a pipe would be read without end
            raise ModelInputError(
                f"expected an ONNX file, got {str(path)!r}, which is not a regular file "
                "(a device, pipe or socket)"
            )
        data = path.read_bytes()
        where = f"file {str(path)!r}"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        where = "the given bytes"
    else:
        raise ModelInputError(
            f"expected an ONNX model as bytes, a path or an onnx.ModelProto, got {type(model).__name__}"
        )
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:
        proto = None
    if proto is None or len(proto.graph.node) == 0 and len(proto.graph.output) == 0:
        raise ModelInputError(f"{where} is not an ONNX model (could not parse a ModelProto)")
    if isinstance(model, (str, os.PathLike)):
        _load_external_data(proto, Path(model))
    return proto


def _uses_external_data(proto: Any) -> bool:
    onnx = _onnx()
    # Exporters put only large initializers outside (small ones and constants stay inline).
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _load_external_data(proto: Any, path: Path) -> None:
    """Read tensors stored beside the model file, relative to its folder (not the cwd)."""
    if not _uses_external_data(proto):
        return
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, str(path.resolve().parent))
    except Exception as exc:  # OSError, or onnx's ValidationError for a missing/escaping file
        raise ModelInputError(
            f"the external weight data of {str(path)!r} cannot be read ({exc}); keep the data "
            "files where the model expects them, relative to its folder"
        ) from exc


def graph_inputs(proto: Any) -> list[Any]:
    """The graph's real inputs (old exporters list initializers as inputs too)."""
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _dims(value_info: Any) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def resolve_input_shapes(
    proto: Any, input_shapes: Shapes | None = None, *, batch: int | None = None
) -> dict[str, tuple[int, ...]]:
    """The static shape of every graph input, from the model and ``input_shapes``.

    ``input_shapes`` maps input names to full shapes (a single-input model may
    use any key, e.g. ``{"input": (1, 3, 224, 224)}``). ``batch`` replaces the
    first dimension of every input. A dimension that stays symbolic is an error
    naming the input: the oracles never guess a shape.
    """
    inputs = graph_inputs(proto)
    given = dict(input_shapes or {})
    if len(inputs) == 1 and len(given) == 1 and inputs[0].name not in given:
        given = {inputs[0].name: next(iter(given.values()))}
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        names = ", ".join(repr(i.name) for i in inputs)
        raise ModelInputError(
            f"input shape given for {sorted(unknown)[0]!r}, which the model has no input named; "
            f"its inputs are {names}"
        )
    if batch is not None and batch < 1:
        raise ModelInputError(f"batch must be a positive integer, got {batch}")
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in inputs:
        declared = _dims(inp)
        dims = list(given[inp.name]) if inp.name in given else list(declared)
        if inp.name in given and declared and len(dims) != len(declared):
            raise ModelInputError(
                f"input {inp.name!r} has rank {len(declared)}, but the shape given has "
                f"{len(dims)} dimensions: {tuple(dims)}"
            )
        if batch is not None and dims:
            dims[0] = batch
        if any(not isinstance(d, int) or d <= 0 for d in dims):
            shown = tuple(d if isinstance(d, int) else (d or "?") for d in dims)
            raise ModelInputError(
                f"input {inp.name!r} has a dynamic shape {shown}; give its shape, "
                f"e.g. --input-shape {inp.name}=1x3x224x224"
            )
        shapes[inp.name] = tuple(int(d) for d in dims)
    return shapes


def fix_input_shapes(
    model: Any, input_shapes: Shapes | None = None, *, batch: int | None = None
) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """Return a copy of the model whose inputs all have static shapes, and those shapes.

    See ``resolve_input_shapes`` for how ``input_shapes`` and ``batch`` apply.
    """
    onnx = _onnx()
    proto = load_onnx(model)
    shapes = resolve_input_shapes(proto, input_shapes, batch=batch)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for inp in graph_inputs(copy):
        tt = inp.type.tensor_type
        tt.shape.Clear()
        for d in shapes[inp.name]:
            tt.shape.dim.add().dim_value = d
    # Intermediate value_info from the exporter may carry stale symbolic dims.
    del copy.graph.value_info[:]
    for out in copy.graph.output:
        out.type.tensor_type.ClearField("shape")
    return copy, shapes


def model_bytes(model: Any) -> bytes:
    """Serialised bytes of a model given as bytes, a path or a ModelProto."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    return load_onnx(model).SerializeToString()


def structure_key(
    model: Any,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    include_values: bool = False,
) -> str:
    """A hash of the graph's structure: operators, attributes, tensor shapes and dtypes.

    ``input_shapes`` (as resolved by ``resolve_input_shapes``) replace the
    declared input shapes. Weight values are left out (they do not change
    latency), unless ``include_values`` is set for an oracle whose value
    depends on them.
    """
    onnx = _onnx()
    proto = load_onnx(model)
    h = hashlib.sha256()

    def add(*parts: Any) -> None:
        for p in parts:
            h.update(str(p).encode())
            h.update(b"\x00")

    for op in proto.opset_import:
        add("opset", op.domain, op.version)
    for inp in graph_inputs(proto):
        dims = (
            tuple(input_shapes[inp.name])
            if input_shapes and inp.name in input_shapes
            else _dims(inp)
        )
        add("in", inp.name, inp.type.tensor_type.elem_type, dims)
    for t in proto.graph.initializer:
        add("init", t.name, t.data_type, tuple(t.dims))
        small_int = t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and (
            _numel(t.dims) <= 16
        )
        if include_values or small_int:
            # Integer constants (reshape targets, axes, pads) shape the graph.
            h.update(onnx.numpy_helper.to_array(t).tobytes())
    for node in proto.graph.node:
        add("node", node.op_type, node.domain, tuple(node.input), tuple(node.output))
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                add("attr", a.name, a.t.data_type, tuple(a.t.dims))
                if (
                    include_values
                    or len(a.t.dims) == 0
                    or (len(a.t.dims) == 1 and a.t.dims[0] <= 16)
                ):
                    # Small constants (reshape targets, axes) shape the graph.
                    add(onnx.numpy_helper.to_array(a.t).tobytes())
            elif a.type == onnx.AttributeProto.GRAPH:
                add(
                    "attr",
                    a.name,
                    structure_key(_subgraph_model(a.g, proto), include_values=include_values),
                )
            else:
                add("attr", a.name, onnx.helper.get_attribute_value(a))
    for out in proto.graph.output:
        add("out", out.name, out.type.tensor_type.elem_type)
    return h.hexdigest()


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _subgraph_model(graph: Any, parent: Any) -> Any:
    onnx = _onnx()
    return onnx.helper.make_model(graph, opset_imports=list(parent.opset_import))


def available_memory() -> int | None:
    """Bytes of memory this machine can still give a process (MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def input_bytes(proto: Any, shapes: Shapes) -> int:
    """Bytes of one set of the model's inputs at ``shapes`` (4 bytes per element if unknown)."""
    onnx = _onnx()
    total = 0
    for inp in graph_inputs(proto):
        if inp.name not in shapes:
            continue
        try:
            size = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            size = 4
        total += _numel(shapes[inp.name]) * size
    return total


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_memory(
    *,
    oracle: str,
    needed: int,
    what: str,
    available: int | None = None,
    hint: str = "give a smaller --input-shape or --batch",
) -> None:
    """Refuse, before allocating, a measurement whose inputs alone exceed the free memory.

    ``needed`` is a lower bound (the random inputs an oracle keeps); running the
    model needs more still, so a refusal here is never a false alarm.
    """
    free = available_memory() if available is None else available
    if free is None or needed <= free:
        return
    raise ModelInputError(
        f"{oracle}: {what} need {needed:,} bytes ({_gib(needed)}), more than the "
        f"{free:,} bytes ({_gib(free)}) of memory available; {hint}"
    )


def input_ranges(proto: Any) -> dict[str, tuple[int, int]]:
    """The (low, high) value range of each integer input the model's metadata names
    (``INPUT_RANGES_KEY``); empty when it names none or the entry cannot be read."""
    import json

    for prop in proto.metadata_props:
        if prop.key != INPUT_RANGES_KEY:
            continue
        try:
            raw = json.loads(prop.value)
            return {
                str(k): (int(v[0]), int(v[1])) for k, v in raw.items() if int(v[0]) <= int(v[1])
            }
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return {}
    return {}


def set_input_ranges(proto: Any, ranges: Mapping[str, tuple[int, int]]) -> None:
    """Write ``ranges`` (input name -> (low, high)) into the model's metadata, in place."""
    import json

    kept = [p for p in proto.metadata_props if p.key != INPUT_RANGES_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    if ranges:
        entry = proto.metadata_props.add()
        entry.key = INPUT_RANGES_KEY
        entry.value = json.dumps({k: [int(v[0]), int(v[1])] for k, v in ranges.items()})


def random_feeds(
    inputs: Sequence[tuple[str, Any, tuple[int, ...]]],
    *,
    count: int,
    seed: int = 0,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """``count`` sets of random NumPy inputs, one array per ``(name, dtype, shape)``.

    Floats are standard normal, booleans fair coin flips, integers drawn from the input's
    range in ``ranges`` (inclusive; the model's ``input_ranges``), else small and
    non-negative (0 to 7) so that they stay valid as indices or token ids. The
    sets differ from each other, so timed runs rotating over them are not served
    from a warm copy of the previous input; the same seed gives the same sets.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds: list[dict[str, Any]] = []
    for _ in range(count):
        feed: dict[str, Any] = {}
        for name, dtype, shape in inputs:
            if np.issubdtype(dtype, np.floating):
                arr = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
            elif np.dtype(dtype) == np.bool_:
                arr = rng.random(shape) < 0.5
            else:
                low, high = (ranges or {}).get(name, (0, 7))
                arr = rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)
            feed[name] = np.ascontiguousarray(arr)
        feeds.append(feed)
    return feeds

"""Read an ONNX model's structure without its weight payloads, for fast cache keys.

Parsing a 50 MB ModelProto just to hash its structure costs tens of
milliseconds, most of it copying weight bytes that the structure key never
reads. ``strip_payloads`` walks the protobuf wire format of the serialised
model and drops the data fields of large initializers (``raw_data``,
``float_data`` and friends), keeping names, dims, data types and every small
tensor (reshape targets, axes) whole; the result parses in about a
millisecond. Anything unexpected falls back to the full parse.

Only for keys that ignore weight values: a stripped initializer has dims but
no data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["strip_payloads", "load_onnx_structure"]

# ModelProto.graph = 7; GraphProto.initializer = 5; TensorProto data fields:
# float_data 4, int32_data 5, string_data 6, int64_data 7, raw_data 9,
# double_data 10, uint64_data 11.
_GRAPH = 7
_INITIALIZER = 5
_DATA_FIELDS = frozenset({4, 5, 6, 7, 9, 10, 11})
#: Payloads up to this size are kept: any tensor of <= 16 elements fits.
_KEEP_BYTES = 1024


class _WireError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: memoryview):
    """Yield (field number, wire type, the field's whole encoding, payload) over one message."""
    pos = 0
    n = len(buf)
    while pos < n:
        start = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _WireError("field number 0")
        if wire == 0:
            _, pos = _varint(buf, pos)
            payload = None
        elif wire == 1:
            pos += 8
            payload = None
        elif wire == 2:
            length, pos = _varint(buf, pos)
            payload = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
            payload = None
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if pos > n:
            raise _WireError("truncated field")
        yield field, wire, buf[start:pos], payload


def _len_field(field: int, payload: bytes) -> bytes:
    return _encode_varint((field << 3) | 2) + _encode_varint(len(payload)) + payload


def _strip_tensor(buf: memoryview) -> bytes:
    out = bytearray()
    for field, wire, whole, payload in _fields(buf):
        if (
            field in _DATA_FIELDS
            and wire == 2
            and payload is not None
            and len(payload) > _KEEP_BYTES
        ):
            continue
        out += whole
    return bytes(out)


def _rewrite(buf: memoryview, field_number: int, inner: Callable[[memoryview], bytes]) -> bytes:
    """The message ``buf`` with every embedded message in ``field_number`` passed through
    ``inner``; other fields are copied as they are."""
    out = bytearray()
    for field, wire, whole, payload in _fields(buf):
        if field == field_number and wire == 2 and payload is not None:
            out += _len_field(field, inner(payload))
        else:
            out += whole
    return bytes(out)


def _strip_graph(buf: memoryview) -> bytes:
    return _rewrite(buf, _INITIALIZER, _strip_tensor)


def strip_payloads(data: bytes) -> bytes:
    """Serialised ModelProto ``data`` with large initializer payloads removed.

    Raises ValueError when ``data`` is not a well-formed protobuf message.
    """
    return _rewrite(memoryview(data), _GRAPH, _strip_graph)


def load_onnx_structure(model: Any) -> Any:
    """A ModelProto for structure keys: from bytes or a path with large weights left out.

    A ModelProto is returned as it is. Bytes that do not strip cleanly, and
    anything else, go through ``oracles.model.load_onnx`` (full parse, its
    error messages).
    """
    from oracles.model import load_onnx

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            return load_onnx(model)
        data: Any = path.read_bytes()
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = model
    else:
        return load_onnx(model)
    try:
        stripped = strip_payloads(data)
    except ValueError:
        return load_onnx(model)
    try:
        proto = load_onnx(stripped)
    except Exception:
        return load_onnx(model)
    return proto

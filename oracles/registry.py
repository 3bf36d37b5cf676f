"""Oracles by name: ``get_oracle("onnxruntime:cpu?threads=1")``.

Entries are registered as ``"module:Class"`` strings and imported on first
use, so ``import oracles`` stays fast and needs neither torch nor any runtime.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from oracles.base import Oracle, parse_spec
from oracles.errors import OracleSpecError, UnknownOracleError

__all__ = ["register_oracle", "get_oracle", "list_oracles", "oracle_class"]

_REGISTRY: dict[str, str | type[Oracle]] = {
    "params": "oracles.static:ParamsOracle",
    "flops": "oracles.static:FlopsOracle",
    "weight-memory": "oracles.static:WeightMemoryOracle",
    "peak-memory": "oracles.static:PeakMemoryOracle",
    "onnxruntime": "oracles.ort:OnnxRuntimeLatency",
    "tensorrt": "oracles.trt:TensorRTLatency",
    "tensorrt-memory": "oracles.trt:TensorRTMemory",
    "torch": "oracles.torch_latency:TorchLatency",
    "openvino": "oracles.openvino:OpenVINOLatency",
}


def register_oracle(name: str) -> Callable[[type[Oracle]], type[Oracle]]:
    """Class decorator that registers a user oracle under ``name``.

    Registering a name twice is an error, as in torchvision's model registry.
    """

    def wrap(cls: type[Oracle]) -> type[Oracle]:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"an oracle named {key!r} is already registered")
        if not issubclass(cls, Oracle):
            raise TypeError(f"{cls!r} is not a subclass of oracles.Oracle")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return wrap


def list_oracles() -> list[str]:
    return sorted(_REGISTRY)


def oracle_class(name: str) -> type[Oracle]:
    key = name.lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownOracleError(
            f"unknown oracle {name!r}.{hint} Known oracles: {', '.join(list_oracles())}"
        )
    entry = _REGISTRY[key]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _REGISTRY[key] = entry
    return entry


def get_oracle(spec: str | Oracle, *, check: bool = True) -> Oracle:
    """Build an oracle from its spec string (``name[:device][?k=v&...]``).

    ``SPEC@http://HOST:PORT`` names the oracle ``SPEC`` served by ``hwprune serve``
    on that machine (``oracles.remote.RemoteOracle``).

    With ``check`` (the default) the backend and device are verified now, so a
    missing runtime or absent GPU fails before any search starts.
    """
    if isinstance(spec, Oracle):
        oracle = spec
    else:
        if not isinstance(spec, str):
            raise OracleSpecError(f"expected an oracle spec string, got {type(spec).__name__}")
        if "@" in spec:  # SPEC@http://HOST:PORT: the oracle runs on an `hwprune serve` server
            from oracles.remote import RemoteOracle

            oracle = RemoteOracle.from_remote_spec(spec)
        else:
            name, device, params = parse_spec(spec)
            oracle = oracle_class(name).from_spec(device, params)
    if check:
        oracle.check_available()
    return oracle

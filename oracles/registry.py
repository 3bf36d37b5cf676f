"""Oracles by name: ``get_oracle("onnxruntime:cpu?threads=1")``.

Entries are registered as ``"module:Class"`` strings and imported on first
use, so ``import oracles`` stays fast and needs neither torch nor any runtime.

Another package adds oracles through the ``hwprune.oracles`` entry-point group,
with no change here::

    [project.entry-points."hwprune.oracles"]
    npu-latency = "mypkg.oracles:NpuLatency"

The group is read when a name is not known yet and when the names are listed;
a plugin's module is imported when its name is first used, and its class must
pass ``check_oracle_class``. A plugin cannot take a name that is already
registered (the built-ins keep theirs; a warning names the plugin).

This module builds remote oracles (``SPEC@http://HOST:PORT``) too: it splits
off the address and hands ``oracles.remote`` the function that builds the
served oracle locally, so ``oracles.remote`` never imports the registry.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oracles.base import Capabilities, Oracle, check_oracle_class, parse_spec
from oracles.errors import BackendUnavailableError, OracleSpecError, UnknownOracleError

log = logging.getLogger(__name__)

__all__ = [
    "ENTRY_POINT_GROUP",
    "register_oracle",
    "get_oracle",
    "list_oracles",
    "oracle_class",
    "capabilities",
]

#: The entry-point group other packages list their oracles in.
ENTRY_POINT_GROUP = "hwprune.oracles"


@dataclass(frozen=True)
class _Plugin:
    """An oracle listed by an installed package's entry point, not imported yet."""

    entry_point: Any  # importlib.metadata.EntryPoint (imported only when plugins are read)


_REGISTRY: dict[str, str | type[Oracle] | _Plugin] = {
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
# (name, "module:Class") of plugins already warned about for a name that was taken.
_SHADOWED: set[tuple[str, str]] = set()


def register_oracle(name: str) -> Callable[[type[Oracle]], type[Oracle]]:
    """Class decorator that registers a user oracle under ``name``.

    Registering a name twice is an error, as in torchvision's model registry; a
    class that lacks part of the ``Oracle`` interface is a TypeError naming it.
    """

    def wrap(cls: type[Oracle]) -> type[Oracle]:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"an oracle named {key!r} is already registered")
        check_oracle_class(cls)
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return wrap


def _target(entry: str | type[Oracle] | _Plugin) -> str:
    """An entry as ``module:Class`` (the form of the table above and of entry points)."""
    if isinstance(entry, _Plugin):
        return entry.entry_point.value
    if isinstance(entry, str):
        return entry
    return f"{entry.__module__}:{entry.__qualname__}"


def _discover() -> None:
    """Add the ``hwprune.oracles`` entry points of the installed packages (not importing them)."""
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken distribution's metadata must not hide the built-ins
        log.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return
    for ep in found:
        key = ep.name.strip().lower()
        current = _REGISTRY.get(key)
        if current is None:
            _REGISTRY[key] = _Plugin(ep)
        elif _target(current) != ep.value and (key, ep.value) not in _SHADOWED:
            _SHADOWED.add((key, ep.value))
            log.warning(
                "ignoring the oracle %r of entry point %r: that name is already %s",
                key,
                ep.value,
                _target(current),
            )


def _load(key: str, ep: Any) -> type[Oracle]:
    where = f"entry point '{ep.name} = {ep.value}' of group {ENTRY_POINT_GROUP}"
    try:
        cls = ep.load()
    except ImportError as exc:
        raise BackendUnavailableError(
            f"oracle {key!r} ({where}) cannot be imported: {exc}"
        ) from exc
    except Exception as exc:
        raise OracleSpecError(
            f"oracle {key!r} ({where}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        check_oracle_class(cls)
    except TypeError as exc:
        raise OracleSpecError(f"oracle {key!r} ({where}): {exc}") from None
    cls.name = key
    return cls


def list_oracles() -> list[str]:
    """Every oracle name: the built-ins, registered classes and installed plugins."""
    _discover()
    return sorted(_REGISTRY)


def oracle_class(name: str) -> type[Oracle]:
    key = name.lower()
    if key not in _REGISTRY:
        _discover()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownOracleError(
            f"unknown oracle {name!r}.{hint} Known oracles: {', '.join(sorted(_REGISTRY))}"
        )
    entry = _REGISTRY[key]
    if isinstance(entry, _Plugin):
        entry = _load(key, entry.entry_point)
        _REGISTRY[key] = entry
    elif isinstance(entry, str):
        module, _, attr = entry.partition(":")
        # A built-in named "module:Class" is imported only when first asked for.
        entry = getattr(importlib.import_module(module), attr)
        _REGISTRY[key] = entry
    return entry


def _local_oracle(spec: str) -> Oracle:
    """The oracle ``spec`` names, built here without checking its backend."""
    name, device, params = parse_spec(spec)
    return oracle_class(name).from_spec(device, params)


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

            oracle = RemoteOracle.from_remote_spec(spec, resolve=_local_oracle)
        else:
            oracle = _local_oracle(spec)
    if check:
        oracle.check_available()
    return oracle


def capabilities(spec: str | Oracle) -> Capabilities:
    """What the oracle ``spec`` names needs and ships (``oracles.Capabilities``).

    Read from its class and device alone: no runtime is imported or checked, so it
    answers on a machine without that runtime. A remote spec (``SPEC@http://...``)
    has the served oracle's capabilities with ``remote`` set (the remote oracle is
    built, unchecked, so its address and target are read as ``get_oracle`` reads them).

    >>> capabilities("onnxruntime:cuda").needs_gpu, capabilities("onnxruntime:cpu").needs_gpu
    (True, False)
    """
    if isinstance(spec, Oracle):
        return spec.capabilities
    if not isinstance(spec, str):
        raise OracleSpecError(f"expected an oracle spec string, got {type(spec).__name__}")
    if "@" in spec:
        return get_oracle(spec, check=False).capabilities
    name, device, _ = parse_spec(spec)
    cls = oracle_class(name)
    if device is not None and device not in cls.devices:
        raise OracleSpecError(
            f"oracle {cls.name!r} runs on {', '.join(cls.devices)}, not {device!r}"
        )
    return cls.capabilities_on(device)

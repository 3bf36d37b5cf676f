"""The oracle interface: a black box from a candidate model to a Measurement."""

from __future__ import annotations

import dataclasses
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from oracles.errors import OracleSpecError

__all__ = [
    "Capabilities",
    "Measurement",
    "Oracle",
    "parse_spec",
    "check_oracle_class",
    "check_threads",
    "check_time_window",
    "EXPORT_FORMATS",
    "INPUT_FORMATS",
]

#: What an oracle takes: ONNX (bytes, a path or a ModelProto) or a torch nn.Module.
INPUT_FORMATS = ("onnx", "torch")
#: Artifacts a run ships so that a budget can be proven on its runtime: the ONNX model, an
#: OpenVINO IR (model.xml + .bin), a TensorRT engine, the torch module (model.pt).
EXPORT_FORMATS = ("onnx", "openvino-ir", "engine", "torch")


@dataclass(frozen=True)
class Capabilities:
    """What an oracle needs and what a run must ship for it, known without running anything.

    ``runtime``: the family that measures ("static", "onnxruntime", "openvino",
    "tensorrt", "torch"; a plugin names its own). ``export_format``: the artifact
    (one of ``EXPORT_FORMATS``) a run ships so the budget this oracle judged can be
    proven where it runs. ``needs_gpu``: it times on a GPU or an NPU (matrix units,
    which favour channel counts in multiples of 8). ``slow``: slow by nature (an
    engine build per candidate). ``remote``: it runs on an ``hwprune serve`` server.
    """

    runtime: str
    export_format: str
    needs_gpu: bool
    slow: bool
    remote: bool = False


@dataclass(frozen=True)
class Measurement:
    """One oracle's answer for one model.

    ``value`` is in ``unit``; lower is better for every quantity measured here.
    Timed oracles report ``statistic="median"`` over ``samples`` runs with the
    inter-quartile range ``iqr`` (same unit as value), the coefficient of
    variation ``cv`` (std / mean of the samples, a fraction) and the 95%
    confidence interval of the median ``ci_low``..``ci_high``. Exact counts
    report ``statistic="exact"`` and ``samples=1``.
    """

    quantity: str
    value: float
    unit: str
    oracle: str
    statistic: str = "exact"
    samples: int = 1
    iqr: float = 0.0
    cv: float = 0.0
    ci_low: float | None = None
    ci_high: float | None = None
    backend: str = ""
    device: str = "cpu"
    threads: int | None = None
    batch: int | None = None
    seconds: float = 0.0
    cached: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    higher_is_better: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> Measurement:
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        if self.statistic == "exact":
            return f"{_fmt(self.value)} {self.unit}"
        return f"{_fmt(self.value)} {self.unit} (median of {self.samples}, cv {self.cv:.1%})"


def _fmt(x: float) -> str:
    if x == 0 or (1e-3 <= abs(x) < 1e6):
        return f"{x:.4g}"
    return f"{x:.4e}"


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """Split ``name[:device][?key=value&...]`` into its three parts.

    >>> parse_spec("onnxruntime:cpu?threads=1&batch=1")
    ('onnxruntime', 'cpu', {'threads': '1', 'batch': '1'})
    """
    if not isinstance(spec, str) or not spec.strip():
        raise OracleSpecError(
            f"expected an oracle spec like 'onnxruntime:cpu?threads=1', got {spec!r}"
        )
    text = spec.strip()
    head, _, query = text.partition("?")
    name, _, device = head.partition(":")
    name = name.strip().lower()
    device = device.strip().lower() or None
    if not name:
        raise OracleSpecError(f"oracle spec {spec!r} has no oracle name before ':' or '?'")
    params: dict[str, str] = {}
    if query:
        for part in query.split("&"):
            if not part:
                continue
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise OracleSpecError(
                    f"oracle spec {spec!r}: expected settings as key=value joined by '&', "
                    f"got {part!r}"
                )
            params[key.strip().lower()] = urllib.parse.unquote(value.strip())
    return name, device, params


def check_threads(oracle: str, threads: Any) -> None:
    """Refuse a thread count below 1 or above this machine's CPU count.

    More threads than CPUs measures contention, not the model, and a huge
    count makes some runtimes abort the process while creating them.
    """
    cpus = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus:
        raise OracleSpecError(
            f"oracle {oracle!r}: setting 'threads' must be an integer from 1 to {cpus} "
            f"(this machine's CPU count), got {threads!r}"
        )


def check_timed_settings(oracle: str, settings: Any) -> Callable[[str, Any, str], Exception]:
    """Refuse the timing-protocol settings every timed runtime oracle shares.

    ``settings`` has ``device``/``devices``, ``threads``, ``sessions``, ``batch``,
    ``warmup``, ``min_runs``, ``max_runs``, ``min_time``, ``max_time`` and
    ``rel_ci``. Returns the oracle's ``bad(setting, value, accepted)`` error
    maker for the checks of its own settings.
    """

    def bad(setting: str, value: Any, accepted: str) -> OracleSpecError:
        return OracleSpecError(
            f"oracle {oracle!r}: setting {setting!r} must be {accepted}, got {value!r}"
        )

    s = settings
    if s.device not in s.devices:
        raise OracleSpecError(f"oracle {oracle!r} runs on {', '.join(s.devices)}, not {s.device!r}")
    check_threads(oracle, s.threads)
    if not isinstance(s.sessions, int) or not 0 <= s.sessions <= 16:
        raise bad("sessions", s.sessions, "an integer from 0 (auto) to 16")
    if s.batch is not None and (not isinstance(s.batch, int) or s.batch < 1):
        raise bad("batch", s.batch, "a positive integer")
    if s.warmup < 0:
        raise bad("warmup", s.warmup, "0 or more runs")
    if s.min_runs < 1:
        raise bad("min_runs", s.min_runs, "at least 1")
    if s.max_runs < s.min_runs:
        raise bad("max_runs", s.max_runs, f"at least min_runs ({s.min_runs})")
    if s.min_time < 0:
        raise bad("min_time", s.min_time, "0 or more seconds")
    if s.max_time <= 0 or s.max_time < s.min_time:
        raise bad("max_time", s.max_time, f"positive and at least min_time ({s.min_time})")
    if not 0 < s.rel_ci < 1:
        raise bad("rel_ci", s.rel_ci, "a fraction between 0 and 1, such as 0.01")
    return bad


def check_time_window(oracle: str, settings: Any) -> None:
    """Refuse a timing protocol's ``min_time``/``max_time`` (seconds) and ``rel_ci`` out of range.

    For the timed oracles that check their run counts in their own words (torch, tensorrt).
    """
    s = settings
    if s.min_time < 0 or s.max_time <= 0 or s.max_time < s.min_time:
        raise OracleSpecError(
            f"oracle {oracle!r}: expected 0 <= min_time <= max_time and max_time > 0 (seconds), "
            f"got min_time={s.min_time}, max_time={s.max_time}"
        )
    if not 0 < s.rel_ci < 1:
        raise OracleSpecError(
            f"oracle {oracle!r}: rel_ci must be a fraction in (0, 1), got {s.rel_ci}"
        )


def _convert(oracle: str, key: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        return kind(raw)
    except ValueError:
        name = {int: "an integer", float: "a number", bool: "0 or 1"}.get(kind, kind.__name__)
        raise OracleSpecError(
            f"oracle {oracle!r}: setting {key!r} must be {name}, got {raw!r}"
        ) from None


class Oracle:
    """The oracle interface: a black box that measures one quantity of a candidate model.

    A subclass defines four things (``register_oracle`` and the ``hwprune.oracles``
    entry points check them with ``check_oracle_class``):

    1. **measure**: ``measure(model, *, input_shapes=None) -> Measurement``, the one
       call; ``model`` is in ``input_format``.
    2. **Spec settings**: the subclass is a dataclass whose fields are its settings
       (``device`` plus any of int, float, bool, str), so it is built from its spec
       string alone (``from_spec``), renders back to a canonical spec (``spec``) and
       pickles (for subprocesses or Ray actors). ``validate()`` refuses bad values.
    3. **Identity**: ``identity()`` returns what besides the model and settings decides
       the value (machine, runtime versions); a timed oracle overrides it so the cache
       never mixes machines. ``check_available()`` raises when it cannot run here.
    4. **Capabilities** (class attributes, read by ``capabilities_on`` without building
       or running anything): ``runtime``, ``export_format``, ``gpu_devices`` (the devices
       that are a GPU or an NPU), ``slow_devices`` (devices where a call is slow by
       nature) and ``remote``; see ``Capabilities``.

    Other class attributes a subclass sets:
      ``name``: registry name (set by the registry); ``quantity``: what it measures
      (latency, params, flops, memory); ``unit``; ``input_format``: ``"onnx"``
      (takes ONNX bytes, a path or a ModelProto) or ``"torch"`` (takes an
      nn.Module); ``devices``: accepted devices, first is the default; ``timed``:
      whether the value is a noisy timing (cached by structure, not by weights);
      ``requires``: the pip extra that provides its backend;
      ``named_on_cpu``: settings the canonical spec names even at their default
      on the cpu device (a CPU latency cannot be read without its thread count).
    """

    name: ClassVar[str] = ""
    quantity: ClassVar[str] = ""
    unit: ClassVar[str] = ""
    input_format: ClassVar[str] = "onnx"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    timed: ClassVar[bool] = False
    requires: ClassVar[str | None] = None
    #: True when the value depends on weight values (e.g. counting non-zeros),
    #: so the cache must key on them too.
    value_sensitive: ClassVar[bool] = False
    named_on_cpu: ClassVar[tuple[str, ...]] = ()
    # Capabilities: declared here, read through ``capabilities_on`` / ``capabilities``.
    runtime: ClassVar[str] = "custom"
    export_format: ClassVar[str] = "onnx"
    gpu_devices: ClassVar[tuple[str, ...]] = ()
    slow_devices: ClassVar[tuple[str, ...]] = ()
    remote: ClassVar[bool] = False

    # Instance field every oracle has; subclasses add theirs as dataclass fields.
    device: str = "cpu"
    #: The batch size an oracle fixes as its input's first dimension; a subclass with a
    #: ``batch`` setting declares it as a field, None keeps the model's own shapes.
    batch: int | None = None

    @classmethod
    def from_spec(cls, device: str | None, params: Mapping[str, str]) -> Oracle:
        fields = (
            {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        )
        settable = {k: f for k, f in fields.items() if k != "device" and f.init}
        kwargs: dict[str, Any] = {}
        for key, raw in params.items():
            if key not in settable:
                accepted = ", ".join(sorted(settable)) or "none"
                raise OracleSpecError(
                    f"oracle {cls.name!r} has no setting {key!r} (accepted: {accepted})"
                )
            kind = settable[key].type
            kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
            if isinstance(kind, str):  # e.g. "int | None" under postponed annotations
                kind = int if kind.startswith("int") else float if kind.startswith("float") else str
            kwargs[key] = _convert(cls.name, key, raw, kind)
        dev = device or cls.devices[0]
        if dev not in cls.devices:
            raise OracleSpecError(
                f"oracle {cls.name!r} runs on {', '.join(cls.devices)}, not {dev!r}"
            )
        if "device" in fields:
            kwargs["device"] = dev
        obj = cls(**kwargs)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Check settings' ranges; raise OracleSpecError on a bad value."""

    @classmethod
    def capabilities_on(cls, device: str | None = None) -> Capabilities:
        """The capabilities of this oracle class on ``device`` (None: its default device)."""
        dev = device or cls.devices[0]
        return Capabilities(
            runtime=cls.runtime,
            export_format=cls.export_format,
            needs_gpu=dev in cls.gpu_devices,
            slow=dev in cls.slow_devices,
            remote=cls.remote,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self.capabilities_on(self.device)

    @property
    def needs_gpu(self) -> bool:
        """Whether it times on a GPU or an NPU (on its device; onnxruntime:cuda yes, :cpu no)."""
        return self.capabilities.needs_gpu

    @property
    def slow(self) -> bool:
        """Whether a call is slow by nature on its device (an engine build per candidate)."""
        return self.capabilities.slow

    @property
    def spec(self) -> str:
        """Canonical spec string: the name, the device if not the only one, non-default settings
        (and on the cpu device those in ``named_on_cpu``, default or not)."""
        head = self.name
        if len(self.devices) > 1 or self.device != self.devices[0]:
            head += f":{self.device}"
        parts = []
        values = Oracle.settings(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)} if values else {}
        for key, value in values.items():
            if key == "device":
                continue
            named = self.device == "cpu" and key in self.named_on_cpu
            if defaults[key] is not dataclasses.MISSING and value == defaults[key] and not named:
                continue
            if isinstance(value, bool):
                value = int(value)
            # Quote '&', '=', '?', '%' so that parse_spec reads the value back unchanged.
            parts.append(f"{key}={urllib.parse.quote(str(value), safe='/:,')}")
        return head + ("?" + "&".join(parts) if parts else "")

    def settings(self) -> dict[str, Any]:
        """Every setting (defaults included), in field order, for cache keys and reports."""
        if dataclasses.is_dataclass(self):
            # The dataclass fields are the settings (part 2 of the interface): read them by name.
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {}

    def precision_target(self) -> float | None:
        """The relative confidence-interval half-width a timed oracle measures to (its
        ``rel_ci`` setting); None for an oracle whose value is exact or not timed that way."""
        value = self.settings().get("rel_ci")
        return None if value is None else float(value)

    def check_memory(self, proto: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse, before anything is measured, input shapes this oracle cannot hold in
        memory (a timed oracle keeps several random input sets); by default nothing to check."""

    def identity(self) -> dict[str, Any]:
        """What, besides the model and the settings, decides the value (machine, runtime versions).

        Timed oracles override this; exact counts depend on nothing else.
        """
        return {}

    def check_available(self) -> None:
        """Raise BackendUnavailableError / DeviceUnavailableError if it cannot run here."""

    def model_key(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> str:
        """Cache key of the model as this oracle sees it (structure and input shapes)."""
        from oracles._onnx_wire import load_onnx_structure
        from oracles.model import load_onnx, resolve_input_shapes, structure_key

        # Weight payloads are skipped unless the key hashes them: a cache hit stays ~1 ms.
        proto = load_onnx(model) if self.value_sensitive else load_onnx_structure(model)
        shapes = resolve_input_shapes(proto, input_shapes, batch=self.batch)
        return structure_key(proto, input_shapes=shapes, include_values=self.value_sensitive)

    def measure(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Measurement:
        raise NotImplementedError

    def __call__(self, model: Any, **kwargs: Any) -> Measurement:
        return self.measure(model, **kwargs)

    def __str__(self) -> str:
        return self.spec


def check_oracle_class(cls: Any) -> None:
    """Raise TypeError saying what ``cls`` lacks to be an oracle (the four parts in ``Oracle``)."""
    if not (isinstance(cls, type) and issubclass(cls, Oracle)):
        raise TypeError(f"{cls!r} is not a subclass of oracles.Oracle")
    missing: list[str] = []
    if cls.measure is Oracle.measure:
        missing.append("a measure(model, *, input_shapes=None) method")
    if not dataclasses.is_dataclass(cls):
        missing.append("its settings as dataclass fields (decorate it with @dataclass)")
    named = {"quantity": cls.quantity, "unit": cls.unit, "runtime": cls.runtime}
    for attr, value in named.items():
        if not isinstance(value, str) or not value:
            missing.append(f"a non-empty string {attr!r}")
    if cls.input_format not in INPUT_FORMATS:
        missing.append(f"'input_format' one of {', '.join(INPUT_FORMATS)}")
    if cls.export_format not in EXPORT_FORMATS:
        missing.append(f"'export_format' one of {', '.join(EXPORT_FORMATS)}")
    devices = cls.devices
    if not (
        isinstance(devices, tuple) and devices and all(isinstance(d, str) and d for d in devices)
    ):
        missing.append("'devices' a non-empty tuple of device names")
    else:
        for attr, listed in (("gpu_devices", cls.gpu_devices), ("slow_devices", cls.slow_devices)):
            extra = [d for d in listed if d not in devices]
            if extra:
                missing.append(f"{attr!r} among its devices ({', '.join(extra)} is not)")
    flags = {"timed": cls.timed, "value_sensitive": cls.value_sensitive, "remote": cls.remote}
    for attr, flag in flags.items():
        if not isinstance(flag, bool):
            missing.append(f"{attr!r} True or False")
    if missing:
        raise TypeError(
            f"{cls.__qualname__} is not a complete oracle: it needs " + "; ".join(missing)
        )

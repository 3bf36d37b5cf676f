"""OpenVINO latency: the median time of one synchronous inference on an OpenVINO device.

Protocol (the same as ``oracles.ort``, timed by ``oracles.timing``): the
model's inputs are fixed to static shapes (``batch`` overrides dimension 0)
and the ONNX bytes are read by OpenVINO's ONNX frontend (no torch, no file);
each call compiles the model afresh with the latency performance hint
(``PERFORMANCE_HINT=LATENCY``), one stream (``NUM_STREAMS=1``), on the CPU
``threads`` inference threads (``INFERENCE_NUM_THREADS``), and a fixed
inference precision; four different random input sets are rotated; one
untimed check run, then ``warmup`` runs and adaptive timing until the
median's 95% confidence interval is within ``rel_ci`` (or a run/time cap).
With one CPU thread the timed runs rotate over three compiled models in
blocks of 8 runs, as the ONNX Runtime oracle rotates over sessions.

What is timed: ``InferRequest.infer`` with NumPy inputs shared, not copied,
into OpenVINO tensors. On ``gpu`` and ``npu`` the host<->device copies are
part of that call, so they are timed.

Precision: ``f32`` by default. OpenVINO's CPU plugin otherwise picks bf16 on
CPUs with AVX-512 BF16 or AMX, which would time (and compute) another model
than the FP32 ONNX file that ONNX Runtime runs; ``precision=auto`` keeps the
device's choice, and the measurement records the precision that ran.

No silent fallback: a device OpenVINO does not see, a compiled model that
executes elsewhere, or a CPU thread count OpenVINO caps below ``threads``
raises DeviceUnavailableError.

>>> oracle = get_oracle("openvino:cpu?threads=1")  # doctest: +SKIP
>>> oracle.measure("model.onnx").value  # median milliseconds  # doctest: +SKIP
1.71
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from oracles.base import Measurement, check_timed_settings
from oracles.errors import (
    BackendUnavailableError,
    DeviceUnavailableError,
    MeasurementFailedError,
    ModelInputError,
    OracleSpecError,
)
from oracles.timing import TimedRuntimeOracle, latency_measurement, pool_count, rotate, time_runners

log = logging.getLogger(__name__)

__all__ = ["OpenVINOLatency", "OPENVINO_EXTRA", "first_line"]

OPENVINO_EXTRA = 'pip install "hwprune[openvino]"'
_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
_PRECISIONS = ("f32", "bf16", "f16", "auto")
#: Different input tensors rotated through the timed runs.
_INPUT_SETS = 4


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the openvino oracle needs the openvino package: {OPENVINO_EXTRA}"
        ) from exc
    return openvino


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    # One Core per process: it loads the device plugins once; compiled models stay independent.
    return _ov().Core()


def first_line(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what went wrong (at most 300 characters)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    # OpenVINO prefixes its messages with "Exception from src/...cpp:NN:"; the cause follows.
    for line in lines:
        if not line.startswith("Exception from ") and not line.startswith("Check "):
            return line[:300]
    return lines[0][:300] if lines else type(exc).__name__


def _device_present(name: str, available: list[str]) -> bool:
    # Several GPUs show up as GPU.0, GPU.1: any of them makes "GPU" (GPU.0) usable.
    return any(d == name or d.startswith(name + ".") for d in available)


def _random_feeds(
    ports: list[Any],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    count: int,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    import numpy as np

    from oracles.model import random_feeds

    inputs = []
    for port in ports:
        name = port.get_any_name()
        try:
            dtype = np.dtype(port.get_element_type().to_dtype())
        except Exception as exc:
            raise ModelInputError(
                f"the openvino oracle cannot make random inputs of type "
                f"{port.get_element_type()} for input {name!r}"
            ) from exc
        inputs.append((name, dtype, shapes.get(name, tuple(port.get_shape()))))
    return random_feeds(inputs, count=count, ranges=ranges)


@dataclass
class OpenVINOLatency(TimedRuntimeOracle):
    """Median latency (ms) of one inference with OpenVINO on its CPU, GPU or NPU plugin.

    Settings (spec ``openvino:cpu?threads=1&batch=1``): ``threads`` CPU
    inference threads (``INFERENCE_NUM_THREADS``; CPU only); ``batch``
    overrides every input's first dimension; ``precision`` is the inference
    precision (f32, bf16, f16, or auto for the device's default); ``warmup``,
    ``min_runs``, ``max_runs``, ``min_time``, ``max_time`` (seconds) and
    ``rel_ci`` are the timing protocol (``oracles.timing``); ``sessions`` is
    how many independently compiled models the timed runs rotate over, in
    blocks of 8 runs (0 = auto: 3 on the CPU with one thread, else 1).
    Needs the ``openvino`` extra.
    """

    name: ClassVar[str] = "openvino"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "gpu", "npu")
    requires: ClassVar[str | None] = "openvino"
    runtime: ClassVar[str] = "openvino"
    export_format: ClassVar[str] = "openvino-ir"
    gpu_devices: ClassVar[tuple[str, ...]] = ("gpu", "npu")

    precision: str = "f32"
    sessions: int = 0

    # -- settings -----------------------------------------------------------------------------

    def validate(self) -> None:
        bad = check_timed_settings("openvino", self)
        if self.precision not in _PRECISIONS:
            raise bad("precision", self.precision, "one of " + ", ".join(_PRECISIONS))
        if self.threads != 1 and self.device != "cpu":
            raise OracleSpecError(
                f"oracle 'openvino': threads applies to the cpu device only, not {self.device!r}"
            )

    @property
    def ov_device(self) -> str:
        """The OpenVINO device name this oracle compiles for (CPU, GPU, NPU)."""
        return _DEVICES[self.device]

    def check_available(self) -> None:
        ov = _ov()
        available = list(_core().available_devices)
        if not _device_present(self.ov_device, available):
            raise DeviceUnavailableError(
                f"openvino:{self.device} needs an OpenVINO {self.ov_device} device, which this "
                f"machine does not offer (OpenVINO {ov.__version__.split('-')[0]} sees "
                f"{', '.join(available) or 'no device'}); refusing to time another device"
            )

    def identity(self) -> dict[str, Any]:
        from oracles.cache import machine_identity

        ov = _ov()
        ident: dict[str, Any] = {
            "openvino": ov.__version__,
            "cpu": machine_identity()["cpu"],
        }
        try:
            ident["device_name"] = _core().get_property(self.ov_device, "FULL_DEVICE_NAME")
        except Exception:  # an absent device still keys the cache apart
            ident["device_name"] = "unknown"
        return ident

    # -- the compiled model -------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        ov = _ov()
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[str, Any] = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            props.num_streams: 1,
        }
        if self.device == "cpu":
            config[props.inference_num_threads] = self.threads
        if self.precision != "auto":
            config[hints.inference_precision] = {
                "f32": ov.Type.f32,
                "bf16": ov.Type.bf16,
                "f16": ov.Type.f16,
            }[self.precision]
        return config

    def _compile(self, model: Any) -> Any:
        try:
            compiled = _core().compile_model(model, self.ov_device, self._config())
        except Exception as exc:
            raise MeasurementFailedError(
                f"openvino:{self.device} could not compile the model: {first_line(exc)}"
            ) from exc
        ran_on = [str(d) for d in compiled.get_property("EXECUTION_DEVICES")]
        if not ran_on or not all(_device_present(self.ov_device, [d]) for d in ran_on):
            raise DeviceUnavailableError(
                f"openvino:{self.device} asked for {self.ov_device}, but the compiled model "
                f"executes on {', '.join(ran_on) or 'nothing'}; refusing to time another device"
            )
        if self.device == "cpu":
            got = int(compiled.get_property("INFERENCE_NUM_THREADS"))
            if got != self.threads:
                raise DeviceUnavailableError(
                    f"openvino:cpu asked for {self.threads} inference threads, but OpenVINO "
                    f"runs {got} here (the cores this process may use); refusing to time "
                    f"another thread count: ask for threads={got} or fewer"
                )
        return compiled

    def _settings_ran(self, compiled: Any) -> dict[str, Any]:
        # Read back from the compiled model: what ran, not what was asked.
        def prop(key: str) -> Any:
            try:
                return compiled.get_property(key)
            except Exception:
                return None

        precision = prop("INFERENCE_PRECISION_HINT")
        hint = prop("PERFORMANCE_HINT")
        # OpenVINO releases return the hint as an enum (with .name) or a plain string, and the
        # precision as an ov.Type (with .type_name) or a string: read either.
        return {
            "performance_hint": getattr(hint, "name", str(hint)),
            "num_streams": int(prop("NUM_STREAMS") or 0),
            "inference_num_threads": (
                int(prop("INFERENCE_NUM_THREADS") or 0) if self.device == "cpu" else None
            ),
            "inference_precision": str(getattr(precision, "type_name", precision)),
            "cpu_pinning": prop("ENABLE_CPU_PINNING") if self.device == "cpu" else None,
            "execution_devices": [str(d) for d in prop("EXECUTION_DEVICES") or []],
        }

    # -- measuring ----------------------------------------------------------------------------

    def measure(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Measurement:
        """Time one inference of ``model`` (ONNX bytes, path or ModelProto); see the module protocol."""
        from oracles.model import fix_input_shapes, input_ranges

        start = time.perf_counter()
        self.check_available()
        proto, shapes = fix_input_shapes(model, input_shapes, batch=self.batch)
        ranges = input_ranges(proto)
        data = proto.SerializeToString()
        del proto
        try:
            ov_model = _core().read_model(data)
        except Exception as exc:
            raise MeasurementFailedError(
                f"openvino:{self.device} could not read the ONNX model: {first_line(exc)}"
            ) from exc
        del data
        count = pool_count(self.sessions, device=self.device, threads=self.threads)
        compiled = [self._compile(ov_model) for _ in range(count)]
        feeds = _random_feeds(list(compiled[0].inputs), shapes, count=_INPUT_SETS, ranges=ranges)
        runners = [self._runner(c, feeds) for c in compiled]
        result = time_runners(runners, rotate(runners), self, label=f"openvino:{self.device}")
        return latency_measurement(
            self,
            result,
            backend="openvino",
            shapes=shapes,
            started=start,
            threads=self.threads if self.device == "cpu" else None,
            extra={
                "openvino": _ov().__version__,
                "ov_device": self.ov_device,
                **self._settings_ran(compiled[0]),
                "converged": result.converged,
                "sessions": count,
                "rel_ci": result.rel_ci,
                "input_shapes": {k: list(v) for k, v in shapes.items()},
            },
        )

    @staticmethod
    def _runner(compiled: Any, feeds: list[dict[str, Any]]) -> Callable[[], None]:
        request = compiled.create_infer_request()
        inputs = itertools.cycle(feeds)

        def run_once() -> None:
            # Synchronous: returns once the outputs are ready (on any device).
            request.infer(next(inputs), share_inputs=True, share_outputs=True)

        return run_once

"""ONNX Runtime latency: the median time of one inference on a chosen execution provider.

Protocol (see ``oracles.timing``): the model's inputs are fixed to static
shapes (``batch`` overrides dimension 0), one session is built per call with
sequential execution, one inter-op thread and ``threads`` intra-op threads;
four different random input sets are rotated so no run is served from a warm
copy of the previous input; one untimed check run, then ``warmup`` runs and
adaptive timing until the median's 95% confidence interval is within
``rel_ci`` (or a run/time cap).

Devices and what is timed:

* ``cpu``: ``session.run`` with NumPy inputs (CPUExecutionProvider).
* ``cuda`` / ``tensorrt``: inputs live on the GPU and outputs are bound to
  the GPU through IOBinding, so host<->device copies are not timed; with
  ``copies=1`` NumPy inputs go through ``session.run`` and the copies are
  timed. ``run_with_iobinding`` returns after the provider has synchronised
  its stream, so the wall clock covers the GPU work. TensorRT engines and
  timing caches are kept under ``<oracle cache folder>/ort-trt``; nodes
  TensorRT cannot take run on the CUDA provider.

Intra-op spinning (``spin``, on by default as in ONNX Runtime) keeps worker
threads busy-waiting between operators, which lowers latency when
``threads > 1`` at the price of CPU time; with ``threads=1`` there is no
worker pool and it has no effect.

No silent fallback: a provider this onnxruntime build lacks, or a session
whose first provider is not the one asked for, raises DeviceUnavailableError.

>>> oracle = get_oracle("onnxruntime:cpu?threads=1")  # doctest: +SKIP
>>> oracle.measure("model.onnx").value  # median milliseconds  # doctest: +SKIP
1.93
"""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from oracles.base import Measurement, check_timed_settings
from oracles.errors import (
    BackendUnavailableError,
    DeviceUnavailableError,
    MeasurementFailedError,
    ModelInputError,
    OracleError,
    OracleSpecError,
)
from oracles.timing import (
    TimedRuntimeOracle,
    latency_measurement,
    pool_count,
    rotate,
    time_runners,
    unconverged_reason,
)

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeLatency", "trt_cache_dir"]

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OPT_LEVELS = ("all", "extended", "basic", "disable")
#: Different input tensors rotated through the timed runs.
_INPUT_SETS = 4
#: Inputs from this size on (bytes) are checked against free memory with activations too.
_BIG_INPUT = 64 * 2**20
_GPU_EXTRA = 'pip install "hwprune[gpu]" (the onnxruntime-gpu package, in place of onnxruntime)'


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "the onnxruntime oracle needs the onnxruntime package: pip install onnxruntime "
            f"for the CPU, or {_GPU_EXTRA} for CUDA and TensorRT"
        ) from exc
    return onnxruntime


def trt_cache_dir() -> Path:
    """Folder for TensorRT engine and timing caches, next to the oracle cache."""
    from oracles.cache import default_cache_path

    return default_cache_path().parent / "ort-trt"


@functools.lru_cache(maxsize=1)
def _gpu_name() -> str:
    # Without torch: ask the driver's tool; an unknown name still keys the cache apart from CPUs.
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "unknown"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def _numpy_dtype(ort_type: str) -> Any:
    import numpy as np

    table = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int16)": np.int16,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
        "tensor(bool)": np.bool_,
    }
    if ort_type not in table:
        raise ModelInputError(
            f"the onnxruntime oracle cannot make random inputs of type {ort_type!r}; "
            f"supported: {', '.join(sorted(table))}"
        )
    return table[ort_type]


def _random_inputs(
    session: Any,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    count: int,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    from oracles.model import random_feeds

    inputs = [(i.name, _numpy_dtype(i.type), shapes[i.name]) for i in session.get_inputs()]
    return random_feeds(inputs, count=count, ranges=ranges)


@dataclass
class OnnxRuntimeLatency(TimedRuntimeOracle):
    """Median latency (ms) of one inference with ONNX Runtime on CPU, CUDA or TensorRT.

    Settings (spec ``onnxruntime:cpu?threads=1&batch=1``): ``threads``
    intra-op threads; ``batch`` overrides every input's first dimension;
    ``warmup``, ``min_runs``, ``max_runs``, ``min_time``, ``max_time``
    (seconds) and ``rel_ci`` are the timing protocol (``oracles.timing``);
    ``copies`` times host<->device copies on GPU providers; ``opt_level`` is
    ONNX Runtime's graph optimisation level (all, extended, basic, disable);
    ``fp16`` lets TensorRT build FP16 kernels; ``spin`` lets intra-op worker
    threads busy-wait; ``sessions`` is how many independent sessions the
    timed runs rotate over, in blocks of 8 runs (0 = auto: 3 on CPU with one
    thread, else 1); ``sample_ms`` > 0 makes one timed sample the mean of as many runs
    as last that long (fewer, steadier samples for a fast model; 0: one run each). One session's memory layout can make it a few percent faster
    or slower than the next; pooling runs over several sessions keeps that
    from showing up as a difference between two calls on the same model.
    CUDA and TensorRT need the ``gpu`` extra.
    """

    name: ClassVar[str] = "onnxruntime"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "tensorrt")
    requires: ClassVar[str | None] = None  # "gpu" for cuda/tensorrt, see check_available
    runtime: ClassVar[str] = "onnxruntime"
    export_format: ClassVar[str] = "onnx"
    gpu_devices: ClassVar[tuple[str, ...]] = ("cuda", "tensorrt")
    slow_devices: ClassVar[tuple[str, ...]] = ("tensorrt",)  # an engine build per candidate

    copies: bool = False
    opt_level: str = "all"
    fp16: bool = False
    spin: bool = True
    sessions: int = 0
    sample_ms: float = 0.0

    # -- settings -----------------------------------------------------------------------------

    def validate(self) -> None:
        bad = check_timed_settings("onnxruntime", self)
        if not (isinstance(self.sample_ms, (int, float)) and 0 <= self.sample_ms <= 1000):
            raise bad("sample_ms", self.sample_ms, "0 (one run per sample) to 1000 milliseconds")
        if self.opt_level not in _OPT_LEVELS:
            raise bad("opt_level", self.opt_level, "one of " + ", ".join(_OPT_LEVELS))
        if self.fp16 and self.device != "tensorrt":
            raise OracleSpecError(
                f"oracle 'onnxruntime': fp16=1 applies to the tensorrt device only, "
                f"not {self.device!r}; FP16 on other providers needs an FP16 ONNX model"
            )
        if self.copies and self.device == "cpu":
            raise OracleSpecError(
                "oracle 'onnxruntime': copies=1 applies to the cuda and tensorrt devices only "
                "(on the CPU there is no host<->device copy)"
            )

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider this oracle times."""
        return _PROVIDERS[self.device]

    def check_available(self) -> None:
        ort = _ort()
        available = ort.get_available_providers()
        if self.provider not in available:
            need = (
                "; TensorRT's libraries must also be installed (pip install tensorrt)"
                if self.device == "tensorrt"
                else ""
            )
            raise DeviceUnavailableError(
                f"onnxruntime:{self.device} needs the {self.provider}, which this onnxruntime "
                f"{ort.__version__} build does not have (it has {', '.join(available)}); "
                f"install the GPU build with {_GPU_EXTRA}{need}"
            )

    def identity(self) -> dict[str, Any]:
        from oracles.cache import machine_identity

        ident: dict[str, Any] = {
            "onnxruntime": _ort().__version__,
            "provider": self.provider,
            "cpu": machine_identity()["cpu"],
        }
        if self.device != "cpu":
            ident["gpu"] = _gpu_name()
        if self.device == "tensorrt":
            try:
                ident["tensorrt"] = importlib.metadata.version("tensorrt")
            except importlib.metadata.PackageNotFoundError:
                ident["tensorrt"] = "unknown"
        return ident

    # -- the session --------------------------------------------------------------------------

    def _session_options(self) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = self.threads
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.opt_level]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3  # errors only; ORT's warnings are not the user's business here
        return so

    def _providers(self) -> list[Any]:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": 0})
        if self.device == "cuda":
            return [cuda]
        folder = trt_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        trt = (
            "TensorrtExecutionProvider",
            {
                "device_id": 0,
                "trt_fp16_enable": self.fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(folder),
            },
        )
        return [trt, cuda]

    def _session(self, data: bytes) -> Any:
        ort = _ort()
        try:
            session = ort.InferenceSession(
                data, sess_options=self._session_options(), providers=self._providers()
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MeasurementFailedError(
                f"onnxruntime:{self.device} could not build a session for the model: {first}"
            ) from exc
        got = session.get_providers()
        if not got or got[0] != self.provider:
            raise DeviceUnavailableError(
                f"onnxruntime:{self.device} asked for the {self.provider}, but the session runs "
                f"on {', '.join(got) or 'nothing'}; refusing to time another device "
                f"(is a GPU visible and is {_GPU_EXTRA.split(' (')[0]} installed?)"
            )
        return session

    def _runner(self, session: Any, feeds: list[dict[str, Any]]) -> Callable[[], None]:
        ort = _ort()
        outputs = [o.name for o in session.get_outputs()]
        if self.device == "cpu" or self.copies:
            inputs = itertools.cycle(feeds)

            def run_once() -> None:
                session.run(outputs, next(inputs))

            return run_once

        # Inputs placed on the GPU once; outputs bound to the GPU, so no copy is timed.
        bindings = []
        for feed in feeds:
            binding = session.io_binding()
            for name, arr in feed.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
            for name in outputs:
                binding.bind_output(name, "cuda", 0)
            bindings.append(binding)
        bound = itertools.cycle(bindings)

        def run_once_bound() -> None:
            binding = next(bound)
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run_once_bound

    def check_memory(self, proto: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse shapes whose random input sets alone would not fit in memory."""
        from oracles.model import check_memory, input_bytes

        one = input_bytes(proto, shapes)
        needed, what = one * _INPUT_SETS, f"{_INPUT_SETS} random input sets of {one:,} bytes"
        if one >= _BIG_INPUT:
            # Large inputs mean large activations too: add one inference's peak (a static
            # count by liveness, no allocation); small models skip this cost.
            from oracles.static import peak_memory

            try:
                peak = peak_memory(proto, shapes).total_bytes
            except OracleError:
                peak = 0
            needed += peak
            what += f" and one inference's peak of {peak:,} bytes"
        check_memory(oracle=self.spec, needed=needed, what=what)

    # -- measuring ----------------------------------------------------------------------------

    def measure(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Measurement:
        """Time one inference of ``model`` (ONNX bytes, path or ModelProto); see the module protocol."""
        from oracles.model import fix_input_shapes, input_ranges

        start = time.perf_counter()
        self.check_available()
        proto, shapes = fix_input_shapes(model, input_shapes, batch=self.batch)
        self.check_memory(proto, shapes)
        ranges = input_ranges(proto)
        data = proto.SerializeToString()
        del proto
        count = pool_count(self.sessions, device=self.device, threads=self.threads)
        sessions = [self._session(data) for _ in range(count)]
        feeds = _random_inputs(sessions[0], shapes, count=_INPUT_SETS, ranges=ranges)
        runners = [self._runner(s, feeds) for s in sessions]
        result = time_runners(runners, rotate(runners), self, label=f"onnxruntime:{self.device}",
                              sample_ms=self.sample_ms)  # fmt: skip
        return latency_measurement(
            self,
            result,
            backend="onnxruntime",
            shapes=shapes,
            started=start,
            threads=self.threads,
            extra={
                "provider": self.provider,
                "providers": list(sessions[0].get_providers()),
                "converged": result.converged,
                # Why it stopped; short of its precision, what it would have needed.
                "stop": result.stop,
                **(
                    {}
                    if result.converged
                    else {
                        "needed_samples": result.needed_samples(self.rel_ci),
                        "unconverged": unconverged_reason(result, target=self.rel_ci),
                    }
                ),
                "sample_runs": result.inner,
                "sessions": count,
                "rel_ci": result.rel_ci,
                "opt_level": self.opt_level,
                "input_shapes": {k: list(v) for k, v in shapes.items()},
            },
        )

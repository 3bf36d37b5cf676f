"""Native TensorRT: build an engine from ONNX, time its GPU compute, read its device memory.

Written against the TensorRT 10 and 11 Python APIs and cuda-python's runtime
bindings; it imports neither torch nor anything from hwprune, so it runs on a
target machine that has only onnx, tensorrt and cuda-python.

TensorRT 10 vs 11: TensorRT 11 builds strongly typed networks only (the
FP16/INT8 builder flags are gone and precision comes from the ONNX's tensor
types). ``precision`` therefore means:

- ``fp32``: the ONNX as exported (fp32). TensorRT 10 builds it weakly typed
  with no precision flag (TF32 tensor cores allowed, TensorRT's default);
  TensorRT 11 builds it strongly typed, which is the same thing.
- ``fp16``: TensorRT 10 sets ``BuilderFlag.FP16``. TensorRT 11 has no such
  flag, so the ONNX is converted to fp16 (inputs and outputs kept fp32) with
  ``onnxconverter_common.float16`` when that package is installed; otherwise
  a clear error says to give an fp16 ONNX and use ``precision=onnx``.
- ``onnx``: a strongly typed network on either version; the ONNX's types rule.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from oracles.base import Measurement, Oracle, check_time_window
from oracles.errors import (
    BackendUnavailableError,
    DeviceUnavailableError,
    MeasurementFailedError,
    ModelInputError,
    OracleSpecError,
)
from oracles.timing import TimingProtocol, TimingResult

__all__ = [
    "build_engine",
    "tensorrt_version",
    "strongly_typed_only",
    "TensorRTLatency",
    "TensorRTMemory",
    "PRECISIONS",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "onnx")

_INSTALL = 'pip install "hwprune[tensorrt]"'

# Bytes per element of TensorRT data types, by enum name (INT4/FP4 pack two per byte).
_ITEMSIZE = {
    "FLOAT": 4.0,
    "HALF": 2.0,
    "BF16": 2.0,
    "INT8": 1.0,
    "UINT8": 1.0,
    "FP8": 1.0,
    "INT32": 4.0,
    "INT64": 8.0,
    "BOOL": 1.0,
    "INT4": 0.5,
    "FP4": 0.5,
    "E8M0": 1.0,
}


# ------------------------------------------------------------------ backends
def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed (the Python package 'tensorrt'): {_INSTALL}"
        ) from exc
    return tensorrt


def _cudart() -> Any:
    # cuda-python >= 12.6 moved the runtime bindings to cuda.bindings; older releases have cuda.cudart.
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the TensorRT oracles need cuda-python for device buffers and events: {_INSTALL}"
            ) from exc
    return cudart


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` tuple; raise MeasurementFailedError on an error."""
    cudart = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            detail = cudart.cudaGetErrorString(err)[1].decode()
        except Exception:
            detail = str(err)
        raise MeasurementFailedError(f"CUDA call {what} failed: {detail}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def tensorrt_version() -> str:
    """The installed TensorRT's version string (BackendUnavailableError if none)."""
    return str(_trt().__version__)


def strongly_typed_only(trt: Any | None = None) -> bool:
    """True for TensorRT 11 and later, which removed the weak-typing precision flags."""
    trt = trt or _trt()
    major = int(str(trt.__version__).split(".")[0])
    # TensorRT 11 dropped BuilderFlag.FP16; a build without it is strongly typed whatever its version.
    return major >= 11 or not hasattr(trt.BuilderFlag, "FP16")


@functools.lru_cache(maxsize=1)
def _logger_class() -> type:
    trt = _trt()

    class _Logger(trt.ILogger):
        """Forwards TensorRT's messages to logging and keeps the errors for our exceptions."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger


@functools.lru_cache(maxsize=1)
def _shared_logger() -> Any:
    # TensorRT treats the logger as process-wide (a second one draws a warning), and the
    # Python object must outlive every builder and runtime that holds it: keep one.
    return _logger_class()()


def _new_logger() -> Any:
    """The process's TensorRT logger, with the errors of earlier builds forgotten."""
    logger = _shared_logger()
    logger.errors.clear()
    return logger


# ------------------------------------------------------------------ building
def _to_fp16_onnx(proto: Any) -> Any:
    """Convert an fp32 ONNX to fp16 (I/O kept fp32), for TensorRT 11's strongly typed builds."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BackendUnavailableError(
            "precision=fp16 on TensorRT 11 (strongly typed networks only) needs the ONNX in fp16: "
            "install onnxconverter-common to convert it here (pip install onnxconverter-common), or "
            "convert it yourself (e.g. ModelOpt AutoCast) and measure it with precision=onnx"
        ) from exc
    return float16.convert_float_to_float16(proto, keep_io_types=True)


def _parser_errors(parser: Any) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node_name = _call(err, "node_name")
        op = _call(err, "node_operator")
        node = _call(err, "node")
        where = []
        if op:
            where.append(f"operator {op}")
        if node_name:
            where.append(f"node {node_name!r}")
        elif node is not None and node != -1:
            where.append(f"node #{node}")
        lines.append(f"{' '.join(where) or 'graph'}: {_call(err, 'desc') or err}")
    return "; ".join(lines) or "no error detail from the parser"


def _call(obj: Any, method: str) -> Any:
    # The parser error's accessors differ across TensorRT releases (node_name and
    # node_operator are newer than desc and node): a missing one reads as None.
    fn = getattr(obj, method, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:
        return None


def build_engine(
    onnx_model: Any,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
    precision: str = "fp32",
    sparse: bool = False,
    workspace_mib: int = 1024,
    timing_cache_path: str | os.PathLike[str] | None = None,
) -> bytes:
    """Build a serialized TensorRT engine (a plan) from an ONNX model for fixed input shapes.

    ``onnx_model`` is ONNX bytes, a path or a ModelProto; ``input_shapes`` and
    ``batch`` fix its input shapes as ``oracles.model.resolve_input_shapes``
    does (a dimension left dynamic is an error). ``precision`` is one of
    fp32, fp16, onnx (see the module docstring for TensorRT 10 vs 11).
    ``sparse`` lets TensorRT pick 2:4 structured-sparse kernels where the
    weights have that pattern. ``timing_cache_path``, when given, is read
    before the build (if it exists) and rewritten after it, so repeated
    builds of similar candidates skip most tactic timing.

    Raises ModelInputError when the ONNX parser rejects the model (naming the
    operator and node), MeasurementFailedError when the build fails.

    >>> plan = build_engine(onnx_bytes, input_shapes={"input": (1, 3, 224, 224)})  # doctest: +SKIP
    """
    from oracles.model import fix_input_shapes

    if precision not in PRECISIONS:
        raise OracleSpecError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if workspace_mib < 1:
        raise OracleSpecError(f"workspace must be at least 1 MiB, got {workspace_mib}")
    trt = _trt()
    strong_only = strongly_typed_only(trt)
    proto, shapes = fix_input_shapes(onnx_model, input_shapes, batch=batch)
    if strong_only and precision == "fp16":
        proto = _to_fp16_onnx(proto)

    logger = _new_logger()
    builder = trt.Builder(logger)
    # The parser owns the weights the network points at: it stays alive until the build is done.
    network, _parser = _parse_network(
        trt, builder, logger, proto, strongly_typed=strong_only or precision == "onnx"
    )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "fp16" and not strong_only:
        config.set_flag(trt.BuilderFlag.FP16)
    if sparse:
        # SPARSE_WEIGHTS is absent from some TensorRT builds: probe it to refuse with a sentence.
        flag = getattr(trt.BuilderFlag, "SPARSE_WEIGHTS", None)
        if flag is None:
            raise OracleSpecError(
                f"sparse=1 needs BuilderFlag.SPARSE_WEIGHTS, which TensorRT {trt.__version__} lacks"
            )
        config.set_flag(flag)
    _add_profile(builder, config, network, shapes)
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    _load_timing_cache(config, cache_path)

    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "; ".join(logger.errors[-3:]) or "no error message from TensorRT"
        raise MeasurementFailedError(f"TensorRT engine build failed ({precision}): {detail}")
    log.info("built a TensorRT engine (%s) in %.1f s", precision, time.perf_counter() - started)
    if cache_path is not None:
        _save_timing_cache(config, cache_path)
    return bytes(plan)


def _parse_network(
    trt: Any, builder: Any, logger: Any, proto: Any, *, strongly_typed: bool
) -> tuple[Any, Any]:
    """The network parsed from ``proto`` and the parser that holds its weights."""
    flags = 0
    # Releases from before strongly typed networks have no STRONGLY_TYPED flag to set.
    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and strong_flag is not None:
        flags |= 1 << int(strong_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(proto.SerializeToString()):
        raise ModelInputError(
            f"TensorRT's ONNX parser rejected the model: {_parser_errors(parser)}"
        )
    return network, parser


def _add_profile(
    builder: Any, config: Any, network: Any, shapes: Mapping[str, tuple[int, ...]]
) -> None:
    # Inputs are static after fix_input_shapes; a profile is only needed if the
    # parser still reports a dynamic dimension (e.g. shape computed in-graph).
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d < 0 for d in tensor.shape):
            shape = shapes.get(tensor.name)
            if shape is None:
                raise ModelInputError(
                    f"TensorRT sees input {tensor.name!r} as dynamic; give its shape"
                )
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, shape, shape, shape)
    if profile is not None:
        config.add_optimization_profile(profile)


def _load_timing_cache(config: Any, cache_path: Path | None) -> None:
    blob = b""
    if cache_path is not None and cache_path.is_file():
        blob = cache_path.read_bytes()
    try:
        timing_cache = config.create_timing_cache(blob)
    except Exception as exc:  # an unreadable cache file must not stop the build
        log.warning(
            "TensorRT timing cache %s unusable (%s); starting an empty one", cache_path, exc
        )
        timing_cache = config.create_timing_cache(b"")
    config.set_timing_cache(timing_cache, False)


def _save_timing_cache(config: Any, cache_path: Path) -> None:
    try:
        data = bytes(config.get_timing_cache().serialize())
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, cache_path)  # atomic: concurrent builders never see half a file
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no partial cache behind
            raise
    except OSError as exc:
        log.warning("could not save the TensorRT timing cache to %s: %s", cache_path, exc)


# ------------------------------------------------------------------- running
class _LoadedEngine:
    """A deserialized engine with an execution context, device buffers, a stream and two events."""

    def __init__(self, plan: bytes, shapes: Mapping[str, tuple[int, ...]]) -> None:
        import numpy as np

        trt, cudart = _trt(), _cudart()
        self._cudart = cudart
        self._ptrs: list[int] = []
        self.stream = self.start = self.end = None
        self.logger = _new_logger()
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise MeasurementFailedError(
                "TensorRT could not deserialize the engine: " + "; ".join(self.logger.errors[-3:])
            )
        try:
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise MeasurementFailedError("TensorRT could not create an execution context")
            self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self.start = _check(cudart.cudaEventCreate(), "cudaEventCreate")
            self.end = _check(cudart.cudaEventCreate(), "cudaEventCreate")
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            rng = np.random.default_rng(0)
            for name in inputs:
                shape = tuple(shapes.get(name) or tuple(self.engine.get_tensor_shape(name)))
                if not self.context.set_input_shape(name, shape):
                    raise MeasurementFailedError(
                        f"TensorRT refused input shape {shape} for {name!r}"
                    )
            for name in names:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = self.engine.get_tensor_dtype(name)
                size = _ITEMSIZE.get(dtype.name, 4.0)
                nbytes = max(1, int(np.ceil(_volume(shape) * size)))
                ptr = int(_check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
                self._ptrs.append(ptr)
                if name in inputs and dtype.name in ("FLOAT", "HALF"):
                    host = rng.standard_normal(_volume(shape)).astype(
                        np.float32 if dtype.name == "FLOAT" else np.float16
                    )
                    _check(
                        cudart.cudaMemcpy(
                            ptr,
                            host.ctypes.data,
                            host.nbytes,
                            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                        ),
                        "cudaMemcpy",
                    )
                else:
                    _check(cudart.cudaMemset(ptr, 0, nbytes), "cudaMemset")
                if not self.context.set_tensor_address(name, ptr):
                    raise MeasurementFailedError(f"TensorRT refused the buffer for tensor {name!r}")
        except BaseException:
            self.close()
            raise

    def run_once(self) -> float:
        """One inference on the stream, bracketed by CUDA events; the GPU time in ms."""
        cudart = self._cudart
        _check(cudart.cudaEventRecord(self.start, self.stream), "cudaEventRecord")
        if not self.context.execute_async_v3(int(self.stream)):
            raise MeasurementFailedError(
                "TensorRT execute_async_v3 failed: " + "; ".join(self.logger.errors[-3:])
            )
        _check(cudart.cudaEventRecord(self.end, self.stream), "cudaEventRecord")
        _check(cudart.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        return float(
            _check(cudart.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime")
        )

    def device_memory_bytes(self) -> int:
        """Scratch memory the engine needs on the device for one execution context."""
        # device_memory_size_v2 is newer than device_memory_size: older releases have only the first.
        if hasattr(self.engine, "device_memory_size_v2"):
            return int(self.engine.device_memory_size_v2)
        return int(self.engine.device_memory_size)

    def close(self) -> None:
        cudart = self._cudart
        for ptr in self._ptrs:
            cudart.cudaFree(ptr)
        self._ptrs = []
        for event in (self.start, self.end):
            if event is not None:
                cudart.cudaEventDestroy(event)
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
        self.stream = self.start = self.end = None
        # Release in dependency order: context, then engine, then runtime.
        self.context = None
        self.engine = None
        self.runtime = None


def _volume(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    return n


def _gpu_name() -> str | None:
    cudart = _cudart()
    try:
        dev = _check(cudart.cudaGetDevice(), "cudaGetDevice")
        props = _check(cudart.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    except MeasurementFailedError:
        return None
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\x00", 1)[0].decode(errors="replace")
    return str(name)


# -------------------------------------------------------------------- oracles
@dataclass
class _TensorRTOracle(Oracle):
    """Settings and plumbing shared by the TensorRT latency and memory oracles."""

    input_format: ClassVar[str] = "onnx"
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    requires: ClassVar[str | None] = "tensorrt"
    runtime: ClassVar[str] = "tensorrt"
    export_format: ClassVar[str] = "engine"
    gpu_devices: ClassVar[tuple[str, ...]] = ("cuda",)
    slow_devices: ClassVar[tuple[str, ...]] = ("cuda",)  # an engine build per candidate

    device: str = "cuda"
    batch: int | None = None
    precision: str = "fp32"
    sparse: bool = False
    workspace: int = 1024
    isolate: bool = True
    timeout: float = 600.0
    timing_cache: bool = True

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise OracleSpecError(
                f"oracle {self.name!r}: precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        if self.batch is not None and self.batch < 1:
            raise OracleSpecError(
                f"oracle {self.name!r}: batch must be an integer >= 1, got {self.batch}"
            )
        if self.workspace < 1:
            raise OracleSpecError(
                f"oracle {self.name!r}: workspace must be at least 1 (MiB), got {self.workspace}"
            )
        if self.timeout <= 0:
            raise OracleSpecError(
                f"oracle {self.name!r}: timeout must be positive seconds, got {self.timeout}"
            )

    def check_available(self) -> None:
        """TensorRT and cuda-python importable and a CUDA GPU visible; raise otherwise."""
        try:
            trt = _trt()
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(
                f"oracle {self.name!r} needs TensorRT, which is not installed: {_INSTALL}"
            ) from exc
        cudart = _cudart()
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or not count:
            raise DeviceUnavailableError(
                f"oracle {self.name!r} needs a CUDA GPU, but the CUDA runtime finds none "
                f"({err}); TensorRT {trt.__version__} cannot run here"
            )

    def identity(self) -> dict[str, Any]:
        try:
            return {"tensorrt": tensorrt_version(), "gpu": _gpu_name()}
        except BackendUnavailableError:
            return {"tensorrt": None}

    def _timing_cache_path(self) -> Path | None:
        if not self.timing_cache:
            return None
        from oracles.cache import default_cache_path

        return default_cache_path().parent / f"tensorrt-{tensorrt_version()}-timing.cache"

    def measure(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Measurement:
        """Build an engine for ``model`` and measure it; in a subprocess unless isolate=0."""
        from oracles.model import model_bytes

        self.check_available()
        data = model_bytes(model)
        if not self.isolate:
            return self._measure_here(data, input_shapes)
        from oracles.isolation import measure_isolated

        inner = dataclasses.replace(self, isolate=False)
        result = measure_isolated(inner, data, input_shapes=input_shapes, timeout_s=self.timeout)
        return result.replace(oracle=self.spec)

    def _build(
        self, data: bytes, input_shapes: Mapping[str, tuple[int, ...]] | None
    ) -> tuple[bytes, dict[str, tuple[int, ...]], float]:
        from oracles.model import load_onnx, resolve_input_shapes

        shapes = resolve_input_shapes(load_onnx(data), input_shapes, batch=self.batch)
        started = time.perf_counter()
        plan = build_engine(
            data,
            input_shapes=shapes,
            precision=self.precision,
            sparse=self.sparse,
            workspace_mib=self.workspace,
            timing_cache_path=self._timing_cache_path(),
        )
        return plan, shapes, time.perf_counter() - started

    def _extra(self, plan: bytes, build_seconds: float) -> dict[str, Any]:
        trt = _trt()
        return {
            "tensorrt": str(trt.__version__),
            "gpu": _gpu_name(),
            "precision": self.precision,
            "strongly_typed": strongly_typed_only(trt) or self.precision == "onnx",
            "sparse": self.sparse,
            "engine_bytes": len(plan),
            "build_seconds": round(build_seconds, 3),
        }

    def _measure_here(
        self, data: bytes, input_shapes: Mapping[str, tuple[int, ...]] | None
    ) -> Measurement:
        started = time.perf_counter()
        plan, shapes, build_seconds = self._build(data, input_shapes)
        engine = _LoadedEngine(plan, shapes)
        try:
            timing = self._time(engine)
            device_memory = engine.device_memory_bytes()
        finally:
            engine.close()
        extra = self._extra(plan, build_seconds)
        if timing is not None:
            extra["converged"] = timing.converged
        extra.update(
            device_memory_bytes=device_memory, input_shapes={k: list(v) for k, v in shapes.items()}
        )
        # A latency is the timing's median; the memory oracle's value is scratch plus engine.
        fields = (
            timing.measurement_fields()
            if timing is not None
            else {"value": float(device_memory + len(plan))}
        )
        first = next(iter(shapes.values()), (1,))
        return Measurement(
            quantity=self.quantity,
            unit=self.unit,
            oracle=self.spec,
            backend=f"tensorrt {extra['tensorrt']}",
            device=self.device,
            batch=int(first[0]) if first else None,
            seconds=time.perf_counter() - started,
            extra=extra,
            **fields,
        )

    def _time(self, engine: _LoadedEngine) -> TimingResult | None:
        """The timed runs of a loaded engine; None for an oracle that does not time."""
        return None


@dataclass
class TensorRTLatency(TimingProtocol, _TensorRTOracle):
    """Median GPU compute time (ms) of a TensorRT engine built from the ONNX model.

    Like trtexec's "GPU Compute Time": each run is one ``execute_async_v3`` on
    a dedicated stream, bracketed by CUDA events, with inputs already on the
    device (no host copies timed). Runs follow the shared adaptive protocol
    (``oracles.timing``); the value is their median.

    Settings: ``batch``, ``precision`` (fp32, fp16, onnx), ``sparse`` (2:4
    sparse kernels allowed), ``workspace`` (MiB), ``isolate`` (build and time
    in a subprocess so that a crashing build becomes MeasurementFailedError),
    ``timeout`` (s, for the isolated process), ``timing_cache`` (reuse tactic
    timings across builds), ``warmup``, ``min_runs``/``max_runs``,
    ``min_time``/``max_time`` (s), ``rel_ci``.
    """

    name: ClassVar[str] = "tensorrt"
    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    timed: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        if self.warmup < 0 or self.min_runs < 1 or self.max_runs < self.min_runs:
            raise OracleSpecError(
                f"oracle 'tensorrt': expected warmup >= 0 and 1 <= min_runs <= max_runs, got "
                f"warmup={self.warmup}, min_runs={self.min_runs}, max_runs={self.max_runs}"
            )
        check_time_window("tensorrt", self)

    def _time(self, engine: _LoadedEngine) -> TimingResult | None:
        from oracles.timing import time_with_settings

        run_once: Callable[[], float] = engine.run_once
        return time_with_settings(run_once, self)


@dataclass
class TensorRTMemory(_TensorRTOracle):
    """Device memory (bytes) a TensorRT engine needs to run: activations/scratch plus the engine.

    Definition: ``device_memory_size_v2`` of the engine (the execution
    context's scratch memory for activations and workspace; the older
    ``device_memory_size`` where v2 is absent) plus the serialized engine's
    size, which holds the weights in the engine's precision and the kernels
    and is what the runtime keeps on the device. I/O buffers are not counted.
    The parts are in ``extra``: ``device_memory_bytes`` and ``engine_bytes``.
    """

    name: ClassVar[str] = "tensorrt-memory"
    quantity: ClassVar[str] = "memory"
    unit: ClassVar[str] = "bytes"
    timed: ClassVar[bool] = False

"""Latency of an ``nn.Module`` run eagerly by PyTorch, on the CPU or a CUDA GPU.

Protocol: the caller's module is deep-copied, put in eval mode and moved to
the device and dtype asked for; ``pool`` distinct random input sets are made
once and rotated so that a small model is not timed from a warm cache only;
every run is a forward pass under ``torch.inference_mode``. Runs are timed by
the shared adaptive protocol (``oracles.timing.time_adaptive``): warm-up, then
repeats until the median's confidence interval is tight or the time is spent.
On CUDA each run is bracketed by CUDA events on the current stream, so the
number is GPU time for the forward pass (kernel launches included, host
copies excluded); with ``graph=1`` the forward pass is captured once as a
CUDA graph and replayed, which removes the gaps between kernel launches.

torch is imported inside the methods that need it, so ``import
oracles.torch_latency`` stays cheap.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from oracles.base import Measurement, Oracle, check_threads, check_time_window
from oracles.errors import (
    BackendUnavailableError,
    DeviceUnavailableError,
    MeasurementFailedError,
    ModelInputError,
    OracleSpecError,
)

__all__ = ["TorchLatency", "DEFAULT_INPUT_SHAPES"]

log = logging.getLogger(__name__)

#: Input shape used when the caller gives none: one 32x32 RGB image.
DEFAULT_INPUT_SHAPES: Mapping[str, tuple[int, ...]] = {"input": (1, 3, 32, 32)}

_DTYPES = ("fp32", "fp16", "bf16")


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            "the 'torch' oracle needs PyTorch: pip install torch"
        ) from exc
    return torch


@dataclass
class TorchLatency(Oracle):
    """Median forward-pass latency (ms) of a torch module, eager mode, on CPU or CUDA.

    >>> oracle = get_oracle("torch:cpu?threads=1")  # doctest: +SKIP
    >>> oracle.measure(net, input_shapes={"input": (1, 3, 32, 32)}).value  # doctest: +SKIP
    0.41

    Settings: ``threads`` (CPU intra-op threads, set for the measurement and
    restored after), ``batch`` (replaces the first dimension of every input;
    unset keeps the shapes given), ``dtype`` (fp32, fp16 or bf16 for weights and
    inputs), ``graph`` (CUDA-graph replay; cuda only), ``channels_last``
    (NHWC memory format for 4-d inputs and weights), ``warmup``,
    ``min_runs``/``max_runs``, ``min_time``/``max_time`` (seconds of timed
    runs), ``rel_ci`` (stop when the 95% CI of the median is within this
    fraction of it) and ``pool`` (distinct input sets rotated between runs).
    """

    name: ClassVar[str] = "torch"
    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    input_format: ClassVar[str] = "torch"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    timed: ClassVar[bool] = True
    named_on_cpu: ClassVar[tuple[str, ...]] = ("threads",)
    requires: ClassVar[str | None] = None
    runtime: ClassVar[str] = "torch"
    export_format: ClassVar[str] = "torch"
    gpu_devices: ClassVar[tuple[str, ...]] = ("cuda",)

    device: str = "cpu"
    threads: int = 1
    batch: int | None = None
    dtype: str = "fp32"
    graph: bool = False
    channels_last: bool = False
    warmup: int = 10
    min_runs: int = 20
    max_runs: int = 2000
    min_time: float = 0.5
    max_time: float = 20.0
    rel_ci: float = 0.01
    pool: int = 8

    # ------------------------------------------------------------------ setup
    def validate(self) -> None:
        """Check every setting's range; raise OracleSpecError naming the bad value."""
        if self.device not in self.devices:
            raise OracleSpecError(
                f"oracle 'torch' runs on {', '.join(self.devices)}, not {self.device!r}"
            )
        if self.dtype not in _DTYPES:
            raise OracleSpecError(
                f"oracle 'torch': dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}"
            )
        if self.graph and self.device != "cuda":
            raise OracleSpecError(
                "oracle 'torch': graph=1 (CUDA-graph replay) needs device cuda, "
                f"got device {self.device!r}"
            )
        if self.batch is not None and self.batch < 1:
            raise OracleSpecError(
                f"oracle 'torch': batch must be an integer >= 1, got {self.batch}"
            )
        check_threads("torch", self.threads)
        checks = [
            ("warmup", self.warmup, 0),
            ("min_runs", self.min_runs, 1),
            ("pool", self.pool, 1),
        ]
        for key, value, low in checks:
            if value < low:
                raise OracleSpecError(
                    f"oracle 'torch': {key} must be an integer >= {low}, got {value}"
                )
        if self.max_runs < self.min_runs:
            raise OracleSpecError(
                f"oracle 'torch': max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})"
            )
        check_time_window("torch", self)

    def check_available(self) -> None:
        """Raise if torch is missing or CUDA was asked for and is absent; never fall back to CPU."""
        torch = _torch()
        if self.device == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailableError(
                "CUDA was asked for but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                "use 'torch:cpu' or run on a machine with a CUDA GPU and a CUDA build of torch"
            )

    def identity(self) -> dict[str, Any]:
        """torch version and, on CUDA, the GPU and cuDNN: what besides the model decides the time."""
        torch = _torch()
        ident: dict[str, Any] = {"torch": torch.__version__}
        if self.device == "cuda" and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            ident["gpu"] = props.name
            ident["capability"] = f"{props.major}.{props.minor}"
            ident["cuda"] = torch.version.cuda
            ident["cudnn"] = torch.backends.cudnn.version()
        return ident

    def model_key(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> str:
        """Hash of the module's structure (repr, parameter/buffer shapes and dtypes) and input shapes.

        Weight values are left out: they do not change eager latency.
        """
        torch = _torch()
        if not isinstance(model, torch.nn.Module):
            raise ModelInputError(
                f"oracle 'torch' measures a torch.nn.Module, got {type(model).__name__}"
            )
        shapes = self._shapes(input_shapes)
        h = hashlib.sha256()

        def add(*parts: Any) -> None:
            for p in parts:
                h.update(str(p).encode())
                h.update(b"\x00")

        add("repr", repr(model))
        for name, p in model.named_parameters():
            add("param", name, tuple(p.shape), p.dtype)
        for name, b in model.named_buffers():
            add("buffer", name, tuple(b.shape), b.dtype)
        for name, shape in shapes.items():
            add("input", name, shape)
        return h.hexdigest()

    def _shapes(
        self, input_shapes: Mapping[str, tuple[int, ...]] | None
    ) -> dict[str, tuple[int, ...]]:
        given = DEFAULT_INPUT_SHAPES if input_shapes is None else input_shapes
        if not isinstance(given, Mapping) or not given:
            raise ModelInputError(
                "input_shapes must map input names to shapes, e.g. {'input': (1, 3, 32, 32)}, "
                f"got {given!r}"
            )
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in given.items():
            try:
                dims = [int(d) for d in shape]
            except (TypeError, ValueError):
                dims = []
            if not dims or any(d <= 0 for d in dims):
                raise ModelInputError(
                    f"input {name!r} needs a shape of positive integers like (1, 3, 32, 32), "
                    f"got {shape!r}"
                )
            if self.batch:
                dims[0] = self.batch
            shapes[str(name)] = tuple(dims)
        return shapes

    # ---------------------------------------------------------------- measure
    def measure(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Measurement:
        """Time ``model``'s forward pass on ``input_shapes`` (default one 1x3x32x32 input)."""
        from oracles.timing import latency_measurement, time_with_settings

        torch = _torch()
        self.check_available()
        if not isinstance(model, torch.nn.Module):
            raise ModelInputError(
                f"oracle 'torch' measures a torch.nn.Module, got {type(model).__name__}"
            )
        shapes = self._shapes(input_shapes)
        started = time.perf_counter()
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]
        self._check_memory(shapes, itemsize=torch.empty((), dtype=dtype).element_size())
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if self.device == "cuda"
            else (torch.device("cpu"))
        )
        old_threads = torch.get_num_threads()
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        try:
            net = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
            pool = self._make_pool(torch, shapes, device=device, dtype=dtype)
            with torch.inference_mode():
                try:
                    net(*pool[0])
                except Exception as exc:
                    raise ModelInputError(
                        "the model's forward pass failed on inputs of shape "
                        f"{', '.join(f'{k}={v}' for k, v in shapes.items())}: {exc}"
                    ) from exc
                run_once = self._runner(torch, net, pool, device=device)
                timing = time_with_settings(run_once, self)
        except torch.cuda.OutOfMemoryError as exc:
            raise MeasurementFailedError(
                f"CUDA ran out of memory while timing the model: {exc}"
            ) from exc
        finally:
            if self.device == "cpu":
                torch.set_num_threads(old_threads)
        extra: dict[str, Any] = {
            "dtype": self.dtype,
            "graph": self.graph,
            "channels_last": self.channels_last,
            "converged": timing.converged,
            "input_shapes": {k: list(v) for k, v in shapes.items()},
        }
        if self.device == "cuda":
            extra.update(gpu_info(torch, device.index or 0))
        if not timing.converged:
            log.info(
                "torch latency did not reach rel_ci=%.3g within the run/time limits", self.rel_ci
            )
        return latency_measurement(
            self,
            timing,
            backend=f"torch {torch.__version__}",
            shapes=shapes,
            started=started,
            threads=self.threads if self.device == "cpu" else None,
            extra=extra,
        )

    def _check_memory(self, shapes: Mapping[str, tuple[int, ...]], *, itemsize: int) -> None:
        """Refuse shapes whose input pool alone would not fit in host memory (CPU only)."""
        from oracles.model import _numel, check_memory

        if self.device != "cpu":
            return  # CUDA out-of-memory is caught and reported by measure
        one = sum(_numel(s) for s in shapes.values()) * itemsize
        # randn makes each input in fp32 before the cast: count that copy too.
        check_memory(
            oracle=self.spec,
            needed=one * self.pool + sum(_numel(s) for s in shapes.values()) * 4,
            what=f"{self.pool} random input sets of {one:,} bytes",
        )

    def _make_pool(
        self, torch: Any, shapes: Mapping[str, tuple[int, ...]], *, device: Any, dtype: Any
    ) -> list[tuple[Any, ...]]:
        gen = torch.Generator().manual_seed(0)
        pool = []
        for _ in range(self.pool):
            inputs = []
            for shape in shapes.values():
                x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                inputs.append(x)
            pool.append(tuple(inputs))
        return pool

    def _runner(
        self, torch: Any, net: Any, pool: list[tuple[Any, ...]], *, device: Any
    ) -> Callable[[], float | None]:
        """The function the timing protocol calls once per run."""
        inputs = itertools.cycle(pool)
        if device.type == "cpu":

            def run_cpu() -> None:
                net(*next(inputs))
                return None

            return run_cpu

        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        if not self.graph:

            def run_cuda() -> float:
                given = next(inputs)
                start.record()
                net(*given)
                end.record()
                end.synchronize()
                return float(start.elapsed_time(end))

            return run_cuda

        static = tuple(x.clone() for x in pool[0])
        # Kernels are selected and memory pooled on a side stream before capture,
        # as torch.cuda.graphs asks; a capture right after the first call can fail.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                net(*static)
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(cuda_graph):
                net(*static)
        except Exception as exc:
            raise MeasurementFailedError(
                f"the model could not be captured as a CUDA graph (graph=1): {exc}; "
                "measure it with graph=0"
            ) from exc

        def run_graph() -> float:
            # The copy into the captured input is queued before the start event, so it is not timed.
            for dst, src in zip(static, next(inputs), strict=True):
                dst.copy_(src)
            start.record()
            cuda_graph.replay()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return run_graph


def gpu_info(torch: Any, index: int = 0) -> dict[str, Any]:
    """GPU name, compute capability, memory and, where nvidia-smi answers, clocks and driver."""
    props = torch.cuda.get_device_properties(index)
    info: dict[str, Any] = {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": int(props.total_memory),
        "sm_count": int(props.multi_processor_count),
        "cuda": torch.version.cuda,
    }
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return info
    try:
        out = subprocess.run(
            [
                smi,
                "-i",
                str(index),
                "--query-gpu=clocks.sm,clocks.mem,driver_version",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi gave no clocks: %s", exc)
        return info
    parts = [p.strip() for p in out.splitlines()[0].split(",")] if out else []
    if len(parts) == 3:
        info["sm_clock"] = parts[0]
        info["mem_clock"] = parts[1]
        info["driver_version"] = parts[2]
    return info

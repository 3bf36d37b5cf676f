"""The lab protocol every latency oracle times with: warm up, repeat until the median is pinned down.

Protocol (``time_adaptive``):

1. Warm-up: ``warmup`` untimed iterations (caches, allocators, lazy kernels,
   CPU frequency), stopped early once they take a quarter of ``max_seconds``.
2. Repeats: time one iteration at a time, with Python's garbage collector
   paused so a collection never lands inside a timed run.
3. Stop once at least ``min_runs`` runs and ``min_seconds`` of timing are done
   AND the 95% confidence interval of the median is narrower than
   ``target_rel_ci`` of the median on each side (half-width relative); or at
   ``max_runs`` / ``max_seconds``, whichever comes first, with
   ``converged=False``.
   With ``sample_ms`` > 0 one sample is the mean of as many consecutive runs as last at
   least that long (counted from the warm-up): a fast model then gives fewer, steadier
   samples. 0 (the default) times one run per sample.
4. Report the median (robust to the odd preempted run), its distribution-free
   confidence interval from order statistics, the inter-quartile range and the
   coefficient of variation of the samples.

A ``run_once`` that times itself (CUDA events, TensorRT profiling) returns
its elapsed milliseconds; one that returns ``None`` is timed here with
``time.perf_counter_ns``.

>>> result = time_adaptive(lambda: sum(range(1000)), min_seconds=0.01)
>>> result.ci_low <= result.median <= result.ci_high
True
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import gc
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from oracles.base import Measurement, Oracle
from oracles.errors import MeasurementFailedError, OracleSpecError

__all__ = [
    "TimedRuntimeOracle",
    "TimingProtocol",
    "TimingResult",
    "capped_protocol",
    "latency_measurement",
    "median_ci_ranks",
    "pool_count",
    "rotate",
    "summarize",
    "time_adaptive",
]

#: Two-sided 95% normal quantile, for the order-statistic ranks of large samples.
_Z95 = 1.959963984540054
#: Exact binomial ranks up to this many samples, the normal approximation above.
_EXACT_MAX_N = 1000


@dataclass(frozen=True)
class TimingResult:
    """The timed samples of one measurement and their robust summary (all in ms).

    ``cv`` is std / mean of the samples (a fraction); ``ci_low``..``ci_high``
    is the distribution-free 95% confidence interval of the median (with
    fewer than 6 samples no such interval exists and it spans min..max);
    ``converged`` says whether that interval met the requested width before a
    run or time cap stopped the timing.
    """

    samples_ms: tuple[float, ...]
    median: float
    iqr: float
    cv: float
    ci_low: float
    ci_high: float
    converged: bool
    wall_seconds: float = 0.0
    #: What ended the timing: "converged" (the CI target met), "max_runs" or "max_time".
    stop: str = "converged"
    #: Runs averaged into one sample (``sample_ms``: fewer, longer samples); 1 by default.
    inner: int = 1

    def needed_samples(self, target_rel_ci: float) -> int:
        """About how many samples would bring the median's CI within ``target_rel_ci``, at the
        spread seen (its width falls as one over the square root of the count)."""
        if self.rel_ci <= target_rel_ci or not math.isfinite(self.rel_ci):
            return self.n
        return math.ceil(self.n * (self.rel_ci / target_rel_ci) ** 2)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def rel_ci(self) -> float:
        """Half-width of the median's confidence interval relative to the median."""
        if self.median <= 0:
            return math.inf
        return (self.ci_high - self.ci_low) / (2.0 * self.median)

    def measurement_fields(self) -> dict[str, Any]:
        """The fields of an ``oracles.Measurement`` this result fills in."""
        return {
            "value": self.median,
            "statistic": "median",
            "samples": self.n,
            "iqr": self.iqr,
            "cv": self.cv,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
        }


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based indices (lo, hi) into the sorted samples bounding the median's confidence interval.

    Distribution-free: the number of samples below the true median is
    Binomial(n, 1/2), so [x_(lo), x_(hi)] covers it with probability at least
    ``confidence``. Exact binomial tails up to 1000 samples, the normal
    approximation above. Below 6 samples no 95% interval exists and the whole
    range (0, n - 1) is returned.
    """
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    alpha = (1.0 - confidence) / 2.0
    if n <= _EXACT_MAX_N:
        total = 2**n
        cum = 0
        # Largest k with P(B <= k - 1) <= alpha; the interval is x_(k)..x_(n-k+1) (1-based).
        k = 0
        for j in range(n + 1):
            cum += math.comb(n, j)
            if cum / total > alpha:
                k = j
                break
        if k == 0:
            return 0, n - 1
        return k - 1, n - k
    half = _Z95 * math.sqrt(n) / 2.0
    lo = max(0, math.floor(n / 2.0 - half) - 1)
    hi = min(n - 1, math.ceil(n / 2.0 + half))
    return lo, hi


def _quantile(sorted_x: Sequence[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default method).
    pos = q * (len(sorted_x) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(sorted_x) - 1)
    return sorted_x[i] + (sorted_x[j] - sorted_x[i]) * (pos - i)


def _summary(
    samples: Sequence[float], sorted_x: Sequence[float]
) -> tuple[float, float, float, float, float]:
    n = len(sorted_x)
    median = _quantile(sorted_x, 0.5)
    iqr = _quantile(sorted_x, 0.75) - _quantile(sorted_x, 0.25)
    mean = math.fsum(samples) / n
    if n > 1 and mean > 0:
        var = math.fsum((x - mean) ** 2 for x in samples) / (n - 1)
        cv = math.sqrt(var) / mean
    else:
        cv = 0.0
    lo, hi = median_ci_ranks(n)
    return median, iqr, cv, sorted_x[lo], sorted_x[hi]


def summarize(
    samples: Sequence[float], *, target_rel_ci: float | None = None, wall_seconds: float = 0.0
) -> TimingResult:
    """Summarise timed samples (ms) as a TimingResult.

    ``converged`` is true when ``target_rel_ci`` is given and the median's
    confidence interval is within it (half-width relative to the median);
    without a target it is true.
    """
    values = [float(x) for x in samples]
    if not values:
        raise ValueError("cannot summarise an empty list of timing samples")
    if any(not math.isfinite(x) or x < 0 for x in values):
        raise ValueError("timing samples must be finite, non-negative milliseconds")
    sorted_x = sorted(values)
    median, iqr, cv, ci_low, ci_high = _summary(values, sorted_x)
    converged = True
    if target_rel_ci is not None:
        converged = median > 0 and (ci_high - ci_low) / (2 * median) <= target_rel_ci
    return TimingResult(
        samples_ms=tuple(values),
        median=median,
        iqr=iqr,
        cv=cv,
        ci_low=ci_low,
        ci_high=ci_high,
        converged=converged,
        wall_seconds=wall_seconds,
    )


def _check_protocol(
    warmup: int,
    min_runs: int,
    max_runs: int,
    min_seconds: float,
    max_seconds: float,
    target_rel_ci: float,
) -> None:
    if warmup < 0:
        raise OracleSpecError(f"warmup must be 0 or more iterations, got {warmup}")
    if min_runs < 1:
        raise OracleSpecError(f"min_runs must be at least 1, got {min_runs}")
    if max_runs < min_runs:
        raise OracleSpecError(f"max_runs must be at least min_runs ({min_runs}), got {max_runs}")
    if not (math.isfinite(min_seconds) and min_seconds >= 0):
        raise OracleSpecError(f"min_seconds must be 0 or more seconds, got {min_seconds}")
    if not (math.isfinite(max_seconds) and max_seconds > 0 and max_seconds >= min_seconds):
        raise OracleSpecError(
            f"max_seconds must be positive and at least min_seconds ({min_seconds}), "
            f"got {max_seconds}"
        )
    if not (math.isfinite(target_rel_ci) and target_rel_ci > 0):
        raise OracleSpecError(
            f"target_rel_ci must be a positive fraction such as 0.01, got {target_rel_ci}"
        )


def time_adaptive(
    run_once: Callable[[], float | None],
    *,
    warmup: int = 10,
    min_runs: int = 20,
    max_runs: int = 2000,
    min_seconds: float = 0.5,
    max_seconds: float = 20.0,
    target_rel_ci: float = 0.01,
    sample_ms: float = 0.0,
) -> TimingResult:
    """Time ``run_once`` until its median is known to ``target_rel_ci``; see the module protocol.

    ``run_once()`` runs one iteration and returns its own elapsed milliseconds
    (for device-timed work) or ``None`` to be timed with ``perf_counter_ns``.
    ``min_seconds`` and ``max_seconds`` count timed iterations only (the
    warm-up is bounded separately by a quarter of ``max_seconds``). At least
    one timed run is always made.
    """
    _check_protocol(warmup, min_runs, max_runs, min_seconds, max_seconds, target_rel_ci)
    clock = time.perf_counter_ns
    wall_start = clock()
    warm_limit_ns = int(max_seconds * 0.25e9)
    warm: list[float] = []
    for _ in range(warmup):
        t0 = clock()
        reported = run_once()
        warm.append(float(reported) if reported is not None else (clock() - t0) / 1e6)
        if clock() - wall_start > warm_limit_ns:
            break
    inner = _inner_runs(sample_ms, warm)

    min_ns = int(min_seconds * 1e9)
    max_ns = int(max_seconds * 1e9)
    samples: list[float] = []
    sorted_x: list[float] = []
    timed_ns = 0
    converged = False
    stop = "max_time"
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            t0 = clock()
            told = [run_once() for _ in range(inner)]
            t1 = clock()
            own = [float(r) for r in told if r is not None]
            elapsed_ms = (math.fsum(own) if len(own) == inner else (t1 - t0) / 1e6) / inner
            timed_ns += t1 - t0
            samples.append(elapsed_ms)
            bisect.insort(sorted_x, elapsed_ms)
            n = len(samples)
            if n >= min_runs and timed_ns >= min_ns:
                lo, hi = median_ci_ranks(n)
                median = _quantile(sorted_x, 0.5)
                if median > 0 and (sorted_x[hi] - sorted_x[lo]) / (2 * median) <= target_rel_ci:
                    converged = True
                    break
            if n >= max_runs or timed_ns >= max_ns:
                stop = "max_runs" if n >= max_runs else "max_time"
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    result = summarize(
        samples, target_rel_ci=target_rel_ci, wall_seconds=(clock() - wall_start) / 1e9
    )
    # A fast model can hit max_runs before min_seconds with an interval already
    # far inside the target: that is a converged measurement too.
    converged = converged or (len(samples) >= min_runs and result.converged)
    return dataclasses.replace(
        result, converged=converged, stop="converged" if converged else stop, inner=inner
    )


def _inner_runs(sample_ms: float, warm: Sequence[float]) -> int:
    """Runs per sample so that one lasts at least ``sample_ms``, from the warm-up's median run
    (its later half: the first runs are the slow ones); 1 without either."""
    if sample_ms <= 0 or not warm:
        return 1
    later = sorted(warm[len(warm) // 2 :])
    typical = later[len(later) // 2]
    return max(1, math.ceil(sample_ms / typical)) if typical > 0 else 1


def time_with_settings(
    run_once: Callable[[], float | None], settings: Any, *, sample_ms: float = 0.0
) -> TimingResult:
    """``time_adaptive`` with a latency oracle's protocol settings.

    ``settings`` has the fields every timed oracle shares: ``warmup``,
    ``min_runs``, ``max_runs``, ``min_time``, ``max_time`` (seconds), ``rel_ci``.
    """
    return time_adaptive(
        run_once,
        warmup=settings.warmup,
        min_runs=settings.min_runs,
        max_runs=settings.max_runs,
        min_seconds=settings.min_time,
        max_seconds=settings.max_time,
        target_rel_ci=settings.rel_ci,
        sample_ms=sample_ms,
    )


def time_runners(
    runners: Sequence[Callable[[], Any]],
    run_once: Callable[[], float | None],
    settings: Any,
    *,
    label: str,
    sample_ms: float = 0.0,
) -> TimingResult:
    """Run each runner once (a model that cannot run fails here, before any timing), then
    ``time_with_settings(run_once, settings)``; a result that did not reach its CI target
    says why (:func:`warn_unconverged`). ``label`` names the backend and device in errors
    ("onnxruntime:cpu")."""
    try:
        for runner in runners:
            runner()
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise MeasurementFailedError(f"{label} failed to run the model: {first}") from exc
    result = time_with_settings(run_once, settings, sample_ms=sample_ms)
    if not result.converged:
        warn_unconverged(settings.spec, result, target=settings.rel_ci)
    return result


#: Specs already warned about in this process: later stops at a cap are logged at INFO, so
#: a search that times every candidate under one capped rule warns once, not per candidate.
_WARNED: set[str] = set()


def unconverged_reason(result: TimingResult, *, target: float) -> str:
    """Why a timing stopped short of its precision, in one sentence."""
    cap = "run cap (max_runs)" if result.stop == "max_runs" else "time cap (max_time)"
    need = result.needed_samples(target)
    per = result.wall_seconds / max(result.n, 1)
    return (
        f"stopped at its {cap} after {result.n} samples: the median's 95% CI half-width is "
        f"{100 * result.rel_ci:.2f}% against the {100 * target:.2f}% asked (CV "
        f"{100 * result.cv:.1f}%); about {need} samples (~{need * per:.0f} s) would reach it"
    )


def warn_unconverged(spec: str, result: TimingResult, *, target: float) -> None:
    """Log why ``result`` stopped short of ``target``: a warning the first time per ``spec``."""
    level = logging.INFO if spec in _WARNED else logging.WARNING
    _WARNED.add(spec)
    logging.getLogger(__name__).log(
        level, "%s: median %.4g ms %s; raise %s, or rel_ci, to reach it",
        spec, result.median, unconverged_reason(result, target=target),
        "max_runs" if result.stop == "max_runs" else "max_time",
    )  # fmt: skip


@dataclass
class TimingProtocol:
    """The timing protocol's settings, with the defaults every timed oracle starts from:
    ``warmup`` runs, ``min_runs``/``max_runs``, ``min_time``/``max_time`` (seconds of timed
    runs) and ``rel_ci`` (stop once the median's 95% CI is within this fraction of it).

    An oracle lists it first among its bases: a dataclass orders the fields of its bases
    from the last base to the first, so these come after the other bases' settings in
    the oracle's canonical spec.
    """

    warmup: int = 10
    min_runs: int = 20
    max_runs: int = 2000
    min_time: float = 0.5
    max_time: float = 20.0
    rel_ci: float = 0.01


@dataclass
class _DeviceSettings(Oracle):
    device: str = "cpu"
    threads: int = 1
    batch: int | None = None


@dataclass
class TimedRuntimeOracle(TimingProtocol, _DeviceSettings):
    """The settings every ONNX-runtime latency oracle shares: ``device``, ``threads``,
    ``batch`` and the ``TimingProtocol``'s; a subclass adds its own after them."""

    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    input_format: ClassVar[str] = "onnx"
    timed: ClassVar[bool] = True
    named_on_cpu: ClassVar[tuple[str, ...]] = ("threads",)

    def __post_init__(self) -> None:
        self.validate()


#: Consecutive timed runs on one session (compiled model) before the next takes over.
SESSION_BLOCK = 8


def pool_count(sessions: int, *, device: str, threads: int) -> int:
    """How many sessions the timed runs rotate over: ``sessions``, or where it is 0 (auto) 3
    on the CPU with one thread and else 1.

    Pooling only where sessions cannot compete for cores: idle multi-thread pools
    spinning next to each other slow every run.
    """
    return sessions or (3 if device == "cpu" and threads == 1 else 1)


def rotate(
    runners: Sequence[Callable[[], Any]], *, block: int = SESSION_BLOCK
) -> Callable[[], None]:
    """One run per call, ``block`` consecutive runs on each runner in turn.

    One session's memory layout can make it a few percent faster or slower than
    the next; pooling runs over several keeps that from showing up as a
    difference between two calls on the same model.
    """
    step = itertools.count()
    count = len(runners)

    def run_once() -> None:
        runners[(next(step) // block) % count]()

    return run_once


def latency_measurement(
    oracle: Any,
    result: TimingResult,
    *,
    backend: str,
    shapes: Mapping[str, tuple[int, ...]],
    started: float,
    threads: int | None,
    extra: Mapping[str, Any],
) -> Measurement:
    """The Measurement of a timed ``oracle`` (its spec, quantity, unit, device and ``batch``)
    from ``result``; the batch is the oracle's, or the first input's first dimension."""
    first = next(iter(shapes.values()), ())
    batch = oracle.batch if oracle.batch is not None else (first[0] if first else None)
    return Measurement(
        quantity=oracle.quantity,
        unit=oracle.unit,
        oracle=oracle.spec,
        backend=backend,
        device=oracle.device,
        threads=threads,
        batch=batch,
        seconds=time.perf_counter() - started,
        extra=dict(extra),
        **result.measurement_fields(),
    )


def capped_protocol(oracle: Any, *, max_runs: int, max_time: float) -> dict[str, Any]:
    """The setting changes that stop ``oracle``'s timing after at most ``max_runs`` runs and
    ``max_time`` seconds, where its spec leaves those settings at their defaults.

    A spec that sets ``max_runs`` or ``max_time`` keeps its own; an oracle without them (an
    exact count, a remote oracle) gets no change ({}). Apply the changes with
    ``dataclasses.replace(oracle, **changes)``: the caps are settings like any other, so
    they are in the oracle's spec, its cache key and every measurement it makes. A run cap
    bounds a call's time by construction in proportion to the model's own run time (the
    warm-up stops at a quarter of ``max_time``), and a call that stops at a cap before its
    median's confidence interval is within ``rel_ci`` reports ``converged=False``.
    """
    if not dataclasses.is_dataclass(oracle) or isinstance(oracle, type):
        return {}
    fields = {f.name: f for f in dataclasses.fields(oracle)}
    if not {"max_runs", "max_time", "min_runs", "min_time"} <= set(fields):
        return {}
    changes: dict[str, Any] = {}
    if oracle.max_runs == fields["max_runs"].default:
        # Never below min_runs: the protocol's own floor stays.
        cap = max(int(max_runs), int(oracle.min_runs))
        if cap < oracle.max_runs:
            changes["max_runs"] = cap
    if oracle.max_time == fields["max_time"].default:
        cap_s = max(float(max_time), float(oracle.min_time))
        if cap_s < oracle.max_time:
            changes["max_time"] = cap_s
    return changes

"""The timing protocol: order-statistic ranks, summaries, stopping rules."""

from __future__ import annotations

import math
import random
import time

import pytest

from oracles.errors import OracleSpecError
from oracles.timing import TimingResult, median_ci_ranks, summarize, time_adaptive


def _binom_coverage(n: int, lo: int, hi: int) -> float:
    # P(x_(lo) <= true median <= x_(hi)) = P(lo + 1 <= B <= hi), B ~ Binomial(n, 1/2).
    return sum(math.comb(n, j) for j in range(lo + 1, hi + 1)) / 2**n


@pytest.mark.parametrize(
    ("n", "expected"),
    # Textbook ranks (1-based x_(6)..x_(15) for n=20, x_(40)..x_(61) for n=100).
    [(6, (0, 5)), (10, (1, 8)), (20, (5, 14)), (100, (39, 60))],
)
def test_median_ci_ranks_match_tables(n: int, expected: tuple[int, int]) -> None:
    assert median_ci_ranks(n) == expected


@pytest.mark.parametrize("n", [6, 7, 15, 33, 200, 999, 1000, 1001, 3000])
def test_median_ci_ranks_cover_at_least_95_percent(n: int) -> None:
    lo, hi = median_ci_ranks(n)
    assert 0 <= lo < hi <= n - 1
    if n <= 1000:
        assert _binom_coverage(n, lo, hi) >= 0.95
        # Tight: one rank narrower would drop below 95%.
        assert _binom_coverage(n, lo + 1, hi - 1) < 0.95
    else:
        # Normal approximation: still covers, and not wastefully wide.
        cover = _binom_coverage(n, lo, hi)
        assert 0.95 <= cover < 0.97


def test_median_ci_ranks_small_samples_span_everything() -> None:
    assert median_ci_ranks(1) == (0, 0)
    assert median_ci_ranks(5) == (0, 4)
    with pytest.raises(ValueError):
        median_ci_ranks(0)


def test_summarize_statistics() -> None:
    samples = [float(x) for x in range(1, 21)]  # 1..20
    r = summarize(samples)
    assert r.median == pytest.approx(10.5)
    assert r.iqr == pytest.approx(15.25 - 5.75)
    mean = 10.5
    std = math.sqrt(sum((x - mean) ** 2 for x in samples) / 19)
    assert r.cv == pytest.approx(std / mean)
    assert (r.ci_low, r.ci_high) == (6.0, 15.0)
    assert r.ci_low <= r.median <= r.ci_high
    assert r.n == 20
    assert r.rel_ci == pytest.approx((15.0 - 6.0) / (2 * 10.5))
    fields = r.measurement_fields()
    assert fields["value"] == r.median and fields["statistic"] == "median"
    assert fields["samples"] == 20


def test_summarize_median_is_robust_to_outliers() -> None:
    samples = [1.0] * 50 + [1000.0] * 3
    r = summarize(samples)
    assert r.median == 1.0
    assert r.cv > 1.0  # the spread is still reported


def test_summarize_convergence_flag() -> None:
    tight = summarize([1.0 + 1e-4 * i for i in range(30)], target_rel_ci=0.01)
    loose = summarize([1.0 + 0.1 * i for i in range(30)], target_rel_ci=0.01)
    assert tight.converged
    assert not loose.converged


@pytest.mark.parametrize("bad", [[], [1.0, -2.0], [1.0, float("nan")]])
def test_summarize_rejects_bad_samples(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


def test_time_adaptive_uses_reported_times_and_warmup() -> None:
    calls = {"n": 0}

    def run_once() -> float:
        calls["n"] += 1
        return 2.0  # a device-timed iteration reporting its own milliseconds

    r = time_adaptive(run_once, warmup=7, min_runs=20, min_seconds=0.0, target_rel_ci=0.01)
    assert isinstance(r, TimingResult)
    assert r.median == 2.0 and r.ci_low == 2.0 and r.ci_high == 2.0
    assert r.converged
    assert r.n == 20  # constant samples converge as soon as min_runs is met
    assert calls["n"] == 7 + 20


def test_time_adaptive_times_with_perf_counter() -> None:
    def run_once() -> None:
        time.sleep(0.002)

    r = time_adaptive(run_once, warmup=1, min_runs=10, min_seconds=0.05, target_rel_ci=0.5)
    assert r.median >= 2.0  # sleep(2 ms) never takes less
    assert r.median < 200.0
    assert r.ci_low <= r.median <= r.ci_high
    assert sum(r.samples_ms) >= 50.0  # min_seconds is honoured


def test_time_adaptive_stops_at_max_runs_when_noisy() -> None:
    rng = random.Random(0)

    def run_once() -> float:
        return rng.uniform(1.0, 100.0)

    r = time_adaptive(run_once, warmup=0, min_runs=5, max_runs=40, min_seconds=0.0)
    assert r.n == 40
    assert not r.converged  # a 1% interval is impossible with this spread and 40 runs


def test_time_adaptive_stops_at_max_seconds() -> None:
    def run_once() -> None:
        time.sleep(0.02)

    start = time.perf_counter()
    r = time_adaptive(
        run_once, warmup=0, min_runs=1000, max_runs=2000, min_seconds=0.0, max_seconds=0.1
    )
    assert time.perf_counter() - start < 1.0
    assert 1 <= r.n <= 10
    assert not r.converged


def test_time_adaptive_keeps_running_until_min_seconds() -> None:
    r = time_adaptive(lambda: 1.0, warmup=0, min_runs=3, min_seconds=0.05, max_runs=10**6)
    # Reported times are constant, so only the wall-clock minimum keeps it going.
    assert r.n > 3
    assert r.wall_seconds >= 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_runs": 0}, "min_runs must be at least 1"),
        ({"min_runs": 10, "max_runs": 5}, "max_runs must be at least min_runs"),
        ({"warmup": -1}, "warmup"),
        ({"target_rel_ci": 0.0}, "target_rel_ci"),
        ({"min_seconds": 5.0, "max_seconds": 1.0}, "max_seconds"),
    ],
)
def test_time_adaptive_rejects_bad_protocol(kwargs: dict, match: str) -> None:
    with pytest.raises(OracleSpecError, match=match):
        time_adaptive(lambda: 1.0, **kwargs)


def test_max_runs_before_min_seconds_still_converges_when_the_interval_is_tight():
    from oracles.timing import time_adaptive

    result = time_adaptive(
        lambda: 1.0,
        warmup=1,
        min_runs=20,
        max_runs=50,
        min_seconds=100.0,
        max_seconds=200.0,
        target_rel_ci=0.01,
    )
    assert len(result.samples_ms) == 50
    assert result.converged

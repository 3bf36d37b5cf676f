"""The ONNX Runtime oracle's stop rule on a real session: it reaches its precision or says why
not (a warning and the measurement's fields), and a fast model can be timed in fewer, longer
samples."""

from __future__ import annotations

import logging

import pytest

import oracles
from oracles import timing
from tests.oracles.test_ort import convnet


@pytest.fixture(scope="module")
def small() -> bytes:
    return convnet(channels=8, size=16)


def test_a_timing_stopped_at_its_time_cap_says_so_and_what_it_needed(
    small: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A precision no run on a shared machine reaches, a time cap far too short for it.
    spec = (
        "onnxruntime:cpu?threads=1&warmup=2&min_runs=10&min_time=0&max_time=0.01"
        "&rel_ci=0.0001&sessions=1"
    )
    timing._WARNED.discard(oracles.get_oracle(spec).spec)
    with caplog.at_level(logging.INFO, logger="oracles.timing"):
        m = oracles.get_oracle(spec).measure(small)
        again = oracles.get_oracle(spec).measure(small)
    assert m.extra["converged"] is False and m.extra["stop"] == "max_time"
    assert m.extra["needed_samples"] > m.samples
    assert "time cap (max_time)" in m.extra["unconverged"]
    assert again.extra["stop"] == "max_time"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "time cap" in r.message]
    # Warned once for the spec; the second stop at the same cap is logged, not warned again.
    assert len(warnings) == 1 and "raise max_time" in warnings[0].message
    assert len(infos) == 1


def test_a_run_cap_is_named_as_such(small: bytes) -> None:
    spec = "onnxruntime:cpu?threads=1&warmup=1&min_runs=5&max_runs=6&rel_ci=0.0001&sessions=1"
    m = oracles.get_oracle(spec).measure(small)
    assert m.samples == 6 and m.extra["stop"] == "max_runs" and not m.extra["converged"]
    assert "run cap (max_runs)" in m.extra["unconverged"]


def test_a_reachable_precision_converges_and_says_nothing_more(small: bytes) -> None:
    spec = "onnxruntime:cpu?threads=1&warmup=3&min_runs=10&min_time=0&max_time=10&rel_ci=0.5"
    m = oracles.get_oracle(spec).measure(small)
    assert m.extra["converged"] is True and m.extra["stop"] == "converged"
    assert "needed_samples" not in m.extra and "unconverged" not in m.extra
    assert m.extra["sample_runs"] == 1  # today's protocol: one run per sample


def test_samples_of_several_runs_are_fewer_and_time_the_same_run(small: bytes) -> None:
    base = "onnxruntime:cpu?threads=1&warmup=6&min_runs=10&max_runs=10&sessions=1"
    one = oracles.get_oracle(base).measure(small)
    long = oracles.get_oracle(f"{base}&sample_ms=20").measure(small)
    # One sample lasts at least ~20 ms: many runs of this small model each.
    assert long.extra["sample_runs"] >= 2 and long.samples == 10
    assert long.extra["sample_runs"] * one.value >= 10
    # The value is still one run's time, per run, not the sample's (a loaded machine: loose).
    assert 0.25 < long.value / one.value < 4.0
    assert "sample_ms=20" in oracles.get_oracle(f"{base}&sample_ms=20").spec


def test_sample_ms_out_of_range_is_refused() -> None:
    with pytest.raises(oracles.OracleSpecError, match="sample_ms"):
        oracles.get_oracle("onnxruntime:cpu?sample_ms=-1")

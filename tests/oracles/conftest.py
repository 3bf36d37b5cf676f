"""Fixtures shared by the oracle tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from oracles import Measurement, Oracle


def check_cpu_timing(m: Measurement, oracle: Oracle) -> None:
    """What every timed oracle reports for one thread on the CPU, timed with 10 to 200 runs."""
    assert m.quantity == "latency" and m.unit == "ms" and m.statistic == "median"
    assert m.value > 0
    assert m.ci_low is not None and m.ci_high is not None
    assert m.ci_low <= m.value <= m.ci_high
    assert 10 <= m.samples <= 200
    # The spread comes from the timed runs (a measurement that is not timed reports 0).
    assert m.iqr > 0 and m.cv > 0
    assert m.device == "cpu" and m.threads == 1 and m.batch == 1
    assert m.oracle == oracle.spec and m.seconds > 0
    assert isinstance(m.extra["converged"], bool)


@pytest.fixture(scope="session")
def cpu_timing_checked() -> Callable[[Measurement, Oracle], None]:
    """``cpu_timing_checked(m, oracle)``: see ``check_cpu_timing``."""
    return check_cpu_timing

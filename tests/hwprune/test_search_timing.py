"""The search times candidates with a capped stop rule; references and the proof keep the spec's.

A busy machine never lets a median's interval reach ``rel_ci``; a tiny ``rel_ci`` in the
spec plays that machine here: every call runs to its cap, as it did under load.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

import oracles
from hwprune.budgets import bind_constraints
from hwprune.data import get_dataset
from hwprune.evaluate import Evaluator
from hwprune.evaluate.evaluator import SEARCH_MAX_RUNS, SEARCH_MAX_TIME
from hwprune.evaluate.precision import timing_lines, timing_report
from hwprune.space import ChannelSpace, Policy
from oracles.cache import cache_key
from oracles.timing import capped_protocol
from tests.nets import tiny_net

# Never converges (a 0.01% interval): every call stops at a cap, as under load.
UNREACHABLE = "onnxruntime:cpu?threads=1&rel_ci=0.0001&warmup=2&min_runs=5"


def test_the_cap_lowers_only_the_settings_a_spec_leaves_at_their_default() -> None:
    plain = oracles.get_oracle("onnxruntime:cpu?threads=1")
    changes = capped_protocol(plain, max_runs=SEARCH_MAX_RUNS, max_time=SEARCH_MAX_TIME)
    assert changes == {"max_runs": SEARCH_MAX_RUNS, "max_time": SEARCH_MAX_TIME}
    capped = dataclasses.replace(plain, **changes)
    assert capped.spec == (
        f"onnxruntime:cpu?threads=1&max_runs={SEARCH_MAX_RUNS}&max_time={SEARCH_MAX_TIME}"
    )
    # The cap is in the cache key: a capped value never answers a call with the full rule.
    assert cache_key(capped, "model") != cache_key(plain, "model")
    own = oracles.get_oracle("onnxruntime:cpu?threads=1&max_runs=5000&max_time=60")
    assert capped_protocol(own, max_runs=200, max_time=2.0) == {}
    # Never below the spec's own floor of runs or seconds.
    floor = oracles.get_oracle("onnxruntime:cpu?threads=1&min_runs=300&min_time=3")
    assert capped_protocol(floor, max_runs=200, max_time=2.0) == {"max_runs": 300, "max_time": 3.0}
    assert capped_protocol(oracles.get_oracle("params"), max_runs=200, max_time=2.0) == {}


def test_search_calls_stop_at_the_cap_and_say_so_while_the_proof_keeps_the_full_rule() -> None:
    data = get_dataset("digits", input_size=8)
    space = ChannelSpace(tiny_net(), example_input_shape=(1, *data.input_shape))
    ev = Evaluator(
        space=space,
        data=data,
        constraints=bind_constraints(["latency<=100%"], oracles={"latency": UNREACHABLE}),
        bn_batches=1,
        bn_batch_size=16,
        max_eval_samples=32,
    )
    ev.calibrate()
    dense = ev.dense["latency"]
    # The reference: the spec's own rule, run to its 2000-run cap (the interval is never met).
    assert dense.oracle == oracles.get_oracle(UNREACHABLE).spec
    assert dense.samples == 2000 and dense.extra["converged"] is False

    t0 = time.perf_counter()
    outcome = ev.evaluate(Policy.uniform(space, 0.5))
    seconds = time.perf_counter() - t0
    m = outcome.measurements["latency"]
    assert m.samples == SEARCH_MAX_RUNS
    assert m.extra["converged"] is False  # marked: it stopped at the cap, not at its target
    assert f"max_runs={SEARCH_MAX_RUNS}" in m.oracle
    # By construction: 200 runs of a model timed at well under a millisecond, plus set-up.
    assert m.seconds < SEARCH_MAX_TIME + 5.0 and seconds < 60

    proof = ev.remeasure(space.apply(outcome.policy))["latency"]
    assert proof.oracle == dense.oracle and proof.samples == 2000

    report = timing_report(ev, {"latency": proof})["latency"]
    assert report["search"] == {
        "measured": 1,
        "converged": 0,
        "rel_ci_median": pytest.approx((m.ci_high - m.ci_low) / (2 * m.value)),
        "rel_ci_max": pytest.approx((m.ci_high - m.ci_low) / (2 * m.value)),
        "samples_median": SEARCH_MAX_RUNS,
    }
    assert report["target_rel_ci"] == pytest.approx(0.0001)
    assert report["final"]["samples"] == 2000 and report["final"]["converged"] is False
    assert len(report["final"]["repeat_values"]) == 3
    text = "\n".join(timing_lines({"latency": report}, units={"latency": "ms"}))
    assert "## Timing precision" in text
    assert "1 candidates timed with a capped stop rule" in text
    assert "0 reached the target" in text
    assert "final proof:" in text and "2000 runs, target NOT reached" in text

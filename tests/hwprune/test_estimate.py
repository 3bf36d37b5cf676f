"""The search's cost estimate: measured before the search, printed once, kept beside the actual.

Real parts: the CLI in a subprocess, the CIFAR VGG-11 at width 0.25 on the built-in digits,
Torch-Pruning surgery, BN re-estimation, ONNX export, ONNX Runtime timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hwprune.agents import SEARCHERS
from hwprune.progress import ProgressEvent, remaining_seconds
from hwprune.run.estimate import STAGES, plan_seconds

ROOT = Path(__file__).resolve().parents[2]
LATENCY = "latency=onnxruntime:cpu?threads=1&min_time=0.05&warmup=3"


def test_one_worker_adds_every_stage_and_workers_are_paced_by_the_slower_side() -> None:
    stages = {"surgery": 0.1, "bn": 2.0, "score": 3.0, "export": 0.4, "oracles": 0.0,
              "timing": 0.5}  # fmt: skip
    one = plan_seconds(stages, remaining=10, workers=1, timed_share=1.0)
    assert one["per_candidate"] == pytest.approx(6.0)
    assert one["total"] == pytest.approx(60.0)
    two = plan_seconds(stages, remaining=10, workers=2, timed_share=1.0)
    assert two["per_candidate"] == pytest.approx(5.5 / 2)  # preparation is the slower side
    assert two["total"] == pytest.approx(10 * 2.75 + 0.5)  # plus one timing to drain
    timed = plan_seconds({"bn": 0.1, "timing": 4.0}, remaining=10, workers=4, timed_share=0.25)
    assert timed["per_candidate"] == pytest.approx(1.0)  # a surrogate answers 3 calls in 4


def test_time_left_comes_from_the_estimate_until_a_candidate_is_measured() -> None:
    start = ProgressEvent("search", 0, 10, info={"seconds_per_step": 3.0})
    assert remaining_seconds(start, 1.0, (0, 0.0)) == pytest.approx(29.0)
    later = ProgressEvent("search", 4, 10, info={"seconds_per_step": 3.0})
    assert remaining_seconds(later, 8.0, (0, 0.0)) == pytest.approx(12.0)  # measured: 2 s each
    assert remaining_seconds(ProgressEvent("search", 0, 10), 1.0, (0, 0.0)) is None


def test_a_searcher_that_stops_by_its_own_rule_is_estimated_at_its_own_count() -> None:
    """latency-knapsack measures the smallest model and at most 8 solutions, the bisection
    searchers both ends and 8 halvings, whatever --evaluations says; the RL agents propose
    every evaluation."""
    assert SEARCHERS.get("latency-knapsack").candidates_at_most(60) == 9
    assert SEARCHERS.get("latency-knapsack").candidates_at_most(4) == 4
    assert SEARCHERS.get("knapsack-ppo").candidates_at_most(60) == 60
    assert SEARCHERS.get("uniform").candidates_at_most(60) == 10
    assert SEARCHERS.get("global-magnitude").candidates_at_most(60) == 10
    assert SEARCHERS.get("global-magnitude").candidates_at_most(6) == 6


@pytest.mark.parametrize("threshold", [0.0031, 0.2, 0.6173, 0.9999])
def test_the_bisection_never_evaluates_more_than_its_estimate(threshold: float) -> None:
    from hwprune.agents.baselines import TOLERANCE, bisect_largest_feasible, bisection_evaluations

    asked: list[float] = []

    class Line:  # a budget on x itself: every x is its own shape
        budget, used, exhausted = 100, 0, False

        def __call__(self, x: float) -> SimpleNamespace:
            asked.append(x)
            return SimpleNamespace(feasible=x <= threshold, key=f"{x:.6f}", policy=x)

        def evaluate_many(self, xs: list[float]) -> list[SimpleNamespace]:
            return [self(x) for x in xs]

        def shape_key(self, x: float) -> str:
            return f"{x:.6f}"

    line = Line()
    best = bisect_largest_feasible(lambda x: x, line, space=line, lo=0.0, hi=1.0)
    assert best.feasible and threshold - TOLERANCE <= best.policy <= threshold
    assert len(asked) <= bisection_evaluations(TOLERANCE) == 10


@pytest.mark.slow
def test_prune_prints_the_estimate_before_the_search_and_reports_it_beside_the_actual(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hwprune", "prune", "--model", "vgg11_cifar", "--width", "0.25",
           "--budget", "flops<=40%", "--budget", "latency<=100%", "--oracle", LATENCY,
           "--round-to", "8", "--agent", "random", "--evaluations", "4",
           "--finetune-epochs", "0", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    estimate_lines = [i for i, t in enumerate(lines) if t.startswith("cost estimate:")]
    search_start = next(i for i, t in enumerate(lines) if t.startswith("search: started"))
    assert len(estimate_lines) == 1 and estimate_lines[0] < search_start, done.stderr
    assert "4 candidates x" in lines[estimate_lines[0]]

    estimate = json.loads((out / "cost_estimate.json").read_text())
    assert set(estimate["stages"]) == set(STAGES)
    assert estimate["stages"]["bn"] > 0 and estimate["stages"]["timing"] > 0
    assert estimate["remaining"] == 4 and estimate["total_seconds"] > 0
    assert estimate["suggestions"]
    report = json.loads((out / "report.json").read_text())
    kept = report["cost_estimate"]
    assert kept["total_seconds"] == estimate["total_seconds"]
    # The actual search time is recorded beside the estimate, for a benchmark to compare.
    assert kept["actual_search_seconds"] >= 0.99 * report["stage_seconds"]["search"] > 0
    assert kept["actual_over_estimate"] > 0
    assert "Cost estimate before the search" in (out / "report.md").read_text()

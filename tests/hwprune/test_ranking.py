"""How the final choice ranks feasible candidates: accuracy, with sampling noise counted as a tie."""

from __future__ import annotations

import pytest

from hwprune.evaluate import Outcome, accuracy_tolerance, rank_feasible


def outcome(key: str, accuracy: float, cost: float, feasible: bool = True) -> Outcome:
    return Outcome(index=0, policy=None, key=key, accuracy=accuracy,
                   values={"latency": cost}, costs={"latency": cost},
                   feasible=feasible)  # fmt: skip


def test_tolerance_is_two_standard_errors_and_at_least_one_image() -> None:
    assert accuracy_tolerance(0.1, 400) == pytest.approx(2 * (0.1 * 0.9 / 400) ** 0.5)
    assert accuracy_tolerance(1.0, 400) == pytest.approx(1 / 400)
    assert accuracy_tolerance(0.5, 0) == 0.0


def test_near_chance_the_least_pruned_candidate_comes_first() -> None:
    # A uniform bisection on a deep net cut hard: every proxy accuracy is chance,
    # and the floor model happens to score highest by a few images.
    floor = outcome("floor", 0.1086, 0.29)
    probes = [outcome("a", 0.1058, 0.82), outcome("b", 0.1003, 0.58), floor]
    over = outcome("over", 0.1838, 1.6, feasible=False)
    ranked = rank_feasible([*probes, over, probes[0]], samples=359)
    assert [o.key for o in ranked] == ["a", "b", "floor"]


def test_a_clear_accuracy_lead_still_wins() -> None:
    small_but_better = outcome("small", 0.93, 0.5)
    big = outcome("big", 0.80, 0.99)
    ranked = rank_feasible([big, small_but_better], samples=359)
    assert [o.key for o in ranked] == ["small", "big"]


def test_groups_after_the_first_follow_the_same_rule() -> None:
    outs = [outcome("t1", 0.90, 0.70), outcome("t2", 0.89, 0.95),
            outcome("m1", 0.60, 0.40), outcome("m2", 0.59, 0.90), outcome("low", 0.30, 0.99)]  # fmt: skip
    ranked = rank_feasible(outs, samples=359)
    assert [o.key for o in ranked] == ["t2", "t1", "m2", "m1", "low"]


def test_without_a_sample_size_only_exact_ties_are_ties() -> None:
    outs = [outcome("a", 0.5, 0.3), outcome("b", 0.5, 0.9), outcome("c", 0.49, 1.0)]
    assert [o.key for o in rank_feasible(outs, samples=0)] == ["b", "a", "c"]

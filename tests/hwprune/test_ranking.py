"""How the final choice ranks feasible candidates: accuracy, with sampling noise counted as a tie."""

from __future__ import annotations

import pytest

from hwprune.evaluate import Outcome, accuracy_tolerance, chance_floor
from hwprune.evaluate.scores import CHANCE_SHARE
from hwprune.run.choose import rank_feasible


def outcome(
    key: str, accuracy: float, cost: float, feasible: bool = True, params: int | None = None
) -> Outcome:
    return Outcome(index=0, policy=None, key=key, accuracy=accuracy,
                   values={"latency": cost}, costs={"latency": cost},
                   feasible=feasible, params=params)  # fmt: skip


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


def test_the_chance_floor_is_noise_or_a_share_of_the_dense_margin() -> None:
    # Dense at 0.88 over chance 0.10: a tenth of the margin (0.078) beats two standard errors.
    assert chance_floor(0.10, 0.88, 2000) == pytest.approx(0.10 + CHANCE_SHARE * 0.78)
    # A dense model barely over chance: sampling noise sets the floor.
    assert chance_floor(0.10, 0.12, 2000) == pytest.approx(0.10 + accuracy_tolerance(0.10, 2000))
    assert chance_floor(None, 0.88, 2000) is None
    assert chance_floor(0.10, None, 2000) is None


def test_at_chance_the_floor_model_loses_to_the_larger_models_whatever_it_scores() -> None:
    # The fixed-bound grid, ResNet-32 at 20% of its latency, uniform seed 0: the 2-channel floor
    # model scored 0.1065 on 2000 proxy images, beyond the tie band of a probe 6.5x its size at
    # 0.95 of the bound (0.0845), and shipped; it fine-tuned to 0.59 where the RL searchers'
    # models of 14k-35k parameters reached 0.76-0.81.
    floor = outcome("floor", 0.1065, 0.55, params=4_611)
    probe = outcome("probe", 0.0845, 0.95, params=29_854)
    mid = outcome("mid", 0.0900, 0.90, params=13_954)
    informed = outcome("informed", 0.31, 0.40, params=9_000)
    assert rank_feasible([floor, probe, mid], samples=2000)[0].key == "floor"
    ranked = rank_feasible([floor, probe, mid, informed], samples=2000, floor=0.178)
    # Above the floor first, however small; then the at-chance ones by parameters kept.
    assert [o.key for o in ranked] == ["informed", "probe", "mid", "floor"]


def test_at_chance_a_candidate_predicted_over_its_bound_still_comes_last() -> None:
    sure = outcome("sure", 0.10, 0.80, params=1_000)
    unsure = Outcome(index=0, policy=None, key="unsure", accuracy=0.11, values={"latency": 1.02},
                     costs={"latency": 1.02}, feasible=False, params=50_000,
                     sources={"latency": "predicted"},
                     surrogate={"latency": {"straddles": True}})  # fmt: skip
    assert unsure.undecided
    ranked = rank_feasible([unsure, sure], samples=2000, undecided=True, floor=0.2)
    assert [o.key for o in ranked] == ["sure", "unsure"]


def test_the_report_says_when_the_shipped_candidate_was_chosen_at_chance() -> None:
    from types import SimpleNamespace

    from hwprune.report import _chance_lines

    history = [outcome("a", 0.11, 0.9, params=30_000), outcome("b", 0.13, 0.5, params=4_000),
               outcome("c", 0.40, 0.7, params=20_000), outcome("x", 0.9, 1.5, feasible=False)]  # fmt: skip
    at_chance = SimpleNamespace(score_floor=0.178, score_chosen=0.11, searcher=None)
    (line,) = _chance_lines(at_chance, history)
    assert "chance floor of the proxy: 0.1780" in line and "2 of 3 feasible" in line
    assert "scored 0.1100, at chance" in line
    assert "learnt from the size of the 2 of 4 candidates at chance" in line
    # A baseline follows its rule: its report does not claim it learnt anything.
    for name, learns in (("ppo-lagrangian", True), ("qlp", True), ("amc", True),
                         ("uniform", False), ("global-magnitude", False), ("random", False)):  # fmt: skip
        run = SimpleNamespace(score_floor=0.178, score_chosen=0.11, searcher=name)
        (text,) = _chance_lines(run, history)
        assert ("learnt from the size" in text) is learns, name
        assert learns or "2 of 4 candidates searched were at chance" in text
    informed = SimpleNamespace(score_floor=0.178, score_chosen=0.40, searcher=None)
    assert "at chance:" not in _chance_lines(informed, history)[0]
    assert (
        _chance_lines(SimpleNamespace(score_floor=None, score_chosen=0.4, searcher=None), history)
        == []
    )


def test_the_search_signal_is_the_score_above_the_floor_and_the_size_at_it() -> None:
    from hwprune.evaluate import search_signal

    floor, dense = 0.2, 1000
    assert search_signal(0.5, 300, floor=floor, dense_params=dense) == 0.5
    # At or below the floor: the floor scaled by the parameters kept, whatever the noise said.
    assert search_signal(0.19, 300, floor=floor, dense_params=dense) == pytest.approx(0.06)
    assert search_signal(0.05, 600, floor=floor, dense_params=dense) == pytest.approx(0.12)
    assert search_signal(0.2, 1000, floor=floor, dense_params=dense) == pytest.approx(0.2)
    # Monotone in size, and never above an informed candidate's score.
    sizes = [10, 100, 500, 999, 1000]
    signals = [search_signal(0.15, n, floor=floor, dense_params=dense) for n in sizes]
    assert signals == sorted(signals) and max(signals) <= floor < 0.2001
    # No floor (a continuous proxy, a task without a chance score) or no size: the score.
    assert search_signal(0.05, 300, floor=None, dense_params=dense) == 0.05
    assert search_signal(0.05, None, floor=floor, dense_params=dense) == 0.05
    assert search_signal(0.05, 300, floor=floor, dense_params=None) == 0.05

"""The search's confirmation step: a candidate feasible on one lucky measurement is not returned.

The "lucky" oracle below is a deterministic stand-in for timing noise (allowed:
it tests the searcher's logic, not measuring): it reports half of a model's
real ONNX parameter count the first time it sees that model and the real
count afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

import oracles
from hwprune.agents import get_searcher
from hwprune.budgets import bind_constraints
from hwprune.evaluate import Evaluator
from hwprune.run.choose import confirm_best
from hwprune.space import ChannelSpace, Policy
from tests.nets import conv_net


@oracles.register_oracle("test-lucky-latency")
@dataclasses.dataclass
class LuckyLatency(oracles.Oracle):
    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    seen: ClassVar[set[float]] = set()
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        real = oracles.get_oracle("params").measure(model).value / 1e4
        lucky = real not in self.seen  # a model is known by its size (exports differ in bytes)
        self.seen.add(real)
        value = real / 2 if lucky else real
        return oracles.Measurement(quantity="latency", value=value, unit="ms", oracle=self.spec)


@pytest.fixture(scope="module")
def space(data):
    return ChannelSpace(conv_net(32, 64, 64).eval(), example_input_shape=(1, *data.input_shape),
                        min_keep=0.1)  # fmt: skip


def test_a_candidate_feasible_only_by_luck_is_passed_over(space, data, make_evaluator):
    LuckyLatency.seen.clear()
    ev = make_evaluator(
        space, data, ["latency<=3ms"], oracle_overrides={"latency": "test-lucky-latency"}
    )
    bound = ev.constraints[0].bound
    big, small = ev.evaluate(Policy.uniform(space, 0.9)), ev.evaluate(Policy.uniform(space, 0.5))
    # Both looked feasible on their first (lucky) measurement; only the small one really is.
    assert big.feasible and small.feasible
    assert big.values["latency"] * 2 > bound >= small.values["latency"] * 2
    ranked = [dataclasses.replace(big, accuracy=0.9), dataclasses.replace(small, accuracy=0.8)]
    chosen, records = confirm_best(space, ev, ranked, top=5)
    assert chosen is not None and chosen.key == small.key
    assert [r["confirmed"] for r in records] == [False, True]
    assert records[0]["values"]["latency"] == pytest.approx(2 * big.values["latency"])
    # Asked to try only the first, nothing confirms.
    chosen, records = confirm_best(space, ev, ranked[:1], top=1)
    assert chosen is None and len(records) == 1


def test_search_confirms_its_result_and_records_it(space, data, make_evaluator):
    ev = make_evaluator(space, data, ["params<=50%"], oracle_overrides={"params": "params"})
    result = get_searcher("uniform").search(space=space, evaluator=ev, evaluations=12)
    records = result.extra["confirmations"]
    assert len(records) == 1 and records[0]["confirmed"]
    assert records[0]["key"] == result.best.key
    assert records[0]["values"]["params"] == result.best.values["params"]
    off = get_searcher("uniform").search(space=space, evaluator=ev, evaluations=12, confirm=0)
    assert "confirmations" not in off.extra and off.best.key == result.best.key


@oracles.register_oracle("test-spiky-latency")
@dataclasses.dataclass
class SpikyLatency(oracles.Oracle):
    """A timed oracle whose every third call is 60% slow: one busy moment of the machine."""

    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    timed: ClassVar[bool] = True
    calls: ClassVar[list[float]] = []
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        real = oracles.get_oracle("params").measure(model).value / 1e4
        self.calls.append(real)
        value = real * 1.6 if len(self.calls) % 3 == 1 else real
        return oracles.Measurement(quantity="latency", value=value, unit="ms", oracle=self.spec)


def test_the_final_proof_is_a_median_of_three_like_the_dense_baseline(space, data, make_evaluator):
    from hwprune.evaluate.evaluator import MEASURE_REPEATS

    SpikyLatency.calls.clear()
    ev = make_evaluator(
        space, data, ["latency<=60%"], oracle_overrides={"latency": "test-spiky-latency"}
    )
    assert MEASURE_REPEATS == 3 and len(SpikyLatency.calls) == 3  # the dense baseline
    assert ev.dense["latency"].value == pytest.approx(SpikyLatency.calls[0])  # spike ignored
    module = space.apply(Policy.uniform(space, 0.7))
    before = len(SpikyLatency.calls)
    final = ev.remeasure(module)["latency"]
    assert len(SpikyLatency.calls) == before + 3  # fresh: no cache, three calls
    real = SpikyLatency.calls[-1]
    assert final.value == pytest.approx(real)  # the spiky first call is not the verdict
    assert sorted(final.extra["repeat_values"]) == pytest.approx(sorted([1.6 * real, real, real]))
    # The bound sits between the real value and the spike: one call would have failed it.
    assert real <= ev.constraints[0].bound < 1.6 * real


def test_remeasure_times_a_real_onnx_runtime_session_three_times(space, data, make_evaluator):
    ev = make_evaluator(
        space,
        data,
        ["latency<=80%"],
        oracle_overrides={"latency": "onnxruntime:cpu?threads=1&max_runs=20"},
    )
    m = ev.remeasure(space.apply(Policy.uniform(space, 0.5)))["latency"]
    values = m.extra["repeat_values"]
    assert len(values) == 3 and values == sorted(values) and m.value == values[1] > 0
    assert not m.cached


@oracles.register_oracle("test-loaded-latency")
@dataclasses.dataclass
class LoadedLatency(oracles.Oracle):
    """Parameters / 1e4 ms, times ``load``: the test raises it after the search, as a machine
    that got busier between the search and the confirmation."""

    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    timed: ClassVar[bool] = True
    load: ClassVar[list[float]] = [1.0]
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        real = oracles.get_oracle("params").measure(model).value / 1e4
        return oracles.Measurement(quantity="latency", value=real * self.load[0], unit="ms",
                                   oracle=self.spec)  # fmt: skip


def test_a_best_candidate_failing_its_confirmation_is_scaled_to_a_margin_not_dropped(space):
    """A bisection can leave one candidate near the bound and the next feasible one at the floor
    (uniform on VGG-16 shipped a model using 0.089 of its bound so): when load makes the near
    one fail its re-measurement, the choice ships it scaled down to the margin that
    re-measurement asks for, not the floor model that ranks next."""
    from hwprune.run.choose import rescue as _rescue
    from hwprune.task import BoundTask

    full = sum(p.numel() for p in space.model.parameters())
    task = BoundTask(calibrate=lambda m: None, score_samples=100_000, score_key="size",
                     score=lambda m: sum(p.numel() for p in m.parameters()) / full)  # fmt: skip
    LoadedLatency.load[0] = 1.0
    ev = Evaluator(space=space, task=task, constraints=bind_constraints(
        ["latency<=40%"], oracles={"latency": "test-loaded-latency"}))  # fmt: skip
    ev.calibrate()
    floor = ev.evaluate(Policy.uniform(space, 0.1))
    near = next(o for o in (ev.evaluate(Policy.uniform(space, 1 - k / 40)) for k in range(40))
                if o.feasible)  # fmt: skip
    assert floor.feasible and 0.9 < near.max_cost <= 1.0
    LoadedLatency.load[0] = 1.0 / near.max_cost + 0.03  # the near one fails by 3% of the bound
    best, records = confirm_best(space, ev, ev.history)
    assert records[0]["key"] == near.key and not records[0]["confirmed"]
    assert best is not None and best.params < 0.6 * near.params  # what shipped before
    chosen = _rescue(space, ev, best, records)
    assert chosen is not None and chosen.key not in (near.key, best.key)
    assert records[-1]["stage"] == "rescued" and records[-1]["confirmed"]
    assert records[-1]["key"] == chosen.key
    assert records[-1]["values"]["latency"] <= ev.constraints[0].bound
    # Scaled down by the margin only: most of the failed candidate's size is kept.
    assert best.params < chosen.params < near.params and chosen.params >= 0.8 * near.params
    # A fallback within the accuracy tolerance of the failed one is kept as it is.
    assert _rescue(space, ev, chosen, [{**records[0]}]) is chosen


class NearChance:
    """A task whose dense model is informed (0.9) while every cut one sits near chance (0.1),
    the smaller the higher it happens to score."""

    score_samples = 100_000
    score_key = "near-chance"

    def __init__(self, space, chance: float | None) -> None:
        self.full = sum(p.numel() for p in space.model.parameters())
        self.score_chance = chance

    def calibrate(self, model):
        pass

    def score(self, model):
        size = sum(p.numel() for p in model.parameters())
        return 0.9 if size == self.full else 0.1 + 0.05 * (1 - size / self.full)


def test_at_chance_the_choice_ships_the_largest_feasible_candidate_not_the_top_score(space):
    """A deep net cut hard scores noise before fine-tuning; in the fixed-bound grid the floor
    model scored a few points above the rest and shipped at 0.55 of its bound. A task that
    gives its chance score ranks such candidates by parameters kept; a task that gives none
    keeps the old rule (the top score)."""
    from hwprune.task import BoundTask, as_task

    LoadedLatency.load[0] = 1.0
    chosen = {}
    for chance in (None, 0.1):
        task = as_task(NearChance(space, chance))
        assert isinstance(task, BoundTask) and task.score_chance == chance
        ev = Evaluator(space=space, task=task, constraints=bind_constraints(
            ["latency<=40%"], oracles={"latency": "test-loaded-latency"}))  # fmt: skip
        ev.calibrate()
        for keep in (0.1, 0.3, 0.5, 0.6, 0.8):
            ev.evaluate(Policy.uniform(space, keep))
        feasible = [o for o in ev.history if o.feasible]
        assert len(feasible) >= 3
        assert (ev.score_floor is None) == (chance is None)
        best, records = confirm_best(space, ev, ev.history)
        assert best is not None and records[0]["confirmed"]
        chosen[chance] = best.params
        smallest, largest = min(o.params for o in feasible), max(o.params for o in feasible)
    assert chosen[None] == smallest
    assert chosen[0.1] == largest


def test_at_chance_the_agents_reward_is_the_size_not_the_noise(space):
    """The search learns from what the final choice ranks by: an RL environment's reward for a
    candidate at chance is the floor scaled by its parameters kept (larger is better), where
    the proxy alone would reward the smaller model's noise."""
    import numpy as np

    from hwprune.agents.base import BudgetedEvaluator
    from hwprune.envs.layer import LayerPruningEnv
    from hwprune.task import as_task

    for chance in (None, 0.1):
        ev = Evaluator(space=space, task=as_task(NearChance(space, chance)),
                       constraints=bind_constraints(["params<=60%"], oracles={"params": "params"}))  # fmt: skip
        ev.calibrate()
        budget = BudgetedEvaluator(ev, 10)
        env = LayerPruningEnv(space, budget, submit=budget.submit)
        rewards = {}
        for action in (0.8, 0.3):  # the share of each unit pruned: keep 0.2, then 0.7
            env.reset(seed=0)
            done = False
            while not done:
                _, reward, done, _, info = env.step(np.array([action], dtype=np.float32))
            outcome = info["outcome"]
            assert reward == info["score"] == outcome.reward_score
            rewards[outcome.params] = (reward, outcome.accuracy)
        (small, (r_small, a_small)), (large, (r_large, a_large)) = sorted(rewards.items())
        assert a_small > a_large  # the proxy's noise favours the smaller model
        if chance is None:
            assert (r_small, r_large) == (a_small, a_large)
        else:
            floor = ev.score_floor
            assert r_large > r_small
            assert r_large == pytest.approx(floor * large / space.dense_params)
            assert [o.signal for o in budget.outcomes] == [r_small, r_large]


def test_a_task_chance_score_must_be_a_number() -> None:
    from hwprune.errors import ConfigError
    from hwprune.task import as_task

    class Bad:
        score_chance = "ten percent"

        def score(self, model):
            return 0.0

    with pytest.raises(ConfigError, match="score_chance must be a finite number or None"):
        as_task(Bad())

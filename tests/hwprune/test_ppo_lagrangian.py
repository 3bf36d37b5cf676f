"""PPO-Lagrangian: real SB3 PPO, real surgery and oracles on a tiny conv net over digits."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest

import oracles
from hwprune.agents import get_searcher
from hwprune.agents.ppo_lagrangian import _Lagrange
from hwprune.errors import ConfigError
from hwprune.export.onnx import export_onnx
from hwprune.space import ChannelSpace
from tests.nets import pooled_net


@pytest.fixture(scope="module")
def space(data16):
    return ChannelSpace(
        pooled_net(data16.input_shape[0]), example_input_shape=(1, *data16.input_shape)
    )


def test_short_search_returns_a_policy_that_meets_the_budget_when_remeasured(
    space, data16, make_evaluator
):
    ev = make_evaluator(space, data16, ["flops<=40%"])
    result = get_searcher("ppo-lagrangian", seed=0).search(
        space=space, evaluator=ev, evaluations=24
    )
    assert result.searcher == "ppo-lagrangian"
    assert result.evaluations == 24
    assert result.best is not None and result.best.feasible
    # Re-measure with a fresh oracle, no cache: the returned policy's model meets the bound.
    bound = ev.constraints[0].bound
    module = space.apply(result.best.policy)
    fresh = oracles.get_oracle("flops").measure(export_onnx(module, input_shape=ev.input_shape))
    assert fresh.value <= bound
    lag = result.extra["lagrange"]
    assert [e["update"] for e in lag] == list(range(len(lag)))
    # The anchor's bisection comes first; then one update per 4 episodes.
    assert result.extra["anchor"] is not None and 0 < lag[0]["evaluations"] < 12
    assert len(lag) >= 1 + (24 - lag[0]["evaluations"]) // 4
    assert all(e["flops"] >= 0 for e in lag)


# A deterministic stand-in for a latency oracle: its value is HIGH for the first
# SWITCH measurements (the dense model's included), LOW afterwards. It tests the
# agent's dual ascent, not measuring.
@oracles.register_oracle("test-switch-latency")
@dataclasses.dataclass
class SwitchLatency(oracles.Oracle):
    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    calls: ClassVar[list[int]] = [0]
    switch: ClassVar[int] = 10
    high: ClassVar[float] = 6.0
    low: ClassVar[float] = 0.4
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        self.calls[0] += 1
        value = self.high if self.calls[0] <= self.switch else self.low
        return oracles.Measurement(quantity="latency", value=value, unit="ms", oracle=self.spec)


def test_multiplier_rises_while_violated_and_falls_once_met(space, data16, make_evaluator):
    SwitchLatency.calls[0] = 0
    ev = make_evaluator(
        space, data16, ["latency<=2ms"], oracle_overrides=["latency=test-switch-latency"]
    )
    searcher = get_searcher("ppo-lagrangian", seed=1, lambda_lr=0.5, anchor=False)
    result = searcher.search(space=space, evaluator=ev, evaluations=32, repair_infeasible=False)
    lag = [e["latency"] for e in result.extra["lagrange"]]
    costs = result.extra["mean_costs"]
    assert len(costs) == len(lag) - 1
    rose = fell = 0
    for before, after, cost in zip(lag[:-1], lag[1:], costs, strict=True):
        if cost["latency"] > 1:
            assert after > before
            rose += 1
        elif before > 0:
            assert after < before
            fell += 1
    assert rose >= 2 and fell >= 2
    peak = max(lag)
    assert lag[-1] < peak and peak > 1.0


def test_reward_uses_current_multipliers():
    lag = _Lagrange(["latency", "params"], lr=0.5, init=0.0, max_value=10.0)
    assert lag.reward(0.8, {"latency": 2.0, "params": 0.5}) == pytest.approx(0.8)
    lag.values = {"latency": 1.0, "params": 2.0}
    # 0.8 - 1 * (2 - 1) - 2 * (0.5 - 1)
    assert lag.reward(0.8, {"latency": 2.0, "params": 0.5}) == pytest.approx(0.8)
    assert lag.reward(0.8, {"latency": 1.5, "params": 1.0}) == pytest.approx(0.3)


def test_same_seed_same_policies(space, data16, make_evaluator):
    def policies(seed: int) -> list[tuple[float, ...]]:
        ev = make_evaluator(space, data16, ["flops<=50%"])
        result = get_searcher("ppo-lagrangian", seed=seed).search(
            space=space, evaluator=ev, evaluations=8, repair_infeasible=False
        )
        return [o.policy.keep for o in result.history]

    first = policies(3)
    assert policies(3) == first
    assert policies(4) != first


def test_the_agent_and_its_multipliers_are_saved_and_a_new_search_starts_afresh(
    space, data16, make_evaluator, tmp_path
):
    ckpt = tmp_path / "agent"
    first = get_searcher("ppo-lagrangian", seed=0, anchor=False).search(
        space=space,
        evaluator=make_evaluator(space, data16, ["params<=50%"]),
        evaluations=8,
        checkpoint_dir=ckpt,
    )
    assert (ckpt / "agent.zip").exists()
    state = json.loads((ckpt / "lagrange.json").read_text())
    assert state["updates"] == first.extra["updates"] == 2
    assert state["values"] == first.extra["multipliers"]
    assert state["anchor"] is None and state["searcher"] == "ppo-lagrangian"

    # The saved agent is a record of the search, never loaded: a search in the same folder
    # proposes what one without a folder proposes.
    again = get_searcher("ppo-lagrangian", seed=0, anchor=False).search(
        space=space,
        evaluator=make_evaluator(space, data16, ["params<=50%"]),
        evaluations=8,
        checkpoint_dir=ckpt,
    )
    fresh = get_searcher("ppo-lagrangian", seed=0, anchor=False).search(
        space=space,
        evaluator=make_evaluator(space, data16, ["params<=50%"]),
        evaluations=8,
    )
    assert [o.policy.keep for o in again.history] == [o.policy.keep for o in fresh.history]


def test_the_saved_state_records_the_anchor(space, data16, make_evaluator, tmp_path):
    ckpt = tmp_path / "agent"
    first = get_searcher("ppo-lagrangian", seed=0).search(
        space=space,
        evaluator=make_evaluator(space, data16, ["params<=50%"]),
        evaluations=16,
        checkpoint_dir=ckpt,
    )
    anchor = first.extra["anchor"]
    assert anchor is not None and 0.1 <= anchor <= 1.0
    assert json.loads((ckpt / "lagrange.json").read_text())["anchor"] == anchor
    # The bisection's first candidate is the dense policy.
    assert first.history[0].policy.keep == (1.0,) * len(space.units)


def test_bad_options_are_one_sentence_errors():
    with pytest.raises(ConfigError, match="episodes_per_update must be at least 1, got 0"):
        get_searcher("ppo-lagrangian", episodes_per_update=0)
    with pytest.raises(ConfigError, match="lambda_lr must be positive"):
        get_searcher("ppo-lagrangian", lambda_lr=0)


@pytest.mark.parametrize("name", ["ppo-lagrangian", "amc"])
def test_a_ten_percent_weight_budget_is_searched_below_the_channel_floor(
    data16, make_evaluator, name
):
    """The ICPR setting: ``params<=10%`` counting non-zero weights on a weight space with
    min_keep 0.01. The anchor lies under 0.1 keep (BN parameters stay dense), which the
    agents' old fixed max_prune of 0.9 rejected as a configuration error."""
    from hwprune.space import WeightSpace

    space = WeightSpace(
        pooled_net(data16.input_shape[0]),
        example_input_shape=(1, *data16.input_shape),
        min_keep=0.01,
    )
    ev = make_evaluator(
        space, data16, ["params<=10%"], oracle_overrides={"params": "params?nonzero=1"}
    )
    result = get_searcher(name, seed=0).search(space=space, evaluator=ev, evaluations=16)
    assert result.extra["anchor"] is not None and result.extra["anchor"] < 0.1
    assert result.best is not None and result.best.feasible
    assert result.best.values["params"] <= ev.constraints[0].bound


def test_report_plots_the_logged_multipliers_one_line_per_constraint(space, data16, make_evaluator):
    from hwprune.plots import lagrange_data, lagrange_figure

    ev = make_evaluator(space, data16, ["flops<=50%", "params<=50%"])
    result = get_searcher("ppo-lagrangian", seed=0, anchor=False).search(
        space=space, evaluator=ev, evaluations=8, repair_infeasible=False
    )
    logged = result.extra["lagrange"]
    plot = lagrange_data(
        logged, names=["flops", "params"], history=ev.history, mean_costs=result.extra["mean_costs"]
    )
    assert plot.x == tuple(float(e["evaluations"]) for e in logged)
    assert plot.multipliers == {n: tuple(e[n] for e in logged) for n in ("flops", "params")}
    assert plot.mean_costs["params"][1:] == tuple(c["params"] for c in result.extra["mean_costs"])
    left, right = lagrange_figure(plot).axes
    assert sorted(line.get_label() for line in left.get_lines()) == ["flops", "params"]
    assert len(right.collections) == 2  # each constraint's candidate costs

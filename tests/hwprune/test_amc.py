"""AMC: real SB3 DDPG with the action wall on a tiny conv net over digits."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import oracles
from hwprune.agents import get_searcher
from hwprune.agents.amc import TruncatedNormalNoise, amc_reward
from hwprune.errors import ConfigError
from hwprune.export.onnx import export_onnx
from hwprune.space import ChannelSpace
from tests.nets import pooled_net


@pytest.fixture(scope="module")
def space(data16):
    return ChannelSpace(
        pooled_net(data16.input_shape[0]), example_input_shape=(1, *data16.input_shape)
    )


def test_short_search_with_the_wall_stays_within_a_params_budget(space, data16, make_evaluator):
    ev = make_evaluator(space, data16, ["params<=35%"])
    result = get_searcher("amc", seed=0, warmup_episodes=4).search(
        space=space, evaluator=ev, evaluations=24
    )
    # The search ends at its budget: 24 distinct candidates, or the cap on calls (10 per
    # evaluation) once the agent settles on one shape. On this untrained net every candidate
    # is at chance, so the reward is the model's size and the agent settles at the wall.
    assert result.searcher == "amc"
    assert result.evaluations == 24 or len(result.history) >= 240
    assert result.extra["wall"] == {"params": pytest.approx(0.35)}
    # The anchor's bisection (about 7 evaluations) comes first, then the episodes.
    assert result.extra["anchor"] is not None
    assert result.extra["episodes"] >= 12
    # The wall is exact on torch's count; the ONNX count folds batch norm, so it can
    # differ by a few parameters per channel at most.
    episodes = result.history[result.extra["anchor_calls"] :]
    assert max(o.costs["params"] for o in episodes) <= 1.01
    assert result.best is not None and result.best.feasible and not result.repaired
    bound = ev.constraints[0].bound
    module = space.apply(result.best.policy)
    fresh = oracles.get_oracle("params").measure(export_onnx(module, input_shape=ev.input_shape))
    assert fresh.value <= bound
    # Exploration noise decayed after the warm-up episodes.
    assert result.extra["sigma"] < 0.5


def test_without_the_wall_random_warmup_breaks_a_tight_budget(space, data16, make_evaluator):
    ev = make_evaluator(space, data16, ["params<=35%"])
    result = get_searcher("amc", seed=0, warmup_episodes=8, action_wall=False, anchor=False).search(
        space=space, evaluator=ev, evaluations=8, repair_infeasible=False
    )
    assert result.extra["wall"] == {}
    assert max(o.costs["params"] for o in result.history) > 1.0


def test_same_seed_same_policies(space, data16, make_evaluator):
    def policies(seed: int) -> list[tuple[float, ...]]:
        result = get_searcher("amc", seed=seed, warmup_episodes=2, anchor=False).search(
            space=space,
            evaluator=make_evaluator(space, data16, ["flops<=50%"]),
            evaluations=6,
            repair_infeasible=False,
        )
        return [o.policy.keep for o in result.history]

    first = policies(5)
    assert policies(5) == first
    assert policies(6) != first


def test_the_agent_its_noise_and_replay_buffer_are_saved(space, data16, make_evaluator, tmp_path):
    ckpt = tmp_path / "amc"
    first = get_searcher("amc", seed=0, warmup_episodes=2, anchor=False).search(
        space=space,
        evaluator=make_evaluator(space, data16, ["flops<=50%"]),
        evaluations=5,
        checkpoint_dir=ckpt,
    )
    assert (ckpt / "agent.zip").exists()
    state = json.loads((ckpt / "amc.json").read_text())
    assert state["episodes"] == first.extra["episodes"] >= 5
    assert state["num_timesteps"] == state["episodes"] * len(space.units)
    assert state["algo"] == "ddpg" and state["noise"]["sigma"] == first.extra["sigma"] < 0.5
    with np.load(ckpt / "replay.npz") as buf:
        assert int(buf["pos"]) == state["num_timesteps"]
        # Every step of an episode carries that episode's final reward (AMC).
        rewards = buf["rewards"][: int(buf["pos"]), 0].reshape(-1, len(space.units))
        assert np.all(rewards == rewards[:, -1:])
        assert np.all(rewards > 0)


def test_td3_variant_runs(space, data16, make_evaluator):
    result = get_searcher("amc", seed=0, algo="td3", warmup_episodes=1, anchor=False).search(
        space=space, evaluator=make_evaluator(space, data16, ["flops<=60%"]), evaluations=4
    )
    assert result.extra["algo"] == "td3" and result.best is not None


def test_amc_reward_penalises_the_worst_excess():
    ok = SimpleNamespace(
        accuracy=0.7, reward_score=0.7, costs={"latency": 0.9, "params": 1.0}, feasible=True
    )
    bad = SimpleNamespace(
        accuracy=0.7, reward_score=0.7, costs={"latency": 1.3, "params": 1.1}, feasible=False
    )
    assert amc_reward(ok, penalty=2.0) == pytest.approx(0.7)
    assert amc_reward(bad, penalty=2.0) == pytest.approx(0.7 - 2.0 * 0.3)


def test_truncated_normal_noise_stays_in_bounds_and_decays():
    noise = TruncatedNormalNoise(sigma=0.5, decay=0.5, sigma_min=0.1, warmup=2, seed=0)
    draws = np.concatenate([noise.sample(np.array([0.9])) for _ in range(2000)])
    assert draws.min() >= -1.0 and draws.max() <= 1.0
    assert draws.mean() < 0.9  # truncation at 1 pulls the mean of draws near the edge inward
    assert (
        abs(np.median(np.concatenate([noise.sample(np.array([0.0])) for _ in range(2000)]))) < 0.05
    )
    for _ in range(2):
        noise.reset()
    assert noise.sigma == 0.5  # no decay during warm-up
    noise.reset()
    assert noise.sigma == 0.25
    for _ in range(10):
        noise.reset()
    assert noise.sigma == 0.1
    with pytest.raises(ConfigError, match="noise needs sigma > 0"):
        TruncatedNormalNoise(sigma=0.0)


def test_bad_options_are_one_sentence_errors():
    with pytest.raises(ConfigError, match="algo must be 'ddpg' or 'td3', got 'sac'"):
        get_searcher("amc", algo="sac")
    with pytest.raises(ConfigError, match="warmup_episodes must be at least 0"):
        get_searcher("amc", warmup_episodes=-1)

"""LayerPruningEnv on a real ChannelSpace: SB3's env checker, episodes, the action wall."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env
from torch import nn

import oracles
from hwprune.envs import AdditiveCostModel, LayerPruningEnv, additive_targets
from hwprune.envs.layer import OBS_FEATURES
from hwprune.errors import ConfigError
from hwprune.export.onnx import export_onnx
from hwprune.space import ChannelSpace
from tests.nets import conv_net

SHAPE = (1, 3, 16, 16)


def tiny_net() -> nn.Module:
    return conv_net(16, 32, 32, strides=(1, 2, 1)).eval()


@pytest.fixture(scope="module")
def space() -> ChannelSpace:
    return ChannelSpace(tiny_net(), example_input_shape=SHAPE, min_keep=0.1)


def mean_keep_outcome(policy) -> SimpleNamespace:
    """A trivial stand-in for the evaluator: 'accuracy' is the mean keep ratio."""
    keep = float(np.mean(policy.keep))
    return SimpleNamespace(
        accuracy=keep, reward_score=keep, costs={"params": 2 * keep}, feasible=keep <= 0.5
    )


def run_episode(env: LayerPruningEnv, action: float, *, seed: int = 0):
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    done = False
    while not done:
        obs, reward, done, truncated, info = env.step(np.array([action], dtype=np.float32))
        assert not truncated
        observations.append(obs)
        rewards.append(reward)
    return observations, rewards, info


def test_check_env_passes(space):
    env = LayerPruningEnv(space, mean_keep_outcome)
    with pytest.warns(UserWarning, match="symmetric and normalized Box action space"):
        check_env(env, warn=True)
    env_wall = LayerPruningEnv(space, mean_keep_outcome, wall={"params": 0.4})
    check_env(env_wall, warn=False)


def test_episode_one_step_per_unit_reward_at_the_end(space):
    env = LayerPruningEnv(space, mean_keep_outcome, max_prune=0.8)
    observations, rewards, info = run_episode(env, 0.5)
    assert len(rewards) == len(space.units)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == pytest.approx(0.5)
    assert info["accuracy"] == pytest.approx(0.5)
    assert info["costs"] == {"params": pytest.approx(1.0)}
    assert info["policy"].keep == pytest.approx((0.5,) * len(space.units))
    for obs in observations:
        assert obs.shape == (len(OBS_FEATURES),) and obs.dtype == np.float32
        assert env.observation_space.contains(obs)
    first, second = observations[0], observations[1]
    i_prev = OBS_FEATURES.index("previous_action")
    i_pruned = OBS_FEATURES.index("flops_pruned_so_far")
    assert first[i_prev] == 0.0 and second[i_prev] == pytest.approx(0.5)
    assert first[i_pruned] == 0.0 and second[i_pruned] > 0.0
    assert first[OBS_FEATURES.index("index")] == 0.0


def test_actions_are_clipped_to_min_keep_and_max_prune(space):
    env = LayerPruningEnv(space, mean_keep_outcome, max_prune=1.0)
    _, _, info = run_episode(env, 5.0)
    assert info["policy"].keep == pytest.approx((space.min_keep,) * len(space.units))
    env = LayerPruningEnv(space, mean_keep_outcome, max_prune=0.3)
    _, _, info = run_episode(env, 0.9)
    assert info["policy"].keep == pytest.approx((0.7,) * len(space.units))


def test_reset_seeding_is_deterministic(space):
    env = LayerPruningEnv(space, mean_keep_outcome)
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    np.testing.assert_array_equal(a, b)


def test_cost_model_matches_real_surgery(space):
    model = AdditiveCostModel(space, ["params", "flops"], low=0.1)
    rng = np.random.default_rng(0)
    for _ in range(6):
        keep = rng.uniform(0.05, 1.0, len(space.units))
        for name in ("params", "flops"):
            assert model.fraction(name, keep) == pytest.approx(
                model.measured_fraction(name, keep), rel=1e-9
            )


@pytest.mark.parametrize("target", [0.25, 0.5])
def test_action_wall_keeps_a_params_budget_reachable(space, target):
    env = LayerPruningEnv(space, mean_keep_outcome, max_prune=0.9, wall={"params": target})
    # An agent that never wants to prune: the wall alone must bring it under budget.
    _, _, info = run_episode(env, 0.0)
    keep = info["policy"].keep
    counted = env._wall_model().measured_fraction("params", keep)
    assert counted <= target
    assert counted > 0.8 * target  # the wall prunes only as much as needed
    # The budget as the real params oracle (ONNX graph) judges it, fresh, no cache.
    oracle = oracles.get_oracle("params")
    dense = oracle.measure(export_onnx(space.model, input_shape=SHAPE)).value
    pruned = oracle.measure(export_onnx(space.apply(info["policy"]), input_shape=SHAPE)).value
    assert pruned <= target * dense


def test_action_wall_prunes_at_most_max_prune_when_the_target_is_out_of_reach(space):
    env = LayerPruningEnv(space, mean_keep_outcome, max_prune=0.5, wall={"flops": 0.01})
    _, _, info = run_episode(env, 0.0)
    assert info["policy"].keep == pytest.approx((0.5,) * len(space.units))


def test_additive_targets_picks_params_and_flops_only():
    from hwprune.budgets import bind_constraints

    cons = bind_constraints(["params<=50%", "flops<=2M", "latency<=3ms"])
    cons = [cons[0].resolve(1000.0), cons[1].resolve(4e6), cons[2].resolve(5.0)]
    assert additive_targets(cons) == {"params": 0.5, "flops": 0.5}


def test_bad_settings_are_one_sentence_errors(space):
    with pytest.raises(ConfigError, match=r"max_prune must lie in \(0, 1\], got 1.5"):
        LayerPruningEnv(space, mean_keep_outcome, max_prune=1.5)
    with pytest.raises(ConfigError, match="params and FLOPs budgets only.*'latency'"):
        LayerPruningEnv(space, mean_keep_outcome, wall={"latency": 0.5})
    with pytest.raises(ConfigError, match="must be positive"):
        LayerPruningEnv(space, mean_keep_outcome, wall={"params": 0.0})


def test_anchored_env_passes_check_env_and_maps_actions_around_the_anchor(space):
    env = LayerPruningEnv(space, mean_keep_outcome, max_prune=0.8, anchor=0.6)
    check_env(env, warn=False)  # symmetric [-1, 1] Box: no warning
    assert env.action_space.low[0] == -1.0 and env.action_space.high[0] == 1.0
    assert env.anchored_keep(0.0) == pytest.approx(0.6)
    assert env.anchored_keep(1.0) == pytest.approx(1.0)
    assert env.anchored_keep(-1.0) == pytest.approx(0.2)  # keep floor = 1 - max_prune
    assert env.anchored_keep(0.5) == pytest.approx(0.8)
    assert env.anchored_keep(-0.5) == pytest.approx(0.4)
    _, _, info = run_episode(env, 0.0)
    assert info["policy"].keep == pytest.approx((0.6,) * len(space.units))
    _, _, info = run_episode(env, -0.5)
    assert info["policy"].keep == pytest.approx((0.4,) * len(space.units))


def test_anchor_outside_the_allowed_keep_range_is_an_error(space):
    with pytest.raises(ConfigError, match="anchor must be a keep ratio"):
        LayerPruningEnv(space, mean_keep_outcome, max_prune=0.8, anchor=0.1)
    with pytest.raises(ConfigError, match="anchor must be a keep ratio"):
        LayerPruningEnv(space, mean_keep_outcome, anchor=1.5)


def test_max_prune_follows_the_space_so_a_ten_percent_weight_budget_is_reachable():
    """A params<=10% budget on a weight space needs keep ratios under 0.1 (the BN
    parameters stay): the anchor found by bisection lies there, and the env must accept it.
    This failed every ICPR setting of benchmarks/paper.py before max_prune followed min_keep."""
    from hwprune.space import WeightSpace

    space = WeightSpace(tiny_net(), example_input_shape=SHAPE, min_keep=0.01)
    env = LayerPruningEnv(space, mean_keep_outcome, anchor=0.087)
    assert env.max_prune == pytest.approx(0.99) and env.keep_floor == pytest.approx(0.01)
    assert env.anchored_keep(0.0) == pytest.approx(0.087)
    assert env.anchored_keep(-1.0) == pytest.approx(0.01)
    channel = LayerPruningEnv(
        ChannelSpace(tiny_net(), example_input_shape=SHAPE, min_keep=0.1), mean_keep_outcome
    )
    assert channel.max_prune == pytest.approx(0.9)  # the default channel space: as before
    with pytest.raises(ConfigError, match="raise max_prune"):
        LayerPruningEnv(space, mean_keep_outcome, max_prune=0.9, anchor=0.087)

"""The multi-visit pruning environment of QLP (Camci et al.): many small cuts, unit by unit.

The agent walks over the prune space's units in order, ``visits`` rounds; at
each step it picks one of a few discrete fractions and prunes that fraction of
the current unit's *current* keep (density). The state is the one-hot index
of the current unit, the keep of every unit, the round's progress and the
target (the curriculum's budget as a fraction of dense). The episode ends
when a cheap estimate says every params/FLOPs budget is met, or when the
visits run out; the candidate is evaluated then, once. The reward, given at
the end only, is the proxy accuracy when the (curriculum) budgets are met,
else accuracy minus ``penalty`` times the summed excess cost.

Latency has no cheap estimate, so with a latency budget every episode runs all
its visits and is judged by the oracle at the end.

With ``submit`` (a parallel evaluator's), an episode whose candidate is still
being evaluated ends with reward 0 and ``info["pending"]``; the agent computes
the reward later with ``reward(outcome, target=info["target"])``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from hwprune.envs.layer import reward_score
from hwprune.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["MultiVisitEnv", "DEFAULT_ACTIONS"]

#: Fractions of a unit's current keep removed by one action (0: leave it).
DEFAULT_ACTIONS: tuple[float, ...] = (0.0, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5)

_SHARE_FIELDS = {"params": "params_share", "flops": "flops_share"}


class MultiVisitEnv(gym.Env):
    """Gymnasium env over a ChannelSpace or WeightSpace; ``evaluate(policy)`` returns an Outcome.

    ``constraints`` are the evaluator's resolved constraints (their
    ``bound``/``dense_value`` give each budget as a fraction of dense, which
    the curriculum scales). ``target`` in (0, 1] is the curriculum level: 1 is
    the real budget; below 1 the budget's reduction is scaled down, a budget
    fraction r becoming 1 - target * (1 - r). Change it between episodes with
    ``set_target``.

    Example::

        env = MultiVisitEnv(space, evaluator.evaluate, constraints=evaluator.constraints)
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(3)
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        space: Any,
        evaluate: Callable[[Any], Any],
        *,
        constraints: Sequence[Any],
        visits: int = 3,
        actions: Sequence[float] = DEFAULT_ACTIONS,
        penalty: float = 1.0,
        target: float = 1.0,
        early_stop: bool = True,
        submit: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        from hwprune.space import Policy

        if visits < 1:
            raise ConfigError(f"visits must be at least 1, got {visits!r}")
        acts = tuple(float(a) for a in actions)
        if not acts or any(not 0.0 <= a < 1.0 for a in acts):
            raise ConfigError(f"actions must be fractions in [0, 1), got {tuple(actions)!r}")
        if penalty < 0:
            raise ConfigError(f"penalty must be at least 0, got {penalty!r}")
        self.space = space
        self.evaluate = evaluate
        self.submit = submit
        self.constraints = list(constraints)
        missing = [c.budget.text for c in self.constraints if c.bound is None or not c.dense_value]
        if missing:
            raise ConfigError(
                f"budget {missing[0]!r} has no bound yet; calibrate the evaluator "
                "(measure the dense model) before building the environment"
            )
        self.visits = int(visits)
        self.actions = acts
        self.penalty = float(penalty)
        self.early_stop = bool(early_stop)
        self.n_units = len(space.units)
        if self.n_units == 0:
            raise ConfigError("the prune space has no prunable units")
        self.min_keep = float(space.min_keep)
        self._template = Policy.dense(space)
        self._shares = self._share_vectors()
        self.target = 1.0
        self.set_target(target)

        n = self.n_units
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(2 * n + 2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(self.actions))
        self._keep = np.ones(n, dtype=np.float64)
        self._step = 0
        self.last_outcome: Any = None

    # ------------------------------------------------------------ budgets
    def _share_vectors(self) -> dict[str, Any]:
        """Per-layer costs and unit memberships for the params/FLOPs estimate.

        For each estimable constraint: (dense total, per-layer costs of the
        layers some unit touches, a 0/1 matrix layer x unit). A layer's cost
        is scaled by the product of its units' keep: a conv shrinks with the
        unit of its outputs and the unit of its inputs.
        """
        from hwprune.space import _layers

        wanted = [c.name for c in self.constraints if c.name in _SHARE_FIELDS]
        if not wanted:
            return {}
        prof = _layers.profile(self.space.model, self.space.example_inputs)
        costs = {"params": prof.params, "flops": prof.macs}
        totals = {"params": prof.total_params, "flops": prof.total_macs}
        names = sorted({n for u in self.space.units for n in u.layers})
        member = np.zeros((len(names), self.n_units), dtype=bool)
        row = {n: i for i, n in enumerate(names)}
        for j, u in enumerate(self.space.units):
            for n in u.layers:
                member[row[n], j] = True
        out: dict[str, Any] = {}
        for name in wanted:
            layer = np.array([float(costs[name].get(n, 0)) for n in names], dtype=np.float64)
            total = float(totals[name])
            if total > 0:
                out[name] = (total, layer, member)
        return out

    def fraction(self, constraint: Any, *, target: float | None = None) -> float:
        """The budget as a fraction of dense at the curriculum level ``target`` (default: current)."""
        t = self.target if target is None else float(target)
        r = float(constraint.bound) / float(constraint.dense_value)
        return 1.0 - t * (1.0 - r) if r < 1.0 else r

    def set_target(self, target: float) -> None:
        """Set the curriculum level in (0, 1]; 1 is the real budget."""
        t = float(target)
        if not 0.0 < t <= 1.0:
            raise ConfigError(f"curriculum target must lie in (0, 1], got {target!r}")
        self.target = t

    def estimate(self, keep: Sequence[float]) -> dict[str, float]:
        """Cheap estimate of params/FLOPs as a fraction of dense, without building the model.

        Each layer that a unit touches is scaled by the product of the keep
        of every unit it belongs to; layers no unit touches stay whole.
        Channel rounding is ignored, so the oracle has the last word.
        """
        k = np.asarray(keep, dtype=np.float64)
        out = {}
        for name, (total, layer, member) in self._shares.items():
            scale = np.prod(np.where(member, k[None, :], 1.0), axis=1)
            out[name] = (total - layer.sum() + float(np.dot(layer, scale))) / total
        return out

    def effective_keep(self, keep: Sequence[float]) -> np.ndarray:
        """The keep each unit really gets after the space's rounding, min_keep and pattern."""
        policy = self._template.with_keep(tuple(float(k) for k in keep))
        if self.space.granularity == "channel":
            kept = self.space.kept_channels(policy)
            got = {u.id: kept[u.id] / u.channels for u in self.space.units}
        else:
            got = self.space.densities(policy)
        return np.array([got[u.id] for u in self.space.units], dtype=np.float64)

    def _estimated_met(self) -> bool:
        if not self.early_stop or not self.constraints:
            return False
        if any(c.name not in self._shares for c in self.constraints):
            return False  # latency, memory: only the oracle knows
        est = self.estimate(self.effective_keep(self._keep))
        return all(est[c.name] <= self.fraction(c) for c in self.constraints)

    # ------------------------------------------------------------ gym API
    def _obs(self) -> np.ndarray:
        n = self.n_units
        obs = np.zeros(2 * n + 2, dtype=np.float32)
        if self._step < n * self.visits:
            obs[self._step % n] = 1.0
        obs[n : 2 * n] = self._keep
        obs[2 * n] = min(1.0, self._step / (n * self.visits))
        obs[2 * n + 1] = self.target
        return obs

    def policy(self) -> Any:
        """The policy the episode has built so far."""
        return self._template.with_keep(tuple(float(k) for k in self._keep))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "target" in options:
            self.set_target(options["target"])
        self._keep = np.ones(self.n_units, dtype=np.float64)
        self._step = 0
        self.last_outcome = None
        return self._obs(), {"target": self.target}

    def step(self, action: Any):
        a = int(action)
        if not 0 <= a < len(self.actions):
            raise ConfigError(f"action must be in 0..{len(self.actions) - 1}, got {action!r}")
        i = self._step % self.n_units
        self._keep[i] = max(self.min_keep, self._keep[i] * (1.0 - self.actions[a]))
        self._step += 1
        done = self._step >= self.n_units * self.visits or self._estimated_met()
        if not done:
            return self._obs(), 0.0, False, False, {}
        policy = self.policy()
        if self.submit is not None:
            handle = self.submit(policy)
            if not handle.done():
                info = {"pending": handle, "policy": policy, "target": self.target}
                return self._obs(), 0.0, True, False, info
            outcome = handle.result()
        else:
            outcome = self.evaluate(policy)
        self.last_outcome = outcome
        reward, excess = self.reward(outcome)
        info = {
            "outcome": outcome,
            "accuracy": float(outcome.accuracy),
            "excess": excess,
            "feasible": bool(outcome.feasible),
            "target": self.target,
        }
        return self._obs(), float(reward), True, False, info

    def reward(self, outcome: Any, *, target: float | None = None) -> tuple[float, float]:
        """(reward, summed excess cost) of an outcome judged at the curriculum's budgets
        (at level ``target``, default the current one)."""
        excess = 0.0
        for c in self.constraints:
            value = float(outcome.values[c.name])
            bound = self.fraction(c, target=target) * float(c.dense_value)
            excess += max(0.0, value / bound - 1.0)
        reward = reward_score(outcome) - self.penalty * excess
        return reward, excess

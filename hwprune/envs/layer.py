"""Layer-by-layer pruning environment: one step per prunable unit, the policy scored at the end.

The agent walks the units of a prune space in order. At each step it sees the
unit's description (position, layer kind, channels, kernel, stride, padding,
its share of the dense FLOPs and parameters) plus the episode so far (share of
dense FLOPs already pruned, share still ahead, the previous action) and picks
the fraction of the unit to prune. When the last unit is decided the whole
policy is evaluated once (proxy accuracy + every oracle) and the reward is
paid; every intermediate reward is 0.

This is the environment of constrained RL pruning (Malik et al., ICPR 2022)
and of AMC (He et al., ECCV 2018), whose "action wall" is available for
constraints that add up over units (parameters, FLOPs): each action is raised
just enough that pruning every remaining unit at the maximum still reaches
the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hwprune.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "ADDITIVE",
    "KINDS",
    "OBS_FEATURES",
    "AdditiveCostModel",
    "LayerPruningEnv",
    "additive_targets",
]

#: Unit kinds with their own one-hot slot; anything else shares the last slot.
KINDS: tuple[str, ...] = ("conv", "depthwise", "transposed", "linear")

#: Names of the observation's entries, in order.
OBS_FEATURES: tuple[str, ...] = (
    "index",
    *(f"kind_{k}" for k in KINDS),
    "kind_other",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "padding",
    "flops_share",
    "params_share",
    "flops_pruned_so_far",
    "flops_share_ahead",
    "previous_action",
)

#: Constraints the action wall can reason about, and what it counts on the pruned
#: torch module to model them: parameters or multiply-accumulates.
ADDITIVE: dict[str, str] = {
    "flops": "macs",
    "params": "params",
    "weight-memory": "params",
}


def reward_score(outcome: Any) -> float:
    """What the reward is built on: the outcome's search score (the proxy accuracy, or its
    size at chance: ``hwprune.evaluate.search_signal``)."""
    return float(outcome.reward_score)


def additive_targets(constraints: Sequence[Any]) -> dict[str, float]:
    """The action wall's targets: {constraint name: bound / dense value} for params/FLOPs budgets.

    Constraints the wall cannot model (latency, peak memory) or not yet
    calibrated are left out.
    """
    out: dict[str, float] = {}
    for c in constraints:
        if c.name in ADDITIVE and c.bound is not None and c.dense_value:
            out[c.name] = float(c.bound) / float(c.dense_value)
    return out


class AdditiveCostModel:
    """Parameters and MACs of a pruned model relative to dense, as a quadratic in the keep ratios.

    A conv's parameters and MACs are proportional to its kept output channels
    times its kept input channels, each governed by one unit (or by none), and
    a depthwise conv or a BatchNorm by one unit alone; so the relative count is
    a polynomial of degree two in the units' kept ratios, with a cross term
    only for units that share a layer. The coefficients are fit from real
    surgery on the space (``1 + 2 x units + coupled pairs`` applies, once), and
    the model is then evaluated at the space's rounded channel counts, which
    makes it exact up to float error for channel spaces.
    """

    def __init__(self, space: Any, names: Sequence[str], *, low: float) -> None:
        unknown = [n for n in names if n not in ADDITIVE]
        if unknown:
            raise ConfigError(
                f"the action wall models {', '.join(ADDITIVE)} only, got {unknown[0]!r}"
            )
        self.space = space
        self.names = tuple(names)
        self._quantities = sorted({ADDITIVE[n] for n in names})
        units = list(space.units)
        n = len(units)
        self._channels = np.array([int(u.channels) for u in units])
        self._steps = [int(u.step) for u in units]
        # A channel space rounds keep ratios to whole channels; a weight space does not.
        self._rounded = space.granularity == "channel"
        dense = self._count([1.0] * n)
        self._dense = {q: float(v) for q, v in dense.items()}
        self.alpha = {q: np.zeros(n) for q in self._quantities}
        self.beta = {q: np.zeros(n) for q in self._quantities}
        self.gamma: dict[str, dict[tuple[int, int], float]] = {q: {} for q in self._quantities}

        low = float(low)
        mid = (1.0 + low) / 2.0
        lo_d = self.ratios([low] * n) - 1.0
        mid_d = self.ratios([mid] * n) - 1.0
        for i in range(n):
            d1, d2 = float(lo_d[i]), float(mid_d[i])
            if d1 == 0.0:
                continue  # the unit cannot shrink (too few channels to prune)
            y1 = self._relative(self._count(self._one(n, i, low)))
            y2 = self._relative(self._count(self._one(n, i, mid))) if d2 not in (0.0, d1) else None
            for q in self._quantities:
                if y2 is None:
                    self.alpha[q][i] = (y1[q] - 1.0) / d1
                else:
                    a, b = np.linalg.solve(
                        np.array([[d1, d1 * d1], [d2, d2 * d2]]),
                        np.array([y1[q] - 1.0, y2[q] - 1.0]),
                    )
                    self.alpha[q][i], self.beta[q][i] = a, b
        layer_sets = [set(u.layers) for u in units]
        for i in range(n):
            for j in range(i + 1, n):
                if not (layer_sets[i] & layer_sets[j]) or lo_d[i] == 0.0 or lo_d[j] == 0.0:
                    continue
                keep = [1.0] * n
                keep[i] = keep[j] = low
                y = self._relative(self._count(keep))
                for q in self._quantities:
                    single = sum(
                        self.alpha[q][k] * lo_d[k] + self.beta[q][k] * lo_d[k] ** 2 for k in (i, j)
                    )
                    self.gamma[q][(i, j)] = (y[q] - 1.0 - single) / (lo_d[i] * lo_d[j])
        log.debug("action-wall cost model fit on %d units (%s)", n, ", ".join(self.names))

    @staticmethod
    def _one(n: int, i: int, value: float) -> list[float]:
        keep = [1.0] * n
        keep[i] = value
        return keep

    def _relative(self, counts: dict[str, float]) -> dict[str, float]:
        return {q: counts[q] / self._dense[q] if self._dense[q] else 1.0 for q in counts}

    def ratios(self, keep: Sequence[float]) -> np.ndarray:
        """The kept fraction each unit really gets (channel rounding and min_keep applied)."""
        if self._rounded:
            return np.array(
                [
                    self.space.channels_for(float(k), int(c), step=st) / int(c) if c else 1.0
                    for k, c, st in zip(keep, self._channels, self._steps, strict=True)
                ]
            )
        floor = float(self.space.min_keep)
        return np.array([max(floor, float(k)) for k in keep])

    def _count(self, keep: Sequence[float]) -> dict[str, float]:
        """Parameters (non-zeros for weight spaces) and MACs of the space applied to ``keep``."""
        import torch

        from hwprune.space import Policy
        from hwprune.space._layers import profile

        module = self.space.apply(Policy.dense(self.space).with_keep(tuple(keep)))
        out: dict[str, float] = {}
        if "params" in self._quantities:
            if self._rounded:
                out["params"] = float(sum(p.numel() for p in module.parameters()))
            else:
                out["params"] = float(sum(int(torch.count_nonzero(p)) for p in module.parameters()))
        if "macs" in self._quantities:
            out["macs"] = float(profile(module, self.space.example_inputs).total_macs)
        return out

    def fraction(self, name: str, keep: Sequence[float]) -> float:
        """Constraint ``name`` of the policy ``keep``, relative to the dense model."""
        q = ADDITIVE[name]
        d = self.ratios(keep) - 1.0
        value = 1.0 + float(np.dot(self.alpha[q], d) + np.dot(self.beta[q], d * d))
        for (i, j), g in self.gamma[q].items():
            value += g * d[i] * d[j]
        return value

    def measured_fraction(self, name: str, keep: Sequence[float]) -> float:
        """The same quantity counted on the real pruned module (for checks)."""
        q = ADDITIVE[name]
        return self._count(keep)[q] / self._dense[q]


def _kind_slot(kind: str) -> int:
    k = str(kind).lower()
    for i, name in enumerate(KINDS):
        if k == name or k.startswith(name):
            return i
    return len(KINDS)


class LayerPruningEnv(gym.Env):
    """One episode = one pruning policy, decided unit by unit.

    Args:
        space: a prune space (``ChannelSpace`` or ``WeightSpace``) with ``units``
            and ``min_keep``.
        evaluate: ``policy -> Outcome`` (a ``BudgetedEvaluator`` or any function
            returning an object with ``accuracy``, ``costs`` and ``feasible``).
        max_prune: the largest fraction of a unit one action may prune; ``None``
            (the default) allows down to the space's ``min_keep`` (0.9 for the
            default channel space, 0.98 for the default weight space), so any
            policy the space can express, a 90% parameter budget included, can
            be reached.
        wall: {constraint name: target fraction of dense} for additive
            constraints (see ``additive_targets``); ``None`` turns the action
            wall off.
        reward_fn: ``Outcome -> float``; the default is the proxy accuracy.
        anchor: a keep ratio (typically the largest uniform one that meets the
            budgets, see ``hwprune.agents.uniform_anchor``), or one per unit (the
            latency knapsack's policy, ``hwprune.agents.baselines.knapsack_anchor``). With an
            anchor the action is ``Box([-1], [1])`` and means "keep more or less than
            the unit's anchor": 0 keeps the anchor, 1 keeps everything, -1 keeps the
            least allowed (piecewise linear in between), so an agent whose actions
            start near 0 starts at the budget's boundary instead of at an
            arbitrary point of the space.
        submit: ``policy -> handle`` whose ``result()`` is the Outcome (a
            ``BudgetedEvaluator.submit``): an episode whose evaluation is still
            running ends with reward 0 and ``info["pending"]`` holding the
            handle, and the agent collects the real reward later (PPO-Lagrangian
            re-prices every episode's reward after its rollout anyway, so its
            episodes of one rollout are evaluated in parallel).

    Without an anchor the action is ``Box([0], [max_prune])``: the fraction to
    prune; the unit keeps ``1 - action`` clipped to ``[space.min_keep, 1]``. ``info`` of the
    last step holds ``outcome``, ``accuracy``, ``costs`` ({name: value/bound})
    , ``feasible`` and ``policy``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        space: Any,
        evaluate: Callable[[Any], Any],
        *,
        max_prune: float | None = None,
        wall: Mapping[str, float] | None = None,
        reward_fn: Callable[[Any], float] | None = None,
        anchor: float | Sequence[float] | None = None,
        submit: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        units = list(space.units)
        if not units:
            raise ConfigError("the prune space has no prunable units; nothing for the agent to do")
        self.min_keep = float(space.min_keep)
        if max_prune is None:
            max_prune = 1.0 - self.min_keep if self.min_keep > 0.0 else 1.0
        if not 0.0 < float(max_prune) <= 1.0:
            raise ConfigError(f"max_prune must lie in (0, 1], got {max_prune!r}")
        self.space = space
        self.evaluate = evaluate
        self.submit = submit
        self.max_prune = float(max_prune)
        self.reward_fn = reward_fn
        self.keep_floor = max(self.min_keep, 1.0 - self.max_prune)
        self.num_units = len(units)
        self.anchors = None if anchor is None else self._unit_anchors(anchor)

        wall = dict(wall or {})
        unknown = [name for name in wall if name not in ADDITIVE]
        if unknown:
            raise ConfigError(
                f"the action wall handles params and FLOPs budgets only "
                f"({', '.join(ADDITIVE)}), got {unknown[0]!r}"
            )
        for name, target in wall.items():
            if not (np.isfinite(target) and target > 0):
                raise ConfigError(
                    f"action wall target for {name!r} must be positive, got {target!r}"
                )
        self.wall = wall
        self._cost_model: AdditiveCostModel | None = None
        flops = np.array([float(u.flops_share) for u in units], dtype=np.float64)
        # Channel groups overlap (a conv is in the group of its outputs and of its
        # inputs), so normalise the shares to describe progress through the model.
        self._flops = flops / flops.sum() if flops.sum() > 0 else flops

        self._static = self._describe(units)
        self.observation_space = spaces.Box(
            low=0.0, high=1.0, shape=(len(OBS_FEATURES),), dtype=np.float32
        )
        low, high = (-1.0, 1.0) if self.anchors is not None else (0.0, self.max_prune)
        self.action_space = spaces.Box(
            low=np.array([low], dtype=np.float32),
            high=np.array([high], dtype=np.float32),
            dtype=np.float32,
        )
        self._t = 0
        self._keep: list[float] = []
        self._prev_action = 0.0

    def _unit_anchors(self, anchor: float | Sequence[float]) -> np.ndarray:
        """``anchor`` as one keep ratio per unit, each checked to lie in [keep floor, 1]."""
        given = np.asarray(anchor, dtype=np.float64).reshape(-1)
        if given.size not in (1, self.num_units):
            raise ConfigError(f"anchor has {given.size} keep ratios for {self.num_units} units")
        values = np.broadcast_to(given, (self.num_units,)).copy()
        bad = [float(a) for a in values if not (np.isfinite(a) and self.keep_floor <= a <= 1.0)]
        if bad:
            raise ConfigError(
                f"anchor must be a keep ratio in [{self.keep_floor:g}, 1], got {bad[0]!r}; "
                f"max_prune={self.max_prune:g} keeps at least {1 - self.max_prune:g} of "
                "each unit (raise max_prune, or leave it unset to follow the space's min_keep)"
            )
        return values

    # ------------------------------------------------------------ observation
    def _describe(self, units: Sequence[Any]) -> np.ndarray:
        """The per-unit, episode-independent part of the observation."""
        n = len(units)

        def norm(values: Sequence[float]) -> np.ndarray:
            array = np.array(values, dtype=np.float64)
            top = array.max()
            return array / top if top > 0 else array

        cols = np.zeros((n, len(OBS_FEATURES) - 3), dtype=np.float64)
        cols[:, 0] = np.arange(n) / max(n - 1, 1)
        for i, u in enumerate(units):
            cols[i, 1 + _kind_slot(u.kind)] = 1.0
        base = 2 + len(KINDS)
        geometry = [(u.in_channels, u.out_channels, u.kernel, u.stride, u.padding) for u in units]
        for j, column in enumerate(zip(*geometry, strict=True)):
            cols[:, base + j] = norm(column)
        cols[:, base + 5] = [float(u.flops_share) for u in units]
        cols[:, base + 6] = [float(u.params_share) for u in units]
        return np.clip(cols, 0.0, 1.0)

    def _obs(self) -> np.ndarray:
        i = min(self._t, self.num_units - 1)
        flops = self._flops
        pruned = float(np.dot(flops[: len(self._keep)], 1.0 - np.asarray(self._keep)))
        ahead = float(flops[i + 1 :].sum())
        dynamic = np.array([pruned, ahead, self._prev_action], dtype=np.float64)
        obs = np.concatenate([self._static[i], dynamic])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------ action wall
    def _wall_model(self) -> AdditiveCostModel:
        if self._cost_model is None:
            self._cost_model = AdditiveCostModel(self.space, sorted(self.wall), low=self.keep_floor)
        return self._cost_model

    def min_action(self, index: int, keep_so_far: Sequence[float]) -> float:
        """The smallest prune fraction at ``index`` that keeps every wall target reachable.

        The units after ``index`` are assumed pruned at the maximum; the
        largest keep ratio for this unit that still meets every target is found
        by bisection on the cost model (exact at the space's channel rounding).
        """
        model = self._wall_model()
        floor = self.keep_floor
        rest = [floor] * (self.num_units - index - 1)

        def ok(k: float) -> bool:
            keep = [*keep_so_far, k, *rest]
            return all(model.fraction(n, keep) <= t + 1e-12 for n, t in self.wall.items())

        if ok(1.0):
            return 0.0
        if not ok(floor):
            return self.max_prune
        lo, hi = floor, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return float(min(self.max_prune, max(0.0, 1.0 - lo)))

    def estimated_fraction(self, name: str, keep: Sequence[float]) -> float:
        """The wall's estimate of constraint ``name`` relative to dense for per-unit keep ratios."""
        if name not in self._wall_model().names:
            raise ConfigError(f"no wall target for {name!r}; the wall has {sorted(self.wall)}")
        return self._wall_model().fraction(name, keep)

    # ------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._keep = []
        self._prev_action = 0.0
        return self._obs(), {}

    def step(self, action: Any):
        if self._t >= self.num_units:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        a = a if np.isfinite(a) else 0.0
        if self.anchors is not None:
            a = 1.0 - self.anchored_keep(a, unit=self._t)
        a = float(np.clip(a, 0.0, self.max_prune))
        if self.wall:
            a = max(a, self.min_action(self._t, self._keep))
        keep = min(1.0, max(self.min_keep, 1.0 - a))
        self._keep.append(keep)
        self._prev_action = a
        self._t += 1
        info: dict[str, Any] = {"action": a, "keep": keep}
        if self._t < self.num_units:
            return self._obs(), 0.0, False, False, info

        policy = self.policy_from_keep(self._keep)
        if self.submit is not None:
            handle = self.submit(policy)
            if not handle.done():
                info.update(pending=handle, policy=policy)
                return self._obs(), 0.0, True, False, info
            outcome = handle.result()
        else:
            outcome = self.evaluate(policy)
        score = reward_score(outcome)
        reward = float(self.reward_fn(outcome)) if self.reward_fn else score
        info.update(
            outcome=outcome,
            policy=policy,
            accuracy=float(outcome.accuracy),
            score=score,
            costs=dict(outcome.costs),
            feasible=bool(outcome.feasible),
        )
        return self._obs(), reward, True, False, info

    def anchored_keep(self, action: float, *, unit: int = 0) -> float:
        """The keep ratio an anchored action means for ``unit``: 0 -> its anchor, 1 -> 1,
        -1 -> the keep floor."""
        if self.anchors is None:
            raise ConfigError("this environment has no anchor")
        anchor = float(self.anchors[unit])
        a = float(np.clip(action, -1.0, 1.0))
        if a >= 0.0:
            return anchor + a * (1.0 - anchor)
        return anchor + a * (anchor - self.keep_floor)

    def policy_from_keep(self, keep: Sequence[float]) -> Any:
        """A Policy of this env's space with the given keep ratios."""
        from hwprune.space import Policy

        return Policy.dense(self.space).with_keep(tuple(float(k) for k in keep))

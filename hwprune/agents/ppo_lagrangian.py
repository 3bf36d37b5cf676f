"""PPO-Lagrangian: constrained RL pruning (Malik et al., ICPR 2022) on top of SB3's PPO.

The agent prunes layer by layer (``LayerPruningEnv``); each episode's policy
is evaluated once, and its reward is the proxy accuracy. Every constraint has
a Lagrange multiplier lambda_i >= 0. At the end of each rollout:

1. dual ascent: lambda_i <- max(0, lambda_i + lr_lambda * (mean cost_i - 1))
   over the rollout's episodes (costs are value / bound, so the budget is 1);
2. the rollout's final rewards are rewritten with the *current* multipliers,
   r = accuracy - sum_i lambda_i * (cost_i - 1), and the advantages are
   recomputed before PPO's update.

A multiplier therefore rises while its budget is violated on average and
falls back towards 0 once it is met; the agent trades accuracy for cost only
as much as the budgets demand.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hwprune.agents._sb3 import AgentRun, Answered, SB3Searcher, SearchDriver, minibatch_size
from hwprune.agents.baselines import KnapsackStart, anchor_start, start_anchor
from hwprune.agents.registry import SEARCHERS
from hwprune.envs.layer import LayerPruningEnv, additive_targets, reward_score
from hwprune.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PPOLagrangian"]


class _LagrangeDriver(SearchDriver):
    """Records where each episode's final reward sits in the rollout buffer, with its costs;
    before each update, steps the multipliers and re-prices the rollout's final rewards."""

    one_thread = True
    save_each_rollout = True

    def __init__(self, run: AgentRun, *, lagrange: _Lagrange, **kwargs: Any) -> None:
        super().__init__(run, **kwargs)
        self.lagrange = lagrange

    def stop_now(self) -> bool:
        # Stop before an evaluation the budget cannot pay for; a rollout that is complete
        # still gets its update (the next rollout does not start).
        last_of_rollout = int(self.locals["n_steps"]) + 1 >= self.model.n_steps
        return self.spent() and any(self.locals["dones"]) and not last_of_rollout

    def on_episode(self, env_idx: int, info: dict[str, Any], *, stop: bool) -> None:
        pos = int(self.locals["n_steps"])
        handle = info["pending"] if "pending" in info else Answered(info["outcome"])
        self.pending.add(handle, functools.partial(self._record, pos, env_idx))

    def _record(self, pos: int, env_idx: int, outcome: Any) -> None:
        self.lagrange.episodes.append((pos, env_idx, reward_score(outcome), dict(outcome.costs)))

    def after_rollout(self) -> None:
        self.lagrange.dual_step(self.logger)
        buffer = self.model.rollout_buffer
        for pos, env_idx, accuracy, costs in self.lagrange.episodes:
            buffer.rewards[pos, env_idx] = self.lagrange.reward(accuracy, costs)
        self.lagrange.episodes = []
        # The returns and advantages again, from the rewards just written: the last values
        # and dones are those SB3 computed them with at the rollout's end.
        buffer.compute_returns_and_advantage(
            last_values=self.locals["values"], dones=self.locals["dones"]
        )


class _Lagrange:
    """The multipliers, their dual ascent and the history kept for the report's plot."""

    def __init__(self, names: list[str], *, lr: float, init: float, max_value: float) -> None:
        self.names = list(names)
        self.lr = float(lr)
        self.max_value = float(max_value)
        self.values = {n: float(init) for n in self.names}
        self.updates = 0
        self.history: list[dict[str, Any]] = []
        self.mean_costs: list[dict[str, float]] = []
        self.episodes: list[tuple[int, int, float, dict[str, float]]] = []
        self.evaluations: Callable[[], int] = lambda: 0

    def reward(self, accuracy: float, costs: dict[str, float]) -> float:
        return float(accuracy) - sum(
            self.values[n] * (float(costs.get(n, 1.0)) - 1.0) for n in self.names
        )

    def snapshot(self) -> dict[str, Any]:
        return {"update": self.updates, "evaluations": self.evaluations(), **self.values}

    def dual_step(self, logger: Any) -> None:
        means: dict[str, float] = {}
        if self.episodes:
            for n in self.names:
                mean_cost = float(np.mean([c.get(n, 1.0) for _, _, _, c in self.episodes]))
                means[n] = mean_cost
                new = self.values[n] + self.lr * (mean_cost - 1.0)
                self.values[n] = float(min(self.max_value, max(0.0, new)))
                logger.record(f"lagrange/mean_cost_{n}", mean_cost)
            logger.record("lagrange/mean_accuracy", float(np.mean([e[2] for e in self.episodes])))
        self.mean_costs.append(means)
        self.updates += 1
        for n in self.names:
            logger.record(f"lagrange/{n}", self.values[n])
        self.history.append(self.snapshot())
        log.debug("update %d: multipliers %s", self.updates, self.values)

    def state(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "values": self.values,
            "updates": self.updates,
            "history": self.history,
            "mean_costs": self.mean_costs,
        }


@SEARCHERS.register("ppo-lagrangian")
class PPOLagrangian(SB3Searcher[_LagrangeDriver]):
    """Constrained PPO: reward = proxy accuracy, one Lagrange multiplier per budget.

    Options (all keyword):
        episodes_per_update: episodes per PPO rollout (n_steps = this x units).
        learning_rate, n_epochs, net_arch, ent_coef, log_std_init: PPO settings.
        lambda_lr: the multipliers' step size; lambda_init: their start value;
        lambda_max: an upper clip that keeps rewards bounded.
        max_prune: the largest fraction of a unit one action prunes (default: down to
            the space's ``min_keep``, see ``LayerPruningEnv``).
        action_wall: cap actions so additive budgets (params, FLOPs) stay reachable.
        anchor: True or "uniform": start from the largest uniform keep ratio that meets the budgets
            (found by a coarse bisection that counts against the evaluation
            budget): actions then move each unit above or below it, and the
            policy's initial mean is that uniform policy. Off: actions are prune
            fractions and the initial mean prunes half of ``max_prune``.
            "knapsack": start from the latency knapsack's per-unit policy
            (``hwprune.agents.latency_knapsack``, its verification calls counted in the
            evaluation budget) and search around it. False: no anchor.
        staircase: the measured latency staircase the knapsack start uses (the run
            passes the one its ``staircase`` stage measured).
        tensorboard_log: a directory for SB3's TensorBoard logs (if installed).
    """

    name = "ppo-lagrangian"
    state_file = "lagrange.json"

    def __init__(
        self,
        *,
        seed: int = 0,
        episodes_per_update: int = 4,
        learning_rate: float = 3e-4,
        n_epochs: int = 10,
        net_arch: tuple[int, ...] = (64, 64),
        ent_coef: float = 0.0,
        log_std_init: float | None = None,
        lambda_lr: float = 0.5,
        lambda_init: float = 0.0,
        lambda_max: float = 100.0,
        max_prune: float | None = None,
        action_wall: bool = False,
        anchor: bool | str = True,
        staircase: Any = None,
        tensorboard_log: str | Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__(seed=seed, **options)
        if int(episodes_per_update) < 1:
            raise ConfigError(
                f"episodes_per_update must be at least 1, got {episodes_per_update!r}"
            )
        if float(lambda_lr) <= 0:
            raise ConfigError(f"lambda_lr must be positive, got {lambda_lr!r}")
        if float(lambda_init) < 0:
            raise ConfigError(f"lambda_init must be at least 0, got {lambda_init!r}")
        self.episodes_per_update = int(episodes_per_update)
        self.learning_rate = float(learning_rate)
        self.n_epochs = int(n_epochs)
        self.net_arch = [int(n) for n in net_arch]
        self.ent_coef = float(ent_coef)
        # Exploration around an anchor must stay near the boundary: std 0.3 vs 0.6.
        if log_std_init is None:
            log_std_init = -1.2 if anchor else -0.5
        self.log_std_init = float(log_std_init)
        self.anchor = anchor_start(anchor)
        self.staircase = staircase
        self.lambda_lr = float(lambda_lr)
        self.lambda_init = float(lambda_init)
        self.lambda_max = float(lambda_max)
        self.max_prune = None if max_prune is None else float(max_prune)
        self.action_wall = bool(action_wall)
        self.tensorboard_log = tensorboard_log

    def _env(self, run: AgentRun) -> Any:
        from gymnasium.wrappers import RescaleAction

        constraints = run.evaluate.evaluator.constraints
        wall = additive_targets(constraints) if self.action_wall else None
        run.anchor = start_anchor(
            run.space, run.evaluate, start=self.anchor, staircase=self.staircase,
            seed=self.seed, who=self.name, extra=self.extra,
        )  # fmt: skip
        # The episodes of one rollout share one policy network: evaluating them side by side
        # (a parallel evaluator) changes nothing the agent learns (see _LagrangeDriver).
        env = LayerPruningEnv(
            run.space,
            run.evaluate,
            max_prune=self.max_prune,
            wall=wall,
            anchor=run.anchor,
            submit=run.evaluate.submit,
        )
        if run.anchor is None:
            # PPO's Gaussian starts at mean 0: on [-1, 1] that is half the allowed pruning.
            env = RescaleAction(env, min_action=np.float32(-1.0), max_action=np.float32(1.0))
        return env

    def _model(self, run: AgentRun, *, tensorboard: str | None) -> Any:
        from stable_baselines3 import PPO

        units = len(run.space.units)
        return PPO(
            "MlpPolicy",
            run.env,
            n_steps=self.episodes_per_update * units,
            batch_size=minibatch_size(self.episodes_per_update, units),
            n_epochs=self.n_epochs,
            learning_rate=self.learning_rate,
            gamma=1.0,
            gae_lambda=1.0,
            ent_coef=self.ent_coef,
            policy_kwargs={"net_arch": list(self.net_arch), "log_std_init": self.log_std_init},
            tensorboard_log=tensorboard,
            seed=self.seed,
            device="cpu",
            verbose=0,
        )

    def _driver(self, run: AgentRun) -> _LagrangeDriver:
        names = [c.name for c in run.evaluate.evaluator.constraints]
        lagrange = _Lagrange(
            names, lr=self.lambda_lr, init=self.lambda_init, max_value=self.lambda_max
        )
        lagrange.evaluations = lambda: run.evaluate.used
        lagrange.history.append(lagrange.snapshot())
        self.extra["lagrange"] = lagrange.history
        self.extra["mean_costs"] = lagrange.mean_costs
        return _LagrangeDriver(
            run, lagrange=lagrange, save=functools.partial(self._save_agent, run)
        )

    def _state(self, run: AgentRun, driver: _LagrangeDriver) -> dict[str, Any]:
        return driver.lagrange.state()

    def _finish(self, run: AgentRun, driver: _LagrangeDriver) -> None:
        self.extra["updates"] = driver.lagrange.updates
        self.extra["multipliers"] = dict(driver.lagrange.values)


@SEARCHERS.register("knapsack-ppo")
class KnapsackPPO(KnapsackStart, PPOLagrangian):
    """PPO-Lagrangian started from the latency knapsack's per-unit policy (``anchor="knapsack"``):
    the knapsack spends the budget by its additive table, the agent searches around that
    answer for what the table misses (fusion, kernel choice, accuracy)."""

    name = "knapsack-ppo"

    def __init__(
        self, *, seed: int = 0, anchor: bool | str = "knapsack", staircase: Any = None,
        **options: Any,
    ) -> None:  # fmt: skip
        super().__init__(seed=seed, anchor=anchor, staircase=staircase, **options)

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

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hwprune.agents._sb3 import (
    AGENT_FILE,
    constraints_of,
    exhausted,
    load_parameters,
    minibatch_size,
    quiet_logger,
    read_json,
    single_thread,
    tensorboard_dir,
    used,
    write_json,
)
from hwprune.agents.base import SEARCHERS, BudgetedEvaluator, Searcher
from hwprune.agents.baselines import start_anchor
from hwprune.envs.layer import LayerPruningEnv, additive_targets
from hwprune.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PPOLagrangian"]

STATE_FILE = "lagrange.json"


def _ppo_class() -> type:
    """SB3's PPO with the Lagrangian reward rewrite (built lazily: SB3 imports torch)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.utils import obs_as_tensor

    class LagrangianPPO(PPO):
        """PPO whose rollout rewards are re-priced with the current multipliers before each update."""

        def _excluded_save_params(self) -> list[str]:
            return [*super()._excluded_save_params(), "lagrange", "stop_fn", "after_update"]

        def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps) -> bool:
            if self.stop_fn():
                return False
            self.lagrange.episodes = []
            collected = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
            # Episodes still being evaluated (a parallel evaluator) are waited for here, in
            # the order they ended: each is logged even when the search stops now.
            self.lagrange.episodes = [
                (pos, i, *_answer(p)) if p is not None else (pos, i, acc, costs)
                for pos, i, acc, costs, p in self.lagrange.episodes
            ]
            if not collected:
                return False
            self.lagrange.dual_step(self.logger)
            rewards = rollout_buffer.rewards
            for pos, env_idx, accuracy, costs in self.lagrange.episodes:
                rewards[pos, env_idx] = self.lagrange.reward(accuracy, costs)
            with torch.no_grad():
                values = self.policy.predict_values(obs_as_tensor(self._last_obs, self.device))
            rollout_buffer.compute_returns_and_advantage(
                last_values=values, dones=self._last_episode_starts
            )
            return True

        def train(self) -> None:
            with single_thread():
                super().train()
            self.after_update()

    class EpisodeRecorder(BaseCallback):
        """Remembers where each episode's final reward sits in the rollout buffer, and its costs;
        stops collecting once the evaluation budget is spent."""

        def __init__(self, lagrange: _Lagrange, stop_fn: Any) -> None:
            super().__init__()
            self.lagrange = lagrange
            self.stop_fn = stop_fn

        def _on_step(self) -> bool:
            pos = int(self.locals["n_steps"])
            for env_idx, (done, info) in enumerate(
                zip(self.locals["dones"], self.locals["infos"], strict=True)
            ):
                if done and "pending" in info:
                    self.lagrange.episodes.append((pos, env_idx, 0.0, {}, info["pending"]))
                elif done and "costs" in info:
                    self.lagrange.episodes.append(
                        (pos, env_idx, float(info["score"]), dict(info["costs"]), None)
                    )
            last_of_rollout = pos + 1 >= self.model.n_steps
            # Stop before an evaluation the budget cannot pay for; a rollout that is
            # complete still gets its update (the next collect_rollouts stops).
            return not (self.stop_fn() and any(self.locals["dones"]) and not last_of_rollout)

    return LagrangianPPO, EpisodeRecorder


def _answer(pending: Any) -> tuple[float, dict[str, float]]:
    """(search score, costs) of an episode whose evaluation was pending."""
    outcome = pending.result()
    return outcome.reward_score, dict(outcome.costs)


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
        self.evaluations = lambda: 0

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

    def restore(self, state: dict[str, Any]) -> None:
        saved = dict(state.get("values", {}))
        if sorted(saved) != sorted(self.names):
            raise ConfigError(
                f"the checkpoint's multipliers are for constraints {sorted(saved)}, "
                f"this search has {sorted(self.names)}; use another checkpoint directory"
            )
        self.values = {n: float(saved[n]) for n in self.names}
        self.updates = int(state.get("updates", 0))
        self.history = list(state.get("history", []))
        self.mean_costs = list(state.get("mean_costs", []))


@SEARCHERS.register("ppo-lagrangian")
class PPOLagrangian(Searcher):
    """Constrained PPO: reward = proxy accuracy, one Lagrange multiplier per budget.

    Options (all keyword):
        episodes_per_update: episodes per PPO rollout (n_steps = this x units).
        learning_rate, n_epochs, net_arch, ent_coef, log_std_init: PPO settings.
        lambda_lr: the multipliers' step size; lambda_init: their start value;
        lambda_max: an upper clip that keeps rewards bounded.
        max_prune: the largest fraction of a unit one action prunes (default: down to
            the space's ``min_keep``, see ``LayerPruningEnv``).
        action_wall: cap actions so additive budgets (params, FLOPs) stay reachable.
        anchor: start from the largest uniform keep ratio that meets the budgets
            (found by a coarse bisection that counts against the evaluation
            budget): actions then move each unit above or below it, and the
            policy's initial mean is that uniform policy. Off: actions are prune
            fractions and the initial mean prunes half of ``max_prune``.
        tensorboard_log: a directory for SB3's TensorBoard logs (if installed).
    """

    name = "ppo-lagrangian"
    learns = True

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
        anchor: bool = True,
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
        self.anchor = bool(anchor)
        self.lambda_lr = float(lambda_lr)
        self.lambda_init = float(lambda_init)
        self.lambda_max = float(lambda_max)
        self.max_prune = None if max_prune is None else float(max_prune)
        self.action_wall = bool(action_wall)
        self.tensorboard_log = tensorboard_log

    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        from gymnasium.wrappers import RescaleAction

        constraints = constraints_of(evaluate)
        names = [c.name for c in constraints]
        wall = additive_targets(constraints) if self.action_wall else None
        state_path = checkpoint_dir / STATE_FILE if checkpoint_dir is not None else None
        anchor = start_anchor(
            space,
            evaluate,
            enabled=self.anchor,
            state_path=state_path,
            who=self.name,
            extra=self.extra,
        )
        # The episodes of one rollout share one policy network: evaluating them side by side
        # (a parallel evaluator) changes nothing the agent learns (see _ppo_class).
        env = LayerPruningEnv(
            space,
            evaluate,
            max_prune=self.max_prune,
            wall=wall,
            anchor=anchor,
            submit=evaluate.submit,
        )
        if anchor is None:
            # PPO's Gaussian starts at mean 0: on [-1, 1] that is half the allowed pruning.
            env = RescaleAction(env, min_action=np.float32(-1.0), max_action=np.float32(1.0))
        units = len(space.units)
        n_steps = self.episodes_per_update * units

        lagrange = _Lagrange(
            names, lr=self.lambda_lr, init=self.lambda_init, max_value=self.lambda_max
        )
        lagrange.evaluations = lambda: used(evaluate)

        def stop() -> bool:
            return exhausted(evaluate)

        LagrangianPPO, EpisodeRecorder = _ppo_class()
        tensorboard = tensorboard_dir(self.tensorboard_log)
        model = LagrangianPPO(
            "MlpPolicy",
            env,
            n_steps=n_steps,
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
        quiet_logger(model, tensorboard)
        model.lagrange = lagrange
        model.stop_fn = stop

        agent_path = state_path = None
        resumed = False
        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            agent_path = checkpoint_dir / AGENT_FILE
            state_path = checkpoint_dir / STATE_FILE
            if agent_path.exists() and state_path.exists():
                state = read_json(state_path)
                lagrange.restore(state)
                load_parameters(model, agent_path)
                model.num_timesteps = int(state.get("num_timesteps", 0))
                model._n_updates = int(state.get("n_updates", 0))
                resumed = True
                log.info(
                    "resumed PPO-Lagrangian from %s (update %d)", checkpoint_dir, lagrange.updates
                )
        if not lagrange.history:
            lagrange.history.append(lagrange.snapshot())

        def after_update() -> None:
            if agent_path is None or state_path is None:
                return
            model.save(str(agent_path))
            write_json(
                state_path,
                {
                    **lagrange.state(),
                    "num_timesteps": model.num_timesteps,
                    "n_updates": model._n_updates,
                    "searcher": self.name,
                    "anchor": anchor,
                },
            )

        model.after_update = after_update
        self.extra["lagrange"] = lagrange.history
        self.extra["mean_costs"] = lagrange.mean_costs
        self.extra["resumed"] = resumed
        # More timesteps than any budget needs: the evaluation budget ends the search.
        total = max(10**9, model.num_timesteps + 1)
        model.learn(
            total_timesteps=total,
            callback=EpisodeRecorder(lagrange, stop),
            reset_num_timesteps=not resumed,
            tb_log_name="ppo_lagrangian",
        )
        self.extra["updates"] = lagrange.updates
        self.extra["multipliers"] = dict(lagrange.values)
        env.close()

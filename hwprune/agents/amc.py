"""AMC: DDPG over per-unit prune ratios with the action wall (He et al., ECCV 2018), on SB3.

The agent walks the units (``LayerPruningEnv`` with the wall on for params /
FLOPs budgets) and the finished policy is evaluated once. As in AMC every
transition of an episode is stored with the episode's final reward and the
critic learns it directly (gamma = 0): the per-unit Q value estimates the
reward of the policy that action leads to. The first ``warmup_episodes``
episodes take uniformly random actions (``learning_starts``); afterwards
exploration adds truncated-normal noise around the actor's action whose sigma
decays each episode.

Reward for a budget-constrained search: the proxy accuracy if every budget
is met, else accuracy - penalty * (max cost - 1) (costs are value / bound),
so the wall handles additive budgets and the penalty handles measured ones
such as latency.

Batches: with an evaluator that works on several candidates at once
(``--workers N``), the agent plays N episodes (``batch_episodes``) from the
same actor, each with its own draws of the exploration noise, their
candidates are evaluated side by side, and it learns once every reward of
the batch is in (as many gradient steps as transitions, as after single
episodes). One process plays one episode per batch: AMC as published.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hwprune.agents._sb3 import (
    AgentRun,
    Answered,
    SB3Searcher,
    SearchDriver,
    check_batch,
    episodes_per_batch,
)
from hwprune.agents._sb3_compat import SampledNoise, noise_sampling
from hwprune.agents.baselines import KnapsackStart, anchor_start, start_anchor
from hwprune.agents.registry import SEARCHERS
from hwprune.envs.layer import LayerPruningEnv, additive_targets, reward_score
from hwprune.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["AMC", "TruncatedNormalNoise", "amc_reward"]

BUFFER_FILE = "replay.npz"


def amc_reward(outcome: Any, *, penalty: float) -> float:
    """The search score (``reward_score``: the proxy accuracy, or the size at chance) if
    feasible, else that score minus ``penalty`` times the worst relative excess."""
    acc = reward_score(outcome)
    if outcome.feasible:
        return acc
    worst = max(outcome.costs.values()) if outcome.costs else 1.0
    return acc - float(penalty) * max(0.0, float(worst) - 1.0)


class TruncatedNormalNoise(SampledNoise):
    """Exploration noise: normal with a sigma that decays per episode, truncated to the action bounds.

    ``sample(mean)`` draws from N(mean, sigma^2) truncated to [low, high] (in
    SB3's scaled action space, [-1, 1]); ``__call__`` returns zero-mean noise
    clipped to the bounds' width for algorithms that only add noise.
    ``reset()`` is called by SB3 at every episode end: after ``warmup``
    episodes sigma shrinks by ``decay`` down to ``sigma_min``.
    """

    def __init__(
        self,
        *,
        size: int = 1,
        sigma: float = 0.5,
        decay: float = 0.95,
        sigma_min: float = 0.02,
        warmup: int = 0,
        low: float = -1.0,
        high: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if sigma <= 0 or not 0 < decay <= 1 or sigma_min < 0:
            raise ConfigError(
                f"noise needs sigma > 0, 0 < decay <= 1 and sigma_min >= 0, "
                f"got sigma={sigma}, decay={decay}, sigma_min={sigma_min}"
            )
        if not low < high:
            raise ConfigError(f"noise bounds need low < high, got [{low}, {high}]")
        self.size = int(size)
        self.sigma = float(sigma)
        self.decay = float(decay)
        self.sigma_min = float(sigma_min)
        self.warmup = int(warmup)
        self.low, self.high = float(low), float(high)
        self.episodes = 0
        self.rng = np.random.default_rng(seed)

    def sample(self, mean: np.ndarray) -> np.ndarray:
        mean = np.clip(np.asarray(mean, dtype=np.float64), self.low, self.high)
        out = mean.copy()
        todo = np.ones(mean.shape, dtype=bool)
        # Rejection sampling: a draw stays inside with probability >= ~1/2 when
        # the mean is inside, so few rounds are needed; the rest fall back to uniform.
        for _ in range(64):
            draw = self.rng.normal(mean, self.sigma)
            fits = todo & (draw >= self.low) & (draw <= self.high)
            out[fits] = draw[fits]
            todo &= ~fits
            if not todo.any():
                break
        if todo.any():
            out[todo] = self.rng.uniform(self.low, self.high, size=int(todo.sum()))
        return out.astype(np.float32)

    def __call__(self) -> np.ndarray:
        width = self.high - self.low
        noise = self.rng.normal(0.0, self.sigma, size=self.size)
        return np.clip(noise, -width, width).astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1
        if self.episodes > self.warmup:
            self.sigma = max(self.sigma_min, self.sigma * self.decay)

    def state(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "episodes": self.episodes}


class _EpisodeRewardDriver(SearchDriver):
    """Pays every step of an episode the episode's final reward (AMC) before the agent learns,
    and plays episodes in batches: as many as the evaluator works on at once, from one actor.

    One rollout = one batch of episodes (one episode with one process, the evaluator's width
    with a parallel one); their candidates are evaluated side by side, and their rewards are
    written into the replay buffer when the last is in, before the update.
    """

    one_thread = True
    save_each_rollout = True

    def __init__(self, run: AgentRun, *, batch: int | None, **kwargs: Any) -> None:
        super().__init__(run, **kwargs)
        self.batch = batch

    def _next_batch(self) -> None:
        from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

        size = episodes_per_batch(self.run.evaluate, batch=self.batch)
        self.model.train_freq = TrainFreq(size, TrainFrequencyUnit.EPISODE)

    def before_learning(self) -> None:
        self._next_batch()

    def on_episode(self, env_idx: int, info: dict[str, Any], *, stop: bool) -> None:
        # SB3 stores this step's transition at the buffer's position next.
        last = self.model.replay_buffer.pos
        handle = info["pending"] if "pending" in info else Answered(info["outcome"])
        self.pending.add(handle, functools.partial(self._pay, last))

    def _pay(self, last: int, outcome: Any) -> None:
        buffer = self.model.replay_buffer
        steps = (last - np.arange(self.run.env.num_units)) % buffer.buffer_size
        buffer.rewards[steps, 0] = float(self.run.env.reward_fn(outcome))

    def after_rollout(self) -> None:
        self._next_batch()


@SEARCHERS.register("amc")
class AMC(SB3Searcher[_EpisodeRewardDriver]):
    """AMC's DDPG agent: continuous per-unit prune ratios, action wall, warm-up, decaying noise.

    Options (all keyword):
        algo: "ddpg" (AMC) or "td3".
        warmup_episodes: random episodes before learning (``learning_starts``).
        sigma, sigma_decay, sigma_min: the truncated-normal exploration noise.
        penalty: reward = accuracy - penalty * (max cost - 1) for infeasible policies.
        learning_rate, batch_size, buffer_size, tau, net_arch: DDPG settings.
        max_prune: the largest fraction of a unit one action prunes (default: down to
            the space's ``min_keep``, see ``LayerPruningEnv``).
        action_wall: cap actions so params/FLOPs budgets stay reachable (default on).
        anchor: True or "uniform": start from the largest uniform keep ratio that meets the budgets
            (coarse bisection, counted in the evaluation budget); actions then
            move each unit above or below it (see ``LayerPruningEnv``).
            "knapsack": start from the latency knapsack's per-unit policy
            (``hwprune.agents.latency_knapsack``, its verification calls counted in the
            evaluation budget) and search around it. False: no anchor.
        staircase: the measured latency staircase the knapsack start uses (the run
            passes the one its ``staircase`` stage measured).
        batch_episodes: episodes played from one actor before it learns from them (their
            candidates evaluated side by side); default: as many as the evaluator works on
            at once (1 in one process, as in AMC).
        tensorboard_log: a directory for SB3's TensorBoard logs (if installed).
    """

    name = "amc"
    state_file = "amc.json"
    unsaved = ("action_noise",)

    def __init__(
        self,
        *,
        seed: int = 0,
        algo: str = "ddpg",
        warmup_episodes: int = 10,
        sigma: float = 0.5,
        sigma_decay: float = 0.95,
        sigma_min: float = 0.02,
        penalty: float = 2.0,
        learning_rate: float = 1e-3,
        batch_size: int = 64,
        buffer_size: int = 20_000,
        tau: float = 0.01,
        net_arch: tuple[int, ...] = (64, 64),
        max_prune: float | None = None,
        action_wall: bool = True,
        anchor: bool | str = True,
        staircase: Any = None,
        batch_episodes: int | None = None,
        tensorboard_log: str | Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__(seed=seed, **options)
        self.batch_episodes = check_batch(batch_episodes)
        if algo not in ("ddpg", "td3"):
            raise ConfigError(f"AMC's algo must be 'ddpg' or 'td3', got {algo!r}")
        if int(warmup_episodes) < 0:
            raise ConfigError(f"warmup_episodes must be at least 0, got {warmup_episodes!r}")
        if float(penalty) < 0:
            raise ConfigError(f"penalty must be at least 0, got {penalty!r}")
        self.algo = algo
        self.warmup_episodes = int(warmup_episodes)
        self.sigma = float(sigma)
        self.sigma_decay = float(sigma_decay)
        self.sigma_min = float(sigma_min)
        self.penalty = float(penalty)
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.buffer_size = int(buffer_size)
        self.tau = float(tau)
        self.net_arch = [int(n) for n in net_arch]
        self.max_prune = None if max_prune is None else float(max_prune)
        self.action_wall = bool(action_wall)
        self.anchor = anchor_start(anchor)
        self.staircase = staircase
        self.tensorboard_log = tensorboard_log

    def _env(self, run: AgentRun) -> Any:
        constraints = run.evaluate.evaluator.constraints
        wall = additive_targets(constraints) if self.action_wall else None
        penalty = self.penalty
        run.anchor = start_anchor(
            run.space, run.evaluate, start=self.anchor, staircase=self.staircase,
            seed=self.seed, who=self.name, extra=self.extra,
        )  # fmt: skip

        def reward_fn(outcome: Any) -> float:
            return amc_reward(outcome, penalty=penalty)

        return LayerPruningEnv(
            run.space,
            run.evaluate,
            max_prune=self.max_prune,
            wall=wall,
            reward_fn=reward_fn,
            anchor=run.anchor,
            submit=run.evaluate.submit,
        )

    def _model(self, run: AgentRun, *, tensorboard: str | None) -> Any:
        units = run.env.num_units
        noise = TruncatedNormalNoise(
            sigma=self.sigma,
            decay=self.sigma_decay,
            sigma_min=self.sigma_min,
            warmup=self.warmup_episodes,
            seed=self.seed,
        )
        extra: dict[str, Any] = {}
        if self.algo == "td3":
            extra = {"policy_delay": 2, "target_policy_noise": 0.1, "target_noise_clip": 0.2}
        return noise_sampling(self.algo)(
            "MlpPolicy",
            run.env,
            learning_rate=self.learning_rate,
            buffer_size=max(self.buffer_size, units),
            learning_starts=self.warmup_episodes * units,
            batch_size=self.batch_size,
            tau=self.tau,
            gamma=0.0,
            train_freq=(1, "episode"),
            gradient_steps=-1,
            action_noise=noise,
            policy_kwargs={"net_arch": list(self.net_arch)},
            tensorboard_log=tensorboard,
            seed=self.seed,
            device="cpu",
            verbose=0,
            **extra,
        )

    def _driver(self, run: AgentRun) -> _EpisodeRewardDriver:
        save = functools.partial(self._save_agent, run)
        return _EpisodeRewardDriver(run, batch=self.batch_episodes, save=save)

    def _save_files(self, run: AgentRun, folder: Path) -> None:
        _save_buffer(run.model.replay_buffer, folder / BUFFER_FILE)

    def _state(self, run: AgentRun, driver: _EpisodeRewardDriver) -> dict[str, Any]:
        return {"algo": self.algo, "noise": run.model.action_noise.state()}

    def _finish(self, run: AgentRun, driver: _EpisodeRewardDriver) -> None:
        self.extra.update(
            episodes=driver.episodes,
            sigma=run.model.action_noise.sigma,
            algo=self.algo,
            wall=dict(run.env.wall),
            batch_episodes=self.batch_episodes or run.evaluate.width,
        )


_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _save_buffer(buffer: Any, path: Path) -> None:
    """The replay buffer's arrays as .npz (no pickle), written atomically."""
    import io

    from hwprune.files import write_atomic

    arrays = {k: v for k, v in vars(buffer).items() if k in _BUFFER_FIELDS and v is not None}
    arrays["pos"] = np.array(buffer.pos)
    arrays["full"] = np.array(buffer.full)
    # Into memory first: np.savez names its own temporary files and leaves them on failure.
    data = io.BytesIO()
    np.savez(data, **arrays)
    write_atomic(path, data.getbuffer())


@SEARCHERS.register("knapsack-amc")
class KnapsackAMC(KnapsackStart, AMC):
    """AMC started from the latency knapsack's per-unit policy (``anchor="knapsack"``): its
    actions move each unit above or below the knapsack's count."""

    name = "knapsack-amc"

    def __init__(
        self, *, seed: int = 0, anchor: bool | str = "knapsack", staircase: Any = None,
        batch_episodes: int | None = None, **options: Any,
    ) -> None:  # fmt: skip
        super().__init__(seed=seed, anchor=anchor, staircase=staircase,
                         batch_episodes=batch_episodes, **options)  # fmt: skip

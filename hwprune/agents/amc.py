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

import logging
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.noise import ActionNoise

from hwprune.agents._sb3 import (
    AGENT_FILE,
    PendingEpisodes,
    check_batch,
    constraints_of,
    episodes_per_batch,
    exhausted,
    load_parameters,
    quiet_logger,
    read_json,
    single_thread,
    tensorboard_dir,
    write_json,
)
from hwprune.agents.base import SEARCHERS, BudgetedEvaluator, Searcher
from hwprune.agents.baselines import start_anchor
from hwprune.envs.layer import LayerPruningEnv, _reward_score, additive_targets
from hwprune.errors import ConfigError, RunDirError

log = logging.getLogger(__name__)

__all__ = ["AMC", "TruncatedNormalNoise", "amc_reward"]

STATE_FILE = "amc.json"
BUFFER_FILE = "replay.npz"


def amc_reward(outcome: Any, *, penalty: float) -> float:
    """The search score (``reward_score``: the proxy accuracy, or the size at chance) if
    feasible, else that score minus ``penalty`` times the worst relative excess."""
    acc = _reward_score(outcome)
    if outcome.feasible:
        return acc
    worst = max(outcome.costs.values()) if outcome.costs else 1.0
    return acc - float(penalty) * max(0.0, float(worst) - 1.0)


class TruncatedNormalNoise(ActionNoise):
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

    def restore(self, state: dict[str, Any]) -> None:
        self.sigma = float(state.get("sigma", self.sigma))
        self.episodes = int(state.get("episodes", self.episodes))


def _ddpg_class(algo: str) -> type:
    """SB3's DDPG/TD3 with AMC's exploration and episode-reward assignment (built lazily)."""
    from stable_baselines3 import DDPG, TD3
    from stable_baselines3.common.type_aliases import RolloutReturn, TrainFreq, TrainFrequencyUnit

    base = {"ddpg": DDPG, "td3": TD3}[algo]

    class AMCAgent(base):
        def _excluded_save_params(self) -> list[str]:
            return [
                *super()._excluded_save_params(),
                "stop_fn",
                "batch_fn",
                "reward_fn",
                "pending",
                "on_episode",
                "checkpoint",
                "num_units",
                "replay_buffer",
                "action_noise",
            ]

        def collect_rollouts(
            self,
            env,
            callback,
            train_freq,
            replay_buffer,
            action_noise=None,
            learning_starts=0,
            log_interval=None,
        ):
            # One rollout = one batch of episodes played by the same actor (one episode with
            # one process, the evaluator's width with a parallel one), and the previous
            # batch's gradient steps are done: checkpoint, then maybe stop.
            self.checkpoint()
            if self.stop_fn():
                return RolloutReturn(0, 0, continue_training=False)
            batch = TrainFreq(self.batch_fn(), TrainFrequencyUnit.EPISODE)
            rollout = super().collect_rollouts(
                env,
                callback,
                batch,
                replay_buffer,
                action_noise,
                learning_starts,
                log_interval,
            )
            # The batch's candidates were evaluated side by side: their rewards are
            # written into the buffer before the agent learns from them.
            self.pending.settle()
            return rollout

        def train(self, gradient_steps: int, batch_size: int = 100) -> None:
            with single_thread():
                super().train(gradient_steps, batch_size)

        def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
            if not isinstance(action_noise, TruncatedNormalNoise):
                return super()._sample_action(learning_starts, action_noise, n_envs)
            action, buffer_action = super()._sample_action(learning_starts, None, n_envs)
            if self.num_timesteps < learning_starts:
                return action, buffer_action  # warm-up: uniform random actions, no noise
            scaled = action_noise.sample(buffer_action)
            return self.policy.unscale_action(scaled), scaled

        def _store_transition(self, replay_buffer, buffer_action, new_obs, reward, dones, infos):
            super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
            if not dones[0]:
                return
            # AMC: every step of the episode earns the episode's final reward.
            n = self.num_units
            idx = (replay_buffer.pos - 1 - np.arange(n)) % replay_buffer.buffer_size

            def pay(value: float) -> None:
                replay_buffer.rewards[idx, 0] = float(value)

            if "pending" in infos[0]:
                self.pending.add(infos[0]["pending"], lambda outcome: pay(self.reward_fn(outcome)))
            else:
                pay(np.asarray(reward).reshape(-1)[0])
            self.on_episode()

    return AMCAgent


@SEARCHERS.register("amc")
class AMC(Searcher):
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
        anchor: start from the largest uniform keep ratio that meets the budgets
            (coarse bisection, counted in the evaluation budget); actions then
            move each unit above or below it (see ``LayerPruningEnv``).
        batch_episodes: episodes played from one actor before it learns from them (their
            candidates evaluated side by side); default: as many as the evaluator works on
            at once (1 in one process, as in AMC).
        tensorboard_log: a directory for SB3's TensorBoard logs (if installed).
    """

    name = "amc"
    learns = True

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
        anchor: bool = True,
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
        self.anchor = bool(anchor)
        self.tensorboard_log = tensorboard_log

    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        constraints = constraints_of(evaluate)
        wall = additive_targets(constraints) if self.action_wall else None
        penalty = self.penalty
        saved_state = checkpoint_dir / STATE_FILE if checkpoint_dir is not None else None
        anchor = start_anchor(
            space,
            evaluate,
            enabled=self.anchor,
            state_path=saved_state,
            who=self.name,
            extra=self.extra,
        )

        def reward_fn(outcome: Any) -> float:
            return amc_reward(outcome, penalty=penalty)

        # Episodes are played in batches of the evaluator's width from one actor, their
        # candidates evaluated side by side (see _ddpg_class); one process: one at a time.
        env = LayerPruningEnv(
            space,
            evaluate,
            max_prune=self.max_prune,
            wall=wall,
            reward_fn=reward_fn,
            anchor=anchor,
            submit=evaluate.submit,
        )
        units = env.num_units
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
        AMCAgent = _ddpg_class(self.algo)
        tensorboard = tensorboard_dir(self.tensorboard_log)
        model = AMCAgent(
            "MlpPolicy",
            env,
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
        quiet_logger(model, tensorboard)
        model.num_units = units
        model.stop_fn = lambda: exhausted(evaluate)
        model.batch_fn = lambda: episodes_per_batch(evaluate, batch=self.batch_episodes)
        model.reward_fn = reward_fn
        model.pending = PendingEpisodes()
        episodes = {"n": 0, "saved": 0}

        agent_path = state_path = buffer_path = None
        resumed = False
        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            agent_path = checkpoint_dir / AGENT_FILE
            state_path = checkpoint_dir / STATE_FILE
            buffer_path = checkpoint_dir / BUFFER_FILE
            if agent_path.exists() and state_path.exists():
                state = read_json(state_path)
                if state.get("algo", self.algo) != self.algo:
                    raise ConfigError(
                        f"the checkpoint holds a {state.get('algo')!r} agent, this search uses "
                        f"{self.algo!r}; use another checkpoint directory"
                    )
                load_parameters(model, agent_path)
                model.num_timesteps = int(state.get("num_timesteps", 0))
                model._n_updates = int(state.get("n_updates", 0))
                noise.restore(state.get("noise", {}))
                episodes["n"] = episodes["saved"] = int(state.get("episodes", 0))
                if buffer_path.exists():
                    _load_buffer(model.replay_buffer, buffer_path)
                resumed = True
                log.info("resumed AMC from %s (episode %d)", checkpoint_dir, episodes["n"])

        def on_episode() -> None:
            episodes["n"] += 1

        def checkpoint() -> None:
            if agent_path is None or state_path is None or buffer_path is None:
                return
            if episodes["saved"] == episodes["n"]:
                return
            episodes["saved"] = episodes["n"]
            model.save(str(agent_path))
            _save_buffer(model.replay_buffer, buffer_path)
            write_json(
                state_path,
                {
                    "searcher": self.name,
                    "algo": self.algo,
                    "num_timesteps": model.num_timesteps,
                    "n_updates": model._n_updates,
                    "episodes": episodes["n"],
                    "noise": noise.state(),
                    "anchor": anchor,
                },
            )

        model.on_episode = on_episode
        model.checkpoint = checkpoint
        model.learn(
            total_timesteps=max(10**9, model.num_timesteps + 1),
            reset_num_timesteps=not resumed,
            tb_log_name="amc",
        )
        checkpoint()
        self.extra.update(
            resumed=resumed,
            episodes=episodes["n"],
            sigma=noise.sigma,
            algo=self.algo,
            wall=dict(wall or {}),
            batch_episodes=self.batch_episodes or evaluate.width,
        )
        env.close()


_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _save_buffer(buffer: Any, path: Path) -> None:
    """The replay buffer's arrays as .npz (no pickle), written atomically."""
    import io

    from hwprune.files import write_atomic

    arrays = {k: getattr(buffer, k) for k in _BUFFER_FIELDS if getattr(buffer, k, None) is not None}
    arrays["pos"] = np.array(buffer.pos)
    arrays["full"] = np.array(buffer.full)
    # Into memory first: np.savez names its own temporary files and leaves them on failure.
    data = io.BytesIO()
    np.savez(data, **arrays)
    write_atomic(path, data.getbuffer())


def _load_buffer(buffer: Any, path: Path) -> None:
    try:
        with np.load(path, allow_pickle=False) as data:
            for k in _BUFFER_FIELDS:
                if k in data.files and getattr(buffer, k, None) is not None:
                    current = getattr(buffer, k)
                    saved = data[k]
                    if saved.shape != current.shape:
                        raise RunDirError(
                            f"the saved replay buffer {str(path)!r} has {k} of shape "
                            f"{saved.shape}, this search needs {current.shape}"
                        )
                    current[...] = saved
            buffer.pos = int(data["pos"])
            buffer.full = bool(data["full"])
    except (OSError, ValueError, KeyError) as exc:
        raise RunDirError(f"cannot read the replay buffer {str(path)!r}: {exc}") from exc

"""QLP (Camci et al.): deep Q-learning over many small cuts, with a curriculum on the budget.

An SB3 DQN drives the multi-visit environment. Exploration (epsilon) and the
curriculum both follow the share of the evaluation budget spent, not SB3's
timestep count, because an episode's length varies and the search stops when
the evaluations run out. The curriculum starts at ``curriculum_start`` of the
real budget's reduction and reaches the real budget after
``curriculum_fraction`` of the evaluations; the rest, and a final greedy
rollout, are judged at the real budget.

Batches: with an evaluator that works on several candidates at once
(``--workers N``), the agent plays N episodes (``batch_episodes``) from the
same Q-network (each with its own epsilon-greedy draws), their candidates are
evaluated side by side, and it learns once every reward of the batch is in,
with as many gradient steps as it would have taken step by step (one per
``train_freq`` steps). One process: it learns after every ``train_freq``
steps, as in QLP.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from hwprune.agents._sb3 import AgentRun, SB3Searcher, SearchDriver, check_batch
from hwprune.agents.base import BudgetedEvaluator
from hwprune.agents.registry import SEARCHERS
from hwprune.envs.multivisit import DEFAULT_ACTIONS, MultiVisitEnv
from hwprune.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["QLP"]


def _fraction(name: str, value: Any, *, low_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must lie in {interval}, got {value!r}")
    return v


class _CurriculumDriver(SearchDriver):
    """Stops at the evaluation budget (less the greedy rollout's), steps the curriculum after
    each episode, saves the agent every ``save_every`` episodes, and writes the reward of an
    episode whose evaluation was pending into the replay buffer before the agent learns (at
    the rollout's end)."""

    def __init__(self, run: AgentRun, *, searcher: QLP, batch: int, **kwargs: Any) -> None:
        super().__init__(run, **kwargs)
        self.searcher = searcher
        self.batch = batch
        self.feasible = 0

    def stop_now(self) -> bool:
        return self.spent()  # at once: an episode ends at any step

    def on_episode(self, env_idx: int, info: dict[str, Any], *, stop: bool) -> None:
        if "pending" in info:
            # SB3 stores this step's transition at the buffer's position next, unless
            # learning stops now.
            pos = None if stop else self.model.replay_buffer.pos
            on_outcome = functools.partial(self._pay, pos, env_idx, info["target"])
            self.pending.add(info["pending"], on_outcome)
        else:
            self.feasible += int(bool(info.get("feasible")))
        q = self.searcher
        self.run.env.set_target(q.curriculum(q._progress(self.run.evaluate)))
        if q.save_every and self.episodes % q.save_every == 0:
            self.save()

    def _pay(self, pos: int | None, env_idx: int, target: float, outcome: Any) -> None:
        self.feasible += int(bool(outcome.feasible))
        if pos is not None:
            reward, _ = self.run.env.reward(outcome, target=target)
            self.model.replay_buffer.rewards[pos, env_idx] = reward

    def after_rollout(self) -> None:
        if self.batch > 1:
            self.model.gradient_steps = max(
                1, self.rollout_steps // max(1, self.searcher.train_freq)
            )


@SEARCHERS.register("qlp")
class QLP(SB3Searcher[_CurriculumDriver]):
    """DQN on the multi-visit environment with an epsilon schedule and a budget curriculum.

    Options (all keyword): ``visits`` (rounds over the units, 3), ``actions``
    (fractions of the current keep pruned per step), ``penalty`` (reward per
    unit of excess cost, 1.0), ``curriculum_start`` (first level, 0.5),
    ``curriculum_fraction`` (share of evaluations to reach the real budget,
    0.5), ``exploration_fraction`` (share of evaluations over which epsilon
    falls, 0.6), ``eps_start``/``eps_end`` (1.0/0.05), ``buffer_size`` (5000),
    ``learning_starts`` (steps, default two episodes' worth), ``batch_size``
    (64), ``learning_rate`` (1e-3), ``gamma`` (1.0: the reward comes at the
    end), ``target_update_interval`` (steps, 250), ``net_arch`` ((64, 64)),
    ``save_every`` (episodes between checkpoints, 20), ``batch_episodes`` (episodes played
    from one Q-network before it learns from them, their candidates evaluated side by side;
    default: as many as the evaluator works on at once, 1 in one process).
    """

    name = "qlp"
    state_file = "qlp_state.json"
    # The epsilon schedule follows the search's evaluations (a function of this search).
    unsaved = ("exploration_schedule",)

    def __init__(
        self,
        *,
        seed: int = 0,
        visits: int = 3,
        actions: Sequence[float] = DEFAULT_ACTIONS,
        penalty: float = 1.0,
        curriculum_start: float = 0.5,
        curriculum_fraction: float = 0.5,
        exploration_fraction: float = 0.6,
        eps_start: float = 1.0,
        eps_end: float = 0.05,
        buffer_size: int = 5000,
        learning_starts: int | None = None,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        gamma: float = 1.0,
        target_update_interval: int = 250,
        train_freq: int = 1,
        net_arch: Sequence[int] = (64, 64),
        save_every: int = 20,
        device: str = "cpu",
        batch_episodes: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(seed=seed, **options)
        self.batch_episodes = check_batch(batch_episodes)
        if int(visits) < 1:
            raise ConfigError(f"visits must be at least 1, got {visits!r}")
        self.visits = int(visits)
        self.actions = tuple(float(a) for a in actions)
        self.penalty = float(penalty)
        self.curriculum_start = _fraction("curriculum_start", curriculum_start, low_open=True)
        self.curriculum_fraction = _fraction("curriculum_fraction", curriculum_fraction)
        self.exploration_fraction = _fraction("exploration_fraction", exploration_fraction)
        self.eps_start = _fraction("eps_start", eps_start)
        self.eps_end = _fraction("eps_end", eps_end)
        if int(buffer_size) < 1 or int(batch_size) < 1:
            raise ConfigError(
                f"buffer_size and batch_size must be at least 1, got {buffer_size!r}, {batch_size!r}"
            )
        self.buffer_size = int(buffer_size)
        self.learning_starts = None if learning_starts is None else int(learning_starts)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.gamma = float(gamma)
        self.target_update_interval = int(target_update_interval)
        self.train_freq = int(train_freq)
        self.net_arch = [int(x) for x in net_arch]
        self.save_every = int(save_every)
        self.device = device

    # ------------------------------------------------------------ schedules
    def _progress(self, evaluate: BudgetedEvaluator) -> float:
        return min(1.0, evaluate.used / max(1, evaluate.budget))

    def curriculum(self, progress: float) -> float:
        """Curriculum level for a share of the evaluation budget spent (1 = real budget)."""
        if self.curriculum_fraction <= 0:
            return 1.0
        s = min(1.0, progress / self.curriculum_fraction)
        return self.curriculum_start + (1.0 - self.curriculum_start) * s

    def epsilon(self, progress: float) -> float:
        """Exploration rate for a share of the evaluation budget spent."""
        if self.exploration_fraction <= 0:
            return self.eps_end
        s = min(1.0, progress / self.exploration_fraction)
        return self.eps_start + (self.eps_end - self.eps_start) * s

    # ------------------------------------------------------------ search
    def _env(self, run: AgentRun) -> Any:
        return MultiVisitEnv(
            run.space,
            run.evaluate,
            constraints=run.evaluate.evaluator.constraints,
            visits=self.visits,
            actions=self.actions,
            penalty=self.penalty,
            target=self.curriculum(0.0),
            submit=run.evaluate.submit,
        )

    def _batch(self, run: AgentRun) -> int:
        # A parallel evaluator: a batch of episodes per rollout, learnt from when all are in.
        return self.batch_episodes or int(run.evaluate.width)

    def _model(self, run: AgentRun, *, tensorboard: str | None) -> Any:
        from stable_baselines3 import DQN

        steps_per_episode = run.env.n_units * self.visits
        batch = self._batch(run)
        model = DQN(
            "MlpPolicy",
            run.env,
            learning_rate=self.learning_rate,
            buffer_size=self.buffer_size,
            learning_starts=(
                self.learning_starts if self.learning_starts is not None else 2 * steps_per_episode
            ),
            batch_size=self.batch_size,
            gamma=self.gamma,
            train_freq=(batch, "episode") if batch > 1 else self.train_freq,
            target_update_interval=self.target_update_interval,
            exploration_initial_eps=self.eps_start,
            exploration_final_eps=self.eps_end,
            policy_kwargs={"net_arch": self.net_arch},
            tensorboard_log=tensorboard,
            seed=self.seed,
            device=self.device,
            verbose=0,
        )
        # Epsilon follows the evaluations spent, not SB3's timestep count.
        model.exploration_schedule = lambda _remaining: self.epsilon(self._progress(run.evaluate))
        return model

    def _driver(self, run: AgentRun) -> _CurriculumDriver:
        # Keep one evaluation for the greedy rollout at the real budget.
        reserve = 1 if run.evaluate.budget > 2 else 0
        save = functools.partial(self._save_agent, run)
        return _CurriculumDriver(run, searcher=self, batch=self._batch(run), save=save,
                                 reserve=reserve)  # fmt: skip

    def _timesteps(self, run: AgentRun) -> int:
        # A generous step cap; the driver ends training at the evaluation budget.
        return max(1, 10 * run.evaluate.budget * run.env.n_units * self.visits)

    def _state(self, run: AgentRun, driver: _CurriculumDriver) -> dict[str, Any]:
        return {"feasible_episodes": driver.feasible}

    def _finish(self, run: AgentRun, driver: _CurriculumDriver) -> None:
        if not run.evaluate.exhausted:
            self.extra["greedy"] = _greedy(run)
        self.extra.update(
            episodes=driver.episodes,
            feasible_episodes=driver.feasible,
            timesteps=int(run.model.num_timesteps),
            batch_episodes=driver.batch,
        )


def _greedy(run: AgentRun) -> dict[str, Any]:
    """One greedy episode at the real budget: its candidate's accuracy, verdict and costs."""
    env = run.env
    env.set_target(1.0)
    obs, _ = env.reset()
    done = False
    while not done:
        action, _ = run.model.predict(obs, deterministic=True)
        obs, _, done, _, info = env.step(int(action))
    outcome = info["outcome"] if "outcome" in info else info["pending"].result()
    return {
        "accuracy": float(outcome.accuracy),
        "feasible": bool(outcome.feasible),
        "costs": dict(outcome.costs),
    }

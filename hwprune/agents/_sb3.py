"""The run shared by the Stable-Baselines3 searchers (ppo-lagrangian, amc, qlp), and its plumbing.

:class:`SB3Searcher` is the searcher's side: it builds the environment, the SB3 model and a
:class:`SearchDriver`, learns until the evaluation budget is spent, saves the agent and records
what the search found. :class:`SearchDriver` is the SB3 callback every agent learns with: it
stops learning at the budget, hands each finished episode to the agent, waits for the outcomes
a parallel evaluator has not answered yet before the agent learns from them, runs the updates
on one torch thread where asked, and saves the agent. Agents customise both through the
methods named ``_env``, ``_model``, ``_driver``, ``_state``, ``_finish`` (searcher) and
``on_episode``, ``stop_now``, ``before_learning``, ``after_rollout`` (driver): SB3's public
hooks only (callbacks, algorithm options, the replay buffer's arrays); the one private method
still overridden lives in :mod:`hwprune.agents._sb3_compat`.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from stable_baselines3.common.callbacks import BaseCallback

from hwprune.agents.base import BudgetedEvaluator, Searcher
from hwprune.errors import ConfigError, RunDirError

log = logging.getLogger(__name__)

__all__ = [
    "AGENT_FILE",
    "AgentRun",
    "PendingEpisodes",
    "SB3Searcher",
    "SearchDriver",
    "episodes_per_batch",
]

AGENT_FILE = "agent.zip"


def episodes_per_batch(evaluate: BudgetedEvaluator, *, batch: int | None = None) -> int:
    """How many episodes an agent plays from one policy before it learns from their outcomes.

    ``batch``, by default the evaluator's ``width`` (how many candidates it works
    on at once: 1 for one process), but never more than the distinct candidates
    the budget still pays for, nor than the calls it still allows, so a batch
    never runs past the budget. At least 1.
    """
    width = int(batch if batch is not None else evaluate.width)
    left = min(evaluate.budget - evaluate.used, evaluate.max_calls - evaluate.calls)
    return max(1, min(width, left))


class PendingEpisodes:
    """Episodes that ended while their candidate was still being evaluated.

    A parallel evaluator returns from ``submit`` at once, so an episode can end
    (``info["pending"]`` from the environment) before its reward is known. The
    agent keeps going from the same policy; before it learns, ``settle()`` waits
    for each outcome, in the order the episodes ended, and hands it to the
    function registered with the episode (which writes the reward where the
    agent will read it). With one process every episode's outcome is known when
    it ends and nothing is ever pending.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Any, Callable[[Any], None]]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, handle: Any, on_outcome: Callable[[Any], None]) -> None:
        self._items.append((handle, on_outcome))

    def settle(self) -> None:
        items, self._items = self._items, []
        for handle, on_outcome in items:
            on_outcome(handle.result())


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (a killed run never leaves half a file)."""
    from hwprune.files import write_atomic

    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot read the agent state {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise RunDirError(f"the agent state {str(path)!r} is not a JSON object")
    return data


def tensorboard_dir(path: str | Path | None) -> str | None:
    """The TensorBoard log dir to hand SB3, or None when no dir is given or TensorBoard is missing."""
    if path is None:
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        log.warning(
            "tensorboard is not installed (pip install tensorboard); not logging to %s", path
        )
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    return str(path)


def quiet_logger(model: Any, tensorboard_log: str | None) -> None:
    """Give an SB3 model a logger that writes nowhere when it logs no TensorBoard.

    Without a logger of its own, SB3's ``learn`` configures one in a new
    ``<tempdir>/SB3-<date>`` folder (left empty, one per search); a search writes
    only into its run folder. With a TensorBoard folder SB3 logs into that folder.
    """
    if tensorboard_log is not None:
        return
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))


class single_thread:
    """Run a small network's updates on one torch thread, then restore the setting.

    Agent networks are tiny MLPs: on a busy CPU, torch's thread pool spends far
    more time synchronising than computing (measured: 40 PPO minibatch steps
    took 6.5 s on a loaded 2-core machine with the default thread count).
    """

    def __enter__(self) -> None:
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self._threads)


def check_batch(batch: Any) -> int | None:
    """A searcher's ``batch_episodes`` option: None (the evaluator's width) or a whole number >= 1."""
    if batch is None:
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(
            f"batch_episodes must be a whole number of episodes of at least 1 (or None: as many "
            f"as the evaluator works on at once), got {batch!r}"
        )
    return batch


def minibatch_size(episodes: int, units: int) -> int:
    """A minibatch of whole episodes: the largest divisor of ``episodes`` up to half of them."""
    half = max(1, episodes // 2)
    best = max(d for d in range(1, half + 1) if episodes % d == 0)
    return best * units


class Answered:
    """The handle of an episode whose outcome was known when it ended (one process)."""

    def __init__(self, outcome: Any) -> None:
        self._outcome = outcome

    def result(self) -> Any:
        return self._outcome


@dataclass
class AgentRun:
    """One search of an SB3 searcher: what its parts share."""

    space: Any
    evaluate: BudgetedEvaluator
    #: Where the agent is saved (the run's ``agent/`` folder), or None.
    folder: Path | None
    #: The keep ratio (uniform) or ratios (per unit) the episodes start from (``start_anchor``).
    anchor: float | tuple[float, ...] | None = None
    env: Any = None
    model: Any = None


class _BudgetSpent(Exception):
    """Raised by the driver when a rollout starts after the budget is spent.

    SB3's callbacks stop learning from a step (``_on_step`` returning False), which plays one
    more action first; an agent whose last rollout was complete stops before the next one.
    """


class SearchDriver(BaseCallback):
    """The callback every SB3 searcher learns with (see the module's docstring).

    ``save(driver)`` saves the agent; ``reserve``: evaluations kept back from learning (QLP's
    greedy rollout at the end).
    """

    #: Whether the agent's updates run on one torch thread (see ``single_thread``).
    one_thread: ClassVar[bool] = False
    #: Whether the agent is saved when a rollout starts and episodes ended since the last save.
    save_each_rollout: ClassVar[bool] = False

    def __init__(
        self, run: AgentRun, *, save: Callable[[SearchDriver], None], reserve: int = 0
    ) -> None:
        super().__init__()
        self.run = run
        self.reserve = int(reserve)
        self.pending = PendingEpisodes()
        self.episodes = 0
        self.rollout_steps = 0
        self._save = save
        self._saved_at = 0
        self._threads: single_thread | None = None

    # ------------------------------------------------------------ agent hooks
    def on_episode(self, env_idx: int, info: dict[str, Any], *, stop: bool) -> None:
        """An episode of env ``env_idx`` ended at this step (``stop``: learning stops here)."""

    def stop_now(self) -> bool:
        """Whether learning stops at this step (the default: never within a rollout; it stops
        before the next rollout once the budget is spent)."""
        return False

    def before_learning(self) -> None:
        """Called once, before the first rollout."""

    def after_rollout(self) -> None:
        """Called at a complete rollout's end, every pending outcome in, before the update."""

    # ------------------------------------------------------------ the run
    def spent(self) -> bool:
        ev = self.run.evaluate
        return ev.exhausted or ev.used >= ev.budget - self.reserve

    def save(self) -> None:
        self._saved_at = self.episodes
        self._save(self)

    def learn(self, *, total_timesteps: int, tb_log_name: str) -> None:
        """Learn until the budget is spent; every outcome asked for is in when it returns."""
        try:
            if not self.spent():
                self.run.model.learn(
                    total_timesteps=total_timesteps, callback=self, tb_log_name=tb_log_name
                )
        except _BudgetSpent:
            pass
        finally:
            self._all_threads()
        # The batch the budget cut short: logged, not learnt from.
        self.pending.settle()

    def _all_threads(self) -> None:
        if self._threads is not None:
            self._threads.__exit__()
            self._threads = None

    # ------------------------------------------------------------ SB3's callback hooks
    def _on_training_start(self) -> None:
        self.before_learning()

    def _on_rollout_start(self) -> None:
        self._all_threads()
        if self.save_each_rollout and self.episodes != self._saved_at:
            self.save()
        if self.spent():
            raise _BudgetSpent

    def _on_step(self) -> bool:
        self.rollout_steps += 1
        stop = self.stop_now()
        for env_idx, (done, info) in enumerate(
            zip(self.locals["dones"], self.locals["infos"], strict=True)
        ):
            if done:
                self.episodes += 1
                self.on_episode(env_idx, info, stop=stop)
        return not stop

    def _on_rollout_end(self) -> None:
        self.pending.settle()
        self.after_rollout()
        self.rollout_steps = 0
        if self.one_thread:
            self._threads = single_thread()
            self._threads.__enter__()


DriverT = TypeVar("DriverT", bound=SearchDriver)


class SB3Searcher(Searcher, Generic[DriverT]):
    """A searcher that learns with a Stable-Baselines3 algorithm (see the module's docstring).

    The agent's files go into ``checkpoint_dir``: ``agent.zip`` (SB3's ``model.save``) and
    ``state_file`` (JSON: the search's counters), after each update where the driver says so and
    when the search ends.
    """

    learns = True
    #: The agent's state file in the checkpoint folder.
    state_file: ClassVar[str] = "state.json"
    #: Attributes of the model that ``model.save`` leaves out.
    unsaved: ClassVar[tuple[str, ...]] = ()
    tensorboard_log: str | Path | None = None

    @abstractmethod
    def _env(self, run: AgentRun) -> Any:
        """The gymnasium environment the agent plays (may set ``run.anchor``)."""

    @abstractmethod
    def _model(self, run: AgentRun, *, tensorboard: str | None) -> Any:
        """The SB3 model, playing ``run.env``."""

    @abstractmethod
    def _driver(self, run: AgentRun) -> DriverT:
        """The callback the model learns with (saving with ``partial(self._save_agent, run)``)."""

    def _state(self, run: AgentRun, driver: DriverT) -> dict[str, Any]:
        """What the state file records besides the searcher, timesteps, episodes and anchor."""
        return {}

    def _finish(self, run: AgentRun, driver: DriverT) -> None:
        """After learning and the last save: record what the search found in ``self.extra``."""

    def _timesteps(self, run: AgentRun) -> int:
        """The cap on SB3's timesteps: more than any budget needs (the budget ends the search)."""
        return 10**9

    def _save_files(self, run: AgentRun, folder: Path) -> None:
        """Files the agent saves besides ``agent.zip`` and its state file."""

    def _save_agent(self, run: AgentRun, driver: DriverT) -> None:
        if run.folder is None:
            return
        run.folder.mkdir(parents=True, exist_ok=True)
        run.model.save(str(run.folder / AGENT_FILE), exclude=list(self.unsaved))
        self._save_files(run, run.folder)
        state = {
            "searcher": self.name,
            "num_timesteps": int(run.model.num_timesteps),
            "episodes": driver.episodes,
            "anchor": run.anchor,
        }
        write_json(run.folder / self.state_file, {**state, **self._state(run, driver)})

    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        run = AgentRun(space=space, evaluate=evaluate, folder=checkpoint_dir)
        run.env = self._env(run)
        tensorboard = tensorboard_dir(self.tensorboard_log)
        run.model = self._model(run, tensorboard=tensorboard)
        quiet_logger(run.model, tensorboard)
        driver = self._driver(run)
        driver.learn(total_timesteps=self._timesteps(run), tb_log_name=self.name.replace("-", "_"))
        driver.save()
        self._finish(run, driver)
        run.env.close()

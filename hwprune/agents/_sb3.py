"""Shared plumbing of the Stable-Baselines3 searchers: stop rules, checkpoints, TensorBoard."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hwprune.errors import ConfigError, RunDirError

log = logging.getLogger(__name__)

AGENT_FILE = "agent.zip"


def constraints_of(evaluate: Any) -> list[Any]:
    """The calibrated constraints behind a BudgetedEvaluator (empty for a plain function)."""
    evaluator = getattr(evaluate, "evaluator", None)
    return list(
        getattr(evaluator, "constraints", None) or getattr(evaluate, "constraints", []) or []
    )


def exhausted(evaluate: Any) -> bool:
    """Whether the evaluation budget is spent (a plain function never is)."""
    return bool(getattr(evaluate, "exhausted", False))


def used(evaluate: Any) -> int:
    return int(getattr(evaluate, "used", 0))


def episodes_per_batch(evaluate: Any, *, batch: int | None = None) -> int:
    """How many episodes an agent plays from one policy before it learns from their outcomes.

    ``batch``, by default the evaluator's ``width`` (how many candidates it works
    on at once: 1 for one process), but never more than the distinct candidates
    the budget still pays for, nor than the calls it still allows, so a batch
    never runs past the budget. At least 1.
    """
    width = int(batch if batch is not None else getattr(evaluate, "width", 1))
    budget = getattr(evaluate, "budget", None)
    if budget is None:
        return max(1, width)
    left = min(int(budget) - used(evaluate), int(evaluate.max_calls) - int(evaluate.calls))
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


def load_parameters(model: Any, path: Path) -> None:
    """Load an SB3 agent's network and optimizer weights saved by ``model.save``.

    Only the ``.pth`` tensors are read (``torch.load(weights_only=True)``
    inside SB3's ``set_parameters``); the pickled ``data`` part of the zip is
    never unpickled, so a checkpoint cannot execute code.
    """
    try:
        model.set_parameters(str(path), exact_match=True, device=model.device)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise RunDirError(
            f"the saved agent {str(path)!r} does not fit this search (another model, "
            f"space or agent settings?): {exc}"
        ) from exc


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

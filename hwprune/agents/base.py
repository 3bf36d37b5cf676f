"""The searcher interface shared by RL agents and baselines."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hwprune.evaluate import Evaluator, Outcome
from hwprune.run.choose import CONFIRM_TOP, choose_candidate

log = logging.getLogger(__name__)

__all__ = [
    "Searcher",
    "SearchResult",
    "BudgetedEvaluator",
]


@dataclass(frozen=True)
class SearchResult:
    """What a search found.

    ``best`` is the most accurate feasible candidate seen (after repair if no
    candidate was feasible); ``None`` with ``infeasible=True`` when no allowed
    policy meets the budgets, ``smallest`` holding the smallest value measured
    per constraint. ``history`` is every outcome in evaluation order.
    """

    searcher: str
    best: Outcome | None
    history: list[Outcome]
    seconds: float
    evaluations: int
    repaired: bool = False
    infeasible: bool = False
    smallest: dict[str, float] = field(default_factory=dict)
    first_feasible_evaluation: int | None = None
    first_feasible_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BudgetedEvaluator:
    """Counts a searcher's evaluations and stops it at its budget.

    Distinct candidates count; a policy whose shape was already evaluated is
    answered from the evaluator's memory for free, up to a cap on total calls
    so a searcher stuck on one shape still ends.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        budget: int,
        *,
        progress: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.budget = int(budget)
        self.progress = progress
        self.start_count = evaluator.evaluations
        self.calls = 0
        self.max_calls = max(10 * self.budget, 100)
        self.t0 = time.perf_counter()
        self.outcomes: list[Outcome] = []
        # Shapes asked for (answered or still being evaluated): what the budget counts.
        self._keys: set[str] = set()
        self.first_feasible_evaluation: int | None = None
        self.first_feasible_seconds: float | None = None

    @property
    def used(self) -> int:
        return len(self._keys)

    @property
    def width(self) -> int:
        """How many candidates the evaluator works on at once (1: one after another)."""
        return int(self.evaluator.width)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.budget or self.calls >= self.max_calls

    def __call__(self, policy: Any) -> Outcome:
        return self.submit(policy).result()

    def submit(self, policy: Any) -> _Ticket:
        """Start evaluating ``policy``; ``result()`` of the answer waits for its Outcome.

        The budget counts the policy's shape at once, so a searcher that asks
        for a batch stops asking when the budget is spent, not when it is paid.
        """
        self.calls += 1
        self._keys.add(self.evaluator.space.shape_key(policy))
        return _Ticket(self, self.evaluator.submit(policy))

    def evaluate_many(self, policies: Sequence[Any]) -> list[Outcome]:
        """Outcomes of ``policies``, evaluated together (as many at once as the evaluator can)."""
        tickets = [self.submit(p) for p in policies]
        return [t.result() for t in tickets]

    def _done(self, outcome: Outcome) -> Outcome:
        """Record a finished evaluation; returns it with its search signal set."""
        outcome = self.evaluator.signal(outcome)
        self.outcomes.append(outcome)
        if outcome.feasible and self.first_feasible_evaluation is None:
            self.first_feasible_evaluation = len({o.key for o in self.outcomes})
            self.first_feasible_seconds = time.perf_counter() - self.t0
        if self.progress is not None:
            self.progress(outcome)
        return outcome


class Searcher(ABC):
    """Proposes policies, asks the evaluator, returns the best feasible one.

    The interface every searcher implements (built-in or a plugin's, see
    :mod:`hwprune.agents.registry`). Subclasses implement ``_run(space, evaluate)`` where ``evaluate`` is a
    BudgetedEvaluator: call it with policies until ``evaluate.exhausted``. A
    searcher that can propose several policies before learning from them asks
    for ``evaluate.width`` at a time (``evaluate.evaluate_many``, or
    ``evaluate.submit(policy)`` and the handle's ``result()`` later): a parallel
    evaluator works on them side by side (see ``hwprune.evaluate.parallel``).
    """

    name: ClassVar[str] = ""
    #: Whether the searcher learns from the scores it is given (the RL agents); the baselines
    #: follow a fixed rule (bisection, magnitudes, random draws) and use scores only to choose.
    learns: ClassVar[bool] = False
    #: Whether the run measures the latency staircase for it whatever ``round_to`` is (the
    #: searcher takes it as its ``staircase`` argument).
    needs_staircase: ClassVar[bool] = False

    def __init__(self, *, seed: int = 0, **options: Any) -> None:
        self.seed = int(seed)
        self.options = options
        self.extra: dict[str, Any] = {}

    @abstractmethod
    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        """Propose policies to ``evaluate`` until ``evaluate.exhausted``; ``checkpoint_dir``: a
        folder for the searcher's own files (its saved agent), or None."""

    @classmethod
    def report_section(cls, extra: dict[str, Any]) -> str:
        """A report.md section drawn from the search's ``extra`` ("" for none)."""
        return ""

    @classmethod
    def candidates_at_most(cls, evaluations: int) -> int:
        """How many of ``evaluations`` candidates the searcher proposes at most with its default
        options (the cost estimate's count): all of them, unless it stops by its own rule."""
        return int(evaluations)

    def repair(
        self, space: Any, evaluator: Evaluator, failed: Outcome, *, limit: float, tried: set[str]
    ) -> Outcome | None:
        """A replacement for ``failed``, a shipped model that missed a budget on its final
        proof, measured at most ``limit`` of every bound (cost units) and not in ``tried``;
        None (the default): the run's generic repair
        (:func:`hwprune.run.choose.repair_candidate`) decides. A searcher whose answer is
        not a ranking of candidates (``latency-knapsack``: the most importance that fits)
        gives its own answer to the tighter bound."""
        return None

    def search(
        self,
        *,
        space: Any,
        evaluator: Evaluator,
        evaluations: int,
        progress: Callable[[Outcome], None] | None = None,
        checkpoint_dir: str | Path | None = None,
        repair_infeasible: bool = True,
        confirm: int = CONFIRM_TOP,
    ) -> SearchResult:
        """Run the searcher on ``evaluations`` distinct candidates; return what it found.

        The searcher only proposes: ``best`` is chosen from its outcomes by
        :func:`hwprune.run.choose.choose_candidate`, the rule every prune run ships by.
        ``confirm``: how many of the most accurate feasible candidates are
        measured again, afresh, the first that still meets every budget being
        returned (0: the most accurate unconfirmed). Re-measurements are not
        new candidates and do not count as evaluations; they are listed in
        ``extra["confirmations"]``. ``repair_infeasible``: none confirmed, the
        repair step scales the most accurate one down until it is feasible
        (its evaluations are recorded with the search's).
        """
        if evaluations < 1:
            raise ValueError(f"evaluations must be at least 1, got {evaluations}")
        if any(c.bound is None for c in evaluator.constraints):
            evaluator.calibrate()
        budget = BudgetedEvaluator(evaluator, evaluations, progress=progress)
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._run(space, budget, checkpoint_dir=ckpt)
        choice = choose_candidate(space=space, evaluator=evaluator, outcomes=budget.outcomes,
                                  confirm=confirm, repair_infeasible=repair_infeasible,
                                  evaluate=budget, answer=self.extra.get("answer"))  # fmt: skip
        if choice.confirmations:
            self.extra["confirmations"] = choice.confirmations
        best = choice.best
        repaired = choice.repaired
        infeasible = repair_infeasible and best is None
        return SearchResult(
            searcher=self.name,
            best=best,
            history=list(budget.outcomes),
            seconds=time.perf_counter() - budget.t0,
            evaluations=budget.used,
            repaired=repaired,
            infeasible=infeasible,
            smallest=evaluator.smallest(),
            first_feasible_evaluation=budget.first_feasible_evaluation,
            first_feasible_seconds=budget.first_feasible_seconds,
            extra=dict(self.extra),
        )


class _Ticket:
    """One submitted policy; ``result()`` returns its Outcome (once, then the same again)."""

    def __init__(self, owner: BudgetedEvaluator, handle: Any) -> None:
        self._owner = owner
        self._handle = handle
        self._outcome: Outcome | None = None

    def done(self) -> bool:
        return self._outcome is not None or bool(self._handle.done())

    def __deepcopy__(self, memo: dict) -> _Ticket:
        # SB3's vectorised envs deep-copy each step's info, which carries this handle:
        # the copy must wait for the same evaluation, not clone the evaluator.
        return self

    def result(self) -> Outcome:
        if self._outcome is None:
            self._outcome = self._owner._done(self._handle.result())
        return self._outcome

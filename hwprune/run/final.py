"""Stages ``finetune`` and ``verify`` (+ repair): the chosen candidate trained and proven.

The final model is re-measured afresh by every budget's oracle. When it
misses a budget (timing noise at the edge of a bound), a candidate with more
margin is chosen and fine-tuned again, at most ``MAX_REPAIRS`` times.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from hwprune.errors import InfeasibleBudgetError
from hwprune.run.choose import repair_candidate
from hwprune.run.context import RunContext
from hwprune.run.load import Loaded
from hwprune.run.search import Dense

log = logging.getLogger(__name__)

__all__ = ["Final", "MAX_REPAIRS", "finetune", "verify", "finalize"]

# How many more candidates verification may try before giving up on a missed budget.
MAX_REPAIRS = 4


@dataclass
class Final:
    """The proven final model and what was measured on it."""

    module: Any
    candidate: Any  # the chosen Outcome
    metrics_pruned: dict[str, float] | None
    metrics_final: dict[str, float] | None
    measurements: dict[str, Any]
    met: dict[str, bool]
    repairs: int


def finetune(ctx: RunContext, loaded: Loaded, candidate: Any, teacher: Any) -> tuple:
    """Stage ``finetune``: apply, calibrate, metrics before, task.finetune, metrics after."""
    task = loaded.task
    what = f"the chosen candidate (evaluation {candidate.index + 1})"
    epochs = task.finetune_epochs
    with ctx.stage("finetune", epochs, "fine-tuning") as step:
        module = loaded.space.apply(candidate.policy)
        task.checked_calibrate(module, what=what)
        before = after = None
        if task.evaluate is not None:
            before = dict(task.call("evaluate", module, what=what))
        if task.finetune is not None:
            module = task.checked_finetune(module, teacher, what=what)
        module = module.to("cpu").eval()
        if task.evaluate is not None:
            after = dict(task.call("evaluate", module, what=what))
            module = module.to("cpu").eval()
        step(epochs or 1, total=epochs or 1, accuracy=(after or {}).get("accuracy"))
    return module, before, after


def verify(ctx: RunContext, d: Dense, module: Any) -> tuple[dict[str, Any], dict[str, bool]]:
    """Stage ``verify``: every budget's oracle on the final module, afresh (median of 3)."""
    with ctx.stage("verify", len(d.constraints), "re-measuring the final model") as step:
        final = d.evaluator.remeasure(module)
        met = {c.name: c.met(final[c.name].value) for c in d.constraints}
        step(len(d.constraints), values={k: m.value for k, m in final.items()}, met=met)
    return final, met


def finalize(ctx: RunContext, loaded: Loaded, d: Dense, chosen: Any) -> Final:
    """Fine-tune and verify ``chosen``; repair (another candidate) while a budget is missed."""
    from hwprune.budgets import format_value

    teacher = copy.deepcopy(loaded.model).eval()
    tried: set[str] = set()
    candidate, repairs = chosen, 0
    while True:
        tried.add(candidate.key)
        module, before, after = finetune(ctx, loaded, candidate, teacher)
        final, met = verify(ctx, d, module)
        if all(met.values()):
            return Final(module, candidate, before, after, final, met, repairs)
        if repairs >= MAX_REPAIRS:
            c = next(c for c in d.constraints if not met[c.name])
            raise InfeasibleBudgetError(
                f"the final model misses {c.budget.text} on {c.oracle} "
                f"({format_value(final[c.name].value, c.unit)} > {format_value(c.bound, c.unit)}) "
                f"after {repairs} repairs; the measurement is too noisy at this bound, or the "
                "bound is at the edge of what the space allows",
                smallest=d.evaluator.smallest(),
            )
        repairs += 1
        worst = max(c.cost(final[c.name].value) for c in d.constraints)
        log.warning("final model misses a budget (worst cost %.3f); repairing (%d)", worst, repairs)
        candidate = repair_candidate(d.evaluator, loaded.space, candidate, worst=worst, tried=tried)
        if candidate is None:
            raise InfeasibleBudgetError(
                "the final model misses a budget on re-measurement and no candidate with more "
                "margin can be found; loosen the budget or lower min_keep",
                smallest=d.evaluator.smallest(),
            )

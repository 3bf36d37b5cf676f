"""Stages ``finetune`` and ``verify`` (+ repair): the chosen candidate trained and proven.

The final model is re-measured afresh by every budget's oracle. When it
misses a budget (timing noise at the edge of a bound), a candidate with more
margin is chosen and fine-tuned again, at most ``MAX_REPAIRS`` times.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from hwprune.errors import InfeasibleBudgetError, OutputShapeError
from hwprune.run.choose import repair_candidate, repair_limit
from hwprune.run.context import RunContext
from hwprune.run.load import Loaded
from hwprune.run.search import Dense, make_searcher

log = logging.getLogger(__name__)

__all__ = ["Final", "MAX_REPAIRS", "finetune", "verify", "finalize", "output_shapes_of"]

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
    # Each model output's shape, dense and final: {name: {"dense": [...], "final": [...]}}.
    shapes: dict[str, dict[str, list[int]]] = field(default_factory=dict)


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


def output_shapes_of(
    loaded: Loaded, module: Any, *, allow_change: bool
) -> dict[str, dict[str, list[int]]]:
    """Each output's shape from the dense model and from ``module`` on the example inputs.

    OutputShapeError where one differs and ``allow_change`` is off: the space keeps every
    output's shape, so a difference is never handed on quietly."""
    import torch

    from hwprune.space._layers import model_device
    from hwprune.space.channel import output_shapes

    shapes = []
    for m in (loaded.model, module):
        was_training = m.training
        m.eval()
        try:
            with torch.no_grad():
                shapes.append(output_shapes(loaded.example_inputs.to(model_device(m)).call(m)))
        finally:
            m.train(was_training)
    dense, final = shapes
    names = list(dict.fromkeys([*dense, *final]))
    out = {n: {"dense": list(dense.get(n, ())), "final": list(final.get(n, ()))} for n in names}
    changed = [n for n in names if dense.get(n) != final.get(n)]
    if changed:
        # A count that depends on the input's values (detections after NMS) may differ.
        from hwprune.export.before_steps import data_dependent_dims, same_fixed_dims

        free = data_dependent_dims(loaded.model, loaded.example_inputs)
        changed = [n for n in changed
                   if not same_fixed_dims(dense.get(n), final.get(n), free.get(n, frozenset()))]  # fmt: skip
    if changed and not allow_change:
        n = changed[0]
        raise OutputShapeError(
            f"the final model's output {n!r} has shape {out[n]['final']} where the dense "
            f"model's has {out[n]['dense']}; allow_output_change=True (--allow-output-change) "
            "accepts outputs of another shape"
        )
    return out


def verify(ctx: RunContext, d: Dense, module: Any) -> tuple[dict[str, Any], dict[str, bool]]:
    """Stage ``verify``: every budget's oracle on the final module, afresh (median of 3)."""
    with ctx.stage("verify", len(d.constraints), "re-measuring the final model") as step:
        final = d.evaluator.remeasure(module)
        met = {c.name: c.met(final[c.name].value) for c in d.constraints}
        step(len(d.constraints), values={k: m.value for k, m in final.items()}, met=met)
    return final, met


def _repair(
    ctx: RunContext, loaded: Loaded, d: Dense, failed: Any, *, worst: float, tried: set[str]
) -> Any:
    """A replacement for ``failed``: the searcher's own (:meth:`Searcher.repair
    <hwprune.agents.base.Searcher.repair>`, where it has one), else the generic
    :func:`~hwprune.run.choose.repair_candidate`."""
    from hwprune.agents import SEARCHERS
    from hwprune.agents.base import Searcher

    cls = SEARCHERS.get(ctx.config.agent) if ctx.config.agent in SEARCHERS else None
    if cls is not None and cls.repair is not Searcher.repair:
        limit = repair_limit(failed, worst)
        with d.evaluator.measured_only():
            own = make_searcher(ctx, d.evaluator).repair(loaded.space, d.evaluator, failed,
                                                     limit=limit, tried=tried)  # fmt: skip
        if own is not None:
            log.info("the %s searcher's repair at %.3f of the bounds: candidate %s",
                     ctx.config.agent, limit, own.key)  # fmt: skip
            return own
    return repair_candidate(d.evaluator, loaded.space, failed, worst=worst, tried=tried)


def finalize(ctx: RunContext, loaded: Loaded, d: Dense, chosen: Any) -> Final:
    """Fine-tune and verify ``chosen``; repair (another candidate) while a budget is missed."""
    from hwprune.budgets import format_value

    teacher = copy.deepcopy(loaded.model).eval()
    tried: set[str] = set()
    candidate, repairs = chosen, 0
    while True:
        tried.add(candidate.key)
        module, before, after = finetune(ctx, loaded, candidate, teacher)
        shapes = output_shapes_of(loaded, module, allow_change=ctx.config.allow_output_change)
        final, met = verify(ctx, d, module)
        if all(met.values()):
            return Final(module, candidate, before, after, final, met, repairs, shapes=shapes)
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
        candidate = _repair(ctx, loaded, d, candidate, worst=worst, tried=tried)
        if candidate is None:
            raise InfeasibleBudgetError(
                "the final model misses a budget on re-measurement and no candidate with more "
                "margin can be found; loosen the budget or lower min_keep",
                smallest=d.evaluator.smallest(),
            )

"""The run, stage by stage. A resumed run is the same sequence: the stages find what the
killed session left (the episodes log answers every candidate measured before)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from hwprune.run.context import RunContext
from hwprune.run.estimate import estimate_cost, record_actual
from hwprune.run.final import finalize
from hwprune.run.load import load
from hwprune.run.output import export, report
from hwprune.run.result import PruneResult
from hwprune.run.search import choose, dense, search
from hwprune.run.stairs import staircase

__all__ = ["run"]


def run(
    ctx: RunContext,
    *,
    constraints: list,
    objects: tuple[Any, Any, Any] | None = None,
    structure: Mapping[str, Any] | None = None,
) -> PruneResult:
    """Every stage in order; ``objects`` = (model, example_inputs, task) handed by the caller,
    ``structure`` its Torch-Pruning options (ignored_layers, num_heads, ...)."""
    loaded = load(ctx, objects=objects, structure=structure)
    loaded = staircase(ctx, loaded, constraints)
    d = dense(ctx, loaded, constraints)
    try:
        estimate = estimate_cost(ctx, d.evaluator, dense_timings=d.evaluator.dense_timings)
        t0, before = time.perf_counter(), len(d.evaluator.history)
        searched = search(ctx, loaded, d, seconds_per_candidate=estimate["seconds_per_candidate"])
        record_actual(ctx, estimate, seconds=time.perf_counter() - t0,
                      outcomes=d.evaluator.history[before:])  # fmt: skip
        chosen, confirmations = choose(ctx, loaded, d, answer=searched.extra.get("answer"))
        if confirmations:
            searched.extra["confirmations"] = confirmations
        # The final proof is timed by the search's devices too (hwprune.evaluate.parallel).
        final = finalize(ctx, loaded, d, chosen)
    finally:
        d.evaluator.close()
    exported = export(ctx, loaded, d, final)
    return report(ctx, loaded, d, searched, final, exported)

"""Stages ``dense``, ``search`` and ``choose``: the reference, the searcher, the ranked choice.

Resume is the same sequence: the evaluator reads every candidate of the
episodes log back, the searcher starts afresh with the same seed and is
answered from the log for every candidate it proposes again (a replay, free
of measurement), so it reaches the same state and goes on where the killed
run stopped. The choice ranks every candidate in the log.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Any

from hwprune.errors import InfeasibleBudgetError, RunDirError
from hwprune.run.context import RunContext, keep_raised_budget
from hwprune.run.load import Loaded

log = logging.getLogger(__name__)

__all__ = ["Dense", "Searched", "dense", "search", "choose", "SEARCH_FILE"]

#: What the search fixed when it began, read back on resume (see _batch_episodes).
SEARCH_FILE = "search.json"


@dataclass
class Dense:
    """The calibrated evaluator (relative budgets fixed) and the dense model's metrics."""

    evaluator: Any
    constraints: list
    metrics: dict[str, float] | None  # task.evaluate(dense), None without evaluate
    resumed: int  # candidates read back from the episodes log


@dataclass
class Searched:
    searcher: str
    first_feasible: int | None
    extra: dict[str, Any] = field(default_factory=dict)


#: The machine a run's timings were taken on (``oracles.machine_identity``), written when it starts.
MACHINE_FILE = "machine.json"
#: The fields of a machine identity that decide its timings (not the Python version).
_HARDWARE = ("cpu", "cpu_id", "cpu_flags", "cores", "arch", "system")


def _same_machine(ctx: RunContext, evaluator: Any) -> None:
    """Record this machine in a new run; refuse to resume a run timed on another one.

    A resumed run replays its log's measurements and re-measures the dense model: on other
    hardware the two would mix machines (one "AMD EPYC" host here timed models 2-3x faster than
    another of that name). Only a run whose own process times candidates is held to this: not
    one timed by remote oracles (``hwprune serve``) or Ray workers.
    """
    import json

    import oracles
    from oracles.remote import RemoteOracle

    here = {k: v for k, v in oracles.machine_identity().items() if k in _HARDWARE}
    path = ctx.path(MACHINE_FILE)
    timed = ctx.config.ray is None and any(
        o.timed and not isinstance(o, RemoteOracle) for o in evaluator.oracles.values()
    )

    def record() -> None:
        path.write_text(json.dumps(here, indent=2) + "\n", encoding="utf-8")

    if not ctx.resumed:
        record()
        return
    if not path.is_file():
        return  # a run started before runs recorded their machine: nothing to compare with
    try:
        there = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items()
                 if k in _HARDWARE}  # fmt: skip
    except (OSError, ValueError, AttributeError):
        return  # unreadable: nothing to compare with
    if there == here:
        return
    if not timed or evaluator.evaluations == 0:
        record()  # nothing timed there is kept: the run's timings start here
        return

    def text(m: dict[str, Any]) -> str:
        cpu = str(m.get("cpu") or "?") + (f" [{m['cpu_id']}]" if m.get("cpu_id") else "")
        return cpu + (f", {m['cores']} cores" if m.get("cores") else "")

    raise RunDirError(
        f"cannot resume {str(ctx.run_dir)!r} on this machine: its candidates were timed on "
        f"another ({text(there)}; this one: {text(here)}), and timings do not carry between "
        "machines; resume it where it started, or start a new run with another --out"
    )


def check_export(config: Any, space: Any) -> None:
    """Export the dense model once, for nothing but its refusals (ExportError).

    The run ends with an ONNX export of the chosen model; a forward that cannot be
    exported faithfully (a branch on its input's values: hwprune.export.trace) or an
    operator ONNX lacks is refused here, before any time goes into the search. Where an
    oracle takes ONNX, the dense model's measurement exports it first anyway.
    """
    from hwprune.export.onnx import export_onnx

    export_onnx(space.model, example_inputs=space.example_inputs, opset=config.opset,
                fold_shapes=False, allow_trace_warnings=config.allow_trace_warnings)  # fmt: skip


def dense(ctx: RunContext, loaded: Loaded, constraints: list) -> Dense:
    """Stage ``dense``: measure the dense model with every budget's oracle; its metrics."""
    from hwprune.evaluate import Evaluator
    from oracles import MeasurementCache

    config = ctx.config
    kwargs: dict[str, Any] = {
        "space": loaded.space,
        "task": loaded.task,
        "constraints": constraints,
        "cache": MeasurementCache(ctx.cache_path),
        "log_path": str(ctx.episodes_path),
        "seed": config.seed,
        "opset": config.opset,
        "allow_trace_warnings": config.allow_trace_warnings,
    }
    with ctx.stage("dense", len(constraints), "measuring the dense model") as step:
        if config.workers > 1 or config.ray is not None:
            from hwprune.evaluate.parallel import ParallelEvaluator

            # Every candidate is measured in parallel runs: the surrogate's gate decides
            # one candidate at a time, in order (PruneConfig refuses surrogate=on here).
            evaluator = ParallelEvaluator(workers=config.workers, ray_address=config.ray, **kwargs)
        else:
            evaluator = Evaluator(**kwargs, surrogate=config.surrogate)
        try:
            resumed = evaluator.evaluations
            _same_machine(ctx, evaluator)
            if all(o.input_format != "onnx" for o in evaluator.oracles.values()):
                check_export(config, loaded.space)
            constraints = evaluator.calibrate()
            metrics = None
            if loaded.task.evaluate is not None:
                metrics = dict(loaded.task.call("evaluate", loaded.model, what="the dense model"))
        except BaseException:
            evaluator.close()
            raise
        step(len(constraints), values={c.name: c.dense_value for c in constraints},
             resumed=resumed)  # fmt: skip
    return Dense(evaluator=evaluator, constraints=constraints, metrics=metrics, resumed=resumed)


def _searcher(ctx: RunContext, evaluator: Any) -> Any:
    import importlib.util
    import inspect

    from hwprune.agents import SEARCHERS, get_searcher

    name = ctx.config.agent
    cls = SEARCHERS.get(name) if name in SEARCHERS else None
    kwargs: dict[str, Any] = {"seed": ctx.config.seed}
    params = inspect.signature(cls.__init__).parameters if cls is not None else {}
    if "batch_episodes" in params:
        kwargs["batch_episodes"] = _batch_episodes(ctx, evaluator)
    if "staircase" in params:
        from hwprune.run.stairs import read_staircase

        kwargs["staircase"] = read_staircase(ctx)
    if params and importlib.util.find_spec("tensorboard") is not None:
        for key in ("tensorboard_log", "tensorboard_dir", "tensorboard"):
            if key in params:
                kwargs[key] = str(ctx.path("tensorboard"))
                break
    return get_searcher(name, **kwargs)


def _batch_episodes(ctx: RunContext, evaluator: Any) -> int:
    """How many episodes an RL searcher (amc, qlp) plays from one policy before it learns.

    The evaluator's width (``--workers``) in the session that began the search,
    kept in ``RUN/search.json``: a run resumed with other ``--workers`` changes
    how its candidates are evaluated, not what its searcher proposes, so it
    still replays the log and finds what the run would have found.
    """
    from hwprune.agents._sb3 import read_json, write_json

    path = ctx.path(SEARCH_FILE)
    if path.is_file():
        batch = read_json(path).get("batch_episodes")
        if isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1:
            return batch
        raise RunDirError(
            f"{str(path)!r} holds batch_episodes={batch!r}, expected a whole number >= 1; "
            "restore the file or start the run again"
        )
    batch = int(getattr(evaluator, "width", 1))
    write_json(path, {"batch_episodes": batch})
    return batch


def search(ctx: RunContext, loaded: Loaded, d: Dense) -> Searched:
    """Stage ``search``: the searcher proposes ``evaluations`` distinct candidates.

    A resumed run replays: the agent's checkpoint of the killed session is
    dropped (it was saved at an update boundary, not where the log ends) and
    the agent starts again from its seed; every candidate it proposes again
    is answered from the log, so it ends with the same history as a run that
    was never stopped (exactly so where the oracles are deterministic).
    """
    evaluator, total = d.evaluator, ctx.config.evaluations
    if ctx.resumed:
        keep_raised_budget(ctx.run_dir, ctx.config)
    agent_dir = ctx.path("agent")
    if agent_dir.exists():
        shutil.rmtree(agent_dir)
    searcher = _searcher(ctx, evaluator)
    with ctx.stage("search", total, "searching") as step:
        best: list[float | None] = [None]
        for o in evaluator.history:
            if o.feasible and (best[0] is None or o.accuracy > best[0]):
                best[0] = o.accuracy
        seen: set[str] = set()

        def on_outcome(outcome: Any) -> None:
            seen.add(outcome.key)
            if outcome.feasible and (best[0] is None or outcome.accuracy > best[0]):
                best[0] = outcome.accuracy
            step(min(len(seen), total), best_feasible_accuracy=best[0],
                 values=dict(outcome.values), feasible=outcome.feasible,
                 accuracy=outcome.accuracy)  # fmt: skip

        step(0, best_feasible_accuracy=best[0])
        result = searcher.search(
            space=loaded.space,
            evaluator=evaluator,
            evaluations=total,
            progress=on_outcome,
            checkpoint_dir=agent_dir,
            repair_infeasible=False,
            confirm=0,
        )
    first = next((i + 1 for i, o in enumerate(evaluator.history) if o.feasible), None)
    return Searched(
        searcher=getattr(searcher, "name", ctx.config.agent),
        first_feasible=first,
        extra=dict(result.extra),
    )


def choose(ctx: RunContext, loaded: Loaded, d: Dense) -> tuple[Any, list[dict[str, Any]]]:
    """Stage ``choose``: the best candidate of the whole log that a fresh measurement confirms.

    Ranked by :func:`~hwprune.evaluate.rank_feasible` over every candidate in
    the episodes log (earlier sessions' included); the first whose
    re-measurement meets every budget is chosen (a value the surrogate predicted
    ranks a candidate, never confirms it). If the most accurate failed its
    re-measurement and the one confirmed is clearly less accurate, the failed one
    scaled down to a margin competes too (:func:`_rescue`). None confirmed: the
    repair step scales the most accurate candidate down until it is feasible,
    measuring every value.
    """
    from hwprune.agents import confirm_best, repair

    evaluator = d.evaluator
    with ctx.stage("choose", None, "confirming the best candidates") as step:
        best, confirmations = confirm_best(loaded.space, evaluator, evaluator.history)
        best = _rescue(loaded.space, evaluator, best, confirmations)
        if best is None:
            start = (
                max(evaluator.history, key=lambda o: o.accuracy).policy
                if evaluator.history
                else None
            )
            with evaluator.measured_only():
                best = repair(loaded.space, evaluator.evaluate, start)
        if best is None:
            raise _infeasible(ctx, d)
        step(1, total=1, accuracy=best.accuracy, values=dict(best.values))
    return best, confirmations


def _rescue(
    space: Any, evaluator: Any, best: Any | None, confirmations: list[dict[str, Any]]
) -> Any | None:
    """``best``, or the most accurate candidate that failed its confirmation made feasible
    with a margin, whichever ranks first.

    A candidate near its bound can fail its re-measurement by noise (a busy machine); the
    next one in rank order may be far smaller and far less accurate (a bisection leaves one
    candidate near the bound and the rest near the floor). Then, as the final proof's
    repair does, the failed candidate is scaled down until its search value is below the
    bound by the margin the re-measurement asks for; the result is confirmed like any
    candidate and shipped if it ranks above ``best``. Appends its confirmation records.
    """
    from hwprune.agents import confirm_best
    from hwprune.evaluate import accuracy_tolerance, rank_feasible, ranking
    from hwprune.run.final import repair_candidate

    failed = [r for r in confirmations if r.get("stage") == "confirmed" and not r["confirmed"]]
    if not failed:
        return best
    top = evaluator.outcome(failed[0]["key"])
    if top is None:
        return best
    samples = evaluator.eval_samples
    floor = getattr(evaluator, "score_floor", None)
    # At chance (``rank_feasible``'s floor) accuracies say nothing and the larger model leads:
    # scaling it down to a margin may still beat the confirmed one.
    if (
        best is not None
        and (floor is None or top.accuracy > floor)
        and best.accuracy >= top.accuracy - accuracy_tolerance(top.accuracy, samples)
    ):
        return best
    worst = max(c.cost(failed[0]["values"][c.name]) for c in evaluator.constraints)
    tried = {r["key"] for r in failed}  # (the repair's bisection starts at the floor model)
    rescued = repair_candidate(evaluator, space, top, worst=worst, tried=tried)
    if rescued is None or (best is not None and rescued.key == best.key):
        return best
    confirmed, records = confirm_best(space, evaluator, [rescued], top=1)
    confirmations.extend({**r, "stage": "rescued"} for r in records)
    if confirmed is None:
        return best
    log.info("candidate %s (accuracy %.4f) failed its confirmation; scaled down to a margin: "
             "%s (accuracy %.4f)", top.key, top.accuracy, confirmed.key,
             confirmed.accuracy)  # fmt: skip
    if best is None:
        return confirmed
    return rank_feasible([confirmed, best], **ranking(evaluator))[0]


def _infeasible(ctx: RunContext, d: Dense) -> InfeasibleBudgetError:
    from hwprune.budgets import format_value

    smallest = d.evaluator.smallest()
    by_name = {c.name: c for c in d.constraints}
    missed = []
    for name, value in smallest.items():
        c = by_name[name]
        if value > c.bound:
            missed.append(
                f"{c.budget.text} on {c.oracle}: the smallest {name} measured was "
                f"{format_value(value, c.unit)} against a bound of {format_value(c.bound, c.unit)}"
            )
    detail = "; ".join(missed) or "no candidate met every budget at once"
    return InfeasibleBudgetError(
        f"no allowed policy meets the budgets ({detail}, with min_keep={ctx.config.min_keep}); "
        f"loosen the budget or lower min_keep (everything measured is kept in "
        f"{str(ctx.run_dir)!r})",
        smallest=smallest,
    )

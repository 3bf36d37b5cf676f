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
from hwprune.run.choose import choose_candidate
from hwprune.run.context import RunContext, keep_raised_budget
from hwprune.run.load import Loaded, check_export

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
    another of that name). Only a run whose own machine times candidates is held to this, not
    one timed by remote oracles (``hwprune serve``); a Ray run's timing devices run on the
    driver's node, this machine (``ray://``, whose driver is elsewhere, is refused with a local
    timing oracle).
    """
    import json

    import oracles
    from oracles.remote import RemoteOracle

    here = {k: v for k, v in oracles.machine_identity().items() if k in _HARDWARE}
    path = ctx.path(MACHINE_FILE)
    timed = any(o.timed and not isinstance(o, RemoteOracle) for o in evaluator.oracles.values())

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
    if config.proxy_racing:  # one worker only (PruneConfig refuses it with --workers or --ray)
        kwargs["racing"] = True
    with ctx.stage("dense", len(constraints), "measuring the dense model") as step:
        if config.workers > 1 or config.ray is not None:
            from hwprune.evaluate.parallel import ParallelEvaluator

            # Every candidate is measured in parallel runs: the surrogate's gate decides
            # one candidate at a time, in order (PruneConfig refuses surrogate=on here).
            # An image folder is read by every worker: checked on each Ray node first.
            paths = [config.data.split(":", 1)[1]] if config.data.startswith("imagefolder:") else []
            evaluator = ParallelEvaluator(workers=config.workers, ray_address=config.ray,
                                          score_device=config.device, data_paths=paths,
                                          **kwargs)  # fmt: skip
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


def make_searcher(ctx: RunContext, evaluator: Any) -> Any:
    """The run's searcher (``--agent``), with the options the run gives it: its seed, the
    measured staircase, its episode batch, its TensorBoard folder."""
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
    batch = int(evaluator.width)
    write_json(path, {"batch_episodes": batch})
    return batch


def search(
    ctx: RunContext, loaded: Loaded, d: Dense, *, seconds_per_candidate: float | None = None
) -> Searched:
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
    searcher = make_searcher(ctx, evaluator)
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
            step(min(len(seen), total), best_feasible_accuracy=best[0], **pace,
                 values=dict(outcome.values), feasible=outcome.feasible,
                 accuracy=outcome.accuracy)  # fmt: skip

        # The estimate gives the time left until the search's own rate is measured.
        pace = {} if seconds_per_candidate is None else {"seconds_per_step": seconds_per_candidate}
        step(0, best_feasible_accuracy=best[0], **pace)
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
        searcher=searcher.name,
        first_feasible=first,
        extra=dict(result.extra),
    )


def choose(
    ctx: RunContext, loaded: Loaded, d: Dense, *, answer: str | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """Stage ``choose``: the candidate of the whole episodes log that ships, and the records of
    the re-measurements that decided it (:func:`hwprune.run.choose.choose_candidate` over every
    candidate in the log, earlier sessions' included; ``answer``: the searcher's own answer,
    ``Searched.extra["answer"]``, confirmed first)."""
    with ctx.stage("choose", None, "confirming the best candidates") as step:
        choice = choose_candidate(space=loaded.space, evaluator=d.evaluator, answer=answer)
        if choice.best is None:
            raise _infeasible(ctx, d)
        step(1, total=1, accuracy=choice.best.accuracy, values=dict(choice.best.values))
    return choice.best, choice.confirmations


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

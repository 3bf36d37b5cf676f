"""The search's cost, measured before it starts: seconds per candidate by stage and in all.

Between the dense stage and the search, each part of one candidate's evaluation is run up to
three times (the median kept, stage by stage), as the search runs it, on a uniform candidate at the budgets' size (where the search spends
its evaluations; the dense model would overstate every compute stage, by about 2x on the
demo): the surgery, the per-candidate checks (its shape key and forward pass), the BatchNorm
re-estimation, the ONNX export, each oracle with the search's stop rule (one call, no cache).
The proxy's score is timed on its first look (128 images, as a race scores them) and scaled
to all its images; a task without a score stream: the dense stage's score, scaled by the
candidate's BatchNorm pass against the dense model's.

From these and the run's ``evaluations``, ``workers`` and surrogate, the expected wall
time of the search: one process evaluates candidates one after another; worker
processes prepare (surgery, BN, score, export, untimed oracles) side by side while one
device per timed oracle times them one at a time, so the slower of the two sets the pace.
A surrogate that answers some timed calls leaves only its warm-up and audited calls; a
raced proxy (``proxy_racing``) scores fewer images than the estimate counts.
``RUN/cost_estimate.json`` keeps the figures; after the search, the actual wall time beside
them, with the candidates' own seconds and what the searcher and logging took around them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hwprune.files import write_atomic
from hwprune.progress import ProgressEvent, clock_text, emit
from hwprune.run.context import RunContext

log = logging.getLogger(__name__)

__all__ = [
    "ESTIMATE_FILE",
    "estimate_cost",
    "estimate_line",
    "plan_seconds",
    "read_estimate",
    "record_actual",
]

#: The estimate of the search's cost, written before the search starts.
ESTIMATE_FILE = "cost_estimate.json"

#: The stages of one candidate, in the order they run.
STAGES = ("surgery", "bn", "score", "export", "oracles", "timing", "overhead")

#: Probes of a candidate at most, and the share of the search's expected time they may take.
PROBES = 3
PROBE_SHARE = 0.1

# A stage's share of a candidate above which the suggestion names what cuts it.
DOMINANT = 0.5


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Torch on ``n`` threads within (a worker process runs on one), as it was after."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_keep(evaluator: Any) -> float:
    """The keep ratio of a uniform candidate at the budgets' size: where the search spends its
    evaluations. A channel cut to keep ``k`` leaves about ``k**2`` of a layer's compute (its
    inputs and outputs both shrink), so the tightest relative bound ``f`` gives ``sqrt(f)``;
    a sparse (weight, 2:4) space keeps its shapes, so ``f`` itself. Within ``[min_keep, 1]``."""
    space = evaluator.space
    fractions = [float(c.bound) / float(c.dense_value) for c in evaluator.constraints
                 if c.bound is not None and c.dense_value]  # fmt: skip
    if not fractions:
        return 1.0
    f = max(min(fractions), 0.0)
    keep = f**0.5 if space.granularity == "channel" else f
    return min(1.0, max(float(space.min_keep), keep))


def _probe_score(task: Any, module: Any) -> float | None:
    """Seconds of the proxy's score of ``module``: its first look on a task with a score stream
    (128 images, then per image for all of them; the dense stage's score was the first, cold),
    or None for a task without a score stream."""
    samples = int(task.score_samples or 0)
    if task.score_stream is None or samples < 1:
        return None
    stream = task.call("score_stream", module, what="a candidate (cost estimate)")
    try:
        t0 = time.perf_counter()
        _, seen = next(stream)
        elapsed = time.perf_counter() - t0
    except StopIteration:
        return None
    finally:
        stream.close()
    return elapsed * samples / max(int(seen), 1)


def _probe_once(
    evaluator: Any, policy: Any, *, dense_timings: Mapping[str, float]
) -> dict[str, float]:
    """Seconds of each stage of ``policy``'s candidate, as the search evaluates it;
    ``dense_timings``: the dense stage's own (``score``), for a task without a score stream
    (:func:`_probe_score`). Nothing here reads or fills the oracles' cache: a candidate the
    search measures is new."""
    from hwprune.evaluate.evaluator import forward_error

    space, task = evaluator.space, evaluator.task
    seconds = {name: 0.0 for name in STAGES}
    # A worker runs torch on one thread: its candidates are probed the same way.
    with _threads(1 if evaluator.width > 1 else None):
        t0 = time.perf_counter()
        module = space.apply(policy)
        seconds["surgery"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        space.shape_key(policy)
        forward_error(module, evaluator.example_inputs)
        seconds["overhead"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        task.checked_calibrate(module, what="a candidate at the budgets' size (cost estimate)")
        seconds["bn"] = time.perf_counter() - t0
        score = _probe_score(task, module)
        if score is None:  # the dense stage's score, scaled by the candidate's BN pass
            dense = copy.deepcopy(space.model)
            t0 = time.perf_counter()
            task.checked_calibrate(dense, what="the dense model (cost estimate)")
            ratio = min(1.0, seconds["bn"] / max(time.perf_counter() - t0, 1e-9))
            score = float(dense_timings.get("score", 0.0)) * ratio
        seconds["score"] = score
        module.to("cpu")
    shapes = evaluator.example_inputs.shapes
    onnx_bytes = None
    for oracle in evaluator.search_oracles.values():
        if oracle.input_format == "onnx" and onnx_bytes is None:
            timings: dict[str, float] = {}
            onnx_bytes = evaluator.export(module, timings=timings)
            seconds["export"] = timings["export"]
        model = onnx_bytes if oracle.input_format == "onnx" else module
        t0 = time.perf_counter()
        oracle.measure(model, input_shapes=shapes)
        seconds["timing" if oracle.timed else "oracles"] += time.perf_counter() - t0
    return seconds


def probe_stages(
    evaluator: Any, *, dense_timings: Mapping[str, float], remaining: int = 0
) -> dict[str, float]:
    """Seconds of each stage of one candidate: the median, stage by stage, of up to ``PROBES``
    probes of a uniform candidate at the budgets' size (:func:`probe_keep`), while the probes
    take under ``PROBE_SHARE`` of the ``remaining`` candidates' expected time (one probe on a
    busy machine can be twice the typical time)."""
    from hwprune.evaluate.evaluator import forward_error
    from hwprune.space import Policy

    space = evaluator.space
    policy = Policy.uniform(space, probe_keep(evaluator))
    if forward_error(space.apply(policy), evaluator.example_inputs) is not None:
        # A candidate the space cannot run is the search's infeasible candidate, not a reason
        # to end the run: the dense model's stages are the estimate's (an upper bound) then.
        log.info("cost estimate: the uniform candidate at the budgets' size does not run; "
                 "the dense model's stages are timed instead")  # fmt: skip
        policy = Policy.dense(space)
    runs: list[dict[str, float]] = []
    t0 = time.perf_counter()
    while len(runs) < PROBES:
        runs.append(_probe_once(evaluator, policy, dense_timings=dense_timings))
        per = statistics.median(sum(r.values()) for r in runs)
        if time.perf_counter() - t0 >= PROBE_SHARE * remaining * per:
            break
    return {"probes": len(runs), **{n: statistics.median(r[n] for r in runs) for n in STAGES}}


def _timed_share(evaluator: Any, remaining: int) -> float:
    """The share of the timed calls the search makes, where a surrogate answers some of them
    (``hwprune.evaluate.surrogate``: measured in warm-up and in audits only, at the least)."""
    from hwprune.evaluate.surrogate import AUDIT_RATE, MIN_POINTS

    decision = evaluator.surrogate_decision or {}
    enabled = decision.get("enabled") or {}
    if evaluator.surrogate is None or not any(enabled.values()) or remaining <= 0:
        return 1.0
    known = 1 + sum(1 for o in evaluator.history if not o.predicted)  # the dense model counts
    warm = min(remaining, max(0, MIN_POINTS - known))
    return (warm + AUDIT_RATE * (remaining - warm)) / remaining


def plan_seconds(
    stages: Mapping[str, float], *, remaining: int, workers: int, timed_share: float
) -> dict[str, float]:
    """Seconds per candidate (prepare, time) and the search's expected wall seconds.

    One worker: every stage one after another. ``workers`` > 1: preparation side by side,
    timing on its device one at a time; the slower sets the pace, the other fills once.
    """
    prepare = sum(v for k, v in stages.items() if k != "timing")
    timing = float(stages.get("timing", 0.0)) * timed_share
    if workers <= 1:
        per = prepare + timing
        total = remaining * per
    else:
        per = max(prepare / workers, timing)
        total = remaining * per + (min(prepare, timing) if remaining else 0.0)
    return {"prepare": prepare, "timing": timing, "per_candidate": per, "total": total}


def _effective_workers(evaluator: Any) -> tuple[int, str]:
    """Candidates prepared at once (what the cores or the cluster allow), and the plan's line."""
    plan = evaluator.parallel_plan
    if plan is None:
        return 1, ""
    return int(plan["worker_slots"]), str(plan["text"])


def suggestions(
    stages: Mapping[str, float], *, config: Any, workers: int, cores: int, share: float
) -> list[str]:
    """What would cut the search's time, largest part first."""
    per = sum(stages.values()) or 1.0
    proxy = (stages.get("bn", 0.0) + stages.get("score", 0.0)) / per
    timing = stages.get("timing", 0.0) * share / per
    out = []
    if proxy >= DOMINANT:
        if str(config.device) == "cpu":
            out.append(f"--device cuda for the proxy (BN re-estimation and score are "
                        f"{100 * proxy:.0f}% of a candidate)")  # fmt: skip
        out.append("a smaller search set or fewer BN images for the proxy")
    if workers <= 1 and cores >= 3 and timing < DOMINANT:
        out.append(f"--workers {min(cores - 1, 4)} (preparation side by side; timing keeps a "
                   "core of its own)")  # fmt: skip
    if timing >= DOMINANT and config.surrogate == "off":
        out.append(f"--surrogate auto (timing is {100 * timing:.0f}% of a candidate)")
    out.append(f"fewer --evaluations (now {config.evaluations})")
    return out


def estimate_line(estimate: Mapping[str, Any]) -> str:
    """One line: the search's expected wall time, its per-candidate cost by stage, a suggestion."""
    stages = estimate["stages"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if v >= 0.005)
    line = (f"cost estimate: {estimate['remaining']} candidates x "
            f"{estimate['seconds_per_candidate']:.2f} s ~ {clock_text(estimate['total_seconds'])} "
            f"of search (s per candidate at keep {estimate['probe_keep']:.2f}: {parts}; "
            f"{estimate['workers']} worker(s))")  # fmt: skip
    if estimate.get("plan"):
        line += f"; {estimate['plan']}"
    if estimate["suggestions"]:
        line += f"; to cut it: {estimate['suggestions'][0]}"
    return line


def _candidates(config: Any) -> int:
    """The candidates the search will propose at most: ``evaluations``, or fewer where the
    searcher stops by its own rule (``latency-knapsack``: once a solution is in its window)."""
    from hwprune.agents import SEARCHERS

    cls = SEARCHERS.get(config.agent) if config.agent in SEARCHERS else None
    return cls.candidates_at_most(config.evaluations) if cls is not None else config.evaluations


def estimate_cost(ctx: RunContext, evaluator: Any, *, dense_timings: Mapping[str, float]) -> dict:
    """Measure the stages, write ``RUN/cost_estimate.json``, log and emit its line; the estimate."""
    config = ctx.config
    t0 = time.perf_counter()
    remaining = max(0, _candidates(config) - evaluator.evaluations)
    stages = probe_stages(evaluator, dense_timings=dense_timings, remaining=remaining)
    probes = int(stages.pop("probes"))
    share = _timed_share(evaluator, remaining)
    workers, shared = _effective_workers(evaluator)
    plan = plan_seconds(stages, remaining=remaining, workers=workers, timed_share=share)
    cores = len(os.sched_getaffinity(0))
    estimate = {
        "stages": {k: round(v, 4) for k, v in stages.items()},
        "probe_keep": round(probe_keep(evaluator), 4),
        "probes": probes,
        "measured_on": "a uniform candidate at the budgets' size (probe_keep)",
        "evaluations": config.evaluations,
        "resumed": evaluator.evaluations,
        "remaining": remaining,
        "workers": int(evaluator.width),
        "workers_at_once": workers,
        **({"plan": shared} if shared else {}),
        "ray": config.ray,
        "timed_share": round(share, 4),
        "seconds_prepare": round(plan["prepare"], 4),
        "seconds_timing": round(plan["timing"], 4),
        "seconds_per_candidate": round(plan["per_candidate"], 4),
        "total_seconds": round(plan["total"], 2),
        "suggestions": suggestions(
            stages, config=config, workers=workers, cores=cores, share=share
        ),  # fmt: skip
        "probe_seconds": round(time.perf_counter() - t0, 3),
        "time": time.time(),
    }
    write_atomic(ctx.path(ESTIMATE_FILE), json.dumps(estimate, indent=2) + "\n")
    line = estimate_line(estimate)
    log.info("%s", line)
    emit(ctx.progress, ProgressEvent("estimate", 1, 1, line, estimate, finished=True))
    return estimate


def read_estimate(ctx: RunContext) -> dict[str, Any] | None:
    """``RUN/cost_estimate.json``, or None when absent or unreadable."""
    try:
        data = json.loads(ctx.path(ESTIMATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_actual(
    ctx: RunContext, estimate: Mapping[str, Any], *, seconds: float, outcomes: Sequence[Any] = ()
) -> None:
    """The search's actual wall seconds (this part of the run) beside its estimate, in
    ``RUN/cost_estimate.json``: what a benchmark compares. ``outcomes``: the candidates the
    search evaluated (each once, by key); their own seconds (``timings["total"]``) and the
    rest of the wall time, the searcher's and the logging's, per candidate."""
    data = {**estimate, "actual_search_seconds": round(seconds, 2)}
    if estimate.get("total_seconds"):
        data["actual_over_estimate"] = round(seconds / float(estimate["total_seconds"]), 3)
    own: dict[str, float] = {}
    for o in outcomes:
        if not o.cached:
            own[o.key] = float(o.timings.get("total", 0.0))
    if own:
        data["actual_candidates"] = len(own)
        data["actual_seconds_per_candidate"] = round(sum(own.values()) / len(own), 4)
        data["actual_overhead_per_candidate"] = round((seconds - sum(own.values())) / len(own), 4)
    write_atomic(ctx.path(ESTIMATE_FILE), json.dumps(data, indent=2) + "\n")

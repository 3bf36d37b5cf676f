"""Benchmark parallel evaluation (``--workers``): search time, latency shift, slow oracle, profile.

Four parts, each stored in ``benchmarks/results/parallel.json`` as it
completes (a rerun of one part keeps the others) and summarised in the
"parallel" section of ``benchmarks/RESULTS.md``:

* ``search``: wall time of the search stage of a 100-evaluation run with 1
  and 2 workers, per searcher: CIFAR VGG-11 at width 0.25 on the built-in
  digits, budgets ``latency<=60%`` on ``onnxruntime:cpu?threads=1`` and
  ``flops<=50%``, no fine-tuning. The log of each pair is compared (same
  candidates in the same order?).
* ``shift``: the latency of one fixed ONNX model on
  ``onnxruntime:cpu?threads=1`` timed by a device process pinned to the last
  core, alone, while two workers prepare candidates on the other core
  (``dedicated``, the default), and while they may run on every core
  (``shared``), interleaved, median of ``--repeats`` calls each.
* ``slow``: a search of ``--slow-evaluations`` random candidates whose
  budget is judged by a test oracle that sleeps ``--sleep`` seconds per call
  (standing in for a TensorRT engine build or a busy remote device), with 1,
  2 and 4 workers. The oracle is untimed, so each worker calls it for its own
  candidate: waiting overlaps across workers, even beyond the two cores.
* ``profile``: a large model's cost profile (default: torchvision ResNet-50
  at 224 on the built-in digits, random weights, 10 classes, as
  ``benchmarks.knapsack_cost`` runs it): the same ``--profile-candidates``
  seeded ``random`` candidates under ``latency<=60%`` on
  ``onnxruntime:cpu?threads=1`` with 1 worker, 2 local workers and 2 Ray
  workers (a local Ray of this machine's cores): search wall seconds, median
  seconds per candidate of preparation (surgery + BN + score + export) and of
  timing (the oracle call). From the 1-worker figures, a model of N nodes of
  ``--cores-per-node`` cores: one device serializes timing (T s per
  candidate), preparation runs on W slots (P s each), so a candidate costs
  max(P / W, T) and the timing device saturates at W = P / T slots.
  ``--quick``: ResNet-18 at 64 px, 2 candidates, written to
  ``results/quick/``.

The machine is shared: the 1-minute load average is recorded before and
after every timing. Run it niced, in the background::

    OMP_NUM_THREADS=1 nice python -m benchmarks.parallel [--part search|shift|slow]
    OMP_NUM_THREADS=1 nice python -m benchmarks.parallel --part profile
    python -m benchmarks.parallel --part profile --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import oracles
from benchmarks import _common as common

log = logging.getLogger("benchmarks.parallel")

SEARCHERS = ("random", "uniform", "ppo-lagrangian", "global-magnitude", "amc", "qlp")
LATENCY = "onnxruntime:cpu?threads=1"


@dataclass
class SleepOracle(oracles.Oracle):
    """A test oracle: the parameter count of the ONNX model, after sleeping ``seconds``."""

    name: ClassVar[str] = "bench-sleep"
    quantity: ClassVar[str] = "params"
    unit: ClassVar[str] = "params"
    seconds: float = 1.0
    device: str = "cpu"

    def measure(self, model: Any, *, input_shapes: Any = None) -> oracles.Measurement:
        time.sleep(self.seconds)
        inner = oracles.get_oracle("params").measure(model, input_shapes=input_shapes)
        return inner.replace(oracle=self.spec, extra={"slept": self.seconds})


if SleepOracle.name not in oracles.list_oracles():
    oracles.register_oracle(SleepOracle.name)(SleepOracle)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def _run(
    out: Path, *, agent: str, workers: int, evaluations: int, budgets: list, oracle_map: dict
) -> dict[str, Any]:
    import hwprune

    if out.exists():
        shutil.rmtree(out)
    before = load1()
    t0 = time.perf_counter()
    result = hwprune.prune(
        model="vgg11_cifar",
        width=0.25,
        budgets=budgets,
        oracles=oracle_map,
        agent=agent,
        evaluations=evaluations,
        finetune_epochs=0,
        workers=workers,
        out=out,
        tensorrt=False,
        surrogate="off",  # every candidate measured, whatever the load
    )
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    return {
        "agent": agent,
        "workers": workers,
        "evaluations": report["search"]["evaluations"],
        "search_s": report["stage_seconds"]["search"],
        "run_s": wall,
        "all_met": bool(result.all_met) if hasattr(result, "all_met") else report["all_met"],
        "load_before": before,
        "load_after": load1(),
    }


def _log_rows(out: Path) -> list[tuple]:
    from hwprune.evaluate import read_jsonl

    return [
        (r["key"], r["accuracy"], r["values"].get("flops"))
        for r in read_jsonl(out / "episodes.jsonl")
        if r.get("type", "candidate") == "candidate"
    ]


def part_search(args: argparse.Namespace, work: Path, store: dict) -> None:
    rows = store.setdefault("search", [])
    done = {(r["agent"], r["workers"]) for r in rows}
    budgets = ["flops<=50%"] if args.flops_only else ["latency<=60%", "flops<=50%"]
    for agent in args.searchers:
        label = f"{agent} (flops only)" if args.flops_only else agent
        logs = {}
        for workers in (1, 2):
            out = work / f"search-{label.replace(' ', '-')}-{workers}"
            if (label, workers) in done:
                continue
            log.info("search: %s with %d worker(s)", label, workers)
            row = _run(out, agent=agent, workers=workers, evaluations=args.evaluations,
                       budgets=budgets,
                       oracle_map={} if args.flops_only else {"latency": LATENCY})  # fmt: skip
            row["agent"] = label
            row["budgets"] = budgets
            logs[workers] = _log_rows(out)
            rows.append(row)
            if len(logs) == 2:
                same = [a[0] for a in logs[1]] == [b[0] for b in logs[2]]
                for r in rows:
                    if r["agent"] == label:
                        r["same_candidates_as_1_worker"] = same
            save(store)


def _busy(policy_seed: int, cores: list[int] | None, stop: Any) -> None:
    """A worker's load: prepare random candidates (apply, BN calibrate, score, export) in a loop."""
    import numpy as np
    import torch

    from hwprune.config import PruneConfig
    from hwprune.evaluate import Evaluator
    from hwprune.export.onnx import export_onnx
    from hwprune.run.context import RunContext
    from hwprune.run.load import load
    from hwprune.space import Policy

    if cores:
        os.sched_setaffinity(0, set(cores))
    torch.set_num_threads(1)
    cfg = PruneConfig(model="vgg11_cifar", width=0.25, budgets=("flops<=50%",), round_to=1)
    with tempfile.TemporaryDirectory() as d:
        loaded = load(RunContext(config=cfg, run_dir=Path(d), progress=None, resumed=False))
    ev = Evaluator(space=loaded.space, task=loaded.task, constraints=[])
    rng = np.random.default_rng(policy_seed)
    while not stop.is_set():
        keep = tuple(float(k) for k in rng.uniform(0.2, 1.0, len(loaded.space.units)))
        module, _ = ev.score_candidate(Policy.dense(loaded.space).with_keep(keep), timings={})
        export_onnx(module, example_inputs=loaded.space.example_inputs)


def _time_once(onnx: bytes, core: int, shapes: dict) -> float:
    os.sched_setaffinity(0, {core})
    oracle = oracles.get_oracle(LATENCY)
    return oracle.measure(onnx, input_shapes=shapes).value


def part_shift(args: argparse.Namespace, work: Path, store: dict) -> None:
    from hwprune.evaluate.parallel import plan_cores
    from hwprune.export.onnx import export_onnx
    from hwprune.models import get_model

    cores = sorted(os.sched_getaffinity(0))
    device_cores, worker_cores = plan_cores(1, dedicated=True)
    core = device_cores[0] if device_cores[0] is not None else cores[-1]
    import torch

    model = get_model("vgg11_cifar", num_classes=10, width=0.5).eval()
    onnx = export_onnx(model, example_inputs=torch.randn(1, 3, 32, 32))
    from oracles.model import load_onnx

    shapes = {load_onnx(onnx).graph.input[0].name: (1, 3, 32, 32)}
    ctx = multiprocessing.get_context("spawn")
    samples: dict[str, list[float]] = {"alone": [], "dedicated": [], "shared": []}
    loads: dict[str, list[float]] = {k: [] for k in samples}
    with ctx.Pool(1) as timer:
        timer.apply(_time_once, (onnx, core, shapes))  # warm the process
        for _ in range(args.repeats):
            for mode in ("alone", "dedicated", "shared"):
                stop = ctx.Event()
                procs = []
                if mode != "alone":
                    pin = worker_cores if mode == "dedicated" else None
                    procs = [ctx.Process(target=_busy, args=(i, pin, stop)) for i in range(2)]
                    for p in procs:
                        p.start()
                    time.sleep(args.warm)  # let the workers load and reach their loop
                loads[mode].append(load1())
                samples[mode].append(timer.apply(_time_once, (onnx, core, shapes)))
                stop.set()
                for p in procs:
                    p.join(timeout=60)
                log.info("shift %s: %.4f ms", mode, samples[mode][-1])
    med = {k: statistics.median(v) for k, v in samples.items()}
    store["shift"] = {
        "model": "vgg11_cifar width 0.5, 1x3x32x32",
        "oracle": LATENCY,
        "timing_core": core,
        "worker_cores_dedicated": worker_cores,
        "samples_ms": samples,
        "median_ms": med,
        "load_average": loads,
        "shift_dedicated": med["dedicated"] / med["alone"] - 1.0,
        "shift_shared": med["shared"] / med["alone"] - 1.0,
        "spread_alone": (max(samples["alone"]) - min(samples["alone"])) / med["alone"],
    }
    save(store)


def part_slow(args: argparse.Namespace, work: Path, store: dict) -> None:
    rows = []
    for workers in (1, 2, 4):
        log.info("slow oracle: %d worker(s)", workers)
        rows.append(
            _run(
                work / f"slow-{workers}",
                agent="random",
                workers=workers,
                evaluations=args.slow_evaluations,
                budgets=["params<=50%"],
                oracle_map={"params": f"bench-sleep?seconds={args.sleep}"},
            )  # fmt: skip
        )
        rows[-1]["sleep_s"] = args.sleep
        store["slow"] = rows
        save(store)


# ------------------------------------------------------------------ profile
#: A candidate's preparation as the episodes log times it (``proxy`` = bn + accuracy is a sum of
#: two of these, so it is left out); the timing is the latency oracle's call.
PREPARE_STAGES = ("apply", "bn", "accuracy", "export")
TIMING_STAGE = "oracle:latency"
PROFILE_BUDGET = "latency<=60%"
#: (label, workers, on a local Ray), by the name ``--profile-ways`` gives them
PROFILE_WAYS = {
    "1": ("1 worker", 1, False),
    "2": ("2 local workers", 2, False),
    "ray": ("2 Ray workers", 2, True),
}
#: What the profile's rows must share to sit in one table.
PROFILE_SETTINGS = ("model", "input_size", "data", "budget", "oracle", "searcher", "candidates")
#: The nodes of the model's table.
MODEL_NODES = (1, 2, 4, 8, 16)


def node_slots(*, nodes: int, cores_per_node: int, device_cores: int = 1) -> int:
    """Preparation slots of ``nodes`` nodes of ``cores_per_node`` cores when the timing device
    keeps ``device_cores`` of them (hwprune's plan: one CPU on the driver's node)."""
    return max(1, nodes * cores_per_node - device_cores)


def node_model(
    *, prepare: float, timing: float, slots: int, overhead: float = 0.0
) -> dict[str, float | bool]:
    """Seconds per candidate when preparation (``prepare`` s each) runs on ``slots`` worker slots
    side by side and one timing device serializes the timing (``timing`` s each):
    max(prepare / slots, timing) + overhead, the searcher's and logging's own seconds. The
    speed-up is over one process doing both in turn (prepare + timing + overhead); past
    ``prepare / timing`` slots the timing device is the bottleneck and more slots buy nothing."""
    if slots < 1 or prepare < 0 or timing < 0 or overhead < 0:
        raise ValueError("slots must be >= 1 and the seconds >= 0")
    per = max(prepare / slots, timing) + overhead
    one = prepare + timing + overhead
    return {
        "slots": slots,
        "seconds_per_candidate": per,
        "speedup": one / per if per > 0 else 1.0,
        "saturation_slots": prepare / timing if timing > 0 else math.inf,
        "timing_bound": prepare / slots <= timing,
    }


def predicted_search_seconds(
    *, prepare: float, timing: float, slots: int, candidates: int, overhead: float = 0.0
) -> float:
    """A search of ``candidates`` on the model: each at the steady pace, plus the pipeline's fill
    (the first preparation cannot overlap a timing, as ``hwprune.run.estimate`` plans it)."""
    per = node_model(prepare=prepare, timing=timing, slots=slots, overhead=overhead)
    fill = min(prepare, timing) if candidates else 0.0
    return candidates * float(per["seconds_per_candidate"]) + fill


def _profile_stages(run_dir: Path) -> dict[str, Any]:
    """Per candidate of the run's episodes log: its preparation and timing seconds, by key."""
    from benchmarks.knapsack_cost import _candidates

    rows = {}
    for c in _candidates(run_dir):
        t = c.get("timings", {})
        rows[c["key"]] = {
            **{s: float(t.get(s, 0.0)) for s in PREPARE_STAGES},
            "prepare": sum(float(t.get(s, 0.0)) for s in PREPARE_STAGES),
            "timing": float(t.get(TIMING_STAGE, 0.0)),
            "total": float(t.get("total", 0.0)),
        }
    return rows


def _profile_run(args: argparse.Namespace, out: Path, *, workers: int, ray: bool) -> dict:
    import hwprune
    from hwprune.errors import InfeasibleBudgetError
    from hwprune.run.context import read_stage_times

    if out.exists():
        shutil.rmtree(out)
    before = load1()
    t0 = time.perf_counter()
    met: bool | None = None
    try:
        result = hwprune.prune(
            model=args.profile_model,
            data="digits",
            input_size=args.profile_input_size,
            budgets=[PROFILE_BUDGET],
            oracles={"latency": LATENCY},
            agent="random",
            seed=args.profile_seed,
            evaluations=args.profile_candidates,
            finetune_epochs=0,
            workers=workers,
            ray="auto" if ray else None,  # joins the local Ray started for this row
            round_to=8,  # no staircase probe: the rows time the search, not the probe
            surrogate="off",  # every candidate timed, whatever the load
            tensorrt=False,
            out=out,
        )
        met = bool(result.all_met)
    except InfeasibleBudgetError:
        met = False  # no candidate met the bound: the search's figures stand all the same
    wall = time.perf_counter() - t0
    after = load1()
    stages = _profile_stages(out)
    # report.json once the run ends; RUN/stages.json, written stage by stage, where it stopped
    # after the search (no candidate met the bound).
    report = out / "report.json"
    times = (json.loads(report.read_text()) if report.exists() else read_stage_times(out)) or {}
    search_s = float(times.get("stage_seconds", {}).get("search", 0.0))
    estimate = {}
    with_estimate = out / "cost_estimate.json"
    if with_estimate.exists():
        estimate = json.loads(with_estimate.read_text())
    med = {k: statistics.median(r[k] for r in stages.values())
           for k in (*PREPARE_STAGES, "prepare", "timing", "total")} if stages else {}  # fmt: skip
    return {
        "workers": workers,
        "ray": ray,
        "candidates": len(stages),
        "keys": list(stages),
        "search_s": search_s,
        "run_s": wall,
        "per_candidate": stages,
        "median_s": med,
        "overhead_per_candidate_s": estimate.get("actual_overhead_per_candidate"),
        "estimate_search_s": estimate.get("total_seconds"),
        "plan": estimate.get("plan", ""),
        "met": met,
        "load_before": before,
        "load_after": after,
    }


def _start_ray(cpus: int) -> str | None:
    """Start a local Ray of ``cpus`` CPUs; None, or why the Ray row is skipped (one line)."""
    try:
        import ray
    except ImportError as exc:
        return f"Ray row skipped: `import ray` failed ({exc})"
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return None


def part_profile(args: argparse.Namespace, work: Path, store: dict) -> None:
    import torch

    # One process prepares on one torch thread, as each worker does: the rows compare slots.
    torch.set_num_threads(1)
    cores = sorted(os.sched_getaffinity(0))
    ray_cpus = max(2, len(cores))
    prof: dict[str, Any] = {
        "model": args.profile_model,
        "input_size": args.profile_input_size,
        "data": "digits",
        "budget": PROFILE_BUDGET,
        "oracle": LATENCY,
        "searcher": f"random, seed {args.profile_seed}",
        "candidates": args.profile_candidates,
        "cores": cores,
        "ray_cpus": ray_cpus,
        "rows": [],
        "notes": [],
    }
    # Ways run before with the same settings are kept (a piecewise run adds up to one table).
    earlier = store.get("profile") or {}
    if all(earlier.get(k) == prof[k] for k in PROFILE_SETTINGS):
        prof["rows"] = [r for r in earlier.get("rows", []) if r["way"] not in _labels(args)]
        prof["notes"] = [n for n in earlier.get("notes", []) if "ray" not in args.profile_ways]
    store["profile"] = prof
    for label, workers, on_ray in (PROFILE_WAYS[w] for w in args.profile_ways):
        if on_ray:
            skipped = _start_ray(ray_cpus)
            if skipped:
                prof["notes"].append(skipped)
                continue
        log.info("profile: %s", label)
        try:
            row = _profile_run(args, work / f"profile-{label.replace(' ', '-')}",
                               workers=workers, ray=on_ray)  # fmt: skip
        finally:
            if on_ray:
                import ray

                ray.shutdown()
        row["way"] = label
        prof["rows"].append(row)
        _order(prof)
        save(store)
    base = prof["rows"][0] if prof["rows"] and prof["rows"][0]["workers"] == 1 else None
    for row in prof["rows"]:
        row["same_candidates"] = None if base is None else row["keys"] == base["keys"]
    prof.pop("model_of_nodes", None)
    if base is not None and base["candidates"]:
        prof["model_of_nodes"] = _model_table(prof, args.cores_per_node)
    save(store)


def _labels(args: argparse.Namespace) -> set[str]:
    return {PROFILE_WAYS[w][0] for w in args.profile_ways}


def _order(prof: dict) -> None:
    """The rows in the order of ``PROFILE_WAYS`` (1 worker first: the others' reference)."""
    rank = {label: i for i, (label, _, _) in enumerate(PROFILE_WAYS.values())}
    prof["rows"].sort(key=lambda r: rank.get(r["way"], len(rank)))


def _model_table(prof: dict, cores_per_node: list[int]) -> dict[str, Any]:
    """The model of N nodes from the 1-worker row's medians, and the 2-worker rows against it."""
    one = prof["rows"][0]
    p, t = one["median_s"]["prepare"], one["median_s"]["timing"]
    o = max(0.0, float(one.get("overhead_per_candidate_s") or 0.0))
    k = one["candidates"]
    rows = []
    for c in cores_per_node:
        for n in MODEL_NODES:
            w = node_slots(nodes=n, cores_per_node=c)
            rows.append({"nodes": n, "cores_per_node": c,
                         **node_model(prepare=p, timing=t, slots=w, overhead=o)})  # fmt: skip
    saturation = p / t if t > 0 else math.inf
    compare = []
    for row in prof["rows"][1:]:
        compare.append({
            "way": row["way"],
            "measured_search_s": row["search_s"],
            # Two worker processes on this machine: one slot where the timing device keeps a
            # core of its own (its plan), two where nothing is reserved.
            "predicted_search_s": {
                str(w): predicted_search_seconds(prepare=p, timing=t, slots=w, candidates=k,
                                                 overhead=o)
                for w in (1, 2)
            },
        })  # fmt: skip
    return {
        "prepare_s": p,
        "timing_s": t,
        "overhead_s": o,
        "one_process_s": p + t + o,
        "saturation_slots": saturation,
        "saturation_nodes": {str(c): math.ceil((saturation + 1) / c) for c in cores_per_node}
        if math.isfinite(saturation)
        else {},
        "rows": rows,
        "two_workers": compare,
        "one_worker_search_s": one["search_s"],
        "one_worker_predicted_s": k * (p + t + o),
    }


_STORE: dict[str, Any] = {}


def save(store: dict) -> None:
    common.write_results("parallel", store, command=_STORE["command"], env=_STORE["env"],
                         quick=_STORE.get("quick", False))  # fmt: skip
    write_md(store)


def _profile_md(prof: dict) -> list[str]:
    """The profile part's tables: the measured ways, then the model of N nodes."""
    parts = [f"\n**A large model's cost profile**: {prof['model']} at {prof['input_size']} px "
             f"on {prof['data']} (random weights, 10 classes), the same {prof['candidates']} "
             f"candidates ({prof['searcher']}) under `{prof['budget']}` on `{prof['oracle']}`; "
             f"prepare = surgery + BN + score + export, timing = the oracle's call, medians per "
             f"candidate; cores {prof['cores']}, Ray with {prof['ray_cpus']} CPUs:\n"]  # fmt: skip
    rows = prof.get("rows", [])
    base = rows[0]["search_s"] if rows and rows[0]["workers"] == 1 else 0.0
    table = []
    for r in rows:
        m = r["median_s"]
        table.append([
            r["way"], f"{r['search_s']:.1f}", f"{r['search_s'] / max(1, r['candidates']):.1f}",
            f"{base / r['search_s']:.2f}x" if base and r["search_s"] else "-",
            f"{m.get('prepare', 0):.2f} ({m.get('apply', 0):.2f} / {m.get('bn', 0):.2f} / "
            f"{m.get('accuracy', 0):.2f} / {m.get('export', 0):.2f})",
            f"{m.get('timing', 0):.2f}",
            {True: "yes", False: "no"}.get(r.get("same_candidates"), "-"),
            f"{r['load_before']}-{r['load_after']}", r.get("plan") or "-",
        ])  # fmt: skip
    parts.append(common.markdown_table(
        ["way", "search (s)", "s per candidate", "speed-up", "prepare s (surgery / BN / score / "
         "export)", "timing s", "same candidates", "load average", "plan"], table))  # fmt: skip
    parts += [f"\n{note}" for note in prof.get("notes", [])]
    if any(r.get("ray") for r in rows):
        parts.append("\nA Ray worker loads the run's model and task at its first task, inside "
                     "the search; local workers load them when they start, before it.")  # fmt: skip
    model = prof.get("model_of_nodes")
    if not model:
        return parts
    parts.append(
        f"\n**Model of N nodes** (from the 1-worker medians: prepare P = "
        f"{model['prepare_s']:.2f} s, timing T = {model['timing_s']:.2f} s, searcher and "
        f"logging {model['overhead_s']:.2f} s per candidate): one device times every candidate, "
        "preparation runs on W = N x c - 1 slots (the device keeps a core on its node), so a "
        "candidate costs max(P / W, T) + overhead; speed-up over one process (P + T + "
        f"overhead = {model['one_process_s']:.2f} s). The timing device saturates at "
        f"W* = P / T = {model['saturation_slots']:.1f} slots"
        + "".join(f"; {n} node(s) of {c} cores" for c, n in model["saturation_nodes"].items())
        + ":\n"
    )
    parts.append(common.markdown_table(
        ["nodes", "cores per node", "slots W", "s per candidate", "speed-up", "timing-bound"],
        [[r["nodes"], r["cores_per_node"], r["slots"], f"{r['seconds_per_candidate']:.2f}",
          f"{r['speedup']:.2f}x", "yes" if r["timing_bound"] else "no"]
         for r in model["rows"]]))  # fmt: skip
    lines = [f"1 worker: measured {model['one_worker_search_s']:.1f} s, the model "
             f"{model['one_worker_predicted_s']:.1f} s"]  # fmt: skip
    for c in model["two_workers"]:
        pred = c["predicted_search_s"]
        lines.append(f"{c['way']}: measured {c['measured_search_s']:.1f} s; the model "
                     f"{pred['1']:.1f} s with W = 1 (the timing device's own core leaves the "
                     f"workers one) and {pred['2']:.1f} s with W = 2 (nothing reserved)")  # fmt: skip
    parts.append("\nOn this machine, search of "
                 f"{prof['candidates']} candidates: " + "; ".join(lines) + ". `random` "
                 "proposes as many candidates as there are workers and waits for the batch, so "
                 "a timing overlaps preparation only within a batch.")  # fmt: skip
    return parts


def _as_module(command: str) -> str:
    """A stored command as the module it runs (rows stored before ran the file itself)."""
    return re.sub(r"\bpython (benchmarks)/(\w+)\.py\b", r"python -m \1.\2", command)


def write_md(store: dict) -> None:
    parts = []
    if store.get("search"):
        parts.append("**Search wall time, 100 evaluations, 1 vs 2 workers** "
                     "(VGG-11/0.25 on digits, `latency<=60%` on "
                     f"`{LATENCY}` + `flops<=50%`; rows marked flops only: `flops<=50%` "
                     "alone):\n")  # fmt: skip
        by = {(r["agent"], r["workers"]): r for r in store["search"]}
        rows = []
        for agent in dict.fromkeys(r["agent"] for r in store["search"]):
            one, two = by.get((agent, 1)), by.get((agent, 2))
            speed = f"{one['search_s'] / two['search_s']:.2f}x" if one and two else "-"
            rows.append([
                agent,
                f"{one['search_s']:.0f} s (load {one['load_before']}-{one['load_after']})" if one else "-",
                f"{two['search_s']:.0f} s (load {two['load_before']}-{two['load_after']})" if two else "-",
                speed,
                (one or two)["evaluations"],
                {True: "yes", False: "no"}.get((two or {}).get("same_candidates_as_1_worker"), "-"),
            ])  # fmt: skip
        parts.append(common.markdown_table(
            ["searcher", "1 worker", "2 workers", "speed-up", "evaluations",
             "same log"], rows))  # fmt: skip
    if store.get("shift"):
        s = store["shift"]
        parts.append(
            f"\n**Latency shift** of `{s['oracle']}` on {s['model']}, timed on core "
            f"{s['timing_core']}, median of {len(s['samples_ms']['alone'])} interleaved calls:\n"
        )
        parts.append(common.markdown_table(
            ["condition", "median (ms)", "shift vs alone", "load average"],
            [["alone", f"{s['median_ms']['alone']:.4f}", "-",
              f"{min(s['load_average']['alone'])}-{max(s['load_average']['alone'])}"],
             ["2 workers on the other core (dedicated)", f"{s['median_ms']['dedicated']:.4f}",
              f"{s['shift_dedicated']:+.1%}",
              f"{min(s['load_average']['dedicated'])}-{max(s['load_average']['dedicated'])}"],
             ["2 workers on any core (shared)", f"{s['median_ms']['shared']:.4f}",
              f"{s['shift_shared']:+.1%}",
              f"{min(s['load_average']['shared'])}-{max(s['load_average']['shared'])}"]]))  # fmt: skip
        parts.append(f"\nSpread of the calls alone (max-min over median): {s['spread_alone']:.1%}.")
    if store.get("slow"):
        rows = store["slow"]
        base = rows[0]["search_s"]
        parts.append(f"\n**Slow oracle** (sleeps {rows[0]['sleep_s']} s per call, measured in "
                     f"the workers), {rows[0]['evaluations']} random candidates:\n")  # fmt: skip
        parts.append(common.markdown_table(
            ["workers", "search (s)", "speed-up", "load average"],
            [[r["workers"], f"{r['search_s']:.1f}", f"{base / r['search_s']:.2f}x",
              f"{r['load_before']}-{r['load_after']}"] for r in rows]))  # fmt: skip
    if store.get("profile"):
        parts += _profile_md(store["profile"])
    notes = (
        "Taken on a shared 2-core machine (6 engineers at work): the load average next to each "
        "timing says how busy it was; absolute times are noisy. Local worker processes "
        "(spawned), the timing device pinned to the last core, workers to the others."
    )
    commands = store.get("commands", {})
    if commands:
        notes += (
            " Rows by command: "
            + "; ".join(f"{what}: `{_as_module(cmd)}`" for what, cmd in sorted(commands.items()))
            + "."
        )
    common.update_results_md("parallel", "Parallel evaluation (`--workers`)", "\n".join(parts),
                      command=_STORE["command"], env=_STORE["env"], notes=notes,
                      quick=_STORE.get("quick", False))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--part",
        choices=("search", "shift", "slow", "profile", "all"),
        default="all",
        help="all: search, shift and slow (profile runs on its own)",
    )
    p.add_argument(
        "--profile-model",
        default="resnet50",
        help="torchvision model of the profile part (default: %(default)s)",
    )
    p.add_argument("--profile-input-size", type=int, default=224, help="(default: %(default)s)")
    p.add_argument("--profile-candidates", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--profile-seed", type=int, default=0, help="the random searcher's seed")
    p.add_argument(
        "--profile-ways",
        nargs="+",
        choices=tuple(PROFILE_WAYS),
        default=list(PROFILE_WAYS),
        help="1 worker, 2 local workers, 2 Ray workers (default: all; rows stored before with "
        "the same settings are kept)",
    )
    p.add_argument(
        "--cores-per-node",
        type=int,
        nargs="+",
        default=[2, 16],
        help="cores per node of the profile part's model (default: 2 16)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="profile part only: ResNet-18 at 64 px, 2 candidates, written to results/quick/",
    )
    p.add_argument("--searchers", nargs="+", default=list(SEARCHERS[:3]))
    p.add_argument("--evaluations", type=int, default=100)
    p.add_argument("--flops-only", action="store_true",
                   help="search rows with the flops budget alone (deterministic: the same "
                        "candidates with any number of workers)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warm", type=float, default=20.0, help="seconds for the load to start")
    p.add_argument("--sleep", type=float, default=1.0)
    p.add_argument("--slow-evaluations", type=int, default=16)
    p.add_argument("--work", default=None, help="folder of the runs (default: a temp folder)")
    p.add_argument("--fresh", action="store_true", help="forget stored rows of the parts run")
    p.add_argument("--md-only", action="store_true", help="rewrite RESULTS.md from the JSON")
    args = p.parse_args(argv)
    if args.quick and args.part != "profile":
        p.error("--quick goes with --part profile")
    if args.quick:
        args.profile_model, args.profile_input_size, args.profile_candidates = "resnet18", 64, 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _STORE["command"] = common.command_line()
    _STORE["env"] = common.environment()
    _STORE["quick"] = args.quick
    path = common.results_dir(quick=args.quick) / "parallel.json"
    store = json.loads(path.read_text())["results"] if path.exists() else {}
    work = Path(args.work or tempfile.mkdtemp(prefix="hwprune-parallel-"))
    parts = ("slow", "shift", "search") if args.part == "all" else (args.part,)
    if args.md_only:
        write_md(store)
        return 0
    for part in parts:
        if args.fresh:
            store.pop(part, None)
        what = f"{part} (flops only)" if part == "search" and args.flops_only else part
        store.setdefault("commands", {})[what] = _STORE["command"]
        run = {"search": part_search, "shift": part_shift, "slow": part_slow,
               "profile": part_profile}[part]  # fmt: skip
        run(args, work, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())

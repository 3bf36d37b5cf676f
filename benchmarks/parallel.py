"""Benchmark parallel evaluation (``--workers``): search wall time, latency shift, a slow oracle.

Three parts, each stored in ``benchmarks/results/parallel.json`` as it
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

The machine is shared: the 1-minute load average is recorded before and
after every timing. Run it niced, in the background::

    OMP_NUM_THREADS=1 nice python -m benchmarks.parallel [--part search|shift|slow]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
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


_STORE: dict[str, Any] = {}


def save(store: dict) -> None:
    common.write_results("parallel", store, command=_STORE["command"], env=_STORE["env"])
    write_md(store)


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
    notes = (
        "Taken on a shared 2-core machine (6 engineers at work): the load average next to each "
        "timing says how busy it was; absolute times are noisy. Local worker processes "
        "(spawned), the timing device pinned to the last core, workers to the others."
    )
    commands = store.get("commands", {})
    if commands:
        notes += (
            " Rows by command: "
            + "; ".join(f"{what}: `{cmd}`" for what, cmd in sorted(commands.items()))
            + "."
        )
    common.update_results_md("parallel", "Parallel evaluation (`--workers`)", "\n".join(parts),
                      command=_STORE["command"], env=_STORE["env"], notes=notes)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    p.add_argument("--part", choices=("search", "shift", "slow", "all"), default="all")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _STORE["command"] = common.command_line()
    _STORE["env"] = common.environment()
    path = common.results_dir() / "parallel.json"
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
        {"search": part_search, "shift": part_shift, "slow": part_slow}[part](args, work, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())

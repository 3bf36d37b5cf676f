"""What ``latency-knapsack`` costs on a large model, beside the cost of one candidate.

A torchvision model (default: ResNet-50 at 224x224, random weights, 10 classes) pruned by
``hwprune prune --agent latency-knapsack`` on ``onnxruntime:cpu?threads=1``, run as a user runs
it (the CLI in a subprocess, pinned to one core where ``--core`` says). From the run's
``report.json`` and ``episodes.jsonl``:

* the knapsack's cost by part: the staircase probe (seconds, oracle calls), the importance
  pass, the knapsack solves, the whole-model verifications (seconds, candidates);
* the cost of one candidate by stage (surgery, BatchNorm re-estimation, the accuracy proxy,
  export, timing), over the candidates the run evaluated. Every searcher's candidate goes
  through the same evaluator, so this is what each candidate of the default searcher costs;
* the knapsack's whole search (probe included) against 10 such candidates.

::

    taskset -c 1 python -m benchmarks.knapsack_cost                  # digits at 224
    taskset -c 1 python -m benchmarks.knapsack_cost --data 'fashion-mnist?train=3000'

Each finished run is stored in ``benchmarks/results/knapsack_cost_runs/`` (a rerun with the same
settings reuses it; ``--fresh`` redoes it); its run directory is kept under
``runs/benchmarks/knapsack_cost/`` (git-ignored). The table goes to
``benchmarks/results/knapsack_cost.json`` and the "knapsack_cost" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as common

log = logging.getLogger("benchmarks.knapsack_cost")

ORACLE = "onnxruntime:cpu?threads=1"
#: Where the runs' directories are kept (git-ignored).
RUNS_DIR = Path(__file__).resolve().parents[1] / "runs" / "benchmarks" / "knapsack_cost"
#: A candidate's stages as the episodes log times them.
STAGES = ("apply", "bn", "accuracy", "export", "oracle:latency", "total")


def _command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "hwprune", "prune", "--model", args.model, "--data", args.data,
        "--input-size", str(args.input_size), "--budget", args.budget,
        *(["--width", str(args.width)] if args.width is not None else []),
        "--oracle", f"latency={ORACLE}", "--agent", "latency-knapsack",
        "--evaluations", str(args.evaluations), "--finetune-epochs", "0", "--seed",
        str(args.seed), "--no-tensorrt", "--json", "--out", str(out),
    ]  # fmt: skip


def _candidates(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for line in (run_dir / "episodes.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("type", "candidate") == "candidate":
            rows.append(record)
    return rows


def _row(run_dir: Path, *, wall: float, load: tuple[float, float]) -> dict[str, Any]:
    """The run's costs, read from what it wrote."""
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    search = report["search"]
    k = search["extra"]["knapsack"]
    seconds = k["seconds"]
    cands = _candidates(run_dir)
    # The smallest allowed model (the knapsack's first measurement) is far cheaper than a
    # candidate near the bound: the per-candidate cost is taken over the others.
    near = [c for c in cands if c.get("index", 0) > 0] or cands
    per_stage = {
        s: statistics.median(float(c["timings"].get(s, 0.0)) for c in near) for s in STAGES
    }
    search_cost = float(seconds.get("staircase", 0.0)) + sum(
        float(seconds.get(s, 0.0)) for s in ("importance", "solve", "verify")
    )
    b = report["budgets"][0]
    return {
        "run_dir": str(run_dir), "stage_seconds": report["stage_seconds"],
        "staircase_seconds": float(seconds.get("staircase", 0.0)),
        "staircase_oracle_calls": k.get("staircase_oracle_calls"),
        "staircase_cached_calls": k.get("staircase_cached_calls"),
        "importance_seconds": float(seconds.get("importance", 0.0)),
        "solve_seconds": float(seconds.get("solve", 0.0)),
        "verify_seconds": float(seconds.get("verify", 0.0)),
        "candidates": int(k.get("candidates") or len(cands)), "converged": k.get("converged"),
        "calls": [{"predicted": c["predicted"], "measured": c["measured"]} for c in k["calls"]],
        "candidate_seconds": per_stage, "candidates_timed": len(near),
        "knapsack_search_seconds": search_cost,
        "ten_candidates_seconds": 10.0 * per_stage["total"],
        "bound": b["bound"], "final": b["final"], "met": b["met"], "dense": b["dense"],
        "wall_seconds": wall, "load_average_before": load[0], "load_average_after": load[1],
    }  # fmt: skip


def _run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = _command(args, run_dir)
    if args.core is not None:
        cmd = ["taskset", "-c", str(args.core), *cmd]
    # An empty measurement cache of its own: the probe's cost is what a first run pays.
    cache = run_dir.parent / f"{run_dir.name}.oracles.sqlite"
    for stale in run_dir.parent.glob(f"{cache.name}*"):
        stale.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HWPRUNE_CACHE": str(cache)}  # fmt: skip
    log.info("running: %s", " ".join(cmd))
    before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the prune run failed (exit {done.returncode}); see {run_dir}")
    return _row(run_dir, wall=wall, load=(before, os.getloadavg()[0]))


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        c = r["candidate_seconds"]
        lines.append([
            r["model"], r["data"], r["budget"], f"{r['staircase_seconds']:.0f}",
            r["staircase_oracle_calls"], f"{r['importance_seconds']:.2f}",
            f"{r['solve_seconds']:.2f}", f"{r['verify_seconds']:.0f}", r["candidates"],
            f"{r['knapsack_search_seconds']:.0f}", f"{c['total']:.1f}",
            f"{c['bn']:.1f} / {c['accuracy']:.1f} / {c['export']:.1f} / "
            f"{c['oracle:latency']:.1f}",
            f"{r['ten_candidates_seconds']:.0f}", f"{r['final'] / r['bound']:.3f}",
            "yes" if r["met"] else "no", f"{r['wall_seconds']:.0f}",
            f"{r['load_average_before']:.2f}",
        ])  # fmt: skip
    return common.markdown_table(
        ["model", "data", "budget", "probe s", "probe calls", "importance s", "solve s",
         "verify s", "candidates", "knapsack search s", "one candidate s",
         "of it: BN / proxy / export / timing s", "10 candidates s", "latency / bound", "met",
         "run wall s", "load"],
        lines,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=common.module_command(__file__),
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--model", default="resnet50", help="torchvision model (default: %(default)s)")
    p.add_argument("--data", default="digits", help="dataset spec (default: %(default)s)")
    p.add_argument("--width", type=float, default=None,
                   help="width multiplier of a *_cifar model (default: none)")  # fmt: skip
    p.add_argument("--input-size", type=int, default=224, help="(default: %(default)s)")
    p.add_argument("--budget", default="latency<=50%", help="(default: %(default)s)")
    p.add_argument("--evaluations", type=int, default=60, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--core", type=int, default=None, help="pin the run to this CPU core")
    p.add_argument("--fresh", action="store_true", help="redo a run stored before")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    store = common.RunRows("knapsack_cost", root=common.RESULTS_DIR)
    width = "" if args.width is None else f"-w{args.width:g}"
    tag = (f"{args.model}{width}-{args.input_size}-{args.data}-{args.budget}-"
                      f"e{args.evaluations}-s{args.seed}")  # fmt: skip
    row = None if args.fresh else store.get(tag)
    if row is None:
        row = _run(args, RUNS_DIR / common.RunRows("x").path(tag).stem)
        row.update(model=args.model, data=args.data, budget=args.budget,
                   input_size=args.input_size, seed=args.seed)  # fmt: skip
        store.put(tag, row)
    rows = [r for r in (store.get(t.stem) for t in sorted(store.dir.glob("*.json"))) if r]
    command = common.command_line()
    env = common.environment()
    common.write_results("knapsack_cost", rows, command=command, env=env)
    notes = (
        "`hwprune prune --agent latency-knapsack` on each row's model at its input size "
        f"with random weights and 10 classes, `{ORACLE}`, "
        "no fine-tuning, run through the CLI as a user runs it, from an empty measurement cache "
        "of its own. Knapsack search = staircase "
        "probe + importance + solves + whole-model verifications (each verification is a "
        "candidate: proxy and timing). One candidate = the median over the run's candidates "
        "other than the smallest model, by stage; every searcher's candidate goes through the "
        "same evaluator, so it is what each candidate of any searcher costs (the default `knapsack-ppo` included). "
        "`load`: 1-minute load average of the 2-core machine when the run started; the other "
        "core ran other benchmarks, so the seconds carry that load."
    )
    body = _table(rows)
    common.update_results_md("knapsack_cost",
                             "latency-knapsack on a large model: its cost beside one candidate's",
                             body, command=command, env=env, notes=notes)  # fmt: skip
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where RL starts: the uniform anchor against the latency knapsack's policy, beside the knapsack.

On the demo's model (a width-0.5 VGG-11 trained on the built-in digits, cached as ``hwprune
demo`` caches it), each searcher prunes to one latency budget on ``onnxruntime:cpu?threads=1``
through ``hwprune.prune`` (the staircase probed as a run probes it), with the same evaluations
and fine-tuning, for each seed:

* ``ppo-lagrangian`` and ``amc``: episodes start from the largest uniform keep ratio that meets
  the budget (the default);
* ``knapsack-ppo`` and ``knapsack-amc``: the same agents started from the knapsack's per-unit
  policy;
* ``latency-knapsack``: the knapsack alone.

Reported per searcher and seed: test accuracy before and after fine-tuning, the final
re-measured latency as a fraction of the bound (budget use), evaluations, latency oracle calls,
the evaluations the start took, and the search's seconds, with the load average beside them::

    python -m benchmarks.knapsack_start                      # 2 seeds, latency<=40%, 40 evaluations
    python -m benchmarks.knapsack_start --seeds 0 --evaluations 20   # shorter

Each finished run is stored in ``benchmarks/results/knapsack_start_runs/`` as it completes (a
rerun with the same settings reuses it; ``--fresh`` redoes it), and the table is written to
``benchmarks/results/knapsack_start.json`` and the "knapsack_start" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as common

log = logging.getLogger("benchmarks.knapsack_start")

SEARCHERS = ("ppo-lagrangian", "knapsack-ppo", "amc", "knapsack-amc", "latency-knapsack")
ORACLE = "onnxruntime:cpu?threads=1"
RUNS = common.RESULTS_DIR / "knapsack_start_runs"


def _run(searcher: str, seed: int, *, budget: str, evaluations: int, epochs: int) -> dict[str, Any]:
    """One prune run through the library; its row (measured, nothing derived)."""
    import hwprune
    from hwprune.cli.demo import demo_checkpoint

    ckpt, _ = demo_checkpoint(seed=0)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hwprune-start-") as tmp:
        t0 = time.perf_counter()
        result = hwprune.prune(
            model="vgg11_cifar", weights=str(ckpt), data="digits", budgets=[budget],
            oracles={"latency": ORACLE}, agent=searcher, evaluations=evaluations,
            finetune_epochs=epochs, seed=seed, out=Path(tmp) / "run", tensorrt=False,
            surrogate="off",
        )  # fmt: skip
        wall = time.perf_counter() - t0
        report = json.loads((Path(tmp) / "run" / "report.json").read_text())
    b = report["budgets"][0]
    search = report["search"]
    extra = search.get("extra", {})
    return {
        "searcher": searcher, "seed": seed, "budget": budget, "evaluations_budget": evaluations,
        "finetune_epochs": epochs,
        "accuracy_pruned": result.accuracy_pruned, "accuracy_finetuned": result.accuracy_finetuned,
        "accuracy_dense": result.accuracy_dense,
        "budget_use": b["final"] / b["bound"], "met": b["met"], "bound": b["bound"],
        "final": b["final"], "evaluations": search["evaluations"],
        "oracle_calls": search.get("oracle_calls", {}).get("latency"),
        "start": extra.get("anchor_start"), "start_calls": extra.get("anchor_calls"),
        "anchor": extra.get("anchor"),
        "search_seconds": report["stage_seconds"].get("search"),
        "staircase_seconds": report["stage_seconds"].get("staircase"),
        "wall_seconds": wall, "load_average_before": load,
        "load_average_after": os.getloadavg()[0],
    }  # fmt: skip


def _key(searcher: str, seed: int, budget: str, evaluations: int, epochs: int) -> str:
    safe = budget.replace("<=", "le").replace("%", "pct")
    return f"{searcher}_s{seed}_{safe}_e{evaluations}_f{epochs}"


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append([
            r["searcher"], r["seed"], f"{r['accuracy_pruned']:.4f}",
            f"{r['accuracy_finetuned']:.4f}", f"{r['budget_use']:.3f}",
            "yes" if r["met"] else "no", r["evaluations"], r["oracle_calls"],
            "" if r["start_calls"] is None else r["start_calls"],
            f"{r['search_seconds']:.0f}", f"{r['load_average_before']:.2f}",
        ])  # fmt: skip
    table = common.markdown_table(
        ["searcher", "seed", "acc. before FT", "acc. after FT", "latency / bound", "met",
         "evaluations", "latency oracle calls", "start calls", "search s", "load"],
        lines,
    )  # fmt: skip
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["searcher"], []).append(r)
    summary = [
        [s, len(rs), f"{statistics.mean(r['accuracy_finetuned'] for r in rs):.4f}",
         f"{statistics.median(r['budget_use'] for r in rs):.3f}"]
        for s, rs in by.items()
    ]  # fmt: skip
    return (
        table
        + "\n\n"
        + common.markdown_table(
            ["searcher", "seeds", "mean acc. after FT", "median latency / bound"], summary
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=common.module_command(__file__),
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--searchers", nargs="+", default=list(SEARCHERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget", default="latency<=40%")
    p.add_argument("--evaluations", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="redo runs stored before")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    RUNS.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for searcher in args.searchers:
            key = _key(searcher, seed, args.budget, args.evaluations, args.finetune_epochs)
            path = RUNS / f"{key}.json"
            if path.exists() and not args.fresh:
                rows.append(json.loads(path.read_text()))
                log.info("reusing %s", path.name)
                continue
            log.info("running %s seed %d", searcher, seed)
            row = _run(searcher, seed, budget=args.budget, evaluations=args.evaluations,
                       epochs=args.finetune_epochs)  # fmt: skip
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(row, indent=2) + "\n")
            tmp.replace(path)  # stored as it completes: an interrupted grid keeps it
            log.info("%s seed %d: acc %.4f after FT, latency/bound %.3f, %d evaluations",
                     searcher, seed, row["accuracy_finetuned"], row["budget_use"],
                     row["evaluations"])  # fmt: skip
            rows.append(row)
    command = common.command_line()
    env = common.environment()
    common.write_results("knapsack_start", rows, command=command, env=env)
    notes = (
        f"Demo model (VGG-11 w0.5, digits), `{args.budget}` on `{ORACLE}`, "
        f"{args.evaluations} evaluations, {args.finetune_epochs} fine-tuning epochs, seeds "
        f"{', '.join(map(str, args.seeds))}; one process, runs one after another. `load` is the "
        "1-minute load average when the run started (2 cores)."
    )
    body = _table(rows)
    common.update_results_md("knapsack_start",
                             "Where RL starts: uniform anchor or the latency knapsack",
                             body, command=command, env=env, notes=notes)  # fmt: skip
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The built-in demo end to end, timed: ``hwprune demo`` from a fresh cache.

    python -m benchmarks.demo
    python -m benchmarks.demo --at-once 2   # two demos started together, as on a busy laptop

Runs ``hwprune demo`` in a subprocess with an empty ``HWPRUNE_HOME`` (so the
dense model is trained too), then writes results/demo.json and the "demo"
section of RESULTS.md from the run's report.json: wall time of each stage,
dense versus pruned latency (re-measured), parameters, accuracy before and
after fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common as common


def _demos(count: int) -> tuple[list[float], list[dict]]:
    """Start ``count`` demos together, each with its own empty HWPRUNE_HOME (so each trains its
    dense model too); each one's wall seconds and report.json."""
    with tempfile.TemporaryDirectory(prefix="hwprune-demo-") as tmp:
        runs = []
        for i in range(count):
            env = dict(os.environ, HWPRUNE_HOME=str(Path(tmp) / f"home{i}"))
            run_dir = Path(tmp) / f"run{i}"
            proc = subprocess.Popen(
                [sys.executable, "-m", "hwprune", "demo", "--out", str(run_dir)],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            runs.append((proc, run_dir, time.perf_counter()))
        walls: dict[int, float] = {}
        while len(walls) < count:
            for i, (proc, _, t0) in enumerate(runs):
                if i not in walls and proc.poll() is not None:
                    walls[i] = time.perf_counter() - t0
                    if proc.returncode != 0:
                        raise SystemExit(f"demo {i} ended with exit code {proc.returncode}")
            time.sleep(0.2)
        reports = [json.loads((r / "report.json").read_text()) for _, r, _ in runs]
    return [walls[i] for i in range(count)], reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--at-once",
        type=int,
        default=1,
        metavar="N",
        help="start N demos together (each its own cache) and record each one's wall time",
    )
    args = parser.parse_args(argv)
    if args.at_once < 1:
        parser.error(f"--at-once takes a whole number of demos from 1, got {args.at_once}")
    load_before = os.getloadavg()
    walls, reports = _demos(args.at_once)
    if args.at_once > 1:
        return _at_once(walls, reports, load_before=load_before)
    wall, report = walls[0], reports[0]
    result = {
        "wall_seconds": wall,
        **{
            k: report[k]
            for k in ("accuracy", "budgets", "params", "stage_seconds", "all_met", "search")
        },
    }
    command = common.command_line()
    common.write_results("demo", result, command=command)
    stages = report["stage_seconds"]
    train_s = wall - sum(stages.values())
    b = report["budgets"][0]
    acc = report["accuracy"]
    body = (
        f"Wall time {wall:.0f} s in all (target: under 300 s), of which training the dense "
        f"model and process start-up {train_s:.0f} s.\n\n"
        + common.markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in stages.items()])
        + "\n\n"
        + common.markdown_table(
            ["budget", "oracle", "dense", "bound", "final (re-measured)", "met"],
            [
                [
                    b["budget"],
                    b["oracle"],
                    f"{b['dense']:.4g} {b['unit']}",
                    f"{b['bound']:.4g} {b['unit']}",
                    f"{b['final']:.4g} {b['unit']}",
                    "yes" if b["met"] else "no",
                ]
            ],
        )
        + f"\n\nParameters {report['params']['dense']:,} -> {report['params']['final']:,}; "
        f"test accuracy dense {acc['dense']:.2%}, pruned before fine-tuning "
        f"{acc['pruned']:.2%}, after fine-tuning {acc['finetuned']:.2%}."
    )
    common.update_results_md("demo", "The built-in demo (`hwprune demo`)", body, command=command)
    print(body)
    return 0


def _at_once(walls: list[float], reports: list[dict], *, load_before: tuple) -> int:
    """Results and the RESULTS.md section of demos started together."""
    n = len(walls)
    result = {
        "demos": n,
        "wall_seconds": walls,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "stage_seconds": [r["stage_seconds"] for r in reports],
        "all_met": [r["all_met"] for r in reports],
    }
    command = common.command_line()
    common.write_results(f"demo_at_once_{n}", result, command=command)
    body = (
        f"{n} demos started together, each from an empty cache (training included): wall "
        + ", ".join(f"{w:.0f} s" for w in walls)
        + " (target: under 300 s each); every budget met: "
        + ("yes" if all(result["all_met"]) else "no")
        + f". Load average before {load_before[0]:.2f}, after {result['load_average_after'][0]:.2f}."
        + "\n\n"
        + common.markdown_table(
            ["stage", *[f"demo {i + 1} (s)" for i in range(n)]],
            [
                [k, *[f"{r['stage_seconds'].get(k, 0.0):.1f}" for r in reports]]
                for k in reports[0]["stage_seconds"]
            ],
        )
    )
    common.update_results_md(
        f"demo_at_once_{n}", f"{n} demos at once on one machine", body, command=command
    )
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

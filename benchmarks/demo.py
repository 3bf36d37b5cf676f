"""The built-in demo end to end, timed: ``hwprune demo`` from a fresh cache.

    python -m benchmarks.demo

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

from benchmarks._common import (
    command_line,
    markdown_table,
    module_command,
    update_results_md,
    write_results,
)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog=module_command(__file__), description=__doc__.splitlines()[0]
    ).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hwprune-demo-") as tmp:
        env = dict(os.environ, HWPRUNE_HOME=str(Path(tmp) / "home"))
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "hwprune", "demo", "--out", str(run_dir)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        report = json.loads((run_dir / "report.json").read_text())
    result = {
        "wall_seconds": wall,
        **{
            k: report[k]
            for k in ("accuracy", "budgets", "params", "stage_seconds", "all_met", "search")
        },
    }
    command = command_line()
    write_results("demo", result, command=command)
    stages = report["stage_seconds"]
    train_s = wall - sum(stages.values())
    b = report["budgets"][0]
    acc = report["accuracy"]
    body = (
        f"Wall time {wall:.0f} s in all (target: under 300 s), of which training the dense "
        f"model and process start-up {train_s:.0f} s.\n\n"
        + markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in stages.items()])
        + "\n\n"
        + markdown_table(
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
    update_results_md("demo", "The built-in demo (`hwprune demo`)", body, command=command)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The search's cost estimate against the search's actual wall time, on two runs.

    python -m benchmarks.estimate                # the demo and a VGG-16 run
    python -m benchmarks.estimate --only demo

Runs ``hwprune demo`` (the README's quick start; the demo's trained model is reused from the
cache where it is there) and ``hwprune prune`` on a width-1 CIFAR VGG-16 with random weights
on the built-in digits (12 random candidates, latency on one-thread ONNX Runtime), each in a
subprocess, and reads each run's ``cost_estimate.json``: the estimate printed before the
search, the search's actual wall time, the candidates' own seconds and what the searcher and
logging took around them. Writes results/estimate.json and the "estimate" section of
RESULTS.md. On a machine busy with other work the seconds move with its load; the ratio of
actual to estimate is what is compared (target: within 30%).
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
from typing import Any

from benchmarks import _common as common

LATENCY = "latency=onnxruntime:cpu?threads=1"
RUNS: dict[str, list[str]] = {
    "demo": ["demo"],
    "vgg16": [
        "prune",
        "--model",
        "vgg16_cifar",
        "--data",
        "digits",
        "--budget",
        "latency<=50%",
        "--oracle",
        LATENCY,
        "--round-to",
        "8",
        "--agent",
        "random",
        "--evaluations",
        "12",
        "--finetune-epochs",
        "0",
    ],  # fmt: skip
}
KEPT = ("probe_keep", "stages", "remaining", "seconds_per_candidate", "total_seconds",
        "actual_search_seconds", "actual_over_estimate", "actual_candidates",
        "actual_seconds_per_candidate", "actual_overhead_per_candidate")  # fmt: skip


def _one(name: str, folder: Path) -> dict[str, Any]:
    """Run ``name`` into ``folder``; its estimate beside the actual, and the load around it."""
    out = folder / name
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hwprune", *RUNS[name], "--out", str(out),
                           "--quiet"], capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{name} ended with exit code {done.returncode}: {done.stderr[-400:]}")
    data = json.loads((out / "cost_estimate.json").read_text(encoding="utf-8"))
    return {
        "command": "hwprune " + " ".join(RUNS[name]),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        **{k: data.get(k) for k in KEPT},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", choices=sorted(RUNS), action="append",
                        help="run only this one (repeatable; default: every run)")  # fmt: skip
    args = parser.parse_args(argv)
    names = args.only or list(RUNS)
    with tempfile.TemporaryDirectory(prefix="hwprune-estimate-") as tmp:
        results = {name: _one(name, Path(tmp)) for name in names}
    command = common.command_line()
    common.write_results("estimate", results, command=command)
    rows = [
        [name, r["command"], r["remaining"], f"{r['probe_keep']:.2f}",
         f"{r['total_seconds']:.1f}", f"{r['actual_search_seconds']:.1f}",
         f"{r['actual_over_estimate']:.2f}", f"{r['seconds_per_candidate']:.2f}",
         f"{r['actual_seconds_per_candidate']:.2f}", f"{r['actual_overhead_per_candidate']:.3f}",
         f"{r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f}"]
        for name, r in results.items()
    ]  # fmt: skip
    body = common.markdown_table(
        ["run", "command", "candidates", "probe keep", "estimate (s)", "actual (s)",
         "actual / estimate", "estimate s/cand.", "actual s/cand.", "overhead s/cand.",
         "load before / after"],
        rows,
    )  # fmt: skip
    notes = (
        "The estimate is printed before the search (`cost_estimate.json`); the actual is the "
        "search stage's wall time. Overhead: the search's wall time less the candidates' own "
        "seconds, per candidate (the searcher and logging). The machine was busy with other "
        "benchmarks (load average in the last column, on 2 cores): the seconds move with the "
        "load, the ratio is the result."
    )
    common.update_results_md("estimate", "The search's cost estimate against its actual time",
                             body, command=command, notes=notes)  # fmt: skip
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

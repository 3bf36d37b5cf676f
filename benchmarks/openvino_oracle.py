"""Benchmark the OpenVINO latency oracle beside ONNX Runtime: spread over calls, cold and cached cost.

For torchvision resnet18 (1x3x224x224) and hwprune's CIFAR VGG-16
(``vgg16_cifar``, 1x3x32x32), random weights, and each of
``openvino:cpu?threads=1`` and ``onnxruntime:cpu?threads=1``, it records
(with the same code as ``benchmarks/oracles.py``):

* the value and time of a cold query (fresh cache, fresh oracle, fresh
  compiled model / session and the whole timing protocol);
* the median time of 5 cache hits;
* the coefficient of variation of the value over ``--calls`` independent
  calls without a cache (the cold one plus fresh oracles).

Goal (issue 22): the OpenVINO oracle varies by at most 1% across calls, as
the ONNX Runtime oracle does. Run pinned to one core on a shared machine::

    OMP_NUM_THREADS=1 nice taskset -c 1 python -m benchmarks.openvino_oracle

It writes ``benchmarks/results/openvino_oracle.json`` and regenerates the
"openvino_oracle" section of ``benchmarks/RESULTS.md`` (``--quick``: one
model, 3 calls, into ``benchmarks/results/quick/``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

import oracles
from benchmarks import _common as common
from benchmarks.oracles import HITS, bench_one, build_model, export_onnx

log = logging.getLogger("benchmarks.openvino_oracle")

MODELS = {"resnet18": (1, 3, 224, 224), "vgg16_cifar": (1, 3, 32, 32)}
ORACLES = ("openvino:cpu?threads=1", "onnxruntime:cpu?threads=1")
CV_TARGET = 0.01
QUICK_MODELS = ("vgg16_cifar",)
QUICK_CALLS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--oracles", nargs="+", default=list(ORACLES), metavar="SPEC")
    parser.add_argument("--calls", type=int, default=5, help="independent calls (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_MODELS[0]} only, {QUICK_CALLS} calls; results go to "
                             "benchmarks/results/quick/")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.models, args.calls = list(QUICK_MODELS), QUICK_CALLS
    if args.calls < 2:
        parser.error("--calls must be at least 2 to estimate a spread")
    for spec in args.oracles:
        try:
            oracles.get_oracle(spec)
        except oracles.OracleError as exc:
            parser.error(str(exc))

    env = common.environment()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    rows: list[dict[str, Any]] = []
    for name in args.models:
        shape = MODELS[name]
        onnx_bytes = export_onnx(build_model(name), shape)
        for spec in args.oracles:
            row = {"model": name, "input_shape": list(shape),
                   **bench_one(spec, onnx_bytes, shape, calls=args.calls)}  # fmt: skip
            rows.append(row)
            log.info(
                "%-12s %-27s %8.4g ms  cv(calls) %5.2f%%  cold %5.2f s  hit %5.2f ms",
                name, spec, row["value"], 100 * row["cv_across_calls"], row["cold_seconds"],
                row["cache_hit_ms"],
            )  # fmt: skip

    def worst(prefix: str, key: str) -> float:
        return max((r[key] for r in rows if r["oracle"].startswith(prefix)), default=math.nan)

    summary = {
        "openvino_worst_cv_across_calls": worst("openvino", "cv_across_calls"),
        "onnxruntime_worst_cv_across_calls": worst("onnxruntime", "cv_across_calls"),
        "cv_target": CV_TARGET,
        "openvino_worst_cold_seconds": worst("openvino", "cold_seconds"),
        "openvino_worst_cache_hit_ms": worst("openvino", "cache_hit_ms"),
        "cpu_affinity": affinity,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    ov_version = oracles.get_oracle("openvino:cpu").identity()["openvino"]
    command = common.command_line()
    out = common.write_results(
        "openvino_oracle",
        {"rows": rows, "summary": summary, "calls": args.calls, "openvino": ov_version},
        command=command,
        env=env,
        quick=args.quick,
    )
    table = common.markdown_table(
        ["model", "input", "oracle", "median (ms)", f"CV over {args.calls} calls",
         f"values of the {args.calls} calls (ms)", "cold query (s)",
         f"cache hit (ms, median of {HITS})", "runs in cold call"],
        [
            [r["model"], "x".join(map(str, r["input_shape"])), f"`{r['oracle']}`",
             f"{r['value']:.4g}", f"{100 * r['cv_across_calls']:.2f}%",
             ", ".join(f"{v:.4g}" for v in r["values"]), f"{r['cold_seconds']:.2f}",
             f"{r['cache_hit_ms']:.2f}", r["samples"]]
            for r in rows
        ],
    )  # fmt: skip
    load = env["machine"].get("load_average")
    pinned = f"CPU affinity {affinity}" if affinity else "no affinity information"
    notes = (
        f"OpenVINO {ov_version.split('-')[0]}, compiled with PERFORMANCE_HINT=LATENCY, "
        "NUM_STREAMS=1, INFERENCE_NUM_THREADS=1 and f32 inference precision (read back from "
        "the compiled model). Cold query: fresh cache, oracle and compiled models/sessions, "
        "including the whole timing protocol. Cache hit: the same query answered from the "
        "SQLite cache. CV over calls: std/mean of the value over independent calls without a "
        f"cache. Goal: at most {100 * CV_TARGET:.0f}% for the OpenVINO oracle (worst here "
        f"{100 * summary['openvino_worst_cv_across_calls']:.2f}%; ONNX Runtime "
        f"{100 * summary['onnxruntime_worst_cv_across_calls']:.2f}%). Run with {pinned}, "
        f"OMP_NUM_THREADS={summary['omp_num_threads']}, on a machine shared with other jobs"
        + (
            f" (1-minute load average {load[0]} on {env['machine'].get('cores')} cores)"
            if load
            else ""
        )  # fmt: skip
        + ": latencies and their spread are noisier than on a quiet machine."
    )
    md = common.update_results_md(
        "openvino_oracle", "OpenVINO oracle: stability and query cost beside ONNX Runtime",
        table, command=command, env=env, notes=notes, quick=args.quick,
    )  # fmt: skip
    log.info("wrote %s and %s", out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the oracles: what a query costs cold and from the cache, and how stable its value is.

For each model (torchvision resnet18 and mobilenet_v2 at 1x3x224x224, the
CIFAR VGG-16 at 1x3x32x32; random weights, which do not change any of these
quantities) and each oracle, it records:

* the value of a cold query (fresh cache, fresh oracle, fresh session);
* the time of that cold query, and the median time of 5 cache hits;
* the coefficient of variation (std/mean) of the value over ``--calls``
  independent calls (the cold one plus fresh oracles without a cache), which
  is what a search sees when it compares two candidates.

Targets on the 2-core development machine: ``onnxruntime:cpu?threads=1``
varies by at most 1% across calls, and a cache hit takes under 10 ms.

Run from the repository root::

    python -m benchmarks.oracles                      # all models and oracles
    python -m benchmarks.oracles --models vgg16_cifar --calls 3 --no-write

It writes ``benchmarks/results/oracles.json`` and regenerates the "oracles"
section of ``benchmarks/RESULTS.md`` (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import oracles
from benchmarks import _common as common

log = logging.getLogger("benchmarks.oracles")

MODELS = {
    "resnet18": (1, 3, 224, 224),
    "mobilenet_v2": (1, 3, 224, 224),
    "vgg16_cifar": (1, 3, 32, 32),
}
ORACLES = (
    "params",
    "flops",
    "weight-memory",
    "peak-memory",
    "onnxruntime:cpu?threads=1",
    "onnxruntime:cpu?threads=2",
    "torch:cpu",
)
HITS = 5
# --quick (run.py --quick): one model, fewer independent calls.
QUICK_MODELS = ("vgg16_cifar",)
QUICK_CALLS = 3
CV_TARGET = 0.01  # onnxruntime:cpu?threads=1 across calls
HIT_TARGET_MS = 10.0


def build_model(name: str) -> Any:
    """The torch module for ``name`` in eval mode, random weights, nothing downloaded."""
    import torch

    try:
        from hwprune.models import get_model
    except ImportError:
        get_model = None
    if get_model is not None:
        classes = 10 if name.endswith("_cifar") else 1000
        return get_model(name, num_classes=classes).eval()
    if name == "vgg16_cifar":  # stand-in while hwprune.models is missing
        layers: list[torch.nn.Module] = []
        cin = 3
        for v in (
            64,
            64,
            "M",
            128,
            128,
            "M",
            256,
            256,
            256,
            "M",
            512,
            512,
            512,
            "M",
            512,
            512,
            512,
            "M",
        ):
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2))
            else:
                layers += [
                    torch.nn.Conv2d(cin, v, 3, padding=1),
                    torch.nn.BatchNorm2d(v),
                    torch.nn.ReLU(),
                ]
                cin = v
        layers += [torch.nn.Flatten(), torch.nn.Linear(512, 10)]
        return torch.nn.Sequential(*layers).eval()
    import torchvision

    return getattr(torchvision.models, name)(weights=None).eval()


def export_onnx(module: Any, shape: tuple[int, ...]) -> bytes:
    """ONNX bytes with a static input named 'input' (legacy exporter: the dynamo one needs onnxscript)."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(*shape),),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
        )
    return buf.getvalue()


def _cv(values: list[float]) -> float:
    mean = statistics.fmean(values)
    if len(values) < 2 or mean == 0:
        return 0.0
    return statistics.stdev(values) / mean


def bench_one(spec: str, model: Any, shape: tuple[int, ...], *, calls: int) -> dict[str, Any]:
    """Cold query, cache hits and the value's spread over ``calls`` independent calls."""
    oracle = oracles.get_oracle(spec)
    shapes = {"input": shape}
    with tempfile.TemporaryDirectory() as tmp:
        cache = oracles.MeasurementCache(Path(tmp) / "oracles.sqlite")
        t0 = time.perf_counter()
        cold = oracles.measure(oracle, model, input_shapes=shapes, cache=cache)
        cold_s = time.perf_counter() - t0
        hit_ms = []
        for _ in range(HITS):
            t0 = time.perf_counter()
            hit = oracles.measure(oracles.get_oracle(spec), model, input_shapes=shapes, cache=cache)
            hit_ms.append((time.perf_counter() - t0) * 1e3)
            assert hit.cached and hit.value == cold.value
        cache.close()
    values = [cold.value]
    for _ in range(calls - 1):
        values.append(oracles.get_oracle(spec).measure(model, input_shapes=shapes).value)
    return {
        "oracle": spec,
        "quantity": cold.quantity,
        "unit": cold.unit,
        "statistic": cold.statistic,
        "value": cold.value,
        "values": values,
        "cv_across_calls": _cv(values),
        "cold_seconds": cold_s,
        "cache_hit_ms": statistics.median(hit_ms),
        "samples": cold.samples,
        "cv_within_call": cold.cv,
        "converged": cold.extra.get("converged"),
    }


def _fmt_value(row: dict[str, Any]) -> str:
    v = row["value"]
    if row["statistic"] == "exact" and float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--oracles", nargs="+", default=list(ORACLES), metavar="SPEC")
    parser.add_argument(
        "--calls", type=int, default=5, help="independent calls per oracle (default 5)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; write no results")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_MODELS[0]} only, {QUICK_CALLS} calls; results go to "
                             "benchmarks/results/quick/")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.models, args.calls = list(QUICK_MODELS), QUICK_CALLS
    if args.calls < 2:
        parser.error("--calls must be at least 2 to estimate a spread")

    env = common.environment()
    specs = []
    for spec in args.oracles:
        try:
            oracles.get_oracle(spec)
        except oracles.OracleError as exc:
            log.warning("skipping %s: %s", spec, exc)
            continue
        specs.append(spec)

    rows: list[dict[str, Any]] = []
    for name in args.models:
        shape = MODELS[name]
        module = build_model(name)
        onnx_bytes = export_onnx(module, shape)
        for spec in specs:
            fmt = oracles.get_oracle(spec, check=False).input_format  # understands SPEC@URL
            model = module if fmt == "torch" else onnx_bytes
            row = {
                "model": name,
                "input_shape": list(shape),
                **bench_one(spec, model, shape, calls=args.calls),
            }
            rows.append(row)
            log.info(
                "%-13s %-27s %14s %-6s cv(calls) %6.2f%%  cold %6.2f s  hit %5.2f ms",
                name, spec, _fmt_value(row), row["unit"], 100 * row["cv_across_calls"],
                row["cold_seconds"], row["cache_hit_ms"],
            )  # fmt: skip

    ort1 = [r for r in rows if r["oracle"] == "onnxruntime:cpu?threads=1"]
    worst_cv = max((r["cv_across_calls"] for r in ort1), default=math.nan)
    worst_hit = max((r["cache_hit_ms"] for r in rows), default=math.nan)
    summary = {
        "ort_threads1_worst_cv_across_calls": worst_cv,
        "ort_threads1_cv_target": CV_TARGET,
        "worst_cache_hit_ms": worst_hit,
        "cache_hit_target_ms": HIT_TARGET_MS,
    }
    log.info(
        "onnxruntime:cpu?threads=1 worst CV across calls %.2f%% (target <= %.0f%%); "
        "worst cache hit %.2f ms (target < %.0f ms)",
        100 * worst_cv, 100 * CV_TARGET, worst_hit, HIT_TARGET_MS,
    )  # fmt: skip
    if args.no_write:
        return 0

    command = common.command_line()
    out = common.write_results(
        "oracles",
        {"rows": rows, "summary": summary, "calls": args.calls},
        command=command,
        env=env,
        quick=args.quick,
    )
    table = common.markdown_table(
        ["model", "input", "oracle", "value", "unit", f"CV over {args.calls} calls",
         "cold query (s)", f"cache hit (ms, median of {HITS})", "runs in cold call"],
        [
            [r["model"], "x".join(map(str, r["input_shape"])), f"`{r['oracle']}`", _fmt_value(r),
             r["unit"], f"{100 * r['cv_across_calls']:.2f}%", f"{r['cold_seconds']:.2f}",
             f"{r['cache_hit_ms']:.2f}", r["samples"]]
            for r in rows
        ],
    )  # fmt: skip
    load = env["machine"].get("load_average")
    notes = (
        "Cold query: fresh cache, oracle and session (for latency oracles this includes building "
        "the session and the whole timing protocol). Cache hit: the same query answered from the "
        "SQLite cache. CV over calls: std/mean of the value over independent calls without a "
        "cache. Targets: `onnxruntime:cpu?threads=1` CV at most "
        f"{100 * CV_TARGET:.0f}% (worst here {100 * worst_cv:.2f}%), cache hit under "
        f"{HIT_TARGET_MS:.0f} ms (worst here {worst_hit:.2f} ms)."
    )
    if load and load[0] > 0.5 * (env["machine"].get("cores") or 1):
        notes += (
            f" Taken under load (1-minute load average {load[0]} on "
            f"{env['machine'].get('cores')} cores): latencies and their spread are noisier than "
            "on a quiet machine."
        )
    md = common.update_results_md(
        "oracles", "Oracles: query cost, cache hits and stability", table,
        command=command, env=env, notes=notes, quick=args.quick,
    )  # fmt: skip
    log.info("wrote %s and %s", out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: do parameters, FLOPs or memory predict the latency measured on this machine?

Runs ``hwprune compare-oracles`` (the library call behind it) out of the box on
torchvision resnet18 and mobilenet_v2 (1x3x224x224) and the CIFAR VGG-16
(1x3x32x32), random weights (weights change none of these quantities), with
the oracles ``params``, ``flops``, ``peak-memory``,
``onnxruntime:cpu?threads=1``, ``onnxruntime:cpu?threads=2`` and
``torch:cpu``; the reference is ``onnxruntime:cpu?threads=1``. Where a CUDA
GPU is present it adds the GPU oracles this machine can run (``torch:cuda``,
and ``onnxruntime:cuda``, ``onnxruntime:tensorrt``, ``tensorrt`` where
installed) and a second comparison whose reference is the last of them (the
closest to a deployed engine).

    python -m benchmarks.compare                 # 12 variants of each of the three models
    python -m benchmarks.compare --quick         # vgg16_cifar only, 5 variants, short timing

Writes ``benchmarks/results/compare.json``, the scatter plots and a report per
model under ``benchmarks/results/compare/<model>/``, and the "compare" section
of ``benchmarks/RESULTS.md``. Measurements go through an oracle cache
(``--cache``, default ``~/.cache/hwprune/benchmarks/compare-oracles.sqlite``),
so a second run is fast; ``--no-cache`` measures everything afresh.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as common

log = logging.getLogger("benchmarks.compare")

# model -> (input side, classes)
MODELS: dict[str, tuple[int, int]] = {
    "resnet18": (224, 1000),
    "mobilenet_v2": (224, 1000),
    "vgg16_cifar": (32, 10),
}
REFERENCE = "onnxruntime:cpu?threads=1"
TIMED = ("onnxruntime:", "torch:", "tensorrt")
QUICK_MODELS = ("vgg16_cifar",)
QUICK_SAMPLES = 5
# Quick mode caps each timed measurement at this many seconds (the default protocol allows 20).
QUICK_MAX_TIME = 2.0


def cache_dir() -> Path:
    """Where the benchmarks keep what they may reuse (checkpoints, the oracle cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hwprune" / "benchmarks"


def with_max_time(spec: str, seconds: float) -> str:
    """``spec`` with its timing capped at ``seconds`` (static oracles are returned as they are)."""
    if not spec.startswith(TIMED):
        return spec
    sep = "&" if "?" in spec else "?"
    return f"{spec}{sep}min_time=0.1&max_time={seconds:g}"


def compare_model(
    name: str,
    *,
    specs: list[str],
    reference: str,
    samples: int,
    seed: int,
    cache: Any,
    out_dir: Path,
    links_from: Path,
) -> dict[str, Any]:
    """One model's comparison: measure, write its report and plots, return a JSON-ready dict.

    The report's path is given relative to ``links_from`` (the folder of the RESULTS.md
    that links it).
    """
    from hwprune.compare import compare_oracles, write_report
    from hwprune.models import get_model

    side, classes = MODELS[name]
    model = get_model(name, num_classes=classes).eval()
    t0 = time.perf_counter()
    result = compare_oracles(
        model=model,
        model_name=name,
        input_shape=(1, 3, side, side),
        oracle_specs=specs,
        reference=reference,
        samples=samples,
        seed=seed,
        cache=cache,
        progress=lambda done, total: log.info("%s: %d/%d variants measured", name, done, total),
    )
    report = write_report(result, out_dir)
    log.info("%s against %s: %.0f s, report %s", name, reference, time.perf_counter() - t0, report)
    return {
        "model": name,
        "reference": result.reference,
        "report": str(report.relative_to(links_from)),
        "comparison": result.to_dict(),
    }


def _fmt(x: float, spec: str = "{:.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else spec.format(x)


def table_rows(entries: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per (model, oracle): rank correlations with the reference and linear-fit error."""
    rows = []
    for e in entries:
        c = e["comparison"]
        ref = c["reference"]
        pairs = {}
        for p in c["pairs"]:
            pairs[(p["a"], p["b"])] = pairs[(p["b"], p["a"])] = p
        for p in c["predictors"]:
            pair = pairs[(p["oracle"], ref)]
            rows.append(
                [
                    c["model"],
                    f"`{ref}`",
                    f"`{p['oracle']}`",
                    _fmt(pair["spearman"]),
                    _fmt(pair["kendall"]),
                    _fmt(p["mean_rel_error"], "{:.1%}"),
                    _fmt(p["max_rel_error"], "{:.1%}"),
                    _fmt(c["ratio"][p["oracle"]]),
                ]
            )
        rows.append(
            [c["model"], f"`{ref}`", f"`{ref}` (reference)", "1", "1", "-", "-",
             _fmt(c["ratio"][ref])]
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true",
                   help=f"{', '.join(QUICK_MODELS)} only, {QUICK_SAMPLES} variants, timing capped "
                        f"at {QUICK_MAX_TIME:g} s per measurement")  # fmt: skip
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    p.add_argument("--samples", type=int, default=None, help="pruned variants per model (12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="oracle cache file")
    p.add_argument("--no-cache", action="store_true", help="measure everything afresh")
    p.add_argument("--no-gpu", action="store_true", help="leave out the GPU oracles even on a GPU")
    p.add_argument("--no-write", action="store_true", help="write no results (log only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    samples = args.samples or (QUICK_SAMPLES if args.quick else 12)
    if samples < 3:
        p.error(f"--samples must be at least 3, got {samples}")
    from hwprune.compare import DEFAULT_ORACLES, gpu_oracles

    gpu = () if args.no_gpu else gpu_oracles()
    specs, reference = [*DEFAULT_ORACLES, *gpu], REFERENCE
    if args.quick:
        specs = [with_max_time(s, QUICK_MAX_TIME) for s in specs]
        reference = with_max_time(reference, QUICK_MAX_TIME)
    references = [reference] + ([specs[-1]] if gpu else [])

    from oracles import MeasurementCache

    cache = None
    if not args.no_cache:
        path = Path(args.cache) if args.cache else cache_dir() / "compare-oracles.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = MeasurementCache(path)
    env = common.environment()
    t0 = time.perf_counter()
    entries = []
    for name in models:
        for ref in references:
            sub = name if ref == reference else f"{name}-{ref.split('?')[0].replace(':', '_')}"
            entries.append(
                compare_model(name, specs=specs, reference=ref, samples=samples, seed=args.seed,
                              cache=cache, out_dir=common.results_dir(quick=args.quick) / "compare" / sub,
                              links_from=common.results_md(quick=args.quick).parent)
            )  # fmt: skip
    seconds = time.perf_counter() - t0
    headers = ["model", "reference", "oracle", "Spearman", "Kendall", "mean rel. err",
               "max rel. err", "smallest / dense"]  # fmt: skip
    rows = table_rows(entries)
    print(common.markdown_table(headers, rows))
    if args.no_write:
        return 0
    results = {
        "quick": bool(args.quick),
        "samples": samples,
        "oracles": specs,
        "references": references,
        "seconds": seconds,
        "models": entries,
    }
    common.write_results(
        "compare", results, command=common.command_line(), env=env, quick=args.quick
    )
    links = ", ".join(f"[{e['model']}]({e['report']})" for e in entries)
    notes = (
        f"{samples} pruned variants per model, sampled from dense down to 10% of the channels "
        "kept (random weights: no oracle here depends on them). Spearman and Kendall: rank "
        "correlation with the reference; mean/max rel. err: error of the oracle as a predictor "
        "of the reference after the best linear fit; smallest / dense: the most pruned variant's "
        f"value over the dense model's. Reports and scatter plots: {links}. Latency is timed "
        "on a 2-core machine shared with other jobs, so the timed oracles carry noise."
    )
    if args.quick:
        notes += (
            f" **Quick mode** ({len(models)} model, {samples} variants, timed oracles capped at "
            f"{QUICK_MAX_TIME:g} s per measurement): an end-to-end check, not the comparison."
        )
    common.update_results_md("compare", "Do params, FLOPs and memory predict measured latency?",
                      common.markdown_table(headers, rows), command=common.command_line(), env=env,
                      notes=notes, quick=args.quick)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

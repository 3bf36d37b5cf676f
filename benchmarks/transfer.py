"""Benchmark: does a model pruned to a latency budget on one runtime meet it on another?

For each model (full: CIFAR VGG-16 at width 0.5, ResNet-56, torchvision
mobilenet_v2 and resnet18, all trained on the built-in digits data at 32x32)
and each runtime (ONNX Runtime CPU, OpenVINO CPU, torch CPU, all one thread),
``hwprune.prune`` searches to ``latency<=40%`` of the dense model *measured on
that runtime*, fine-tunes, verifies and exports. Then every shipped model is
measured on every runtime by a fresh oracle (no cache, median of 3 calls), and
so is the dense model, which gives each runtime's own budget (40% of its
dense latency). It reports:

* the matrix searched-for runtime x measured-on runtime of latency / budget
  (1.00 = exactly at the budget; above 1 the model misses that runtime's
  budget, well below 1 it was pruned more than that runtime needed);
* the test accuracy of each shipped model: whether pruning for the right
  runtime buys accuracy.

Each finished run is stored as it completes (``results/transfer_runs/``,
committed; ``--quick``: ``results/quick/transfer_runs/``), so an interrupted
matrix resumes where it stopped; ``--fresh`` redoes stored runs. The dense
checkpoints are shared with ``quality.py`` (``~/.cache/hwprune/benchmarks``).

    python -m benchmarks.transfer            # the full matrix: many hours on 2 cores
    python -m benchmarks.transfer --quick    # vgg11_cifar w0.25, 6 evaluations: minutes
    python -m benchmarks.transfer --stored-only   # the tables from the stored runs, nothing run

Run pinned on a shared machine: ``OMP_NUM_THREADS=1 nice taskset -c 1 python -m
benchmarks.transfer --quick``. Writes ``results/transfer.json`` and the
"transfer" section of RESULTS.md; ``--quick`` writes
``results/transfer_quick.json`` and its own "transfer_quick" section (a check
that the pipeline runs end to end on three runtimes, not a comparison).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from benchmarks.quality import (
    DIGITS_BATCH,
    DIGITS_TRAIN_LR,
    RUNS_DIR,
    _slug,
    dense_checkpoint,
    prune_row,
)

log = logging.getLogger("benchmarks.transfer")

#: The runtimes compared: a short name -> the oracle spec that times it.
RUNTIMES = {
    "onnxruntime": "onnxruntime:cpu?threads=1",
    "openvino": "openvino:cpu?threads=1",
    "torch": "torch:cpu?threads=1",
}
BUDGET = "latency<=40%"
FRACTION = 0.40
MODELS = {"vgg16_cifar": 0.5, "resnet56_cifar": 1.0, "mobilenet_v2": 1.0, "resnet18": 1.0}
SEARCHER = "ppo-lagrangian"
SEEDS = (0,)
EVALUATIONS = 60
TRAIN_EPOCHS = 20
FINETUNE_EPOCHS = 5
REPEATS = 3  # calls per cross-runtime measurement; the median is kept
FULL = {"timing": "", "repeats": REPEATS}
QUICK = {
    "models": {"vgg11_cifar": 0.25},
    "evaluations": 6,
    "train_epochs": 8,
    "finetune_epochs": 1,
    "timing": "min_time=0.1&max_time=2",
    # Three calls even here: one call of a 0.2 ms model on a loaded machine can be off by 70%,
    # and the dense value divides every cell.
    "repeats": 3,
}


def spec_for(runtime: str, timing: str) -> str:
    """The runtime's oracle spec with the timing protocol of this mode appended."""
    spec = RUNTIMES[runtime]
    return f"{spec}&{timing}" if timing else spec


def measure_everywhere(
    *, onnx_bytes: bytes, module: Any, input_shape: tuple[int, ...], timing: str, repeats: int
) -> dict[str, float]:
    """Latency (ms) of one model on every runtime: fresh oracles, no cache, median of calls."""
    import oracles

    shapes = {"input": tuple(input_shape)}
    out: dict[str, float] = {}
    for runtime in RUNTIMES:
        oracle = oracles.get_oracle(spec_for(runtime, timing))
        model = module if oracle.input_format == "torch" else onnx_bytes
        m = oracles.measure(oracle, model, input_shapes=shapes, repeats=repeats)
        out[runtime] = float(m.value)
    return out


def dense_row(
    model: str, width: float, *, seed: int, train_epochs: int, timing: str, repeats: int
) -> dict[str, Any]:
    """The dense model's latency on every runtime and its test accuracy."""
    from hwprune.export import export_onnx
    from hwprune.models import get_model, load_checkpoint, read_checkpoint

    ckpt, accuracy = dense_checkpoint(model, width=width, epochs=train_epochs, seed=seed,
                                      batch_size=DIGITS_BATCH, lr=DIGITS_TRAIN_LR)  # fmt: skip
    meta = read_checkpoint(ckpt).meta
    size = int(meta.get("input_size") or 32)
    module = get_model(model, num_classes=int(meta["num_classes"]), width=width, input_size=size)
    load_checkpoint(module, ckpt)
    module.eval()
    shape = (1, 3, size, size)
    latency = measure_everywhere(onnx_bytes=export_onnx(module, input_shape=shape), module=module,
                                 input_shape=shape, timing=timing, repeats=repeats)  # fmt: skip
    return {"model": model, "width": width, "seed": seed, "input_shape": list(shape),
            "accuracy": accuracy, "latency_ms": latency}  # fmt: skip


def paired_latency(
    *,
    shipped: tuple[bytes, Any],
    dense: tuple[bytes, Any],
    input_shape: tuple[int, ...],
    timing: str,
    repeats: int,
) -> dict[str, dict[str, float]]:
    """The shipped and the dense model on every runtime, their calls alternating (dense,
    shipped, dense, ...; fresh oracles, no cache), medians of ``repeats`` calls each.

    A load that drifts over minutes (a shared machine) then slows both alike: the ratio
    shipped / dense is taken under the same conditions, where the stored dense row may be
    hours older than the shipped model.
    """  # fmt: skip
    import oracles

    shapes = {"input": tuple(input_shape)}
    out: dict[str, dict[str, float]] = {"latency_ms": {}, "dense_ms": {}}
    for runtime in RUNTIMES:
        calls: dict[str, list[float]] = {"dense_ms": [], "latency_ms": []}
        for _ in range(repeats):
            for key, (onnx_bytes, module) in (("dense_ms", dense), ("latency_ms", shipped)):
                oracle = oracles.get_oracle(spec_for(runtime, timing))
                model = module if oracle.input_format == "torch" else onnx_bytes
                calls[key].append(float(oracle.measure(model, input_shapes=shapes).value))
        for key, values in calls.items():
            out[key][runtime] = statistics.median(values)
    return out


@functools.lru_cache(maxsize=1)  # one model at a time: its runs reuse it
def dense_module(model: str, width: float, *, seed: int, train_epochs: int) -> tuple[bytes, Any]:
    """The trained dense model (its ONNX and its module), as ``dense_row`` measured it."""
    from hwprune.export import export_onnx
    from hwprune.models import get_model, load_checkpoint, read_checkpoint

    ckpt, _ = dense_checkpoint(model, width=width, epochs=train_epochs, seed=seed,
                               batch_size=DIGITS_BATCH, lr=DIGITS_TRAIN_LR)  # fmt: skip
    meta = read_checkpoint(ckpt).meta
    size = int(meta.get("input_size") or 32)
    module = get_model(model, num_classes=int(meta["num_classes"]), width=width, input_size=size)
    load_checkpoint(module, ckpt)
    module.eval()
    return export_onnx(module, input_shape=(1, 3, size, size)), module


def paired_row(
    run_dir: Path, dense: tuple[bytes, Any], *, timing: str, repeats: int
) -> dict[str, Any]:
    """``paired_latency`` of a prune run's shipped model (model.onnx; model.pt for torch)."""
    from hwprune.api import load_pruned, model_input_shape

    t0 = time.perf_counter()
    shipped = ((run_dir / "model.onnx").read_bytes(), load_pruned(run_dir))
    found = paired_latency(shipped=shipped, dense=dense,
                           input_shape=(1, *model_input_shape(run_dir)), timing=timing,
                           repeats=repeats)  # fmt: skip
    return {**found, "seconds": time.perf_counter() - t0, "repeats": repeats}


def shipped_latency(run_dir: Path, *, timing: str, repeats: int) -> dict[str, float]:
    """The shipped model of a prune run (its model.onnx, its model.pt for torch) on every runtime."""
    from hwprune.api import load_pruned, model_input_shape

    shape = (1, *model_input_shape(run_dir))
    return measure_everywhere(
        onnx_bytes=(run_dir / "model.onnx").read_bytes(), module=load_pruned(run_dir),
        input_shape=shape, timing=timing, repeats=repeats,
    )  # fmt: skip


def matrix(dense: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """searched runtime -> measured runtime -> latency / (FRACTION x dense latency there).

    Where the run holds a paired measurement (``paired``: shipped and dense timed in
    alternation), its figures are used; else the shipped model's latency over the stored
    dense row's."""
    out: dict[str, dict[str, float]] = {}
    for searched, row in runs.items():
        if not row.get("ok"):
            continue
        paired = row.get("paired")
        shipped = paired["latency_ms"] if paired else row["latency_ms"]
        base = paired["dense_ms"] if paired else dense["latency_ms"]
        out[searched] = {
            measured: shipped[measured] / (FRACTION * base[measured]) for measured in RUNTIMES
        }
    return out


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the matrix and accuracies; overall: how often off-diagonal models miss."""
    off, diag = [], []
    for cell in cells:
        for searched, row in cell["matrix"].items():
            for measured, ratio in row.items():
                (diag if searched == measured else off).append(ratio)
    return {
        "off_diagonal_missed": sum(r > 1.0 for r in off),
        "off_diagonal_total": len(off),
        "off_diagonal_worst": max(off, default=math.nan),
        "off_diagonal_best": min(off, default=math.nan),
        "diagonal_worst": max(diag, default=math.nan),
    }


def _table(cells: list[dict[str, Any]]) -> str:
    heads = ["model", "searched on", *(f"on {m}" for m in RUNTIMES), "verified by the run",
             "misses its budget on", "test accuracy", "params"]  # fmt: skip
    rows = []
    for cell in cells:
        dense = cell["dense"]
        for searched in RUNTIMES:
            run = cell["runs"].get(searched, {})
            if not run.get("ok"):
                failed = f"failed: {str(run['error'])[:80]}" if "error" in run else "not run"
                rows.append([cell["model"], searched, *(["-"] * len(RUNTIMES)), "-", failed,
                             "-", "-"])  # fmt: skip
                continue
            ratios = cell["matrix"][searched]
            check = run["checks"][0]
            rows.append([
                f"{cell['model']} (dense {dense['accuracy']:.3f})", searched,
                *(f"{ratios[m]:.2f}" for m in RUNTIMES), f"{check['final'] / check['bound']:.2f}",
                ", ".join(m for m in RUNTIMES if ratios[m] > 1.0) or "none",
                f"{run['accuracy']:.3f}", f"{run['params_final']:,}",
            ])  # fmt: skip
    return common.markdown_table(heads, rows)


def _dense_table(cells: list[dict[str, Any]]) -> str:
    return common.markdown_table(
        ["model", "input", *(f"dense on {m} (ms)" for m in RUNTIMES)],
        [[c["model"], "x".join(map(str, c["dense"]["input_shape"])),
          *(f"{c['dense']['latency_ms'][m]:.3f}" for m in RUNTIMES)] for c in cells],
    )  # fmt: skip


def _load_note(cells: list[dict[str, Any]]) -> str:
    """The range of 1-minute load averages the stored rows were measured at (2 cores)."""
    loads = [
        float(row["measured"]["machine"]["load_average"][0])
        for c in cells
        for row in (c["dense"], *c["runs"].values())
        if (row.get("measured") or {}).get("machine", {}).get("load_average")
    ]
    if not loads:
        return ""
    return f" (1-minute load average {min(loads):.1f}-{max(loads):.1f} when the rows were stored)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true",
                   help="vgg11_cifar at width 0.25, 6 evaluations, 1 fine-tuning epoch, short "
                        "timing; never reuses an earlier quick run")  # fmt: skip
    p.add_argument("--models", nargs="+", default=None, metavar="NAME[=WIDTH]",
                   help="models and widths (default: " + " ".join(f"{k}={v:g}" for k, v in
                                                                  MODELS.items()) + ")")  # fmt: skip
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES),
                   help="runtimes to search on (every shipped model is measured on all)")  # fmt: skip
    p.add_argument("--searcher", default=SEARCHER)
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--evaluations", type=int, default=None, help=f"per search ({EVALUATIONS})")
    p.add_argument("--fresh", action="store_true", help="redo stored runs")
    p.add_argument("--paired", action="store_true",
                   help="time each shipped model in alternation with its dense model on every "
                        "runtime (stored runs without it too); the cells then use those pairs")  # fmt: skip
    p.add_argument("--stored-only", action="store_true",
                   help="write the tables from the stored runs only; what is not stored is "
                        "listed as not run")  # fmt: skip
    args = p.parse_args(argv)
    if args.stored_only and (args.fresh or args.quick):
        p.error("--stored-only reads the full matrix's stored runs; not with --fresh or --quick")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    q = args.quick
    models = dict(QUICK["models"] if q else MODELS)
    if args.models:
        models = {}
        for m in args.models:
            name, _, w = m.partition("=")
            models[name] = float(w) if w else MODELS.get(name, 1.0)
    evaluations = args.evaluations or (QUICK["evaluations"] if q else EVALUATIONS)
    train_epochs = QUICK["train_epochs"] if q else TRAIN_EPOCHS
    finetune_epochs = QUICK["finetune_epochs"] if q else FINETUNE_EPOCHS
    mode = QUICK if q else FULL
    timing, repeats = str(mode["timing"]), int(mode["repeats"])

    import oracles

    for runtime in RUNTIMES:  # every runtime must be measurable, or the matrix has holes
        oracles.get_oracle(RUNTIMES[runtime])
    env = common.environment()
    store = common.RunRows("transfer", root=common.QUICK_DIR if q else common.RESULTS_DIR)
    if q and store.dir.exists():
        shutil.rmtree(store.dir)  # a quick run checks today's code: never reused
    t0 = time.perf_counter()
    cells: list[dict[str, Any]] = []
    missing: list[str] = []  # --stored-only: what the stored runs do not cover
    for seed, (model, width) in itertools.product(args.seeds, models.items()):
        base = f"{model}-w{width:g}-s{seed}-t{train_epochs}"
        dense_tag = _slug(f"dense-{base}")
        dense = None if args.fresh else store.get(dense_tag)
        if dense is None and args.stored_only:
            log.info("%s: no stored dense row; left out", base)
            missing.append(f"{model} (nothing stored)")
            continue
        if dense is None:
            log.info("%s: dense model on every runtime", base)
            dense = dense_row(model, width, seed=seed, train_epochs=train_epochs, timing=timing,
                              repeats=repeats)  # fmt: skip
            store.put(dense_tag, dense)
        runs: dict[str, dict[str, Any]] = {}
        for runtime in args.runtimes:
            tag = _slug(f"{base}-{runtime}-{args.searcher}-e{evaluations}-f{finetune_epochs}")
            stored = None if args.fresh else store.get(tag)
            if stored is not None and (stored.get("ok") or args.stored_only):
                log.info("%s searched on %s: stored", base, runtime)
                if args.paired and stored.get("ok") and not stored.get("paired"):
                    log.info("%s searched on %s: paired measurement", base, runtime)
                    dense_pair = dense_module(model, width, seed=seed, train_epochs=train_epochs)
                    stored = {**stored, "paired": paired_row(Path(stored["run_dir"]), dense_pair,
                                                             timing=timing, repeats=repeats)}  # fmt: skip
                    store.put(tag, stored)
                runs[runtime] = stored
                continue
            if args.stored_only:
                missing.append(f"{model} searched on {runtime}")
                continue
            log.info("%s: searching to %s on %s", base, BUDGET, runtime)
            run_dir = RUNS_DIR / ("transfer-quick" if q else "transfer") / tag
            row = prune_row(
                model=model, width=width, data="digits", budgets=[BUDGET],
                oracles=[f"latency={spec_for(runtime, timing)}"], searcher=args.searcher,
                seed=seed, evaluations=evaluations, finetune_epochs=finetune_epochs,
                train_epochs=train_epochs, run_dir=run_dir, fresh=True,
                batch_size=DIGITS_BATCH, train_lr=DIGITS_TRAIN_LR,
            )  # fmt: skip
            row["searched_on"] = runtime
            if row.get("ok"):
                m0 = time.perf_counter()
                row["latency_ms"] = shipped_latency(run_dir, timing=timing, repeats=repeats)
                row["measure_seconds"] = time.perf_counter() - m0
                if args.paired:
                    dense_pair = dense_module(model, width, seed=seed, train_epochs=train_epochs)
                    row["paired"] = paired_row(run_dir, dense_pair, timing=timing, repeats=repeats)
            store.put(tag, row)  # failures too: the table shows them, a rerun retries them
            runs[runtime] = row
        cells.append({"model": model, "width": width, "seed": seed, "dense": dense,
                      "runs": runs, "matrix": matrix(dense, runs)})  # fmt: skip
    seconds = time.perf_counter() - t0
    summary = summarise(cells)
    body = _table(cells) + "\n\nDense latency on each runtime (the budget is 40% of it):\n\n"
    body += _dense_table(cells)
    print(body)
    name = "transfer_quick" if q else "transfer"
    settings = {
        "quick": q, "models": models, "runtimes": RUNTIMES, "searched_on": args.runtimes,
        "budget": BUDGET, "searcher": args.searcher, "seeds": args.seeds,
        "evaluations": evaluations, "train_epochs": train_epochs,
        "finetune_epochs": finetune_epochs, "timing": timing, "repeats": repeats,
        "stored_only": args.stored_only, "not_run": missing,
    }  # fmt: skip
    common.write_results(name, {"settings": settings, "seconds": seconds, "summary": summary,
                         "cells": cells}, command=common.command_line(), env=env)  # fmt: skip
    run_seconds = [r.get("total_seconds", 0) + r.get("measure_seconds", 0)
                   for c in cells for r in c["runs"].values() if r.get("ok")]  # fmt: skip
    notes = (
        f"Each row: `hwprune.prune` with `{args.searcher}`, {evaluations} evaluations, to "
        f"`{BUDGET}` of the dense model on the runtime it was searched on (oracles "
        + ", ".join(f"`{s}`" for s in RUNTIMES.values())
        + f"), dense models trained {train_epochs} epochs on digits (32x32), "
        f"{finetune_epochs} fine-tuning epoch(s). Each cell: the shipped model's latency on "
        "that runtime (fresh oracle, no cache, "
        + (f"median of {repeats} calls" if repeats > 1 else "one call")
        + ") / 40% of the dense model's latency on that runtime; above 1.00 the budget is "
        "missed there. Verified by the run: the prune run's own final measurement on the "
        f"runtime it searched on, over its bound. Off the diagonal {summary['off_diagonal_missed']} of "
        f"{summary['off_diagonal_total']} cells miss (from "
        f"{summary['off_diagonal_best']:.2f} to {summary['off_diagonal_worst']:.2f}). "
        + (f"Wall time {seconds:.0f} s" if not args.stored_only else "Tables from stored runs")
        + (f" ({statistics.median(run_seconds):.0f} s per search, median)" if run_seconds else "")
        + ". Timed on a 2-core machine shared with other jobs: latency carries noise"
        + _load_note(cells)
        + "."
    )
    n_paired = sum(bool(r.get("paired")) for c in cells for r in c["runs"].values())
    if n_paired:
        notes += (
            f" Paired ({n_paired} of {len(run_seconds)} runs): the shipped and the dense model "
            f"timed in alternation on each runtime, median of {repeats} calls each, and the cell "
            "is their ratio over 0.40 (the dense table below is the stored dense row, timed once "
            "before the searches)."
        )
    if missing:
        notes += " Not run (the table holds the stored runs only): " + "; ".join(missing) + "."
    if q:
        notes += ("\n\n**Quick mode: an end-to-end check of the benchmark on a tiny model, not "
                  "the transfer matrix.**")  # fmt: skip
    md = common.update_results_md(
        name, "Pruned for one runtime, measured on another" + (" (quick check)" if q else ""),
        body, command=common.command_line(), env=env, notes=notes,
    )  # fmt: skip
    log.info("wrote %s in %.0f s", md, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

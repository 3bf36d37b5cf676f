"""Benchmark: accuracy at matched latency, every searcher through the whole prune pipeline.

For a CIFAR-style VGG-16 and ResNet-56 trained on the built-in digits data
(trained once per seed and cached under ``~/.cache/hwprune/benchmarks``), each
searcher (ppo-lagrangian, qlp, amc, uniform, global-magnitude, random) prunes
to ``latency<=50%``, ``<=30%`` and ``<=20%`` of the dense model on
``onnxruntime:cpu?threads=1`` with ``hwprune.prune``: the same evaluation
budget, the same fine-tuning recipe for every chosen policy, verification and
export. Reported per model, budget and searcher over three seeds:

* test accuracy after fine-tuning (mean and spread);
* the exported model's latency re-measured by a fresh oracle (new session,
  no cache) as a fraction of the budget (mean and worst);
* parameters of the final model and search seconds.

It also plots test accuracy against re-measured latency for every searcher
(``benchmarks/results/quality.png``).

    python -m benchmarks.quality            # the full grid (many hours on 2 cores)
    python -m benchmarks.quality --quick    # one model, one budget, one seed, few evaluations
    python -m benchmarks.quality --data 'fashion-mnist?train=3000' --proxy kd   # other data/proxy

``--data`` and ``--proxy`` (the search proxy, hwprune's ``--proxy``) go into every
stored run's tag and row unless they are the defaults (digits, bn), so runs of other
settings never mix; the dense checkpoint's cache name keeps the data's options
(``?train=N``), not its folder.

Quick runs write to ``benchmarks/results/quick/`` (git-ignored), never over
the full run's numbers. Run directories go to ``runs/benchmarks/quality/``
(git-ignored); a finished
run is reused when the script is run again with the same options (``--fresh``
redoes it). Outside ``--quick`` each finished run's row is also stored in
``benchmarks/results/quality_runs/`` (committed), so the grid, hours long, can
be run piecewise: over several processes (``--models``, ``--budgets``,
``--no-write``) or invocations, then collected by one more run. Writes
``benchmarks/results/quality.json`` and the "quality" section of
``benchmarks/RESULTS.md`` (with ``--data`` other than digits: ``quality_<data>.json`` and
its own section). After a change to the rule that picks the final
candidate, ``--reselect`` redoes every stored run's stages after the search
from the search history in its run directory.

Each seed also fixes the data split (``hwprune.prune`` splits with its seed),
so the dense model is trained per seed on that seed's training split: no
test image of one seed was seen in training.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from hwprune.config import default, parse_proxy
from hwprune.errors import ConfigError

_HERE = Path(__file__).resolve().parent

log = logging.getLogger("benchmarks.quality")

RUNS_DIR = _HERE.parent / "runs" / "benchmarks"
MODELS = {"vgg16_cifar": 0.5, "resnet56_cifar": 1.0}  # name -> width
BUDGETS = ("latency<=50%", "latency<=30%", "latency<=20%")
ORACLE = "onnxruntime:cpu?threads=1"
SEARCHERS = (
    "ppo-lagrangian", "qlp", "amc", "uniform", "global-magnitude", "random",
    "latency-knapsack", "knapsack-ppo", "knapsack-amc",
)  # fmt: skip
RL_SEARCHERS = ("ppo-lagrangian", "qlp", "amc", "knapsack-ppo", "knapsack-amc")
SEEDS = (0, 1, 2)
EVALUATIONS = 60
TRAIN_EPOCHS = 20
FINETUNE_EPOCHS = 5
# The recipe for dense training and fine-tuning on digits (about 1,100 training images): at batch
# 128 an epoch is 9 SGD steps, and a width-1 VGG-19 trained 20 epochs at lr 0.05 so reached 0.209
# test accuracy (paper.py's first run, 2026-11-23). Batch 32 gives 4x the steps for the same
# work; at lr 0.02 the same VGG-19 reached 0.997 (paper.py, 2026-11-27). Fine-tuning keeps
# prune's lr 0.01.
DIGITS_BATCH = 32
DIGITS_TRAIN_LR = 0.02
# The grid's version, in every stored run's tag. Version 2 is run one process at a time on an
# otherwise idle machine, all with one code version (verification by a median of 3 calls, repair
# by a factor) and the digits recipe above; version 1 (no suffix, 2026-11-22/23) ran two
# processes at once over three code versions, trained and fine-tuned at batch 128, and its
# timing noise confounded the comparison. Version 3 (2026-11-30 on) is version 2 with the
# searches learning from the search signal (SEARCH_SIGNAL below): version 2's searches learnt from
# the raw proxy score, which today's code cannot run, so version 2 is only collected
# (``--grid-version 2 --stored-only``; its remaining runs ran from a checkout before the change).
GRID_VERSION = 3
# The grid versions this code can still run (earlier ones can only be collected).
RUNNABLE_GRIDS = {GRID_VERSION}
# The rule that picks the final candidate from a search's history, recorded in every row. "tie"
# (2026-11-27): proxy accuracies within two standard errors count as tied, least pruned first
# (hwprune.evaluate.rank_feasible). Rows without it chose the most accurate, ties by margin,
# which near chance picked the floor model; ``--reselect`` redoes their stages after the search.
# "chance" (2026-11-30): as "tie", and candidates whose proxy is at chance (within sampling noise
# or a tenth of the dense model's margin of the largest class's share) come after the rest, the
# one keeping the most parameters first: the floor model had shipped at 0.55 of its bound.
SELECTION = "chance"
SELECTION_RULE = ("proxy accuracies within two standard errors count as tied, least pruned first; "
                  "those at chance come last, the most parameters first")  # fmt: skip
# Every rule a stored row may name (None: rows before the field).
SELECTION_RULES = {
    None: "the most accurate candidate, exact ties by margin",
    "tie": "proxy accuracies within two standard errors count as tied, least pruned first",
    "chance": SELECTION_RULE,
}

# What the searchers learn from, recorded in every row whose search ran with it. "size at
# chance" (2026-11-30, hwprune.evaluate.search_signal): the proxy score, or for a candidate at
# chance the floor scaled by its parameters kept. Rows without it searched on the raw proxy
# score (a re-selected row keeps its original search, so it keeps its original value).
SEARCH_SIGNAL = "size at chance"
SEARCH_SIGNALS = {None: "the raw proxy score", SEARCH_SIGNAL: "the proxy score, or the size at "
                  "chance (hwprune.evaluate.search_signal)"}  # fmt: skip

# --quick: one small model, one budget, one seed, few evaluations, short timing.
QUICK = {
    "models": {"vgg16_cifar": 0.25},
    "budgets": ("latency<=50%",),
    "seeds": (0,),
    "evaluations": 8,
    "train_epochs": 8,
    "finetune_epochs": 1,
    "oracle": "onnxruntime:cpu?threads=1&min_time=0.1&max_time=2",
}


def reselect_rules(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The final-choice rules re-selected rows were chosen under before and after, as text."""

    def named(key: str) -> str:
        return "; or ".join(sorted({SELECTION_RULES.get(r.get(key), "?") for r in rows}))

    return named("selection_before_reselect"), named("selection")


def needs_reselect(stored: dict[str, Any] | None) -> bool:
    """Whether a stored row chose its final candidate by an earlier rule than SELECTION."""
    return stored is not None and stored.get("selection") != SELECTION


def cache_dir() -> Path:
    """Where the benchmarks keep trained checkpoints (shared with benchmarks/search.py)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hwprune" / "benchmarks"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text).strip("_")


def data_slug(data: str) -> str:
    """The dataset spec as a file-name part: its name and options, not its folder.

    ``"fashion-mnist:/data/fm?train=3000"`` -> ``"fashion-mnist-train_3000"``: the same data
    read from another folder shares a cache entry, another training subset does not.
    """
    from hwprune.data import parse_dataset_name

    name, path = parse_dataset_name(data)
    query = (path or "").partition("?")[2]
    return _slug(name + (f"-{query}" if query else ""))


def dense_checkpoint(
    name: str,
    *,
    width: float,
    data: str = "digits",
    epochs: int,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 128,
    lr: float = 0.05,
) -> tuple[Path, float]:
    """The dense model trained on ``data`` with ``seed``'s split: (checkpoint, test accuracy).

    Trained now unless cached (``cache_dir()``); the checkpoint's meta records
    the model, width, classes, data and the recipe (epochs, batch size, learning
    rate), so ``hwprune.prune`` can load it.
    """  # fmt: skip
    from hwprune.data import get_dataset
    from hwprune.models import get_model, read_checkpoint, save_checkpoint
    from hwprune.train import train

    data_tag = data_slug(data)
    # The default recipe keeps the names earlier caches have.
    recipe = ("" if batch_size == 128 else f"-b{batch_size}") + ("" if lr == 0.05 else f"-lr{lr:g}")
    path = cache_dir() / f"{name}-w{width:g}-{data_tag}-e{epochs}{recipe}-s{seed}.pt"
    if path.is_file():
        try:
            meta = read_checkpoint(path).meta
            acc = meta.get("test_accuracy")
            if acc is not None:
                return path, float(acc)
        except Exception:  # a damaged cache entry is retrained, not trusted
            log.warning("retraining: cannot read cached checkpoint %s", path)
    splits = get_dataset(data, seed=seed)
    model = get_model(name, num_classes=int(splits.num_classes), width=width)
    t0 = time.perf_counter()
    result = train(model, splits, epochs=epochs, seed=seed, device=device, batch_size=batch_size,
                   lr=lr)  # fmt: skip
    save_checkpoint(
        model.to("cpu"),
        path,
        meta={
            "model": name,
            "width": width,
            "num_classes": int(splits.num_classes),
            "input_size": int(splits.input_shape[-1]),
            "data": data_tag,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "test_accuracy": float(result.test_accuracy),
        },
    )
    log.info("trained %s (width %g) in %.0f s: test accuracy %.3f -> %s", name, width,
             time.perf_counter() - t0, result.test_accuracy, path)  # fmt: skip
    return path, float(result.test_accuracy)


def remeasure(onnx_path: Path, *, oracle: str, input_shape: Sequence[int]) -> float:
    """The exported model measured by a fresh oracle: new instance, new session, no cache."""
    import oracles

    fresh = oracles.get_oracle(oracle)
    shape = tuple(int(s) for s in input_shape)
    return float(fresh.measure(onnx_path.read_bytes(), input_shapes={"input": shape}).value)


def prune_row(
    *,
    model: str,
    width: float,
    data: str,
    budgets: Sequence[str],
    oracles: Sequence[str],
    searcher: str,
    seed: int,
    evaluations: int,
    finetune_epochs: int,
    train_epochs: int,
    run_dir: Path,
    device: str = "cpu",
    granularity: str = "channel",
    min_keep: float = 0.1,
    remeasure_oracle: str | None = None,
    fresh: bool = False,
    batch_size: int = 128,
    train_lr: float = 0.05,
    proxy: str | None = None,
    reselect_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``hwprune.prune`` run (reused when its run directory holds a finished row).

    Returns a JSON-ready row: accuracies (dense, pruned, fine-tuned), the
    budgets' dense/bound/final values, the re-measured value of the first
    budget when ``remeasure_oracle`` is given, parameters, stage seconds; or
    ``ok: False`` and the error when the run failed. ``batch_size`` is used
    for both dense training and fine-tuning; ``train_lr`` for dense training.

    ``reselect_from``: an earlier row of this run. If ``run_dir`` still holds its
    search history, the run is resumed from it (``hwprune.resume``): the final
    choice, fine-tuning, verification and export are redone with today's code,
    the search is not; search seconds and evaluations are the earlier row's.
    Without the history the run is done in full.
    """
    import hwprune
    from hwprune.errors import HwpruneError

    row_path = run_dir / "bench_row.json"
    history = run_dir / "episodes.jsonl"
    resume = reselect_from is not None and (run_dir / "config.json").is_file() and history.is_file()
    if row_path.is_file() and not fresh and reselect_from is None:
        row = json.loads(row_path.read_text(encoding="utf-8"))
        # Reused only if made under today's settings: the same budgets (a fixed bound is in
        # them), the surrogate off (rows stored before every grid pinned it off may have had it on).
        same = row.get("budgets") == list(budgets) and row.get("surrogate") == "off"
        if row.get("ok") and same:
            log.info("reusing %s", row_path)
            return row
    row: dict[str, Any] = {
        "model": model, "width": width, "data": data, "budgets": list(budgets),
        "searcher": searcher, "seed": seed, "evaluations_budget": evaluations,
        "granularity": granularity, "run_dir": str(run_dir), "batch_size": batch_size,
        "train_lr": train_lr, "selection": SELECTION, "proxy": proxy or default("proxy"),
        "surrogate": "off", "search_signal": SEARCH_SIGNAL,
    }  # fmt: skip
    if resume:
        row["search_signal"] = reselect_from.get("search_signal")  # the search is not redone
        row.update(reselected=True, accuracy_before_reselect=reselect_from.get("accuracy"),
                   params_before_reselect=reselect_from.get("params_final"),
                   ok_before_reselect=bool(reselect_from.get("ok")),
                   selection_before_reselect=reselect_from.get("selection"))  # fmt: skip
    try:
        ckpt, dense_acc = dense_checkpoint(model, width=width, data=data, epochs=train_epochs,
                                           seed=seed, device=device, batch_size=batch_size,
                                           lr=train_lr)  # fmt: skip
        t0 = time.perf_counter()
        if resume:
            log.info("re-selecting %s from its search history", run_dir.name)
            result = hwprune.resume(run_dir)
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            result = hwprune.prune(
                model=model,
                weights=ckpt,
                width=width,
                data=data,
                budgets=list(budgets),
                oracles=list(oracles),
                agent=searcher,
                evaluations=evaluations,
                finetune_epochs=finetune_epochs,
                finetune_batch_size=batch_size,
                out=run_dir,
                seed=seed,
                granularity=granularity,
                min_keep=min_keep,
                device=device,
                tensorrt=False,
                proxy=proxy or default("proxy"),
                # Every searcher measures every candidate. ``auto`` turns the surrogate on when
                # the dense call takes over 2 s, which a loaded machine did for 4 grid runs.
                surrogate="off",
            )
        seconds = time.perf_counter() - t0
    except HwpruneError as exc:  # an infeasible budget, a missing searcher ...
        log.warning("%s %s seed %d on %s: %s", searcher, budgets, seed, model, exc)
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        return row
    checks = [
        {"budget": b.budget, "quantity": b.quantity, "oracle": b.oracle, "unit": b.unit,
         "dense": b.dense, "bound": b.bound, "final": b.final, "met": b.met}
        for b in result.budgets
    ]  # fmt: skip
    row.update(
        ok=True,
        accuracy_dense=result.accuracy_dense,
        accuracy_dense_trained=dense_acc,
        accuracy_pruned=result.accuracy_pruned,
        accuracy=result.accuracy_finetuned,
        checks=checks,
        all_met=result.all_met,
        params_dense=result.params_dense,
        params_final=result.params_final,
        search_seconds=float(result.stage_seconds.get("search", math.nan)),
        finetune_seconds=float(result.stage_seconds.get("finetune", math.nan)),
        total_seconds=seconds,
        evaluations=result.evaluations,
        first_feasible_evaluation=result.first_feasible_evaluation,
        repairs=result.repairs,
        proxy_seconds_mean=result.proxy_seconds,
    )
    if resume:  # the search was not repeated: its cost is the earlier row's
        row.update({k: reselect_from.get(k) for k in ("search_seconds", "total_seconds",
                    "evaluations", "first_feasible_evaluation")}, reselect_seconds=seconds)  # fmt: skip
    row.update(search_use(run_dir) or {})
    if remeasure_oracle is not None:
        from hwprune.api import model_input_shape

        shape = (1, *model_input_shape(result.paths["model"]))
        value = remeasure(Path(result.paths["onnx"]), oracle=remeasure_oracle, input_shape=shape)
        first = checks[0]
        row.update(remeasured=value, remeasured_over_bound=value / first["bound"],
                   remeasured_over_dense=value / first["dense"])  # fmt: skip
    row_path.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return row


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _median(xs: Sequence[float | None]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def summarise(
    rows: Sequence[dict[str, Any]], *, planned: int | None = None
) -> list[dict[str, Any]]:
    """One entry per (model, budget, searcher): means and spreads over the seeds that finished.

    ``planned`` is the number of seeds asked for, so seeds left out (``--stored-only``)
    show as not finished.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["budgets"][0], r["searcher"]), []).append(r)
    out = []
    for (model, budget, searcher), rs in groups.items():
        ok = [r for r in rs if r.get("ok")]
        acc, acc_sd = _mean_std([r["accuracy"] for r in ok])
        pruned = [r["accuracy_pruned"] for r in ok if r.get("accuracy_pruned") is not None]
        acc_pruned, acc_pruned_sd = _mean_std(pruned)
        over = [r["remeasured_over_bound"] for r in ok if "remeasured_over_bound" in r]
        frac = [r["remeasured_over_dense"] for r in ok if "remeasured_over_dense" in r]
        use = [u for u in (budget_use(r) for r in ok) if u is not None]
        bounds = [c["bound"] for r in ok for c in (r.get("checks") or ())[:1] if c.get("bound")]
        out.append({
            "model": model, "width": rs[0]["width"], "budget": budget, "searcher": searcher,
            "seeds": max(planned or 0, len(rs)), "finished": len(ok),
            "errors": sorted({r["error"] for r in rs if not r.get("ok")}),
            "accuracy_mean": acc, "accuracy_std": acc_sd,
            "accuracy_pruned_mean": acc_pruned, "accuracy_pruned_std": acc_pruned_sd,
            "accuracy_dense_mean": _mean_std([r["accuracy_dense"] for r in ok])[0],
            "remeasured_over_bound_mean": _mean_std(over)[0],
            "remeasured_over_bound_max": max(over) if over else math.nan,
            "budget_use_median": _median(use),
            "search_known": sum(1 for r in ok if r.get("search_best_use") is not None),
            "search_reached": sum(1 for r in ok if (r.get("search_best_use") or 0.0) >= 0.9),
            "search_best_use_median": _median([r.get("search_best_use") for r in ok]),
            "shipped_search_use_median": _median([r.get("shipped_search_use") for r in ok]),
            "use_losses": dict(collections.Counter(
                loss for loss in (use_loss(r) for r in ok) if loss is not None)),
            # The first budget's absolute bound per run: one value when the runs share a
            # fixed reference, else each run's fraction of its own dense measurement.
            "bound_min": min(bounds) if bounds else math.nan,
            "bound_max": max(bounds) if bounds else math.nan,
            "accuracy_by_seed": {int(r["seed"]): r["accuracy"] for r in ok},
            # The dense model's reference (ms) a fixed-bound run was held to: a seed's runs
            # are compared only where they share it (one machine, one bound).
            "reference_by_seed": {int(r["seed"]): r.get("reference_ms") for r in ok},
            "latency_over_dense_mean": _mean_std(frac)[0],
            "latency_over_dense_std": _mean_std(frac)[1],
            "params_mean": _mean_std([r["params_final"] for r in ok])[0],
            "params_dense": ok[0]["params_dense"] if ok else None,
            "search_seconds_mean": _mean_std([r["search_seconds"] for r in ok])[0],
            "evaluations_mean": _mean_std([r["evaluations"] for r in ok])[0],
        })  # fmt: skip
    return out


def budget_use(row: dict[str, Any]) -> float | None:
    """How much of its binding budget a run's shipped model uses: verified value / bound.

    The pipeline's own verification (median of its timed calls) of the final model, for
    the budget it comes closest to; None when the row has no checks.
    """
    uses = [c["final"] / c["bound"] for c in row.get("checks") or ()
            if c.get("final") is not None and c.get("bound")]  # fmt: skip
    return max(uses) if uses else None


def search_use(run_dir: Path) -> dict[str, Any] | None:
    """Where a run's budget use was lost, from its run directory's search history.

    ``search_best_use``: the largest cost (measured value / bound, the binding budget)
    of any feasible candidate the search measured; ``shipped_search_use``: the shipped
    candidate's cost as the search measured it (the verified figure is the row's
    ``checks``); ``feasible_candidates``: how many the search found. None when the
    directory no longer holds its history (run directories are not committed).
    """
    history, report = run_dir / "episodes.jsonl", run_dir / "report.json"
    if not (history.is_file() and report.is_file()):
        return None
    try:
        keep = json.loads(report.read_text(encoding="utf-8"))["policy"]["keep"]
        episodes = [json.loads(line) for line in history.read_text(encoding="utf-8").splitlines()
                    if line.strip()]  # fmt: skip
    except (OSError, ValueError, KeyError):
        return None
    feasible = [max(e["costs"].values()) for e in episodes if e.get("feasible") and e.get("costs")]
    shipped = [max(e["costs"].values()) for e in episodes
               if e.get("costs") and (e.get("policy") or {}).get("keep") == keep]  # fmt: skip
    return {"search_best_use": max(feasible) if feasible else None,
            "shipped_search_use": shipped[-1] if shipped else None,
            "feasible_candidates": len(feasible)}  # fmt: skip


#: How far (in budget use) a stage may lose before the budget note blames it.
USE_SLACK = 0.05


def use_loss(row: dict[str, Any]) -> str | None:
    """Why a run's shipped model uses under 90% of its budget, or None when it does not.

    ``search``: the search measured no feasible candidate at 90% or more; ``repair``:
    the chosen model failed its final proof and a candidate with more margin shipped;
    ``choice``: the final choice preferred a candidate the search measured below the
    best one (a higher score, or at chance more parameters at less latency); ``timing``:
    the final proof measured the shipped model below what the search measured. Of
    ``choice`` and ``timing`` the one that lost more is named, when it lost at least
    :data:`USE_SLACK`; ``unknown`` otherwise, or when the run's history is gone.
    """
    use = budget_use(row)
    if use is None or use >= 0.9:
        return None
    best, shipped = row.get("search_best_use"), row.get("shipped_search_use")
    if best is None:
        return "unknown"
    if best < 0.9:
        return "search"
    if row.get("repairs"):
        return "repair"
    if shipped is None:
        return "unknown"
    choice, timing = best - shipped, shipped - use  # what each stage lost; the larger is named
    if max(choice, timing) < USE_SLACK:
        return "unknown"
    return "choice" if choice >= timing else "timing"


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[int, float]:
    """Per seed both finished: test accuracy of summary ``a`` minus that of ``b``.

    A seed whose two runs were held to different fixed bounds (run on two machines, each
    with its own reference latency) is left out: their accuracies are not a pair.
    """
    sa, sb = a.get("accuracy_by_seed") or {}, b.get("accuracy_by_seed") or {}
    ra, rb = a.get("reference_by_seed") or {}, b.get("reference_by_seed") or {}

    def same_bound(seed: int) -> bool:
        x, y = ra.get(seed), rb.get(seed)
        return x is None or y is None or math.isclose(x, y, rel_tol=1e-9)

    return {seed: sa[seed] - sb[seed] for seed in sorted(set(sa) & set(sb)) if same_bound(seed)}


def headline(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best RL searcher against best baseline per (model, budget), by mean test accuracy.

    Twice: after fine-tuning (what ships), and before it (``accuracy_pruned``: what
    the search alone found, the quantity the searchers optimise; after fine-tuning
    an easy task can hide every difference between them).
    """
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in summary:
        if s["finished"]:
            by.setdefault((s["model"], s["budget"]), []).append(s)
    out = []
    for (model, budget), ss in by.items():
        rl = [s for s in ss if s["searcher"] in RL_SEARCHERS]
        base = [s for s in ss if s["searcher"] not in RL_SEARCHERS]
        line: dict[str, Any] = {"model": model, "budget": budget}
        for suffix, key in (("", "accuracy"), ("_pruned", "accuracy_pruned")):

            def score(s: dict[str, Any], key: str = key) -> float:
                v = s.get(f"{key}_mean")
                return -math.inf if v is None or math.isnan(v) else v

            best_rl = max(rl, key=score) if rl else None
            best_base = max(base, key=score) if base else None
            if not suffix:  # the pair the seeds are compared on: best after fine-tuning
                rl_s, base_s = best_rl, best_base
            line.update({
                f"best_rl{suffix}": best_rl and best_rl["searcher"],
                f"best_rl{suffix}_accuracy": best_rl and best_rl.get(f"{key}_mean"),
                f"best_rl{suffix}_std": best_rl and best_rl.get(f"{key}_std"),
                f"best_baseline{suffix}": best_base and best_base["searcher"],
                f"best_baseline{suffix}_accuracy": best_base and best_base.get(f"{key}_mean"),
                f"best_baseline{suffix}_std": best_base and best_base.get(f"{key}_std"),
            })  # fmt: skip
        diffs = paired(rl_s, base_s) if rl_s and base_s else {}
        line["paired"] = diffs  # seed -> best RL minus best baseline, test accuracy
        line["paired_mean"], line["paired_std"] = _mean_std(list(diffs.values()))
        out.append(line)
    return out


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against re-measured latency (fraction of dense), one panel per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return None
    ok = [r for r in rows if r.get("ok") and "remeasured_over_dense" in r]
    if not ok:
        return None
    models = sorted({r["model"] for r in ok})
    searchers = [s for s in SEARCHERS if any(r["searcher"] == s for r in ok)]
    searchers += sorted({r["searcher"] for r in ok} - set(searchers))
    markers = "os^DvP*X"
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in ok if r["model"] == model]
        for i, s in enumerate(searchers):
            pts = [r for r in mine if r["searcher"] == s]
            if pts:
                ax.scatter([r["remeasured_over_dense"] for r in pts], [r["accuracy"] for r in pts],
                           marker=markers[i % len(markers)], label=s, alpha=0.8)  # fmt: skip
        dense = statistics.fmean(r["accuracy_dense"] for r in mine)
        ax.scatter([1.0], [dense], marker="*", s=160, color="black", label="dense")
        for b in sorted({r["budgets"][0] for r in mine}):
            frac = next(r["checks"][0]["bound"] / r["checks"][0]["dense"] for r in mine
                        if r["budgets"][0] == b)  # fmt: skip
            ax.axvline(frac, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{model} (width {mine[0]['width']:g})")
        ax.set_xlabel("re-measured latency / dense latency")
        ax.set_ylabel("test accuracy after fine-tuning")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(x: Any, spec: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return spec.format(x)


def _bound_range(s: dict[str, Any]) -> str:
    lo, hi = s.get("bound_min", math.nan), s.get("bound_max", math.nan)
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "-"
    return f"{lo:.3f}" if hi - lo < 5e-4 else f"{lo:.3f}-{hi:.3f}"


def table(summary: Sequence[dict[str, Any]]) -> str:
    headers = ["model", "budget", "searcher", "seeds ok", "test acc. (mean ± std)",
               "before fine-tuning", "bound (min-max)", "budget used (median)",
               "re-measured / budget (mean, max)",
               "latency / dense", "params (final / dense)",
               "search s", "evals"]  # fmt: skip
    rows = []
    for s in summary:
        if not s["finished"]:
            err = s["errors"][0] if s["errors"] else "failed"
            rows.append(
                [
                    f"{s['model']} (w{s['width']:g})",
                    f"`{s['budget']}`",
                    s["searcher"],
                    f"0/{s['seeds']}",
                    f"failed: {err[:90]}",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                ]
            )
            continue  # fmt: skip
        params = (f"{s['params_mean'] / 1e6:.3f}M / {s['params_dense'] / 1e6:.3f}M"
                  if s["params_dense"] else "-")  # fmt: skip
        rows.append([
            f"{s['model']} (w{s['width']:g})", f"`{s['budget']}`", s["searcher"],
            f"{s['finished']}/{s['seeds']}",
            f"{_f(s['accuracy_mean'])} ± {_f(s['accuracy_std'])}",
            f"{_f(s.get('accuracy_pruned_mean'))} ± {_f(s.get('accuracy_pruned_std'))}",
            _bound_range(s),
            _f(s.get("budget_use_median"), "{:.3f}")
            + (" (< 0.90)" if s.get("budget_use_median", 1.0) < 0.9 else ""),
            f"{_f(s['remeasured_over_bound_mean'])}, {_f(s['remeasured_over_bound_max'])}",
            _f(s["latency_over_dense_mean"]), params,
            _f(s["search_seconds_mean"], "{:.0f}"), _f(s["evaluations_mean"], "{:.0f}"),
        ])  # fmt: skip
    return common.markdown_table(headers, rows)


def headline_table(lines: Sequence[dict[str, Any]]) -> str:
    headers = ["model", "budget", "accuracy", "best RL searcher", "its acc. (mean ± std)",
               "best baseline", "its acc. (mean ± std)", "RL - baseline",
               "paired by seed: RL - baseline"]  # fmt: skip
    rows = []
    for h in lines:
        for suffix, what in (("", "test, after fine-tuning"), ("_pruned", "before fine-tuning")):
            rl, base = h.get(f"best_rl{suffix}"), h.get(f"best_baseline{suffix}")
            rl_acc, base_acc = (
                h.get(f"best_rl{suffix}_accuracy"),
                h.get(f"best_baseline{suffix}_accuracy"),
            )
            diff = rl_acc - base_acc if rl and base and None not in (rl_acc, base_acc) else None
            pairs = h.get("paired") if not suffix else None
            by_seed = (
                f"{_f(h['paired_mean'], '{:+.3f}')} ± {_f(h['paired_std'])} ("
                + ", ".join(f"s{k}: {v:+.3f}" for k, v in sorted(pairs.items())) + ")"
                if pairs else "-"
            )  # fmt: skip
            rows.append([
                h["model"], f"`{h['budget']}`", what,
                rl or "-", f"{_f(rl_acc)} ± {_f(h.get(f'best_rl{suffix}_std'))}",
                base or "-", f"{_f(base_acc)} ± {_f(h.get(f'best_baseline{suffix}_std'))}",
                _f(diff, "{:+.3f}"), by_seed,
            ])  # fmt: skip
    return common.markdown_table(headers, rows)


#: The searcher the knapsack table compares every other searcher with.
KNAPSACK = "latency-knapsack"
#: The RL agents that start from the knapsack's policy.
KNAPSACK_RL = ("knapsack-ppo", "knapsack-amc")


def knapsack_table(summary: Sequence[dict[str, Any]]) -> str:
    """Per cell: ``latency-knapsack``'s test accuracy minus each other searcher's, paired by
    seed, and which of the knapsack alone and the better knapsack-started RL agent wins the
    cell (mean test accuracy; a difference within the seeds' spread is still counted, and the
    paired column says how sure it is). Empty without knapsack rows."""
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for s in summary:
        if s["finished"]:
            by.setdefault((s["model"], s["budget"]), {})[s["searcher"]] = s
    rows, wins = [], {"knapsack": 0, "rl": 0}
    for (model, budget), ss in by.items():
        k = ss.get(KNAPSACK)
        if k is None:
            continue
        for name, other in ss.items():
            if name == KNAPSACK:
                continue
            diffs = paired(k, other)
            mean, std = _mean_std(list(diffs.values()))
            rows.append([model, f"`{budget}`", name, _f(other.get("accuracy_mean")),
                         _f(mean, "{:+.3f}") + f" ± {_f(std)}" if diffs else "-",
                         ", ".join(f"s{x}: {v:+.3f}" for x, v in sorted(diffs.items())) or "-",
                         ""])  # fmt: skip
        rl = [ss[n] for n in KNAPSACK_RL if n in ss and ss[n].get("accuracy_mean") is not None]
        if rl and k.get("accuracy_mean") is not None:
            best = max(rl, key=lambda r: r["accuracy_mean"])
            won = "rl" if best["accuracy_mean"] > k["accuracy_mean"] else "knapsack"
            wins[won] += 1
            rows[-1][-1] = (f"{best['searcher']} {best['accuracy_mean']:.3f} against "
                            f"{KNAPSACK} {k['accuracy_mean']:.3f}: "
                            f"{best['searcher'] if won == 'rl' else KNAPSACK} wins")  # fmt: skip
    if not rows:
        return ""
    headers = ["model", "budget", "other searcher", "its acc. (mean)",
               f"{KNAPSACK} - other (paired mean ± std)", "per seed",
               "knapsack alone against the better knapsack-started RL agent"]  # fmt: skip
    verdict = (f"\n\nCells won: {KNAPSACK} {wins['knapsack']}, the better knapsack-started RL "
               f"agent {wins['rl']}.")  # fmt: skip
    return common.markdown_table(headers, rows) + verdict


def budget_use_note(summary: Sequence[dict[str, Any]]) -> str:
    """The cells whose shipped models leave more than 10% of their budget unused (median)."""
    low = [s for s in summary if s["finished"] and s.get("budget_use_median", 1.0) < 0.9]
    if not low:
        return ""
    which = "; ".join(f"{s['model']} `{s['budget']}` {s['searcher']} {s['budget_use_median']:.3f}"
                      for s in low)  # fmt: skip
    note = (f"\n\n**{len(low)} of {sum(1 for s in summary if s['finished'])} cells ship models "
            f"that use less than 90% of their budget** (median over seeds of the verified "
            f"latency / bound): {which}. A searcher that stops far below its budget gives away "
            "accuracy; read its row as a weak result of that searcher, not as a margin of the "
            "others.")  # fmt: skip
    known = [s for s in low if not math.isnan(s.get("search_best_use_median", math.nan))]
    if not known:
        return note
    losses: collections.Counter[str] = collections.Counter()
    for s in summary:
        losses.update(s.get("use_losses") or {})
    lines = [[f"{s['model']} `{s['budget']}` {s['searcher']}",
              _f(s.get("search_best_use_median")), _f(s.get("shipped_search_use_median")),
              _f(s.get("budget_use_median")),
              ", ".join(f"{k} {v}" for k, v in sorted((s.get("use_losses") or {}).items()))
              or "-"] for s in known]  # fmt: skip
    return note + (
        "\n\nWhy, from each run's search history (budget use = latency / bound of the binding "
        "budget; medians over seeds): the largest feasible candidate the search measured, the "
        "shipped candidate as the search measured it, and as the final proof measured it. Per "
        "run under 90%, the stage that lost the most: `search` (no feasible candidate at 90%), "
        f"`choice` (the final choice took a smaller one; lost >= {USE_SLACK:.2f}), `repair` "
        "(the chosen model failed its final proof and one with more margin shipped), `timing` "
        "(the proof measured it faster than the search did). Over all cells: "
        + ", ".join(f"{k} {v}" for k, v in sorted(losses.items()))
        + " runs. In "
        + f"{sum(s.get('search_reached', 0) for s in summary)} of "
        + f"{sum(s.get('search_known', 0) for s in summary)} runs with their history the search "
        "measured a feasible candidate at 0.9 or more of the bound.\n\n"
        + common.markdown_table(
            [
                "cell",
                "search's best",
                "shipped, in the search",
                "shipped, verified",
                "runs under 90% by cause",
            ],
            lines,
        )
    )


def measured_notes(rows: Sequence[dict]) -> str:
    """What the stored runs show about timing noise and failures, for RESULTS.md."""
    notes = ""
    machines: dict[str, int] = {}
    spread: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        # The CPU name alone ("AMD EPYC") named two hosts that timed models 2-3x apart; the
        # kernel release in "system" told them apart in every row stored so far.
        m = r.get("measured", {}).get("machine", {})
        cpu = m.get("cpu") and (f"{m['cpu']} ({m['system']})" if m.get("system") else m["cpu"])
        if cpu:
            machines[cpu] = machines.get(cpu, 0) + 1
        if r.get("ok") and r.get("checks"):
            key = (r["model"], cpu or "this machine")
            spread.setdefault(key, []).append(float(r["checks"][0]["dense"]))
    if any(len(v) > 1 for v in spread.values()):
        ranges = "; ".join(f"{m} on {cpu}: {min(v):.2f}-{max(v):.2f} ms over {len(v)} runs"
                           for (m, cpu), v in sorted(spread.items()) if len(v) > 1)  # fmt: skip
        repaired = sum(1 for r in rows if r.get("ok") and r.get("repairs"))
        notes += (f"\n\nTiming noise, measured: each run times its own dense model, and that "
                  f"dense latency ranged {ranges}. {repaired} of {len(rows)} runs re-measured "
                  "their final model over the budget and were repaired (a smaller model with "
                  "the margin the miss showed), which can cost accuracy. Differences between "
                  "searchers smaller than the spread over seeds are not a ranking.")  # fmt: skip
        if len(machines) > 1:
            notes += (f" The runs span {len(machines)} machines ("
                      + ", ".join(f"{k}: {n} runs" for k, n in sorted(machines.items()))
                      + "): each held its runs to its own reference latency of the dense "
                      "model, and a seed's runs on two machines are not paired.")  # fmt: skip
    far = [r for r in rows if r.get("ok") and r.get("remeasured_over_bound", 0.0) > 1.2]
    if far:
        notes += (f"\n\n{len(far)} of {len(rows)} re-measurements landed more than 20% over "
                  "the budget (" + ", ".join(f"{r['model']} {r['budgets'][0]} {r['searcher']} "
                  f"seed {r['seed']}: {r['remeasured_over_bound']:.2f}x" for r in far)
                  + "). One call of a fresh session can be that far off on this VM; the "
                  "pipeline's verification, a median of 3 calls, had measured these models "
                  "within the budget.")  # fmt: skip
    again = [r for r in rows if r.get("reselected")]
    if again:
        both = [r for r in again if r.get("ok") and r.get("ok_before_reselect")]
        moved = [r for r in both if r.get("params_before_reselect") != r["params_final"]]
        gain = [r["accuracy"] - r["accuracy_before_reselect"] for r in moved]
        before, after = reselect_rules(again)
        notes += (f"\n\n{len(again)} of {len(rows)} runs were re-selected (`--reselect`): "
                  f"their search ran under an earlier final-choice rule ({before}), "
                  "and the choice, fine-tuning, verification and export were redone from the "
                  f"same search history with a later one ({after}). Of the "
                  f"{len(both)} that shipped a model both times, {len(moved)} "
                  "shipped a different one (another parameter count: another choice, or a "
                  "repair after a timing miss)")  # fmt: skip
        if gain:
            notes += (f", test accuracy {statistics.fmean(gain):+.3f} on average (from "
                      f"{min(gain):+.3f} to {max(gain):+.3f})")  # fmt: skip
        notes += ("; the same model fine-tunes to the same accuracy. Search seconds and "
                  "evaluations are the original search's; the re-selections took "
                  f"{sum(r.get('reselect_seconds') or 0.0 for r in again):,.0f} s.")  # fmt: skip
    signals = collections.Counter(r.get("search_signal") for r in rows)
    if len(signals) > 1:
        notes += ("\n\nThe searches learnt from different signals: " + "; ".join(
            f"{n} runs from {SEARCH_SIGNALS.get(k, k)}" for k, n in sorted(
                signals.items(), key=lambda kv: str(kv[0])))
            + ". Where no candidate was at chance the two are the same.")  # fmt: skip
    failed = [r for r in rows if not r.get("ok")]
    if failed:
        notes += (f"\n\n{len(failed)} of {len(rows)} runs ended without a model ("
                  + "; ".join(f"{r['model']} {r['budgets'][0]} {r['searcher']} seed "
                  f"{r['seed']}: {r['error'].split(': ', 1)[-1].split(' (')[0].split(';')[0]}"
                  for r in failed)
                  + "): hwprune refuses a model it cannot prove within the budget. Running "
                  "the grid again retries stored failures; `--stored-only` does not.")  # fmt: skip
    if len(machines) > 1:
        counts = ", ".join(f"{n} on {cpu}" for cpu, n in sorted(machines.items()))
        notes += (f"\n\nThe stored runs were measured on {len(machines)} machines ({counts}). "
                  "Each run measures its dense model and its budget on its own machine, so "
                  "the latency ratios compare across them; absolute milliseconds do not.")  # fmt: skip
    return notes


def _reference(model: str, width: float, data: str, oracle: str, store: common.RunRows) -> float:
    """The dense model's stored reference latency (ms) on ``oracle`` (measured once)."""
    from hwprune.data import get_dataset

    splits = get_dataset(data, seed=0)
    ref = common.reference_latency(model=model, width=width, num_classes=int(splits.num_classes),
                            input_shape=tuple(int(s) for s in splits.input_shape),
                            oracle=oracle, rows=store)  # fmt: skip
    log.info("reference latency of %s (width %g) on %s: %.4f ms", model, width, oracle,
             ref["median"])  # fmt: skip
    return float(ref["median"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true",
                   help="vgg16_cifar at width 0.25, latency<=50%%, seed 0, 8 evaluations, "
                        "1 fine-tuning epoch")  # fmt: skip
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME[=WIDTH]",
        help="models and widths (default: vgg16_cifar=0.5 resnet56_cifar=1)",
    )
    p.add_argument("--budgets", nargs="+", default=None,
                   help=f"budgets, e.g. 'latency<=30%%' ({' '.join(BUDGETS).replace('%', '%%')})")  # fmt: skip
    p.add_argument("--searchers", nargs="+", default=list(SEARCHERS),
                   help=f"searchers ({' '.join(SEARCHERS)})")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help=f"seeds; each has its own dense model and split ({' '.join(map(str, SEEDS))})")  # fmt: skip
    p.add_argument("--evaluations", type=int, default=None, help=f"per search ({EVALUATIONS})")
    p.add_argument(
        "--train-epochs", type=int, default=None, help=f"dense training ({TRAIN_EPOCHS})"
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help=f"fine-tuning epochs of every pruned model ({FINETUNE_EPOCHS})",
    )
    p.add_argument("--oracle", default=None, help=f"latency oracle spec ({ORACLE})")
    p.add_argument("--data", default="digits",
                   help="dataset spec, e.g. fashion-mnist?train=3000 (default digits)")  # fmt: skip
    p.add_argument("--proxy", default=None,
                   help=f"search proxy: bn, kd, recover:STEPS (default {default('proxy')})")  # fmt: skip
    p.add_argument("--device", default="cpu", help="training/fine-tuning device: cpu or cuda")
    p.add_argument("--fresh", action="store_true", help="redo runs that finished before")
    p.add_argument("--reselect", action="store_true",
                   help="for stored runs made with an earlier final-choice rule: redo the "
                        "choice, fine-tuning, verification and export from the search history "
                        "in the run directory (the search is not repeated)")  # fmt: skip
    p.add_argument("--fixed-bound", action="store_true",
                   help="hold every run of a model to one absolute bound: the relative "
                        "budget's fraction of the dense model's reference latency (the median "
                        "of 9 fresh calls, measured once and stored in quality_runs/) instead "
                        "of each run's own dense measurement, which load moves by up to 2x; "
                        "the runs' tags say 'fixed'")  # fmt: skip
    p.add_argument("--grid-version", type=int, default=GRID_VERSION,
                   help=f"the stored grid's version (default {GRID_VERSION}: searches learn from "
                        "the search signal; 2: the grid searched on the raw proxy score, which "
                        "is collected with --stored-only, not run); a version other than the "
                        "default has its own RESULTS.md section")  # fmt: skip
    p.add_argument("--store", default=None, metavar="TAG",
                   help="keep the rows of another machine apart (e.g. h200 for a GPU "
                        "machine's): stored in benchmarks/results/quality-TAG_runs/ with their "
                        "own reference latency, and collected into their own RESULTS.md section")  # fmt: skip
    p.add_argument("--how", default=None,
                   help="with --store: how the runs were run, for the section's notes (e.g. "
                        "'15 runs side by side, one per core')")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="write no results (log only)")
    p.add_argument("--stored-only", action="store_true",
                   help="collect: tabulate the stored runs and leave out the rest instead of "
                        "running them")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    q = args.quick
    models = dict(QUICK["models"] if q else MODELS)
    if args.models:
        models = {}
        for m in args.models:
            name, _, w = m.partition("=")
            models[name] = float(w) if w else MODELS.get(name, 1.0)
    budgets = args.budgets or list(QUICK["budgets"] if q else BUDGETS)
    seeds = args.seeds or list(QUICK["seeds"] if q else SEEDS)
    evaluations = args.evaluations or (QUICK["evaluations"] if q else EVALUATIONS)
    train_epochs = args.train_epochs or (QUICK["train_epochs"] if q else TRAIN_EPOCHS)
    finetune_epochs = (args.finetune_epochs if args.finetune_epochs is not None
                       else QUICK["finetune_epochs"] if q else FINETUNE_EPOCHS)  # fmt: skip
    oracle = args.oracle or (QUICK["oracle"] if q else ORACLE)
    try:
        proxy = str(parse_proxy(args.proxy or default("proxy")))
        dslug = data_slug(args.data)
    except ConfigError as exc:
        p.error(str(exc))
    # Tags of runs on digits with the default proxy keep the names stored runs already have.
    extra = ("" if args.data == "digits" else f"-{dslug}") + (
        "" if proxy == default("proxy") else f"-p{proxy}"
    )

    if args.fixed_bound:
        extra += "-fixed"
    if q and args.fixed_bound:
        p.error("--fixed-bound is for the stored grid, not --quick")
    if q and args.stored_only:
        p.error("--stored-only collects stored runs of the full grid; quick runs are not stored")
    if args.grid_version not in RUNNABLE_GRIDS and not args.stored_only:
        p.error(f"grid version {args.grid_version} cannot be run by this code (it runs version "
                f"{GRID_VERSION}); collect it with --stored-only")  # fmt: skip
    grid_tag = f"-g{args.grid_version}"
    env = common.environment()
    t0 = time.perf_counter()
    rows = []
    missing: list[str] = []
    if args.store is not None and (q or not args.store.replace("-", "").isalnum()):
        p.error("--store takes a tag of letters, digits and '-' (and is not for --quick)")
    store = (
        None if q else common.RunRows("quality" if args.store is None else f"quality-{args.store}")
    )
    # Seed outermost: a grid stopped part way still holds whole seeds of every cell.
    for seed, (model, width), budget, searcher in itertools.product(
        seeds, models.items(), budgets, args.searchers
    ):
        tag = _slug(f"{model}-w{width:g}-{budget}-{searcher}-s{seed}-"
                    f"e{evaluations}-f{finetune_epochs}-t{train_epochs}{extra}")  # fmt: skip
        if not q:
            tag += grid_tag
        stored = store.get(tag) if store is not None and not args.fresh else None
        if stored is not None and stored.get("ok") and "search_best_use" not in stored:
            # Rows stored before runs recorded where their budget use went: derived from the
            # run directory's history where this machine still has it.
            found = search_use(Path(stored.get("run_dir", "")))
            if found is not None:
                stored = store.amend(tag, found)
        again = args.reselect and not args.stored_only and needs_reselect(stored)
        if stored is not None and stored.get("ok") and not again:
            log.info("%s %s %s seed %d: stored", model, budget, searcher, seed)
            rows.append(stored)
            continue
        if args.stored_only and stored is not None:  # a stored failure
            log.info("%s %s %s seed %d: stored, failed", model, budget, searcher,
                     seed)  # fmt: skip
            rows.append(stored)
            continue
        if args.stored_only:
            log.info("%s %s %s seed %d: not stored, left out", model, budget,
                     searcher, seed)  # fmt: skip
            missing.append(tag)
            continue
        log.info("%s %s %s seed %d%s", model, budget, searcher, seed,
                 ": re-selecting" if again else "")  # fmt: skip
        run_budget, reference = budget, None
        if args.fixed_bound:
            reference = _reference(model, width, args.data, oracle, store)
            run_budget = common.absolute_budget(budget, reference)
        rows.append(prune_row(
            model=model, width=width, data=args.data, budgets=[run_budget],
            oracles=[f"latency={oracle}"], searcher=searcher, seed=seed,
            evaluations=evaluations, finetune_epochs=finetune_epochs,
            train_epochs=train_epochs, run_dir=RUNS_DIR / "quality" / tag,
            device=args.device, remeasure_oracle=oracle,
            fresh=args.fresh or q,  # a quick run checks today's code: never reused
            batch_size=DIGITS_BATCH, train_lr=DIGITS_TRAIN_LR, proxy=proxy,
            reselect_from=stored if again else None,
        ))  # fmt: skip
        if reference is not None:  # grouped by the relative budget; run at the absolute one
            rows[-1].update(budgets=[budget], budget_run=run_budget, reference_ms=reference)
        if store is not None:  # failures too: a collection shows them
            store.put(tag, rows[-1])
    seconds = time.perf_counter() - t0
    summary = summarise(rows, planned=len(seeds))
    heads = headline(summary)
    body = table(summary)
    print(body)
    print(headline_table(heads))
    if args.no_write:
        return 0
    # Another dataset's grid has its own results and RESULTS.md section beside the digits one.
    name = ("quality" if args.data == "digits" else f"quality_{dslug}") + (
        "_fixed-bound" if args.fixed_bound else ""
    )
    # Grid version 2, the digits and Fashion-MNIST grids stored so far, keeps its section name.
    name += "" if args.grid_version == 2 or q else f"_g{args.grid_version}"
    name += "" if proxy == default("proxy") else "_" + _slug(f"p{proxy}")
    name += "" if args.store is None else f"_{args.store}"
    png = plot(rows, common.results_dir(quick=q) / f"{name}.png")
    settings = {
        "quick": q, "models": models, "budgets": budgets, "searchers": args.searchers,
        "seeds": seeds, "evaluations": evaluations, "train_epochs": train_epochs,
        "finetune_epochs": finetune_epochs, "oracle": oracle, "device": args.device,
        "data": args.data, "proxy": proxy, "fixed_bound": args.fixed_bound,
    }  # fmt: skip
    common.write_results(
        name,
        {
            "settings": settings,
            "seconds": seconds,
            "summary": summary,
            "headline": heads,
            "runs": rows,
        },
        command=common.command_line(),
        env=env,
        quick=q,
    )
    notes = (
        f"`hwprune.prune` per model, budget, searcher and seed: {evaluations} evaluations per "
        f"search on `{oracle}` with the `{proxy}` search proxy, dense models trained "
        f"{train_epochs} epochs on `{args.data}` at batch "
        f"size {DIGITS_BATCH}, peak learning rate {DIGITS_TRAIN_LR:g} (per seed: the seed also "
        f"fixes the split), every chosen policy fine-tuned {finetune_epochs} epoch(s) with the "
        f"same recipe (SGD at peak learning rate 0.01, cosine, batch size {DIGITS_BATCH}, no "
        "distillation), then verified and exported. Grid version "
        f"`g{args.grid_version}`"
        + (
            " (searches on the raw proxy score, before the search signal)"
            if args.grid_version == 2
            else " (searches on the search signal)"
        )  # fmt: skip
        + (f": {args.how.rstrip('.')}. " if args.how else ": one run at a time")
        + (
            ""
            if args.how
            else ", nothing else heavy on the machine. "
            if args.data == "digits"
            else ", pinned to one core of a shared machine whose other core (and at times this one) "
            "ran other work: latency figures carry that load. "
        )  # fmt: skip
        + "Test accuracy on the test split; re-measured: the exported ONNX timed by a "
        "fresh oracle (new session, no cache, one call, where the pipeline's own verification "
        "takes the median of 3), as a fraction of the budget (above 1.000 means timing noise "
        "at the edge of the budget) and of the dense latency. Uniform and "
        "global-magnitude stop when their bisection converges, so they use fewer evaluations. "
        + ("" if args.store else "Timed on a 2-core virtual machine: latency carries noise. ")
        + (
            "Bound: every run of a model is held to the budget's fraction of one stored "
            "reference latency of its dense model (`--fixed-bound`: the median of 9 fresh "
            "calls, measured once), so the searchers face the same absolute bound."
            if args.fixed_bound
            else "Bound: each run's fraction of its own dense measurement (median of 3 calls "
            "at the run's start), which the machine's load moved from run to run (column "
            '"bound"): searchers compared here did not all face the same absolute bound; '
            "the `--fixed-bound` grid does."
        )
    )
    if png is not None:
        notes += (
            f"\n\n![accuracy against latency]({png.relative_to(common.results_md(quick=q).parent)})"
        )
    if q:
        notes += "\n\n**Quick mode: an end-to-end check, not a comparison.**"
    notes += measured_notes(rows)
    notes += budget_use_note(summary)
    if rows:
        notes += (f"\n\nThe {len(rows)} runs took "
                  f"{sum(r.get('total_seconds') or 0.0 for r in rows):,.0f} s (the rows' "
                  "`total_seconds`: a re-selected row keeps its first run's), before the dense "
                  "models' training.")  # fmt: skip
    if missing:
        notes += (f"\n\n**{len(missing)} runs of this grid are not stored yet and are left out** "
                  "(collected with `--stored-only`): the \"seeds ok\" column counts the runs "
                  "that are in.")  # fmt: skip
    title = "Quality at matched latency" + ("" if args.data == "digits" else f" on `{args.data}`")
    if args.fixed_bound:
        title += ", one fixed bound per model"
    if not q and args.grid_version != 2:
        title += f" (grid version {args.grid_version}: searches on the search signal)"
    if proxy != default("proxy"):
        title += f", `--proxy {proxy}`"
    if args.store is not None:
        title += f", measured on `{args.store}`"
    knap = knapsack_table(summary)
    if knap:
        print(knap)
        knap = (
            f"\n\n`{KNAPSACK}` against every other searcher (test accuracy after "
            "fine-tuning, paired by seed):\n\n" + knap
        )
    common.update_results_md(name, title,
                      body + "\n\nBest RL searcher against best baseline (mean test accuracy):\n\n"
                      + headline_table(heads) + knap, command=common.command_line(), env=env,
                      notes=notes, quick=q)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

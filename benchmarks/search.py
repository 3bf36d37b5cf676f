"""Every searcher against the same measured budget, with the same evaluation budget and seeds.

For a CIFAR-style VGG-11 and ResNet-56 trained on the built-in digits data
(trained once, checkpoints cached under ``~/.cache/hwprune/benchmarks``), each
searcher (ppo-lagrangian, qlp, amc, uniform, global-magnitude, random) prunes
to ``latency<=40%`` on ``onnxruntime:cpu?threads=1`` with the same number of
evaluations (100), for three seeds. Reported per model and searcher:

* best feasible proxy accuracy (mean and std over seeds; BN re-estimated,
  no fine-tuning) and in how many seeds a feasible policy was found;
* the chosen policy's latency re-measured by a fresh oracle (new session, no
  cache) as a fraction of the budget (mean and worst over seeds);
* evaluations and seconds until the first feasible candidate, total seconds.

Each run gets its own evaluator without an oracle cache, so no searcher is
served measurements another one paid for.

    python -m benchmarks.search                 # the full comparison (hours on 2 cores)
    python -m benchmarks.search --quick         # a few evaluations, to check it end to end

Writes ``benchmarks/results/search.json`` and the "search" section of
``benchmarks/RESULTS.md``. Each finished run is also stored in
``benchmarks/results/search_runs/`` and reused when the script runs again with
the same settings (``--fresh`` redoes it), so the grid can be run piecewise, e.g.
one model per core::

    taskset -c 0 python -m benchmarks.search --models vgg11_cifar --no-write &
    taskset -c 1 python -m benchmarks.search --models resnet56_cifar --no-write
    python -m benchmarks.search        # collects the stored runs, writes the table
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import _common as common

if TYPE_CHECKING:
    from hwprune.run.choose import Choice

log = logging.getLogger("benchmarks.search")

SEARCHERS = ("ppo-lagrangian", "qlp", "amc", "uniform", "global-magnitude", "random")
MODELS = ("vgg11_cifar", "resnet56_cifar")
ORACLE = "onnxruntime:cpu?threads=1"
BUDGET = "latency<=40%"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hwprune" / "benchmarks"


def trained_model(name: str, *, width: float, epochs: int, data: Any, seed: int = 0) -> Any:
    """The model trained on digits, from the checkpoint cache or trained now and cached."""
    from hwprune.models import get_model, load_checkpoint, save_checkpoint
    from hwprune.train import train

    path = cache_dir() / f"{name}-w{width:g}-digits-e{epochs}-s{seed}.pt"
    model = get_model(name, num_classes=data.num_classes, width=width)
    if path.exists():
        load_checkpoint(model, path)
        log.info("loaded %s from %s", name, path)
    else:
        t0 = time.perf_counter()
        result = train(model, data, epochs=epochs, seed=seed)
        save_checkpoint(
            model,
            path,
            meta={
                "model": name,
                "width": width,
                "num_classes": data.num_classes,
                "data": "digits",
                "epochs": epochs,
                "test_accuracy": result.test_accuracy,
            },
        )
        log.info(
            "trained %s in %.0f s: test accuracy %.3f, saved to %s",
            name,
            time.perf_counter() - t0,
            result.test_accuracy,
            path,
        )
    return model.eval()


def remeasure(space: Any, policy: Any, *, oracle: str, input_shape: tuple[int, ...]) -> float:
    """The policy's latency by a fresh oracle: new export, new session, no cache."""
    import oracles
    from hwprune.export.onnx import export_onnx

    onnx_bytes = export_onnx(space.apply(policy), input_shape=input_shape)
    return oracles.get_oracle(oracle).measure(onnx_bytes, input_shapes={"input": input_shape}).value


def dense_reference(
    model: Any, *, data: Any, budget: str, oracle: str, bn_batches: int
) -> tuple[float, float]:
    """The dense model's value on the budget's oracle and its proxy accuracy, measured once."""
    from hwprune.budgets import bind_constraints
    from hwprune.evaluate import Evaluator
    from hwprune.space import ChannelSpace

    space = ChannelSpace(model, example_input_shape=(1, *data.input_shape))
    quantity = budget.split("<=", 1)[0].strip()
    evaluator = Evaluator(
        space=space,
        data=data,
        constraints=bind_constraints([budget], oracles={quantity: oracle}),
        bn_batches=bn_batches,
    )
    constraint = evaluator.calibrate()[0]
    return float(constraint.dense_value), float(evaluator.dense_accuracy)


def run_one(
    *,
    model: Any,
    data: Any,
    searcher: str,
    seed: int,
    evaluations: int,
    budget: str,
    oracle: str,
    min_keep: float,
    bn_batches: int = 8,
    dense: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """One search with its own evaluator (no shared cache); returns a JSON-ready row.

    ``dense`` is (dense latency, dense accuracy) measured once per model, so every
    searcher and seed faces the same absolute bound; without it the evaluator
    calibrates itself.
    """
    from hwprune.agents import get_searcher
    from hwprune.budgets import bind_constraints
    from hwprune.evaluate import Evaluator
    from hwprune.space import ChannelSpace

    input_shape = (1, *data.input_shape)
    space = ChannelSpace(model, example_input_shape=input_shape, min_keep=min_keep)
    quantity = budget.split("<=", 1)[0].strip()
    constraints = bind_constraints([budget], oracles={quantity: oracle})
    if dense is not None:
        constraints = [c.resolve(dense[0]) for c in constraints]
    evaluator = Evaluator(
        space=space,
        data=data,
        constraints=constraints,
        bn_batches=bn_batches,
        seed=0,
    )
    t0 = time.perf_counter()
    if dense is None:
        evaluator.calibrate()
    else:
        evaluator.dense_accuracy = dense[1]
    calibrate_s = time.perf_counter() - t0
    constraint = evaluator.constraints[0]
    # The searcher only proposes; what the run would ship is chosen by the run's own rule.
    result = get_searcher(searcher, seed=seed).search(
        space=space, evaluator=evaluator, evaluations=evaluations, confirm=0,
        repair_infeasible=False,
    )  # fmt: skip
    choice = ship(space, evaluator)
    best = choice.best
    row: dict[str, Any] = {
        "searcher": searcher,
        "seed": seed,
        "evaluations": result.evaluations,
        "seconds": result.seconds,
        "calibrate_seconds": calibrate_s,
        "dense_accuracy": evaluator.dense_accuracy,
        "dense_value": constraint.dense_value,
        "bound": constraint.bound,
        "feasible": best is not None,
        "repaired": choice.repaired,
        "infeasible": best is None,
        "first_feasible_evaluation": result.first_feasible_evaluation,
        "first_feasible_seconds": result.first_feasible_seconds,
        "confirm_rejected": sum(
            1
            for c in choice.confirmations
            if not c["confirmed"] and c.get("stage", "confirmed") == "confirmed"
        ),
        "anchor": result.extra.get("anchor"),
        "accuracy": None,
        "search_value": None,
        "remeasured_value": None,
        "remeasured_fraction_of_budget": None,
        "policy": None,
    }
    if best is not None:
        again = remeasure(space, best.policy, oracle=oracle, input_shape=input_shape)
        row.update(
            accuracy=best.accuracy,
            search_value=best.values[constraint.name],
            remeasured_value=again,
            remeasured_fraction_of_budget=again / constraint.bound,
            policy=list(best.policy.keep),
        )
    return row


def ship(space: Any, evaluator: Any) -> Choice:
    """The candidate ``hwprune prune`` would ship from ``evaluator``'s candidates (every one it
    holds, those read back from its episodes log included): the run's own selection rule."""
    from hwprune.run.choose import choose_candidate

    return choose_candidate(space=space, evaluator=evaluator)


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over seeds of one (model, searcher)."""
    done = [r for r in rows if "error" not in r]
    feasible = [r for r in done if r["feasible"]]
    acc_mean, acc_std = _mean_std([r["accuracy"] for r in feasible])
    fractions = [r["remeasured_fraction_of_budget"] for r in feasible]
    firsts = [r["first_feasible_evaluation"] for r in done if r["first_feasible_evaluation"]]
    first_s = [r["first_feasible_seconds"] for r in done if r["first_feasible_seconds"]]
    return {
        "runs": len(rows),
        "errors": len(rows) - len(done),
        "feasible_runs": len(feasible),
        "repaired_runs": sum(1 for r in feasible if r["repaired"]),
        "confirm_rejected": sum(r.get("confirm_rejected", 0) for r in done),
        "accuracy_mean": acc_mean,
        "accuracy_std": acc_std,
        "remeasured_fraction_mean": statistics.fmean(fractions) if fractions else None,
        "remeasured_fraction_max": max(fractions) if fractions else None,
        "first_feasible_evaluation_mean": statistics.fmean(firsts) if firsts else None,
        "first_feasible_seconds_mean": statistics.fmean(first_s) if first_s else None,
        "evaluations_mean": statistics.fmean([r["evaluations"] for r in done]) if done else None,
        "seconds_mean": statistics.fmean([r["seconds"] for r in done]) if done else None,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true",
                   help="narrow models, 4 epochs, 6 evaluations, 1 seed: an end-to-end check")  # fmt: skip
    p.add_argument("--evaluations", type=int, default=None, help="evaluations per search (100)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (0,1,2)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--searchers", default=",".join(SEARCHERS))
    p.add_argument("--budget", default=BUDGET)
    p.add_argument("--oracle", default=None, help=f"latency oracle spec ({ORACLE})")
    p.add_argument("--epochs", type=int, default=None, help="training epochs on digits (30)")
    p.add_argument("--vgg-width", type=float, default=None, help="VGG-11 width multiplier (0.5)")
    p.add_argument("--resnet-width", type=float, default=None, help="ResNet-56 width (1.0)")
    p.add_argument("--min-keep", type=float, default=0.1)
    p.add_argument("--bn-batches", type=int, default=None, help="BN re-estimation batches (8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training/accuracy")
    p.add_argument("--fresh", action="store_true", help="redo runs that are stored already")
    p.add_argument("--no-write", action="store_true",
                   help="store the runs but leave search.json and RESULTS.md alone")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hwprune").setLevel(logging.WARNING)

    import torch

    from hwprune.data import get_dataset

    torch.set_num_threads(args.threads)
    quick = args.quick
    evaluations = args.evaluations or (6 if quick else 100)
    seeds = [int(s) for s in (args.seeds or ("0" if quick else "0,1,2")).split(",") if s.strip()]
    epochs = args.epochs or (4 if quick else 30)
    bn_batches = args.bn_batches or (2 if quick else 8)
    vgg_width = args.vgg_width or (0.25 if quick else 0.5)
    resnet_width = args.resnet_width or (0.5 if quick else 1.0)
    # Quick mode times for 0.1 s per candidate instead of 0.5 s; same protocol otherwise.
    oracle = args.oracle or (ORACLE + "&min_time=0.1" if quick else ORACLE)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]

    data = get_dataset("digits")
    results: list[dict[str, Any]] = []
    summary_rows = []
    t_all = time.perf_counter()
    store = None if quick else common.RunRows("search")
    for name in models:
        width = vgg_width if name.startswith("vgg") else resnet_width
        model = dense = None  # trained and measured only if some run is not stored
        for searcher in searchers:
            rows = []
            for seed in seeds:
                tag = (f"{name}-w{width:g}-e{epochs}-{args.budget}-{oracle}-{searcher}-s{seed}-"
                       f"n{evaluations}-k{args.min_keep:g}-b{bn_batches}")  # fmt: skip
                stored = store.get(tag) if store is not None and not args.fresh else None
                if stored is not None and "error" not in stored:
                    log.info("%s / %s / seed %d: stored in %s", name, searcher, seed,
                             store.path(tag))  # fmt: skip
                    rows.append(stored)
                    continue
                if model is None:
                    model = trained_model(name, width=width, epochs=epochs, data=data)
                    dense = dense_reference(
                        model, data=data, budget=args.budget, oracle=oracle, bn_batches=bn_batches
                    )
                    log.info("%s: dense latency %.4g ms, proxy accuracy %.3f", name, *dense)
                log.info("%s / %s / seed %d: %d evaluations", name, searcher, seed, evaluations)
                try:
                    row = run_one(
                        model=model,
                        data=data,
                        searcher=searcher,
                        seed=seed,
                        evaluations=evaluations,
                        budget=args.budget,
                        oracle=oracle,
                        min_keep=args.min_keep,
                        bn_batches=bn_batches,
                        dense=dense,
                    )
                except Exception as exc:  # one broken searcher must not sink the table
                    log.exception("%s / %s / seed %d failed", name, searcher, seed)
                    row = {
                        "searcher": searcher,
                        "seed": seed,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                row.update(model=name, width=width)
                if store is not None and "error" not in row:
                    store.put(tag, row)
                rows.append(row)
                log.info(
                    "  -> accuracy %s, re-measured %s of budget, %s evaluations, %.0f s",
                    _fmt(row.get("accuracy"), ".3f"),
                    _fmt(row.get("remeasured_fraction_of_budget"), ".3f"),
                    row.get("evaluations", "-"),
                    row.get("seconds", float("nan")),
                )
            results.extend(rows)
            s = summarise(rows)
            dense_acc = next((r["dense_accuracy"] for r in rows if "dense_accuracy" in r), None)
            summary_rows.append({"model": name, "width": width, "searcher": searcher,
                                 "dense_accuracy": dense_acc, **s})  # fmt: skip

    total_s = time.perf_counter() - t_all
    if args.no_write:
        log.info("done in %.0f s; runs stored in %s", total_s, store.dir if store else "-")
        return 0
    settings = {
        "quick": quick,
        "evaluations": evaluations,
        "seeds": seeds,
        "epochs": epochs,
        "budget": args.budget,
        "oracle": oracle,
        "min_keep": args.min_keep,
        "bn_batches": bn_batches,
        "models": {m: (vgg_width if m.startswith("vgg") else resnet_width) for m in models},
        "total_seconds": total_s,
        "search_seconds_sum": sum(r.get("seconds") or 0.0 for r in results),
    }
    env = common.environment()
    command = common.command_line()
    common.write_results("search", {"settings": settings, "summary": summary_rows, "runs": results},
                  command=command, env=env, quick=quick)  # fmt: skip

    headers = [
        "model", "searcher", "feasible seeds", "best proxy acc. (mean ± std)",
        "re-measured latency / budget (mean, max)", "failed confirmation",
        "evals to 1st feasible",
        "s to 1st feasible", "evals used", "total s",
    ]  # fmt: skip
    table_rows = []
    for s in summary_rows:
        acc = (
            f"{s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f}"
            if s["accuracy_mean"] is not None
            else "-"
        )
        frac = (
            f"{s['remeasured_fraction_mean']:.3f}, {s['remeasured_fraction_max']:.3f}"
            if s["remeasured_fraction_mean"] is not None
            else "-"
        )
        feas = f"{s['feasible_runs']}/{s['runs']}"
        if s["repaired_runs"]:
            feas += f" ({s['repaired_runs']} by repair)"
        if s["errors"]:
            feas += f" ({s['errors']} failed)"
        table_rows.append([
            f"{s['model']} (w{s['width']:g}, dense {_fmt(s['dense_accuracy'], '.3f')})",
            s["searcher"], feas, acc, frac, s["confirm_rejected"],
            _fmt(s["first_feasible_evaluation_mean"], ".1f"),
            _fmt(s["first_feasible_seconds_mean"], ".1f"),
            _fmt(s["evaluations_mean"], ".1f"),
            _fmt(s["seconds_mean"], ".1f"),
        ])  # fmt: skip
    notes = (
        f"Budget `{args.budget}` on `{oracle}`, {evaluations} evaluations per search, "
        f"seeds {', '.join(map(str, seeds))}, models trained {epochs} epochs on digits. "
        f"Proxy accuracy: BN re-estimated on {bn_batches} training batches of 64, no "
        "fine-tuning, on the search split. Every search re-measures its most accurate feasible "
        "candidates afresh and returns the first that is feasible twice (up to 5 tried; "
        "'failed confirmation' counts those rejected over all seeds). Re-measured: a third, fresh ONNX Runtime session without cache; above 1.000 means "
        "timing noise pushed a policy at the edge over its budget. The dense latency is measured "
        "once per model, so all searchers and seeds face the same bound. Uniform and global-magnitude "
        "stop when their bisection converges, so they use fewer evaluations; a search that "
        "found nothing feasible is repaired (bisection towards the smallest model), which "
        "adds evaluations beyond the budget."
    )
    dates = sorted(r["measured"]["date"] for r in results if "measured" in r)
    if dates:
        notes += (f" Runs stored in `benchmarks/results/search_runs/`, measured from {dates[0]} "
                  f"to {dates[-1]}.")  # fmt: skip
    if quick:
        notes += " **Quick mode: an end-to-end check, not a comparison.**"
    common.update_results_md(
        "search",
        "Searchers at equal evaluation budgets",
        common.markdown_table(headers, table_rows),
        command=command,
        env=env,
        notes=notes,
        quick=quick,
    )
    log.info("done in %.0f s; wrote search.json and RESULTS.md under %s", total_s,
             "benchmarks/results/quick" if quick else "benchmarks")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

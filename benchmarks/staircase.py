"""Benchmark: channel counts snapped to the runtime's measured latency staircase (issue 24).

One dense model (default: width-0.5 VGG-11 for 32x32 inputs on
Fashion-MNIST with 10,800 training images), one latency budget on
``onnxruntime:cpu?threads=1``, and the same search, fine-tuning,
verification and export (``hwprune.prune``) with channel counts rounded four
ways: ``--round-to 1``, ``8``, ``16``, and ``auto`` (the counts each unit's
measured staircase allows, ``hwprune.space.staircase``). Per row: test
accuracy after fine-tuning, the final model's latency against the budget
(the pipeline's fresh median-of-3 verification, and one more fresh oracle
call on the exported ONNX), parameters, and the proposed -> built channel
counts of the final policy.

Also: the probe's cost on the target oracle from an empty cache, a second
probe answered from the cache (0 oracle calls), and the same probe on other
runtimes (``--probe-oracles``, e.g. ``torch:cpu?threads=1``) to show that the
steps differ by runtime.

    OMP_NUM_THREADS=1 nice taskset -c 1 python -m benchmarks.staircase
    python -m benchmarks.staircase --stored-only     # tables from the stored rows

Every row of a model is held to the same absolute bound: the budget's fraction
of the dense model's reference latency, the median of 9 independent fresh
oracle calls measured once and stored (``reference-*.json``). A run that
resolves ``latency<=40%`` against its own dense measurement (``--per-run-bound``,
the first rows) got bounds up to a factor of two apart on this shared machine.

``auto`` rows are ``hwprune.prune(round_to="auto")``: the run probes the
staircase itself (its ``staircase.json``; the row keeps its cost). The runs
share one measurement cache (``runs/benchmarks/staircase/oracles.sqlite``,
through ``$HWPRUNE_CACHE``), so the first ``auto`` row pays for the probe and
later ones (other agents, seeds) are answered by the cache: both costs are in
the rows. The separate ``probe`` rows measure the probe alone, from an empty
cache and again on it. Rows are stored one file each in
``benchmarks/results/staircase/`` as they complete (a rerun skips them);
run directories go to ``runs/benchmarks/staircase/`` (git-ignored). A row on
another runtime (``--oracle openvino:cpu?threads=1``) is named by it and is
its own row; references and probes are stored per machine (``-mKEY``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from benchmarks.quality import dense_checkpoint, remeasure

_HERE = Path(__file__).resolve().parent

log = logging.getLogger("benchmarks.staircase")

RUNS_DIR = _HERE.parent / "runs" / "benchmarks" / "staircase"
ORACLE = "onnxruntime:cpu?threads=1"
ROUNDINGS = ("1", "8", "16", "auto")
DATA = "fashion-mnist:?train=10800"


def _rows() -> common.RunRows:
    rows = common.RunRows("staircase")
    rows.dir = common.RESULTS_DIR / "staircase"
    return rows


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text).strip("_")


def probe(
    *,
    model: str,
    width: float,
    num_classes: int,
    input_shape: Sequence[int],
    oracle: str,
    counts_per_unit: int = 8,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Probe the staircase twice on one cache file: the first cost, then the cached answer.

    The cache file lives in the run folder; the first probe's cost is the stored
    one when an earlier invocation made it (the cache file then answers the second).
    ``seconds`` bounds each of the two probes (``probe_staircase``'s budget; None: no limit):
    after a first probe that ran out, the second continues from the cache within the same time.
    """
    from hwprune.models import get_model
    from hwprune.space import ChannelSpace
    from hwprune.space.staircase import Staircase, probe_staircase
    from oracles import MeasurementCache

    rows = _rows()
    # The first probes (12 coarse counts, bisection to one channel, the oracle's own timing
    # window) are kept under their old tag; probes by today's defaults carry their count, and
    # those made since machines were told apart carry the machine's key: another machine's
    # probe is another staircase, kept beside this one's instead of overwritten by it.
    tag = (
        f"probe-{model}-w{width:g}-{_slug(oracle)}"
        + ("" if counts_per_unit == 12 else f"-c{counts_per_unit}")
        + f"-m{common.machine_key()}"
    )
    stored = rows.get(tag)
    cache_path = RUNS_DIR / f"{tag}.sqlite"
    net = get_model(model, num_classes=num_classes, width=width).eval()
    space = ChannelSpace(net, example_input_shape=(1, *input_shape))
    if stored is None or not cache_path.is_file():
        if cache_path.exists():
            cache_path.unlink()
        RUNS_DIR.mkdir(parents=True, exist_ok=True)
        log.info("probing %s on %s from an empty cache", model, oracle)
        first = probe_staircase(
            space,
            oracle,
            cache=MeasurementCache(cache_path),
            counts_per_unit=counts_per_unit,
            seconds=seconds,
        )
        stored = {"tag": tag, "model": model, "width": width, "oracle": oracle,
                  "machine": common.machine_text(common.environment()), "first": first.to_dict()}  # fmt: skip
    second = probe_staircase(
        space,
        oracle,
        cache=MeasurementCache(cache_path),
        counts_per_unit=counts_per_unit,
        seconds=seconds,
    )
    stored["second"] = {
        "oracle_calls": second.oracle_calls,
        "cached_calls": second.cached_calls,
        "seconds": second.seconds,
        "same_choices": second.choices() == Staircase.from_dict(stored["first"]).choices(),
    }
    rows.put(tag, stored)
    return stored


def run_row(
    *,
    rounding: str,
    agent: str,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    import hwprune
    from hwprune.errors import HwpruneError

    ckpt, dense_acc = dense_checkpoint(
        args.model, width=args.width, data=args.data, epochs=args.train_epochs, seed=seed
    )
    run_dir = RUNS_DIR / _slug(row_tag(args, agent=agent, rounding=rounding, seed=seed))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    bound = (
        common.absolute_budget(args.budget, args.reference_ms) if args.fixed_bound else args.budget
    )
    row: dict[str, Any] = {
        "model": args.model, "width": args.width, "data": args.data, "budget": args.budget,
        "budget_run": bound, "reference_ms": args.reference_ms if args.fixed_bound else None,
        "oracle": args.oracle, "agent": agent, "rounding": rounding, "seed": seed,
        "evaluations_budget": args.evaluations, "finetune_epochs": args.finetune_epochs,
        "train_epochs": args.train_epochs,
    }  # fmt: skip
    t0 = time.perf_counter()
    try:
        result = hwprune.prune(
            model=args.model,
            weights=ckpt,
            width=args.width,
            data=args.data,
            budgets=[bound],
            oracles={"latency": args.oracle},
            agent=agent,
            evaluations=args.evaluations,
            finetune_epochs=args.finetune_epochs,
            out=run_dir,
            seed=seed,
            round_to=rounding if rounding == "auto" else int(rounding),
            tensorrt=False,
            surrogate="off",  # every candidate measured, whatever the load
        )
    except HwpruneError as exc:
        log.warning("%s round-to %s seed %d: %s", agent, rounding, seed, exc)
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        return row
    seconds = time.perf_counter() - t0
    check = result.budgets[0]
    pb, stairs = _proposed_built(result)
    from hwprune.api import model_input_shape

    shape = (1, *model_input_shape(result.paths["model"]))
    again = remeasure(Path(result.paths["onnx"]), oracle=args.oracle, input_shape=shape)
    row.update(
        ok=True,
        accuracy_dense=dense_acc,
        accuracy_pruned=result.accuracy_pruned,
        accuracy=result.accuracy_finetuned,
        latency_dense=check.dense,
        latency_bound=check.bound,
        latency_final=check.final,
        latency_unit=check.unit,
        met=check.met,
        final_over_bound=check.final / check.bound,
        remeasured=again,
        remeasured_over_bound=again / check.bound,
        params_dense=result.params_dense,
        params_final=result.params_final,
        proposed_built={k: list(v) for k, v in pb.items()},
        staircase_cost=stairs,
        search_seconds=result.stage_seconds.get("search"),
        total_seconds=seconds,
        evaluations=result.evaluations,
        repairs=result.repairs,
        run_dir=str(run_dir),
    )
    return row


def row_tag(args: argparse.Namespace, *, agent: str, rounding: str, seed: int) -> str:
    """The row's name; rows on other data than the first ones' (digits) name it, and rows on
    another runtime than the first ones' (``ORACLE``) name it."""
    data = "" if args.data == "digits" else f"{_slug(args.data.replace(':?', '-'))}-"
    fixed = "fixed-" if args.fixed_bound else ""
    runtime = "" if args.oracle == ORACLE else f"{_slug(args.oracle)}-"
    return f"{args.model}-{data}{runtime}{fixed}{args.budget}-{agent}-r{rounding}-s{seed}"


def _oracle(r: dict[str, Any]) -> str:
    return str(r.get("oracle") or ORACLE)


def _proposed_built(result: Any) -> tuple[dict[str, tuple[int, int]], dict[str, Any] | None]:
    """The final policy's proposed -> built counts (the run's own space rebuilt from the
    checkpoint's meta), and the cost of the run's staircase probe (None without one)."""
    from hwprune.inputs import ExampleInputs
    from hwprune.models import get_model, read_checkpoint
    from hwprune.run.load import build_space
    from hwprune.space.staircase import Staircase, proposed_and_built

    meta = dict(read_checkpoint(result.paths["model"]).meta)
    base = get_model(meta["model"], num_classes=int(meta["num_classes"]),
                     width=float(meta["width"])).eval()  # fmt: skip
    inputs = ExampleInputs.from_shape((1, *(int(s) for s in meta["input_shape"])))
    space = build_space(base, example_inputs=inputs, options=meta["space"])
    stairs_path = Path(result.run_dir) / "staircase.json"
    cost = None
    if stairs_path.is_file():
        st = Staircase.load(stairs_path)
        cost = {"oracle_calls": st.oracle_calls, "cached_calls": st.cached_calls,
                "seconds": st.seconds, "complete": st.complete}  # fmt: skip
    return proposed_and_built(space, result.policy), cost


# --------------------------------------------------------------------------- tables


def _f(x: Any, spec: str = "{:.3f}") -> str:
    return "-" if x is None else spec.format(x)


def rows_table(rows: Sequence[dict[str, Any]]) -> str:
    order = {r: i for i, r in enumerate(ROUNDINGS)}
    body = []
    key = lambda r: (r["model"], r["data"], _oracle(r), r["budget"], _bound_kind(r), r["agent"],  # noqa: E731
                     r["seed"], order.get(r["rounding"], 9))  # fmt: skip
    for r in sorted(rows, key=key):
        head = [r["model"], r["data"], _oracle(r), f"{r['budget']} ({_bound_kind(r)})"]
        if not r.get("ok"):
            body.append([*head, r["agent"], r["seed"], r["rounding"], "failed", "-", "-", "-",
                         "-", "-", "-", r.get("error", "")[:80]])  # fmt: skip
            continue
        cost = r.get("staircase_cost")
        probe_text = (
            "-"
            if not cost
            else (
                f"{cost['oracle_calls']} calls, {cost['cached_calls']} cached, {cost['seconds']:.0f} s"
            )
        )
        built = [b for _, b in r["proposed_built"].values()]
        body.append([
            *head, r["agent"], r["seed"], r["rounding"], _f(r["accuracy"], "{:.4f}"),
            _f(r["accuracy_dense"], "{:.4f}"),
            f"{r['latency_final']:.4f} / {r['latency_bound']:.4f}",
            _f(r["final_over_bound"]), _f(r["remeasured_over_bound"]),
            f"{r['params_final']:,}", probe_text, " ".join(str(b) for b in built),
        ])  # fmt: skip
    return common.markdown_table(
        ["model", "data", "oracle", "budget (bound)", "agent", "seed", "round-to", "test acc",
         "dense acc", "latency ms (final / bound)", "final/bound", "re-measured/bound", "params",
         "run's staircase probe", "built channels per unit"],
        body,
    )  # fmt: skip


def _bound_kind(r: dict[str, Any]) -> str:
    """``fixed REF ms`` (rows held to one stored reference of the dense model; another
    machine has its own reference, so its rows are another group) or ``per run``."""
    ref = r.get("reference_ms")
    return f"fixed {ref:.4f} ms" if ref else "per run"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per (model, data, oracle, budget, bound kind, agent) and rounding: seeds, test accuracy
    mean and spread, latency used of the bound, and the paired per-seed difference
    ``auto - this``."""
    order = {r: i for i, r in enumerate(ROUNDINGS)}
    groups: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in rows:
        key = (r["model"], r["data"], _oracle(r), r["budget"], _bound_kind(r), r["agent"])
        groups.setdefault(key, {}).setdefault(r["rounding"], {})[r["seed"]] = r
    body = []
    for key in sorted(groups):
        by = groups[key]
        for rounding in sorted(by, key=lambda k: order.get(k, 9)):
            runs = by[rounding]
            acc = [x["accuracy"] for x in runs.values()]
            used = [x["final_over_bound"] for x in runs.values()]
            auto = by.get("auto", {})
            diffs = [auto[sd]["accuracy"] - runs[sd]["accuracy"] for sd in runs if sd in auto]
            paired = (
                "-" if rounding == "auto" or not diffs else
                f"{statistics.mean(diffs):+.4f}" + (
                    f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else "") +
                f" ({sum(d > 0 for d in diffs)}/{len(diffs)} seeds ahead)"
            )  # fmt: skip
            body.append([*key, rounding, len(runs), f"{statistics.mean(acc):.4f}"
                         + (f" ± {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""),
                         f"{statistics.median(used):.2f}", paired])  # fmt: skip
    return common.markdown_table(
        ["model", "data", "oracle", "budget", "bound", "agent", "round-to", "seeds", "test acc",
         "final/bound (median)", "auto - this"],
        body,
    )  # fmt: skip


def pooled_table(rows: Sequence[dict[str, Any]]) -> str | None:
    """``auto - this`` pooled over machines: per (model, data, oracle, budget, agent), every seed
    run on one machine is one pair (the same seed on two machines, each with its own reference,
    is two). None when no such group spans more than one machine."""
    order = {r: i for i, r in enumerate(ROUNDINGS)}
    groups: dict[tuple, dict[str, dict[tuple, dict[str, Any]]]] = {}
    for r in rows:
        if not r.get("reference_ms"):
            continue
        key = (r["model"], r["data"], _oracle(r), r["budget"], r["agent"])
        pair = (r["seed"], round(float(r["reference_ms"]), 6))
        groups.setdefault(key, {}).setdefault(r["rounding"], {})[pair] = r
    body = []
    for key in sorted(groups):
        by = groups[key]
        if len({ref for runs in by.values() for _, ref in runs}) < 2:
            continue
        auto = by.get("auto", {})
        for rounding in sorted(by, key=lambda k: order.get(k, 9)):
            if rounding == "auto":
                continue
            diffs = [auto[p]["accuracy"] - r["accuracy"] for p, r in by[rounding].items()
                     if p in auto]  # fmt: skip
            if not diffs:
                continue
            spread = f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else ""
            machines = len({ref for _, ref in by[rounding]})
            body.append([*key, rounding, len(diffs), machines,
                         f"{statistics.mean(diffs):+.4f}{spread}",
                         f"{sum(d > 0 for d in diffs)}/{len(diffs)}"])  # fmt: skip
    if not body:
        return None
    return common.markdown_table(
        ["model", "data", "oracle", "budget", "agent", "round-to", "pairs", "machines",
         "auto - this (mean ± sd)", "auto ahead"],
        body,
    )  # fmt: skip


def references_table(references: Sequence[dict[str, Any]]) -> str:
    def machine(r: dict[str, Any]) -> str:
        m = (r.get("measured") or {}).get("machine") or {}
        where = ", ".join(str(m[k]) for k in ("cpu", "cpu_id") if m.get(k)) or "-"
        if r.get("adopted_from"):
            check = " ".join(f"{v:.4f}" for v in r.get("check_values", []))
            return f"{where} (adopted the earlier reference: this machine measured {check})"
        return where if r.get("machine_key") else f"{where} (before machines were told apart)"

    body = [[r["model"], r["width"], r["oracle"], f"{r['median']:.4f}",
             " ".join(f"{v:.4f}" for v in r["values"]),
             " ".join(f"{x:.1f}" for x in r.get("load_average", [])), machine(r)]
            for r in references]  # fmt: skip
    return common.markdown_table(
        ["model", "width", "oracle", "median ms", "calls ms", "load average (1, 5, 15 min)",
         "machine"],
        body,
    )  # fmt: skip


def _probe_budget(first: dict[str, Any]) -> str:
    budget = first.get("settings", {}).get("seconds_budget")
    if budget is None:
        return "none"
    short = [u["unit"] for u in first["units"] if not u.get("complete", True)]
    left = first.get("left_out", {})
    if not short and not left:
        return f"{budget:g} s, done"
    return f"{budget:g} s, ran out ({len(short)} units not bisected to the end, {len(left)} not probed)"


def probes_table(probes: Sequence[dict[str, Any]]) -> str:
    body = []
    for p in probes:
        first = p["first"]
        steps = "; ".join(
            f"{u['unit']} ({u['channels']}): {' '.join(str(c) for c in u['choices'])}"
            for u in first["units"]
        )
        settings = first.get("settings", {})
        body.append([
            p["model"], p["oracle"], settings.get("counts_per_unit", "-"),
            settings.get("resolution") or ("1" if settings.get("counts_per_unit") == 12
                                           else "channels/64"),
            _probe_budget(first), first["oracle_calls"], f"{first['seconds']:.0f}",
            p["second"]["oracle_calls"], p["second"]["cached_calls"],
            f"{p['second']['seconds']:.1f}", p.get("machine", "this one (header)"), steps,
        ])  # fmt: skip
    return common.markdown_table(
        ["model", "oracle", "coarse counts", "bisection to", "time budget", "probe oracle calls",
         "probe s", "2nd probe oracle calls", "2nd probe cache hits", "2nd probe s", "machine",
         "allowed counts (step tops) per unit"],
        body,
    )  # fmt: skip


def _shape(data: str) -> tuple[tuple[int, ...], int]:
    """The dataset's input shape and number of classes."""
    from hwprune.data import get_dataset

    splits = get_dataset(data, seed=0)
    return tuple(int(s) for s in splits.input_shape), int(splits.num_classes)


def _probe_only(args: argparse.Namespace) -> int:
    """Store probe rows for --oracle and --probe-oracles; the tables come from --stored-only."""
    input_shape, num_classes = (
        (tuple(args.input_shape), 10) if args.input_shape is not None else _shape(args.data)
    )
    for oracle in [args.oracle, *args.probe_oracles]:
        row = probe(model=args.model, width=args.width, num_classes=num_classes,
                    input_shape=input_shape, oracle=oracle,
                    counts_per_unit=args.counts_per_unit, seconds=args.probe_seconds)  # fmt: skip
        first = row["first"]
        log.info("probe %s: first %d oracle calls in %.0f s (%d units left out); second %s",
                 oracle, first["oracle_calls"], first["seconds"],
                 len(first.get("left_out", [])), row["second"])  # fmt: skip
        for unit in first["units"]:
            log.info("  %s (%d channels): %s", unit["unit"], unit["channels"],
                     " ".join(str(c) for c in unit["choices"]))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--model", default="vgg11_cifar", help="a registered model name (default: %(default)s)"
    )
    p.add_argument(
        "--width",
        type=float,
        default=0.5,
        help="the model's width multiplier (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default=DATA,
        help="dataset, e.g. 'fashion-mnist?train=3000' or digits (default: %(default)s)",
    )
    p.add_argument(
        "--budget",
        default="latency<=40%",
        help="the budget every row prunes to (default: %(default)s)",
    )
    p.add_argument(
        "--oracle",
        default=ORACLE,
        help="the runtime that is probed and measures the budget (default: %(default)s)",
    )
    p.add_argument(
        "--roundings",
        nargs="+",
        default=list(ROUNDINGS),
        help="--round-to values to compare: multiples or auto (default: %(default)s)",
    )
    p.add_argument(
        "--agents",
        nargs="+",
        default=["uniform"],
        help="searchers to run, e.g. uniform ppo-lagrangian (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="seeds: each trains (or reuses) its own dense model and split (default: %(default)s)",
    )
    p.add_argument(
        "--evaluations",
        type=int,
        default=40,
        help="candidates evaluated per search (default: %(default)s)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=5,
        help="fine-tuning epochs of every pruned model (default: %(default)s)",
    )
    p.add_argument(
        "--train-epochs",
        type=int,
        default=10,
        help="epochs of the dense model, trained once per seed and cached (default: %(default)s)",
    )
    p.add_argument(
        "--probe-oracles",
        nargs="*",
        default=[],
        help="other runtimes to probe the same model on, e.g. torch:cpu?threads=1",
    )
    p.add_argument("--counts-per-unit", type=int, default=8, help="the probe's coarse counts")
    p.add_argument(
        "--per-run-bound",
        dest="fixed_bound",
        action="store_false",
        help="resolve a relative budget against each run's own dense measurement (the first "
        "rows' way) instead of one stored reference measurement of the dense model",
    )
    p.add_argument("--stored-only", action="store_true", help="tables from stored rows only")
    p.add_argument(
        "--probe-only",
        action="store_true",
        help="probe --oracle and --probe-oracles and store the probe rows; no runs, no tables "
        "(for a machine that only lends the runtime, e.g. a GPU for torch:cuda)",
    )
    p.add_argument(
        "--input-shape",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        default=None,
        help="with --probe-only: the input shape instead of the dataset's (no data is loaded; "
        "10 classes)",
    )
    p.add_argument(
        "--probe-seconds",
        type=float,
        default=None,
        help="time budget of each probe, the first from an empty cache and the second on it "
        "(default: no limit)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for r in args.roundings:
        if r != "auto" and not r.isdigit():
            p.error(f"--roundings takes positive integers or 'auto', got {r!r}")

    if args.input_shape is not None and not args.probe_only:
        p.error("--input-shape goes with --probe-only")
    if args.probe_only:
        return _probe_only(args)
    rows_store = _rows()
    input_shape, num_classes = _shape(args.data)
    probes: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    if not args.stored_only:
        for oracle in [args.oracle, *args.probe_oracles]:
            probes.append(probe(model=args.model, width=args.width,
                                num_classes=num_classes,
                                input_shape=input_shape, oracle=oracle,
                                counts_per_unit=args.counts_per_unit,
                                seconds=args.probe_seconds))  # fmt: skip
            log.info("probe %s: %s", oracle, probes[-1]["second"])
        from hwprune.space.staircase import Staircase, write_staircase_plots

        stairs = Staircase.from_dict(probes[0]["first"])
        args.reference_ms = None
        if args.fixed_bound:
            ref = common.reference_latency(model=args.model, width=args.width,
                                    num_classes=num_classes,
                                    input_shape=input_shape, oracle=args.oracle,
                                    rows=_rows())  # fmt: skip
            args.reference_ms = float(ref["median"])
            log.info("reference latency of %s on %s: %.4f ms (%s)", args.model, args.oracle,
                     ref["median"], " ".join(f"{v:.4f}" for v in ref["values"]))  # fmt: skip
        # One measurement cache for every run: the first auto row probes, the next are answered.
        os.environ.setdefault("HWPRUNE_CACHE", str(RUNS_DIR / "oracles.sqlite"))
        for agent in args.agents:
            for seed in args.seeds:
                for rounding in args.roundings:
                    tag = row_tag(args, agent=agent, rounding=rounding, seed=seed)
                    stored = rows_store.get(tag)
                    if stored is not None and stored.get("ok"):
                        rows.append(stored)
                        continue
                    row = run_row(rounding=rounding, agent=agent, seed=seed, args=args)
                    rows_store.put(tag, row)
                    rows.append(row)
                    log.info("row %s: %s", tag, {k: row.get(k) for k in
                             ("accuracy", "final_over_bound", "remeasured_over_bound")})  # fmt: skip
        auto = [r for r in rows if r.get("ok") and r["rounding"] == "auto"
                and r["data"] == args.data and _oracle(r) == args.oracle]  # fmt: skip
        built = {k: v[1] for k, v in auto[0]["proposed_built"].items()} if auto else None
        # Another runtime's staircase of the same units gets its own folder.
        plots = rows_store.dir / "plots"
        if args.oracle != ORACLE:
            plots = plots / f"{args.model}-{_slug(args.oracle)}"
        write_staircase_plots(stairs, plots, built=built, top=3)
    # The tables show every stored row (other agents' and seeds' runs too), probes first.
    probes, rows, references = [], [], []
    for path in sorted(rows_store.dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        tag = str(data.get("tag", ""))
        if tag.startswith("reference-"):
            references.append(data)
            continue
        (probes if tag.startswith("probe-") else rows).append(data)
    probes.sort(key=lambda p: p["oracle"] != args.oracle)

    env = common.environment()
    common.write_results(
        "staircase", {"probes": probes, "rows": rows}, command=common.command_line(), env=env
    )
    ok = [r for r in rows if r.get("ok")]
    notes = []
    summary = summary_table(ok)
    if ok:
        mean_s = statistics.mean(r["total_seconds"] for r in ok)
        by_model: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_model.setdefault(r["model"], []).append(r)
        notes.append("- rows per model (with a model / all) and their seconds (the rows' "
                     "`total_seconds`): " + "; ".join(
                         f"{m} {sum(1 for r in rs if r.get('ok'))} / {len(rs)}, "
                         f"{sum(r.get('total_seconds') or 0.0 for r in rs):,.0f} s"
                         for m, rs in sorted(by_model.items())))  # fmt: skip
        notes.append(
            f"- mean seconds per row here: {mean_s:.0f}; the issue's full grid (3 models, 2 "
            f"budgets, 2 agents, 4 roundings, 3 seeds = 144 rows) at this cost per row would "
            f"take about {144 * mean_s / 3600:.1f} h on one core, before the larger models' "
            "and PPO's larger evaluation budgets"
        )
    text = (
        "Model, data, runtime (oracle) and budget per row in its columns (each model's width "
        "in the reference table), "
        f"{args.evaluations} evaluations, {args.finetune_epochs} fine-tuning epochs for every "
        "row. Bound `fixed`: the budget's fraction of one stored reference latency of the dense "
        "model, the same for every row of that model; `per run` (the first rows): of the run's "
        "own dense measurement, which moved by up to a factor of two between runs on this "
        "shared 2-core machine, so those rows were not held to the same bound. "
        "Latencies were taken while other work ran: noisy. The machine changed between "
        "runs (two hosts both named \"AMD EPYC\" timed the dense models 2-3x apart): each "
        "machine's rows are held to that machine's own reference and grouped by it (the bound "
        "column names the reference).\n\n"
        "Probe of the latency staircase (first from an empty cache, then again on the same "
        "cache):\n\n" + probes_table(probes)
        + "\n\nReference latency of the dense model (rows with a fixed bound: the budget's "
        "fraction of this median of independent fresh calls):\n\n" + references_table(references)
        + "\n\nBy model, budget and agent (seeds paired; `auto - this`: the mean and spread of "
        "the per-seed difference in test accuracy):\n\n" + summary
        + (
            "\n\nPooled over machines (a machine's rows are held to its own reference, and "
            "each seed on each machine is one pair of `auto` and the other rounding):\n\n"
            + pooled
            if (pooled := pooled_table(ok))
            else ""
        )
        + "\n\nRuns:\n\n" + rows_table(rows)
        + ("\n\n" + "\n".join(notes) if notes else "")
    )  # fmt: skip
    common.update_results_md("staircase", "Channel counts from the measured latency staircase", text,
                      command=common.command_line(), env=env)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

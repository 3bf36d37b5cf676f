"""The latency surrogate: how many oracle calls it saves, how often it is wrong, what it costs.

For a CIFAR-style VGG-16 (width 0.5) and ResNet-56 trained on the built-in digits
data (checkpoints cached as benchmarks/quality.py caches them), ppo-lagrangian and
qlp prune to ``latency<=50%`` on ``onnxruntime:cpu?threads=1`` with 100
evaluations, each seed with ``--surrogate off`` and ``--surrogate on``, through the
whole ``hwprune.prune`` pipeline (no fine-tuning: the chosen candidate's proxy and
test accuracy are compared). Reported per run:

* oracle calls during the search (candidates whose latency was measured) and in
  the whole run (dense model, search, confirmation, final proof; repeats counted);
* the surrogate's wrong feasibility verdicts among the checked candidates (its
  interval clear of the bound, then measured): predicted feasible but measured
  infeasible, and the reverse; its median |error| where checked;
* the candidates predicted although their interval straddled the bound (deferred:
  measured only if the final choice reaches them), and, of those drawn for the audit, how many
  had their predicted value on the wrong side of the bound;
* the chosen candidate's proxy accuracy, test accuracy, and the re-measured latency
  of the final model against the bound;
* the search's wall time.

A simulated slow oracle (``slow-onnxruntime``: the ONNX Runtime oracle plus a fixed
delay per call, standing in for a TensorRT engine build) shows the search's wall
time with the surrogate ``auto`` (on: the dense call takes longer than
hwprune.evaluate.surrogate.SLOW_CALL_SECONDS) and ``off``.

    python -m benchmarks.surrogate                       # the grid, stored run by run
    python -m benchmarks.surrogate --seeds 0 --quick     # a few evaluations, end to end
    python -m benchmarks.surrogate --seeds 0 --no-write  # a sanity figure: nothing stored

Each finished run is stored in ``benchmarks/results/surrogate_runs/`` and reused
when the script runs again; the table (``results/surrogate.json``, the
"surrogate" section of RESULTS.md) is rewritten after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as common

log = logging.getLogger("benchmarks.surrogate")

MODELS = {"vgg16_cifar": 0.5, "resnet56_cifar": 1.0}
AGENTS = ("ppo-lagrangian", "qlp")
ORACLE = "onnxruntime:cpu?threads=1"
BUDGET = "latency<=50%"
EVALUATIONS = 100
TRAIN = {
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.02,
}  # quality.py's digits recipe, 3 epochs (a loaded machine)
SLOW_DELAY = 2.0  # seconds added to every call of the simulated slow oracle
RUNS_DIR = common.RESULTS_DIR / "surrogate_runs"
WORK_DIR = Path("/tmp/hwprune-bench-surrogate")
# --quick and --no-write runs: WORK_DIR keeps the stored runs' directories (--fit-study reads them).
SCRATCH_DIR = Path("/tmp/hwprune-bench-surrogate-scratch")


def register_slow_oracle() -> None:
    """``slow-onnxruntime``: ONNX Runtime's latency oracle, each call delayed by ``delay`` s."""
    import oracles
    from oracles.ort import OnnxRuntimeLatency

    if "slow-onnxruntime" in oracles.list_oracles():
        return

    @oracles.register_oracle("slow-onnxruntime")
    @dataclasses.dataclass
    class SlowOnnxRuntime(OnnxRuntimeLatency):
        """Stands in for a TensorRT engine build: the same timing, ``delay`` s more per call."""

        delay: float = SLOW_DELAY

        def measure(self, model: Any, **kwargs: Any) -> Any:
            time.sleep(self.delay)
            return super().measure(model, **kwargs)


def one_run(*, model: str, width: float, agent: str, seed: int, surrogate: str,
            oracle: str, evaluations: int, tag: str, round_to: int | None = None,
            work_dir: Path = WORK_DIR) -> dict[str, Any]:  # fmt: skip
    """One prune run; its figures from the result and the episodes log."""
    import hwprune
    from benchmarks.quality import dense_checkpoint
    from hwprune.evaluate import read_jsonl

    ckpt, dense_acc = dense_checkpoint(model, width=width, data="digits", seed=0, **TRAIN)
    out = work_dir / tag
    t0 = time.perf_counter()
    result = hwprune.prune(
        model=model, weights=str(ckpt), data="digits", budgets=[BUDGET],
        oracles={"latency": oracle}, agent=agent, evaluations=evaluations, finetune_epochs=0,
        seed=seed, surrogate=surrogate, tensorrt=False, out=out, overwrite=True,
        **({} if round_to is None else {"round_to": round_to}),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    records = [r for r in read_jsonl(out / "episodes.jsonl")
               if r.get("type", "candidate") == "candidate"]  # fmt: skip
    # A deferred value measured by the final choice is logged again (reason "later"): that
    # call is the run's, not the search's.
    later = [
        r for r in records if r.get("surrogate", {}).get("latency", {}).get("reason") == "later"
    ]
    measured = sum(r.get("sources", {}).get("latency", "measured") == "measured"
                   for r in records) - len(later)  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    s = (report.get("surrogate") or {}).get("budgets", {}).get("latency", {})
    budget = result.budgets[0]
    return {
        "model": model, "width": width, "agent": agent, "seed": seed, "surrogate": surrogate,
        "oracle": oracle, "evaluations": evaluations, "candidates": len(records) - len(later),
        "tag": tag, "search_oracle_calls": int(measured), "deferred_measured": len(later),
        "round_to": "auto" if round_to is None else round_to,
        "run_oracle_calls": int(result.oracle_calls.get("latency", 0)),
        "decision": (report.get("surrogate") or {}).get("reasons", {}).get("latency"),
        "reasons": s.get("reasons"), "checked": s.get("checked"), "verdicts": s.get("verdicts"),
        "wrong_feasible": s.get("wrong_feasible"), "wrong_infeasible": s.get("wrong_infeasible"),
        "median_abs_error": s.get("median_abs_error"), "coverage": s.get("coverage"),
        "straddling_predicted": s.get("straddling_predicted"),
        "straddling_audited": s.get("straddling_audited"),
        "straddling_wrong_feasible": s.get("straddling_wrong_feasible"),
        "straddling_wrong_infeasible": s.get("straddling_wrong_infeasible"),
        "proxy_accuracy": result.score_chosen, "test_accuracy": result.accuracy_pruned,
        "dense_test_accuracy": dense_acc, "final_latency_ms": budget.final,
        "bound_ms": budget.bound, "met": result.all_met, "repairs": result.repairs,
        "search_seconds": result.stage_seconds.get("search"), "run_seconds": seconds,
        "oracle_cv": oracle_noise(out), "ok": True,
    }  # fmt: skip


def oracle_noise(out: Path) -> float | None:
    """The median, over a run's measured candidates, of the timing samples' coefficient of
    variation (std / mean of the runs behind each median): how noisy the oracle was."""
    from hwprune.evaluate import read_jsonl

    cvs = [float(r["measurements"]["latency"].get("cv", 0.0)) for r in read_jsonl(out / "episodes.jsonl")
           if r.get("type") == "candidate" and r.get("sources", {}).get("latency") != "predicted"]  # fmt: skip
    return statistics.median(cvs) if cvs else None


def _total(rows: list[dict[str, Any]], name: str) -> int | None:
    """The sum of ``name`` over ``rows``; None if a row lacks it (stored before it existed)."""
    xs = [r.get(name) for r in rows]
    return None if any(x is None for x in xs) else sum(xs)


def _mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _f(x: Any, spec: str = "{:.3f}") -> str:
    return "-" if x is None else spec.format(x)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, agent and oracle: off against on, averaged over the seeds both finished."""
    out = []

    def group(r: dict[str, Any]) -> tuple:
        return (r["model"], r["agent"], r["oracle"], r.get("evaluations"),
                str(r.get("round_to", "auto")))  # fmt: skip

    ok = [r for r in rows if r.get("ok")]
    for key in sorted({group(r) for r in ok}):
        model, agent, oracle, evaluations, rounding = key
        by = {(r["surrogate"], r["seed"]): r for r in ok if group(r) == key}
        on_mode = "auto" if oracle.startswith("slow") else "on"
        seeds = sorted({s for (m, s) in by if m == "off"} & {s for (m, s) in by if m == on_mode})
        if not seeds:
            continue
        off = [by["off", s] for s in seeds]
        on = [by[on_mode, s] for s in seeds]
        verdicts = sum(r["verdicts"] or 0 for r in on)
        out.append({
            "model": model, "agent": agent, "seeds": seeds, "mode": on_mode,
            "oracle": oracle + ("" if rounding == "auto" else f" (--round-to {rounding})"),
            "evaluations": evaluations,
            "calls_off": _mean([r["search_oracle_calls"] for r in off]),
            "calls_on": _mean([r["search_oracle_calls"] for r in on]),
            "run_calls_off": _mean([r["run_oracle_calls"] for r in off]),
            "run_calls_on": _mean([r["run_oracle_calls"] for r in on]),
            "verdicts": verdicts,
            "wrong_feasible": sum(r["wrong_feasible"] or 0 for r in on),
            "wrong_infeasible": sum(r["wrong_infeasible"] or 0 for r in on),
            "checked": sum(r["checked"] or 0 for r in on),
            "straddling_predicted": _total(on, "straddling_predicted"),
            "straddling_audited": _total(on, "straddling_audited"),
            "straddling_wrong_feasible": _total(on, "straddling_wrong_feasible"),
            "straddling_wrong_infeasible": _total(on, "straddling_wrong_infeasible"),
            "median_abs_error": _mean([r["median_abs_error"] for r in on]),
            "proxy_off": _mean([r["proxy_accuracy"] for r in off]),
            "proxy_on": _mean([r["proxy_accuracy"] for r in on]),
            "test_off": _mean([r["test_accuracy"] for r in off]),
            "test_on": _mean([r["test_accuracy"] for r in on]),
            # Seed by seed, with the surrogate minus without: "equal within noise"?
            "test_diffs": [b["test_accuracy"] - a["test_accuracy"] for a, b in zip(off, on, strict=True)
                           if a.get("test_accuracy") is not None
                           and b.get("test_accuracy") is not None],
            "met_on": all(r["met"] for r in on), "met_off": all(r["met"] for r in off),
            "search_s_off": _mean([r["search_seconds"] for r in off]),
            "search_s_on": _mean([r["search_seconds"] for r in on]),
            "oracle_cv_off": _mean([r.get("oracle_cv") for r in off]),
        })  # fmt: skip
    return out


def _diffs(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = f" +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else ""
    return f"{statistics.fmean(xs):+.3f}{sd} (n={len(xs)})"


def table(summary: list[dict[str, Any]]) -> str:
    rows = []
    for s in summary:
        ratio = s["calls_off"] / s["calls_on"] if s["calls_on"] else None
        v = s["verdicts"]
        wrong = f"{s['wrong_feasible']} / {s['wrong_infeasible']} of {v}" if v else "- (0 verdicts)"
        a = s.get("straddling_audited")
        if a is None:
            straddling = "-"
        else:
            straddling = f"{s['straddling_predicted']}; " + (
                f"{s['straddling_wrong_feasible']} / {s['straddling_wrong_infeasible']} of {a}"
                if a
                else "0 audited"
            )
        rows.append([
            s["model"], s["agent"], s["oracle"], s["evaluations"], ",".join(map(str, s["seeds"])),
            s["mode"],
            f"{_f(s['calls_off'], '{:.0f}')} -> {_f(s['calls_on'], '{:.0f}')}",
            _f(ratio, "{:.1f}x"),
            f"{_f(s['run_calls_off'], '{:.0f}')} -> {_f(s['run_calls_on'], '{:.0f}')}",
            _f(s["run_calls_off"] / s["run_calls_on"] if s["run_calls_on"] else None, "{:.1f}x"),
            wrong, straddling, _f(s["median_abs_error"], "{:.1%}"),
            f"{_f(s['proxy_off'])} / {_f(s['proxy_on'])}",
            f"{_f(s['test_off'])} / {_f(s['test_on'])}",
            _diffs(s.get("test_diffs") or []),
            f"{'yes' if s['met_off'] else 'NO'} / {'yes' if s['met_on'] else 'NO'}",
            f"{_f(s['search_s_off'], '{:.0f}')} / {_f(s['search_s_on'], '{:.0f}')}",
            _f(s["oracle_cv_off"], "{:.0%}"),
        ])  # fmt: skip
    return common.markdown_table(
        ["model", "agent", "oracle", "evaluations", "seeds", "surrogate", "search oracle calls off -> on",
         "fewer", "run oracle calls off -> on", "fewer (run)", "wrong verdicts (feas. / infeas.)",
         "straddling predicted; audited wrong (feas. / infeas.)",
         "median abs error (checked)", "proxy acc off / on", "test acc off / on",
         "test acc on - off (per seed: mean +- sd)",
         "budget met off / on", "search s off / on", "timing cv (off run)"],
        rows,
    )  # fmt: skip


def write(rows: list[dict[str, Any]], *, env: dict[str, Any], args: Any) -> None:

    for r in rows:  # rows stored before the noise was recorded
        if (
            r.get("ok")
            and r.get("oracle_cv") is None
            and r.get("tag")
            and (WORK_DIR / r["tag"]).is_dir()
        ):
            r["oracle_cv"] = oracle_noise(WORK_DIR / r["tag"])
    summary = summarise(rows)
    common.write_results(
        "surrogate", {"rows": rows, "summary": summary}, command=common.command_line(), env=env
    )
    done = sorted({r["seed"] for r in rows if r.get("ok")})
    notes = (
        f"`{BUDGET}` on `{ORACLE}`, evaluations as shown, dense models trained "
        f"{TRAIN['epochs']} epochs on digits; no fine-tuning (accuracies are the chosen "
        "candidate's, before fine-tuning, means over the seeds shown). Search oracle calls: "
        "candidates whose latency was measured; run oracle calls add the dense model, the "
        "confirmation and the final proof (3 calls each). Wrong verdicts: checked candidates "
        "whose prediction interval lay clear of the bound but whose measurement fell on the "
        "other side (predicted feasible, measured infeasible / the reverse), summed over seeds. "
        "Straddling predicted: candidates whose interval straddled the bound, deferred "
        "(predicted for the searcher; the final choice measures one, once, before it may be "
        "confirmed: those calls are in the run's count); audited wrong: of the straddlers "
        "drawn for the audit, predicted value within the bound and measured over it / the "
        "reverse, i.e. how often a deferred candidate's verdict misled the searcher. "
        "`slow-onnxruntime` is the same oracle with `delay` seconds added to every call "
        "(a stand-in for a TensorRT engine build), with `--surrogate auto`; its rows run fewer "
        "evaluations (the column says how many): at 20 s a call, 100 measured evaluations "
        f"take over half an hour. Seeds finished: {done}. Timings taken on a shared 2-core "
        "machine while other jobs ran (noisy), the benchmark pinned to one core."
    )
    common.update_results_md("surrogate", "Latency surrogate: oracle calls saved, verdicts, accuracy",
                      table(summary), command=common.command_line(), env=env, notes=notes)  # fmt: skip


def fit_study(tag: str) -> dict[str, Any]:
    """The choice of regressor, on one stored ``--surrogate off`` run (every latency measured).

    Replays the search's order: the model is fitted on the dense model and the first t
    candidates and predicts candidate t+1, for every t from MIN_POINTS - 1 on. Compared:
    the Gaussian process of hwprune.evaluate.surrogate (predictive std includes the
    timing noise) and a bootstrap ensemble of 30 ridge regressions on the same scaled
    features (std: the spread of the fits). Reported: median |error|, how often the
    measured value fell inside the +-2 std interval, and how often the interval
    straddled the bound (a measurement the gate would have made).
    """
    import numpy as np
    import torch
    from sklearn.linear_model import RidgeCV

    from hwprune.config import read_run_config
    from hwprune.evaluate import read_jsonl
    from hwprune.evaluate.surrogate import MIN_POINTS, OracleSurrogate, candidate_features
    from hwprune.models import get_model, model_from_checkpoint
    from hwprune.run.load import build_space, inputs_of, space_options
    from hwprune.space import Policy

    out = WORK_DIR / tag
    config = read_run_config(out)
    if config.weights:
        model = model_from_checkpoint(config.weights)
    else:
        model = get_model(config.model, num_classes=10, width=config.width or 1.0)
    space = build_space(model.eval(), example_inputs=inputs_of(torch.zeros(1, 3, 32, 32)),
                        options=space_options(config))  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    dense_value, bound = report["budgets"][0]["dense"], report["budgets"][0]["bound"]
    records = [r for r in read_jsonl(out / "episodes.jsonl") if r.get("type") == "candidate"]
    X, y = [], []
    for r in records:
        policy = Policy.from_dict(r["policy"]).aligned(space)
        X.append(candidate_features(space, policy, space.apply(policy)))
        y.append(float(r["values"]["latency"]))
    dense_f = candidate_features(space, Policy.dense(space), space.model)
    results: dict[str, Any] = {"tag": tag, "candidates": len(y)}
    for method in ("gaussian-process", "bootstrap-ridge"):
        errors, covered, straddled, seconds = [], 0, 0, 0.0
        for t in range(MIN_POINTS - 1, len(y)):
            t0 = time.perf_counter()
            gp = OracleSurrogate(dense_features=dense_f, dense_value=dense_value,
                                 units=len(space.units))  # fmt: skip
            gp.add(dense_f, dense_value)
            for i in range(t):
                gp.add(X[i], y[i])
            if method == "gaussian-process":
                p = gp.predict(X[t])
                mean, sd = p.value, p.std
            else:
                A, b = np.vstack(gp.X), np.asarray(gp.y)
                rng = np.random.default_rng(t)
                preds = []
                for _ in range(30):
                    idx = rng.integers(0, len(b), len(b))
                    reg = RidgeCV(alphas=np.logspace(-4, 2, 13)).fit(A[idx], b[idx])
                    preds.append(reg.predict((X[t] / gp.scale)[None, :])[0])
                mean, sd = float(np.mean(preds)) * dense_value, float(np.std(preds)) * dense_value
            seconds += time.perf_counter() - t0
            errors.append(abs(y[t] - mean) / y[t])
            covered += int(abs(y[t] - mean) <= 2 * sd)
            straddled += int(mean - 2 * sd <= bound <= mean + 2 * sd)
        n = len(errors)
        results[method] = {"predictions": n, "median_abs_error": float(np.median(errors)),
                           "mean_abs_error": float(np.mean(errors)), "coverage_2sd": covered / n,
                           "straddled": straddled / n, "seconds_per_fit": seconds / n}  # fmt: skip
    return results


def write_fit_study(tags: list[str], *, env: dict[str, Any]) -> None:
    rows = []
    for tag in tags:
        log.info("fit study on %s", tag)
        rows.append(fit_study(tag))
    common.write_results("surrogate_fit", rows, command=common.command_line(), env=env)
    table_rows = [
        [r["tag"], m, r[m]["predictions"], f"{r[m]['median_abs_error']:.1%}",
         f"{r[m]['mean_abs_error']:.1%}", f"{r[m]['coverage_2sd']:.0%}",
         f"{r[m]['straddled']:.0%}", f"{r[m]['seconds_per_fit']:.2f}"]
        for r in rows for m in ("gaussian-process", "bootstrap-ridge")
    ]  # fmt: skip
    body = common.markdown_table(["run (surrogate off)", "regressor", "predictions", "median abs error",
                           "mean abs error", "inside +-2 std", "interval straddles bound",
                           "s per fit"], table_rows)  # fmt: skip
    notes = (
        "Each stored `--surrogate off` run replayed in its order: fitted on the dense model and "
        "the first t candidates, the regressor predicts candidate t+1 (features and scaling of "
        "hwprune.evaluate.surrogate). The interval is +-2 std (the gate also keeps at least "
        "+-3%); 'straddles bound': the share of candidates the gate would have measured for "
        "that reason alone. The errors are bounded below by the oracle's own noise: see the "
        "timing cv of the same runs in the section above."
    )
    common.update_results_md("surrogate-fit", "Latency surrogate: which regressor", body,
                      command=common.command_line(), env=env, notes=notes)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=common.module_command(__file__), description=__doc__.splitlines()[0]
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--agents", nargs="+", default=list(AGENTS))
    p.add_argument("--evaluations", type=int, default=EVALUATIONS)
    p.add_argument("--no-slow", action="store_true", help="skip the simulated slow oracle")
    p.add_argument(
        "--slow-delay",
        type=float,
        default=SLOW_DELAY,
        help=f"seconds added to each slow-oracle call (default {SLOW_DELAY:g})",
    )
    p.add_argument("--slow-only", action="store_true", help="only the simulated slow oracle")
    p.add_argument("--slow-round-to", type=int, default=None, metavar="N",
                   help="the slow-oracle runs round channel counts to multiples of N instead "
                        "of probing the staircase (auto): the probe's ~300 calls would each "
                        "pay the delay")  # fmt: skip
    p.add_argument("--slow-evaluations", type=int, default=None,
                   help="evaluations of the slow-oracle runs (default: --evaluations)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="8 evaluations, no table written")
    p.add_argument("--stored-only", action="store_true",
                   help="run nothing: the table from every stored run of the models, agents and "
                        "seeds given (any oracle delay and evaluation count)")  # fmt: skip
    p.add_argument("--no-write", action="store_true",
                   help="run the grid afresh, print the table; store nothing (no rows, no "
                        "results, no RESULTS.md; run directories under " + str(SCRATCH_DIR)
                        + ")")  # fmt: skip
    p.add_argument("--fit-study", nargs="+", metavar="TAG",
                   help="only compare regressors on these stored --surrogate off runs")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("hwprune", "stable_baselines3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.fit_study:
        write_fit_study(args.fit_study, env=common.environment())
        return 0
    register_slow_oracle()
    if args.quick:
        args.evaluations = 8
    dry = args.quick or args.no_write
    env = common.environment()
    store = common.RunRows("surrogate")
    if args.stored_only:
        stored = []
        for path in sorted(store.dir.glob("*.json")):
            row = json.loads(path.read_text())
            if (row.get("model") in args.models and row.get("agent") in args.agents
                    and row.get("seed") in args.seeds):  # fmt: skip
                stored.append({**row, "tag": row.get("tag") or path.stem})
        write(stored, env=env, args=args)
        print(table(summarise(stored)))
        return 0
    grid = []
    slow = f"slow-onnxruntime:cpu?threads=1&delay={args.slow_delay:g}"
    for seed in args.seeds:  # one seed of everything first
        pairs = [(m, a) for m in args.models for a in args.agents]
        for i, (model, agent) in enumerate(pairs):
            for mode in () if args.slow_only else ("off", "on"):
                grid.append((model, agent, seed, mode, ORACLE))
            if i == 0 and not args.no_slow:  # the slow oracle early: its wall time is the point
                for mode in ("off", "auto"):
                    grid.append((model, agent, seed, mode, slow))
    rows: list[dict[str, Any]] = []
    for model, agent, seed, mode, oracle in grid:
        is_slow = oracle.startswith("slow")
        evaluations = (args.slow_evaluations or args.evaluations) if is_slow else args.evaluations
        slow_tag = "-slow" if args.slow_delay == SLOW_DELAY else f"-slow{args.slow_delay:g}s"
        rounding = args.slow_round_to if is_slow else None
        tag = (f"{model}-{agent}-s{seed}-{mode}{slow_tag if is_slow else ''}-e{evaluations}"
               + (f"-r{rounding}" if rounding else ""))  # fmt: skip
        row = None if dry else store.get(tag)
        if row is None:
            log.info("run %s", tag)
            try:
                row = one_run(model=model, width=MODELS[model], agent=agent, seed=seed,
                              surrogate=mode, oracle=oracle, evaluations=evaluations, tag=tag,
                              round_to=rounding,
                              work_dir=SCRATCH_DIR if dry else WORK_DIR)  # fmt: skip
            except Exception as exc:  # a failed run is stored as failed, the grid goes on
                log.exception("run %s failed", tag)
                row = {"model": model, "agent": agent, "seed": seed, "surrogate": mode,
                       "oracle": oracle, "ok": False, "error": str(exc)}  # fmt: skip
            if not dry:
                store.put(tag, row)
            log.info(
                "done %s: %s",
                tag,
                {
                    k: row.get(k)
                    for k in (
                        "search_oracle_calls",
                        "run_oracle_calls",
                        "proxy_accuracy",
                        "search_seconds",
                    )
                },
            )
        rows.append({**row, "tag": tag})
        if not dry:
            write(rows, env=env, args=args)
    if dry:
        print(table(summarise(rows)))
        if args.no_write:
            for r in rows:  # what the table averages, run by run
                print(json.dumps({k: r.get(k) for k in (
                    "tag", "search_oracle_calls", "run_oracle_calls", "reasons", "verdicts",
                    "wrong_feasible", "wrong_infeasible", "straddling_predicted",
                    "straddling_audited", "straddling_wrong_feasible",
                    "straddling_wrong_infeasible", "proxy_accuracy", "test_accuracy", "met",
                    "search_seconds", "oracle_cv")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

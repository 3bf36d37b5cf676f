"""The run's report: report.json for machines, report.md for people, and PNG plots.

Every number here comes from the run itself: the dense and final
measurements, the episodes log, the searcher's logged multipliers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwprune.errors import UnknownNameError
from hwprune.evaluate.precision import timing_lines
from hwprune.files import write_atomic
from hwprune.plots import feasible_count

if TYPE_CHECKING:
    from hwprune.run.result import PruneResult

log = logging.getLogger(__name__)

__all__ = ["write_report", "write_report_json", "write_report_md", "write_plots"]


def write_report_json(
    run_dir: str | Path, *, result: PruneResult, options: Mapping[str, Any]
) -> Path:
    """report.json: the PruneResult plus the options that produced it."""
    path = Path(run_dir) / "report.json"
    data = {"options": dict(options), **result.to_dict()}
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _parts_lines(parts: int) -> list[str]:
    """A note when the run was stopped and resumed: its stage times add up every part."""
    if parts <= 1:
        return []
    return [
        f"The run was stopped and resumed {parts - 1} time{'s' if parts > 2 else ''}: each "
        f"stage's time adds up its {parts} parts (a stage run again on resume counts every time).",
        "",
    ]


def _fmt(value: float | None, unit: str) -> str:
    from hwprune.budgets import format_value

    return "-" if value is None else format_value(float(value), unit)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def write_report_md(
    run_dir: str | Path,
    *,
    result: PruneResult,
    options: Mapping[str, Any],
    plots: Sequence[Path] = (),
    history: Sequence[Any] | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """report.md: per budget dense, bound, re-measured and margin; accuracies; times; search.

    ``history``: the evaluated candidates, for the share that met every budget;
    ``sections``: more markdown sections (e.g. the channel counts), after the search's.
    """
    lines = [
        *_budget_lines(result, options),
        "",
        *_metrics_lines(result, options),
        "",
        f"Parameters: {result.params_dense:,} dense, {result.params_final:,} final "
        f"({100.0 * result.params_final / max(1, result.params_dense):.1f}%).",
        "",
        *_output_lines(result, options),
        *_search_lines(result, history),
        *_chance_lines(result, history),
        *_surrogate_lines(result.surrogate),
        *timing_lines(result.timing, units={b.quantity: b.unit for b in result.budgets}),
    ]
    for section in sections:
        lines += ["", section.rstrip("\n")]
    lines += ["", *_stage_lines(result), "", *_files_lines(result)]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines += ["", "The plotted data: `plots/plots.json`."]
    path = Path(run_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _budget_lines(result: PruneResult, options: Mapping[str, Any]) -> list[str]:
    """The title and, per budget, its dense, bound and re-measured values."""
    lines = [
        (
            f"# hwprune report: {options.get('model')} on {options.get('data')}"
            if options.get("model")
            else f"# hwprune report: {options.get('task') or 'your model'}"
        ),
        "",
        f"Every budget was re-measured on the final model, without the cache, by the oracle "
        f"that judged the search. All met: **{'yes' if result.all_met else 'NO'}**.",
        "",
        "| budget | oracle | dense | bound | final (re-measured) | met | margin |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in result.budgets:
        lines.append(
            f"| `{b.budget}` | `{b.oracle}` | {_fmt(b.dense, b.unit)} | {_fmt(b.bound, b.unit)} "
            f"| {_fmt(b.final, b.unit)} | {'yes' if b.met else 'NO'} | {100 * b.margin:.1f}% |"
        )
    return lines


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape) if shape else "-"


# How report.md groups the space's reasons for leaving a channel group whole.
_LEFT_WHOLE = (
    ("changes the shape of the model output", "keep the model's output shapes"),
    ("breaks the forward pass", "break the forward pass when pruned"),
    ("", "cannot be pruned soundly (Torch-Pruning cannot follow or score them, weight ties, "
         "attention layouts)"),
)  # fmt: skip


def _output_lines(result: PruneResult, options: Mapping[str, Any]) -> list[str]:
    """Every output's shape, dense and final, and the channel groups left whole, by why."""
    lines: list[str] = []
    if result.output_shapes:
        kept = all(v.get("dense") == v.get("final") for v in result.output_shapes.values())
        lines += ["## Outputs", "", "| output | dense shape | final shape |", "|---|---|---|"]
        lines += [f"| `{n}` | {_shape(v.get('dense', ()))} | {_shape(v.get('final', ()))} |"
                  for n, v in result.output_shapes.items()]  # fmt: skip
        lines += ["", (
            "Every output keeps the dense model's shape."
            if kept
            else "Output shapes changed: pruning was allowed to change them "
            "(`allow_output_change`)."
            if options.get("allow_output_change")
            else "Output shapes changed."
        ), ""]  # fmt: skip
    groups: dict[str, list[str]] = {}
    for uid, reason in result.left_whole.items():
        label = next(text for key, text in _LEFT_WHOLE if key in reason)
        groups.setdefault(label, []).append(uid)
    for label, ids in groups.items():
        shown = ", ".join(f"`{i}`" for i in ids[:8]) + (
            f" and {len(ids) - 8} more" if len(ids) > 8 else ""
        )
        lines.append(f"- channel groups left whole that {label}: {len(ids)} ({shown})")
    return [*lines, ""] if groups else lines


def _search_lines(result: PruneResult, history: Sequence[Any] | None) -> list[str]:
    """The search: its searcher, evaluations, first feasible candidate, repairs and proxy."""
    lines = [
        "## Search",
        "",
        f"- searcher: `{result.searcher}`",
        f"- candidates evaluated: {result.evaluations}",
        f"- first feasible candidate: evaluation {result.first_feasible_evaluation}"
        if result.first_feasible_evaluation is not None
        else "- first feasible candidate: none found by the searcher (repaired)",
        f"- repairs after verification: {result.repairs}",
    ]
    if result.proxy_seconds is not None:
        lines.append(
            (
                f"- search proxy: `{result.proxy}`"
                if result.proxy
                else "- search proxy: the task's score"
            )
            + f", {result.proxy_seconds:.2f} s per evaluation on average (BN re-estimation and "
            "score)"
        )
    if history:
        n_feasible, n = feasible_count(history)
        lines.append(
            f"- feasible candidates (every budget met by the search measurement): {n_feasible} "
            f"of {n} ({100.0 * n_feasible / n:.0f}%)"
        )
    return lines


def _stage_lines(result: PruneResult) -> list[str]:
    """Each stage's wall time (added up over the parts of a resumed run)."""
    return [
        "## Stage wall times",
        "",
        *_parts_lines(result.parts),
        "| stage | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in result.stage_seconds.items()),
        *_estimate_lines(result.cost_estimate),
    ]


def _estimate_lines(estimate: Mapping[str, Any]) -> list[str]:
    """The search's cost estimate, made before it started, beside its actual wall time."""
    if not estimate or "total_seconds" not in estimate:
        return []
    actual = estimate.get("actual_search_seconds")
    stages = ", ".join(f"{k} {float(v):.2f} s" for k, v in estimate.get("stages", {}).items())
    return [
        "",
        f"Cost estimate before the search (`cost_estimate.json`): {estimate['remaining']} "
        f"candidates, {float(estimate['total_seconds']):.1f} s expected; the search took "
        + ("-" if actual is None else f"{float(actual):.1f} s")
        + f". Per candidate on the dense model: {stages}.",
    ]


def _files_lines(result: PruneResult) -> list[str]:
    """The files the run ships and how far each export agrees with torch."""
    diff = result.export_max_abs_diff
    lines = [
        "## Files",
        "",
        f"- `model.onnx`: max |ONNX Runtime - torch| on random inputs = "
        f"{'-' if diff is None else f'{diff:.3g}'}",
        f"- TensorRT: {result.tensorrt}",
    ]
    if result.openvino_max_abs_diff is not None:
        lines.append(
            "- `openvino/model.xml` + `model.bin` (OpenVINO IR, FP32 weights): max |OpenVINO "
            f"- torch| on random inputs = {result.openvino_max_abs_diff:.3g}, compiled with "
            "INFERENCE_PRECISION_HINT=f32 as the oracle timed it (OpenVINO's CPU default is "
            "bf16 where the CPU has it)"
        )
    return [
        *lines,
        "- `model.pt`: load with `hwprune.load_pruned(path)` (weights_only, no unpickling)",
        "- `policy.json`, `episodes.jsonl`, `config.json`",
    ]


def _learns(searcher: str | None) -> bool:
    """Whether the named searcher learns from scores (True for a name not registered here)."""
    from hwprune.agents import SEARCHERS

    try:
        return bool(SEARCHERS.get(searcher).learns) if searcher else True
    except UnknownNameError:  # registered in another process: say what it was given
        return True


def _chance_lines(result: PruneResult, history: Sequence[Any] | None) -> list[str]:
    """How many feasible candidates scored at chance, and whether the shipped one did."""
    floor = result.score_floor
    if floor is None:
        return []
    feasible = {o.key: o for o in history or () if o.feasible}
    low = sum(1 for o in feasible.values() if o.accuracy <= floor)
    seen = {o.key: o for o in history or ()}
    searched = sum(1 for o in seen.values() if o.accuracy <= floor)
    line = (f"- chance floor of the proxy: {floor:.4f} (the largest class's share of its "
            f"images plus sampling noise or a tenth of the dense model's margin); {low} of "
            f"{len(feasible)} feasible candidates at or below it")  # fmt: skip
    if searched and _learns(result.searcher):
        line += (f"; the searcher learnt from the size of the {searched} of {len(seen)} "
                 "candidates at chance, not from their score (floor x parameters kept / "
                 "dense parameters)")  # fmt: skip
    elif searched:
        line += (f"; {searched} of {len(seen)} candidates searched were at chance (this "
                 "searcher follows a fixed rule and does not learn from scores)")  # fmt: skip
    chosen = result.score_chosen
    if chosen is not None and chosen <= floor:
        line += (f". The shipped candidate scored {chosen:.4f}, at chance: the proxy could not "
                 "rank it, and candidates at chance are ranked by the parameters they keep")  # fmt: skip
    return [line]


def _surrogate_lines(info: Mapping[str, Any]) -> list[str]:
    """The latency surrogate: per timed budget whether it ran and why, what it predicted, and
    its error on the candidates where it predicted and the oracle then measured."""
    if not info:
        return []
    lines = ["", "## Latency surrogate", "",
             f"Mode `{info['mode']}`. Predicted values ranked candidates during the search only: "
             "the dense model, the confirmation of the best candidates, repairs and the final "
             "proof were measured.", ""]  # fmt: skip
    for name, on in info.get("enabled", {}).items():
        why = info.get("reasons", {}).get(name, "")
        if not on:
            if not why.startswith("not a timed"):
                lines.append(f"- `{name}`: off ({why})")
            continue
        s = info.get("budgets", {}).get(name, {})
        total = s.get("predicted", 0) + s.get("measured", 0)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.get("reasons", {}).items()))
        lines.append(f"- `{name}`: on ({why}); of {total} candidates, {s.get('measured', 0)} "
                     f"measured and {s.get('predicted', 0)} predicted ({reasons})")  # fmt: skip
        if s.get("checked"):
            wrong = (
                f"{s['wrong_feasible']} predicted feasible but measured infeasible, "
                f"{s['wrong_infeasible']} the reverse, of {s['verdicts']} verdicts checked"
            )
            lines.append(
                f"  - error where checked ({s['checked']} candidates predicted, then measured): "
                f"median {_pct(s['median_abs_error'])}, mean {_pct(s['mean_abs_error'])}, "
                f"max {_pct(s['max_abs_error'])}; measured inside the interval "
                f"{_pct(s['coverage'])}; {wrong}"
            )
        if s.get("straddling_predicted") or s.get("straddling_audited"):
            audited = s.get("straddling_audited", 0)
            lines.append(
                "  - interval straddling the bound, deferred (predicted for the search; measured "
                f"only where the final choice reached it): {s.get('straddling_predicted', 0)}"
                + (
                    f"; {audited} audited, of which {s['straddling_wrong_feasible']} predicted "
                    f"feasible but measured infeasible and {s['straddling_wrong_infeasible']} "
                    "the reverse"
                    if audited
                    else ""
                )
            )
    return lines


def _metrics_lines(result: PruneResult, options: Mapping[str, Any]) -> list[str]:
    """The task's metrics (test accuracy for the built-in task) and the fine-tuning recipe."""
    finetune_text = options.get("finetune_text") or (
        f"Fine-tuning: {options.get('finetune_epochs')} epoch(s), SGD at peak learning rate "
        f"{options.get('finetune_lr', 0.01):g} with a cosine schedule, batch size "
        f"{options.get('finetune_batch_size', 128)}"
        + (", distilled from the dense model." if options.get("distill") else ".")
    )
    metrics = result.metrics
    if result.evaluated and "accuracy" in metrics.get("dense", {"accuracy": 0}):
        lines = [
            "## Accuracy (test split)",
            "",
            "| dense | pruned, before fine-tuning | after fine-tuning |",
            "|---|---|---|",
            f"| {_pct(result.accuracy_dense)} | {_pct(result.accuracy_pruned)} "
            f"| {_pct(result.accuracy_finetuned)} |",
        ]
    elif metrics:
        names = sorted({k for m in metrics.values() for k in m})
        lines = ["## Metrics (the task's evaluate)", "", "| metric | dense | pruned, before "
                 "fine-tuning | final |", "|---|---|---|---|"]  # fmt: skip
        for n in names:
            row = [metrics.get(s, {}).get(n) for s in ("dense", "pruned", "final")]
            lines.append(f"| {n} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in row)
                         + " |")  # fmt: skip
    else:
        lines = ["## Metrics", "", "The task has no evaluate(model): no final metrics were "
                 "computed; the search's score is shown instead."]  # fmt: skip
    if result.score_dense is not None and not result.evaluated:
        lines += ["", f"Score (the task's proxy): dense {result.score_dense:.4g}, chosen "
                  f"candidate before fine-tuning {result.score_chosen:.4g}."]  # fmt: skip
    if not result.finetuned:
        finetune_text = "Fine-tuning: none (the task has no finetune(model, teacher))."
    return [*lines, "", finetune_text]


def write_plots(
    run_dir: str | Path,
    *,
    history: Sequence[Any],
    chosen_key: str | None,
    constraints: Sequence[Any],
    policy: Any,
    unit_names: Sequence[str] = (),
    lagrange: Sequence[Any] | None = None,
    mean_costs: Sequence[Mapping[str, float]] | None = None,
    final_values: Mapping[str, float] | None = None,
    final_accuracy: float | None = None,
    search_evaluations: int | None = None,
) -> list[Path]:
    """The run's PNG plots in ``run_dir/plots``, and their data in ``plots/plots.json``.

    - ``accuracy_vs_<quantity>.png`` per constraint: every candidate at its search
      measurement and proxy accuracy, the budget, the chosen candidate at its own
      search values, and the final model (``final_values``: re-measured after
      fine-tuning; ``final_accuracy``: test accuracy after fine-tuning).
    - ``best_feasible.png``: the best feasible proxy accuracy against the evaluation count
      (``search_evaluations``: the search's budget; later evaluations are repairs).
    - ``keep_ratios.png``: the chosen policy's keep ratio per unit.
    - ``lagrange.png`` (PPO-Lagrangian): one multiplier per constraint, beside each
      candidate's cost / bound (``lagrange``: the searcher's ``extra["lagrange"]``;
      ``mean_costs``: its ``extra["mean_costs"]``, optional).
    """
    from hwprune import plots as P

    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Any]] = []
    data: dict[str, Any] = {}
    final_values = dict(final_values or {})
    for c in constraints:
        acc = P.accuracy_data(
            history,
            c,
            chosen_key=chosen_key,
            final_value=final_values.get(c.name),
            final_accuracy=final_accuracy,
        )
        if acc is not None:
            name = f"accuracy_vs_{c.name}"
            figures.append((name, P.accuracy_figure(acc)))
            data[name] = acc.to_dict()

    curve = P.search_curve(history, chosen_key=chosen_key, search_budget=search_evaluations)
    if curve is not None:
        figures.append(("best_feasible", P.best_feasible_figure(curve)))
        data["best_feasible"] = curve.to_dict()

    keep = list(policy.keep) if policy is not None else []
    if keep:
        figures.append(("keep_ratios", P.keep_ratio_figure(keep, unit_names)))
        data["keep_ratios"] = {"keep": keep, "units": list(unit_names)}

    lag = P.lagrange_data(
        lagrange, names=[c.name for c in constraints], history=history, mean_costs=mean_costs
    )
    if lag is not None:
        figures.append(("lagrange", P.lagrange_figure(lag)))
        data["lagrange"] = lag.to_dict()

    written: list[Path] = []
    for name, fig in figures:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    write_atomic(out / "plots.json", json.dumps(data, indent=1, sort_keys=True) + "\n")
    return written


def write_report(
    run_dir: str | Path,
    *,
    result: PruneResult,
    history: Sequence[Any],
    chosen_key: str | None,
    constraints: Sequence[Any],
    unit_names: Sequence[str] = (),
    lagrange: Sequence[Any] | None = None,
    mean_costs: Sequence[Mapping[str, float]] | None = None,
    options: Mapping[str, Any],
    sections: Sequence[str] = (),
) -> list[Path]:
    """Plots, report.md and report.json in ``run_dir``; returns the plot paths.

    The final model's marker in the accuracy plots comes from ``result``
    (``final``: re-measured values; ``accuracy_finetuned``: test accuracy).
    """
    try:
        plots = write_plots(
            run_dir,
            history=history,
            chosen_key=chosen_key,
            constraints=constraints,
            policy=result.policy,
            unit_names=unit_names,
            lagrange=lagrange,
            mean_costs=mean_costs,
            final_values=result.final,
            final_accuracy=result.accuracy_finetuned,
            search_evaluations=options.get("evaluations"),
        )
    except Exception as exc:  # a plotting failure must not cost a finished run its report
        log.warning("plots failed: %s", exc)
        plots = []
    write_report_md(run_dir, result=result, options=options, plots=plots, history=history,
                    sections=sections)  # fmt: skip
    write_report_json(run_dir, result=result, options=options)
    return plots

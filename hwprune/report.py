"""The run's report: report.json for machines, report.md for people, and PNG plots.

Every number here comes from the run itself: the dense and final
measurements, the episodes log, the searcher's logged multipliers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["write_report", "write_report_json", "write_report_md", "write_plots"]


def write_report_json(run_dir: str | Path, *, result: Any, options: Mapping[str, Any]) -> Path:
    """report.json: the PruneResult plus the options that produced it."""
    path = Path(run_dir) / "report.json"
    data = {"options": dict(options), **result.to_dict()}
    tmp = path.with_name("report.json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _fmt(value: float | None, unit: str) -> str:
    from hwprune.constraints import format_value

    return "-" if value is None else format_value(float(value), unit)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def write_report_md(
    run_dir: str | Path, *, result: Any, options: Mapping[str, Any], plots: Sequence[Path] = ()
) -> Path:
    """report.md: per budget dense, bound, re-measured and margin; accuracies; times; search."""
    run_dir = Path(run_dir)
    lines = [
        f"# hwprune report: {options.get('model')} on {options.get('data')}",
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
    lines += [
        "",
        "## Accuracy (test split)",
        "",
        "| dense | pruned, before fine-tuning | after fine-tuning |",
        "|---|---|---|",
        f"| {_pct(result.accuracy_dense)} | {_pct(result.accuracy_pruned)} "
        f"| {_pct(result.accuracy_finetuned)} |",
        "",
        f"Fine-tuning: {options.get('finetune_epochs')} epoch(s), SGD at peak learning rate "
        f"{options.get('finetune_lr', 0.01):g} with a cosine schedule, batch size "
        f"{options.get('finetune_batch_size', 128)}"
        + (", distilled from the dense model." if options.get("distill") else "."),
        "",
        f"Parameters: {result.params_dense:,} dense, {result.params_final:,} final "
        f"({100.0 * result.params_final / max(1, result.params_dense):.1f}%).",
        "",
        "## Search",
        "",
        f"- searcher: `{result.searcher}`",
        f"- candidates evaluated: {result.evaluations}",
        f"- first feasible candidate: evaluation {result.first_feasible_evaluation}"
        if result.first_feasible_evaluation is not None
        else "- first feasible candidate: none found by the searcher (repaired)",
        f"- repairs after verification: {result.repairs}",
        "",
        "## Stage wall times",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in result.stage_seconds.items()]
    diff = result.export_max_abs_diff
    lines += [
        "",
        "## Files",
        "",
        f"- `model.onnx`: max |ONNX Runtime - torch| on random inputs = "
        f"{'-' if diff is None else f'{diff:.3g}'}",
        f"- TensorRT: {result.tensorrt}",
        "- `model.pt`: load with `hwprune.load_pruned(path)` (weights_only, no unpickling)",
        "- `policy.json`, `episodes.jsonl`, `config.json`",
    ]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_plots(
    run_dir: str | Path,
    *,
    history: Sequence[Any],
    chosen_key: str | None,
    constraints: Sequence[Any],
    policy: Any,
    unit_names: Sequence[str] = (),
    lagrange: Sequence[Any] | None = None,
) -> list[Path]:
    """PNG plots: accuracy vs each constrained quantity, keep ratios, Lagrange multipliers."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for c in constraints:
        pts = [(o.values[c.name], o.accuracy, o.feasible, o.key == chosen_key)
               for o in history if c.name in o.values]  # fmt: skip
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        feas = [(x, y) for x, y, f, _ in pts if f]
        infeas = [(x, y) for x, y, f, _ in pts if not f]
        if feas:
            ax.scatter(*zip(*feas, strict=True), s=14, c="tab:blue", label="feasible")
        if infeas:
            ax.scatter(
                *zip(*infeas, strict=True), s=14, c="tab:gray", alpha=0.6, label="infeasible"
            )
        chosen = [(x, y) for x, y, _, ch in pts if ch]
        if chosen:
            ax.scatter(*zip(*chosen, strict=True), s=120, marker="*", c="tab:red", label="chosen",
                       zorder=5)  # fmt: skip
        ax.axvline(c.bound, color="tab:red", linestyle="--", label=f"budget {c.budget.text}")
        ax.set_xlabel(f"{c.name} ({c.unit}) on {c.oracle}")
        ax.set_ylabel("proxy accuracy (search split)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"accuracy_vs_{c.name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    keep = list(getattr(policy, "keep", []) or [])
    if keep:
        names = (
            list(unit_names) if len(unit_names) == len(keep) else [str(i) for i in range(len(keep))]
        )
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(keep)), 4))
        ax.bar(range(len(keep)), keep, color="tab:blue")
        ax.set_xticks(range(len(keep)))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("keep ratio")
        ax.set_title("chosen policy: fraction kept per unit")
        fig.tight_layout()
        path = out / "keep_ratios.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    series = _lagrange_series(lagrange)
    if series:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in series.items():
            ax.plot(range(len(values)), values, label=name)
        ax.set_xlabel("update")
        ax.set_ylabel("Lagrange multiplier")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "lagrange.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _lagrange_series(lagrange: Sequence[Any] | None) -> dict[str, list[float]]:
    """{constraint: [multiplier per update]} from a list of dicts or of number lists."""
    if not lagrange:
        return {}
    series: dict[str, list[float]] = {}
    for i, item in enumerate(lagrange):
        if isinstance(item, Mapping):
            values = item.get("multipliers", item)
            if isinstance(values, Mapping):
                for k, v in values.items():
                    if isinstance(v, (int, float)):
                        series.setdefault(str(k), []).append(float(v))
                continue
            item = values
        if isinstance(item, (int, float)):
            series.setdefault("lambda", []).append(float(item))
        elif isinstance(item, Sequence):
            for j, v in enumerate(item):
                if isinstance(v, (int, float)):
                    series.setdefault(f"lambda[{j}]", []).append(float(v))
        else:
            log.debug("ignoring Lagrange record %d of type %s", i, type(item).__name__)
    return series


def write_report(
    run_dir: str | Path,
    *,
    result: Any,
    history: Sequence[Any],
    chosen_key: str | None,
    constraints: Sequence[Any],
    unit_names: Sequence[str] = (),
    lagrange: Sequence[Any] | None = None,
    options: Mapping[str, Any],
) -> list[Path]:
    """Plots, report.md and report.json in ``run_dir``; returns the plot paths."""
    try:
        plots = write_plots(
            run_dir,
            history=history,
            chosen_key=chosen_key,
            constraints=constraints,
            policy=result.policy,
            unit_names=unit_names,
            lagrange=lagrange,
        )
    except Exception as exc:  # a plotting failure must not cost a finished run its report
        log.warning("plots failed: %s", exc)
        plots = []
    write_report_md(run_dir, result=result, options=options, plots=plots)
    write_report_json(run_dir, result=result, options=options)
    return plots

"""The run's plots: what each one shows is computed first, as data, then drawn.

Each ``*_data`` function turns the run's own records (the evaluator's
history, the searcher's logged multipliers, the final re-measurement) into a
frozen dataclass; each ``*_figure`` function draws one of those and returns
the matplotlib ``Figure`` (drawn without pyplot, so no global state and no
GUI backend). The report saves the figures as PNGs and the data beside them
as ``plots/plots.json``, so every plotted point can be read back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "AccuracyPlot",
    "LagrangePlot",
    "SearchCurve",
    "accuracy_data",
    "accuracy_figure",
    "best_feasible_figure",
    "feasible_count",
    "keep_ratio_figure",
    "lagrange_data",
    "lagrange_figure",
    "search_curve",
]

# Keys of a PPO-Lagrangian history entry that are counters, not multipliers.
_COUNTERS = frozenset({"update", "evaluations"})

Point = tuple[float, float]


@dataclass(frozen=True)
class AccuracyPlot:
    """Accuracy against one constrained quantity.

    ``feasible``/``infeasible``: every evaluated candidate at its search
    measurement (one oracle call, possibly from the cache) and its proxy
    accuracy on the search split. ``chosen``: the candidate the run kept,
    at those same search values (so it lies on one of the plotted points).
    ``final``: the shipped model, its value re-measured afresh after
    fine-tuning and its test accuracy after fine-tuning.
    """

    quantity: str
    unit: str
    oracle: str
    budget: str
    bound: float
    feasible: tuple[Point, ...]
    infeasible: tuple[Point, ...]
    chosen: Point | None
    final: Point | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LagrangePlot:
    """PPO-Lagrangian's multipliers and the costs they react to.

    ``x`` is where each multiplier value was taken: the evaluation count at
    that update (``x_label`` "evaluation"), or the update number when the
    counts are not increasing (a resumed search restarts them). ``multipliers``
    holds one series per constraint, aligned with ``x``. ``costs`` are every
    evaluated candidate's value / bound (1 = the budget) by evaluation number;
    ``mean_costs`` the average cost over each update's window of evaluations,
    aligned with ``x`` (None where the window was empty), which is what the
    dual ascent compares with 1.
    """

    x_label: str
    x: tuple[float, ...]
    multipliers: Mapping[str, tuple[float | None, ...]]
    costs: Mapping[str, tuple[Point, ...]]
    mean_costs: Mapping[str, tuple[float | None, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "x_label": self.x_label,
            "x": list(self.x),
            "multipliers": {k: list(v) for k, v in self.multipliers.items()},
            "costs": {k: [list(p) for p in v] for k, v in self.costs.items()},
            "mean_costs": {k: list(v) for k, v in self.mean_costs.items()},
        }


@dataclass(frozen=True)
class SearchCurve:
    """The best feasible proxy accuracy after each evaluation (None before the first).

    ``search_budget``: the run's evaluation budget; evaluations after it are repairs
    (candidates scaled down after a verification missed a budget).
    """

    evaluations: tuple[int, ...]
    accuracy: tuple[float, ...]
    feasible: tuple[bool, ...]
    best_feasible: tuple[float | None, ...]
    chosen: Point | None
    search_budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- data


def feasible_count(history: Sequence[Any]) -> tuple[int, int]:
    """(feasible, evaluated) over the distinct candidates of a run's history."""
    return sum(1 for o in history if o.feasible), len(history)


def _chosen(history: Sequence[Any], chosen_key: str | None) -> Any | None:
    if chosen_key is None:
        return None
    for o in history:
        if o.key == chosen_key:
            return o
    log.warning("the chosen candidate %s is not in the run's history; no star drawn", chosen_key)
    return None


def accuracy_data(
    history: Sequence[Any],
    constraint: Any,
    *,
    chosen_key: str | None,
    final_value: float | None = None,
    final_accuracy: float | None = None,
) -> AccuracyPlot | None:
    """The points of ``accuracy_vs_<quantity>.png``; None when no candidate measured it."""
    name = constraint.name
    pts = [(float(o.values[name]), float(o.accuracy), bool(o.feasible))
           for o in history if name in o.values]  # fmt: skip
    if not pts:
        return None
    chosen = _chosen(history, chosen_key)
    final = None
    if final_value is not None and final_accuracy is not None:
        final = (float(final_value), float(final_accuracy))
    return AccuracyPlot(
        quantity=name,
        unit=constraint.unit,
        oracle=constraint.oracle,
        budget=constraint.budget.text,
        bound=float(constraint.bound),
        feasible=tuple((x, y) for x, y, f in pts if f),
        infeasible=tuple((x, y) for x, y, f in pts if not f),
        chosen=(float(chosen.values[name]), float(chosen.accuracy))
        if chosen is not None and name in chosen.values
        else None,
        final=final,
    )


def _entry_multipliers(entry: Any, names: Sequence[str]) -> dict[str, float] | None:
    """One logged update's multipliers by constraint name.

    PPO-Lagrangian logs ``{"update": k, "evaluations": n, <constraint>: lambda, ...}``;
    ``{"multipliers": {...}}`` is read too.
    """
    if not isinstance(entry, Mapping):
        return None
    values = entry.get("multipliers", entry)
    if not isinstance(values, Mapping):
        return None
    keys = list(names) or [k for k in values if k not in _COUNTERS]
    out = {}
    for k in keys:
        v = values.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out or None


def lagrange_data(
    lagrange: Sequence[Any] | None,
    *,
    names: Sequence[str],
    history: Sequence[Any] = (),
    mean_costs: Sequence[Mapping[str, float]] | None = None,
) -> LagrangePlot | None:
    """The series of ``lagrange.png`` from the searcher's logged history; None without one.

    ``names``: the constraints (one multiplier each). ``mean_costs``: the
    searcher's own per-update average costs (``extra["mean_costs"]``, one per
    update after the first entry); without them each update's average is taken
    over the history's evaluations since the previous entry.
    """
    entries = []
    for i, entry in enumerate(lagrange or ()):
        m = _entry_multipliers(entry, names)
        if m is None:
            log.debug("ignoring Lagrange record %d of type %s", i, type(entry).__name__)
            continue
        entries.append((entry, m))
    if not entries:
        return None
    series_names = list(names) or sorted({k for _, m in entries for k in m})
    evals = [e.get("evaluations") for e, _ in entries]
    by_evaluation = all(isinstance(v, (int, float)) for v in evals) and all(
        b >= a for a, b in zip(evals, evals[1:], strict=False)
    )
    if by_evaluation:
        x = tuple(float(v) for v in evals)
        x_label = "evaluation"
    else:
        x = tuple(float(e.get("update", i)) for i, (e, _) in enumerate(entries))
        x_label = "update"
    multipliers = {n: tuple(m.get(n) for _, m in entries) for n in series_names}

    costs = {
        n: tuple((float(i + 1), float(o.costs[n])) for i, o in enumerate(history) if n in o.costs)
        for n in series_names
    }
    means: dict[str, tuple[float | None, ...]] = {}
    if mean_costs is not None and len(mean_costs) == len(entries) - 1:
        for n in series_names:
            means[n] = (None, *(_num(mc.get(n)) for mc in mean_costs))
    elif by_evaluation and history:
        for n in series_names:
            row: list[float | None] = [None]
            for a, b in zip(x, x[1:], strict=False):
                window = [o.costs[n] for o in history[int(a) : int(b)] if n in o.costs]
                row.append(sum(window) / len(window) if window else None)
            means[n] = tuple(row)
    return LagrangePlot(
        x_label=x_label, x=x, multipliers=multipliers, costs=costs, mean_costs=means
    )


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def search_curve(
    history: Sequence[Any], *, chosen_key: str | None, search_budget: int | None = None
) -> SearchCurve | None:
    """Best feasible proxy accuracy against the evaluation count; None for an empty history."""
    if not history:
        return None
    best: float | None = None
    bests: list[float | None] = []
    for o in history:
        if o.feasible and (best is None or o.accuracy > best):
            best = float(o.accuracy)
        bests.append(best)
    chosen = None
    for i, o in enumerate(history):
        if o.key == chosen_key:
            chosen = (float(i + 1), float(o.accuracy))
            break
    return SearchCurve(
        evaluations=tuple(range(1, len(history) + 1)),
        accuracy=tuple(float(o.accuracy) for o in history),
        feasible=tuple(bool(o.feasible) for o in history),
        best_feasible=tuple(bests),
        chosen=chosen,
        search_budget=None if search_budget is None else int(search_budget),
    )


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float, *, ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _scatter(ax: Any, points: Sequence[Point], **kwargs: Any) -> None:
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, **kwargs)


def accuracy_figure(data: AccuracyPlot) -> Any:
    """Every candidate (feasible or not), the budget, the chosen candidate and the final model."""
    from hwprune.budgets import format_value

    fig, (ax,) = _figure(6.4, 4.4)
    _scatter(ax, data.feasible, s=14, c="tab:blue", label="feasible candidate")
    _scatter(ax, data.infeasible, s=14, c="tab:gray", alpha=0.6, label="infeasible candidate")
    if data.chosen is not None:
        _scatter(
            ax,
            [data.chosen],
            s=160,
            marker="*",
            c="tab:red",
            edgecolors="black",
            linewidths=0.5,
            zorder=5,
            label="chosen candidate (search values)",
        )
    if data.final is not None:
        _scatter(
            ax,
            [data.final],
            s=70,
            marker="D",
            c="tab:green",
            edgecolors="black",
            linewidths=0.5,
            zorder=6,
            label=f"final model: re-measured {format_value(data.final[0], data.unit)}, "
            f"test acc. {100 * data.final[1]:.1f}%",
        )
    ax.axvline(
        data.bound,
        color="tab:red",
        linestyle="--",
        label=f"budget {data.budget} = {format_value(data.bound, data.unit)}",
    )
    ax.set_xlabel(f"{data.quantity} ({data.unit}) on {data.oracle}")
    ax.set_ylabel("accuracy")
    ax.set_title(
        "candidates: search measurement, proxy accuracy (search split)\n"
        "final model: re-measured after fine-tuning, test accuracy",
        fontsize=8,
        loc="left",
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def lagrange_figure(data: LagrangePlot) -> Any:
    """Left: one multiplier per constraint. Right: cost / bound per evaluation and per update."""
    fig, (left, right) = _figure(10.0, 4.0, ncols=2)
    if data.x_label == "evaluation":  # one x axis: the multiplier beside the costs it saw
        left.sharex(right)
    colors = [f"C{i}" for i in range(10)]
    for i, (name, values) in enumerate(data.multipliers.items()):
        ys = [math.nan if v is None else v for v in values]
        left.step(data.x, ys, where="post", marker="o", ms=3, color=colors[i % 10], label=name)
    left.set_xlabel(data.x_label)
    left.set_ylabel("Lagrange multiplier")
    left.set_title("multiplier per constraint (after each update)", fontsize=9, loc="left")
    left.legend(fontsize=8)
    for i, (name, points) in enumerate(data.costs.items()):
        _scatter(right, points, s=10, alpha=0.5, color=colors[i % 10], label=f"{name}: candidate")
        means = data.mean_costs.get(name)
        if means:
            pts = [(x, m) for x, m in zip(data.x, means, strict=True) if m is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                right.plot(xs, ys, marker="s", ms=4, color=colors[i % 10],
                           label=f"{name}: mean since last update")  # fmt: skip
    right.axhline(1.0, color="tab:red", linestyle="--", label="budget (cost = 1)")
    right.set_xlabel("evaluation")
    right.set_ylabel("cost = measured / bound")
    right.set_title("what the multiplier reacts to (above 1: violated)", fontsize=9, loc="left")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def best_feasible_figure(data: SearchCurve) -> Any:
    """The best feasible proxy accuracy so far, against the evaluation count."""
    fig, (ax,) = _figure(6.4, 4.0)
    feas = [(float(e), a) for e, a, f in zip(data.evaluations, data.accuracy, data.feasible,
                                              strict=True) if f]  # fmt: skip
    infeas = [(float(e), a) for e, a, f in zip(data.evaluations, data.accuracy, data.feasible,
                                                strict=True) if not f]  # fmt: skip
    _scatter(ax, feas, s=10, c="tab:blue", alpha=0.5, label="feasible candidate")
    _scatter(ax, infeas, s=10, c="tab:gray", alpha=0.4, label="infeasible candidate")
    steps = [(float(e), b) for e, b in zip(data.evaluations, data.best_feasible, strict=True)
             if b is not None]  # fmt: skip
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax.step(xs, ys, where="post", color="tab:blue", label="best feasible so far")
    if data.chosen is not None:
        _scatter(ax, [data.chosen], s=160, marker="*", c="tab:red", edgecolors="black",
                 linewidths=0.5, zorder=5, label="chosen candidate")  # fmt: skip
    if data.search_budget is not None and len(data.evaluations) > data.search_budget:
        ax.axvline(data.search_budget + 0.5, color="black", linestyle=":",
                   label=f"end of the search ({data.search_budget}); then repairs")  # fmt: skip
    n_feasible = sum(data.feasible)
    ax.set_xlabel("evaluation")
    ax.set_ylabel("proxy accuracy (search split)")
    ax.set_title(
        f"{n_feasible} of {len(data.feasible)} evaluations feasible", fontsize=9, loc="left"
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def keep_ratio_figure(keep: Sequence[float], names: Sequence[str]) -> Any:
    """The chosen policy's fraction kept per prunable unit."""
    labels = list(names) if len(names) == len(keep) else [str(i) for i in range(len(keep))]
    fig, (ax,) = _figure(max(6.0, 0.35 * len(keep)), 4.0)
    ax.bar(range(len(keep)), list(keep), color="tab:blue")
    ax.set_xticks(range(len(keep)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("keep ratio")
    ax.set_title("chosen policy: fraction kept per unit")
    fig.tight_layout()
    return fig

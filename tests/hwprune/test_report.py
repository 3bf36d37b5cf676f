"""The run's plots and report: every plotted point read back from the figure and plots.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwprune.budgets import Constraint, parse_budget
from hwprune.evaluate import Outcome
from hwprune.plots import (
    accuracy_data,
    accuracy_figure,
    best_feasible_figure,
    lagrange_data,
    lagrange_figure,
    search_curve,
)
from hwprune.report import write_plots, write_report
from hwprune.run.result import BudgetCheck, PruneResult
from hwprune.space import Policy as HwPolicy


def constraint(text: str, dense: float) -> Constraint:
    return Constraint(budget=parse_budget(text), oracle="test-oracle").resolve(dense)


LATENCY = constraint("latency<=50%", 1.0)  # bound 0.5 ms
PARAMS = constraint("params<=60%", 1000.0)  # bound 600


def outcome(i: int, latency: float, accuracy: float, params: float = 500.0) -> Outcome:
    values = {"latency": latency, "params": params}
    costs = {"latency": latency / LATENCY.bound, "params": params / PARAMS.bound}
    return Outcome(
        index=i,
        policy=None,
        key=f"k{i}",
        accuracy=accuracy,
        values=values,
        costs=costs,
        feasible=all(c <= 1.0 for c in costs.values()),
    )


# 8 candidates: 0, 1, 4, 7 infeasible on latency; 3 on params; the rest feasible.
HISTORY = [
    outcome(0, 0.90, 0.95),
    outcome(1, 0.70, 0.90),
    outcome(2, 0.45, 0.60),
    outcome(3, 0.40, 0.80, params=700.0),
    outcome(4, 0.55, 0.85),
    outcome(5, 0.48, 0.70),
    outcome(6, 0.30, 0.40),
    outcome(7, 0.60, 0.88),
]
CHOSEN = "k5"


def offsets(ax, label: str) -> list[tuple[float, float]]:
    """The (x, y) of the scatter with this legend label on ``ax``."""
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return [tuple(map(float, p)) for p in found[0].get_offsets()]


def test_star_lies_on_the_chosen_candidate_and_the_final_model_has_its_own_marker():
    data = accuracy_data(HISTORY, LATENCY, chosen_key=CHOSEN, final_value=0.46, final_accuracy=0.97)
    fig = accuracy_figure(data)
    (ax,) = fig.axes
    feasible = offsets(ax, "feasible candidate")
    infeasible = offsets(ax, "infeasible candidate")
    (star,) = offsets(ax, "chosen candidate (search values)")
    assert star == (0.48, 0.70)
    assert star in feasible
    assert sorted(feasible) == [(0.3, 0.4), (0.45, 0.6), (0.48, 0.7)]
    assert len(infeasible) == 5  # the params-infeasible one is grey on the latency axis too
    final = [c for c in ax.collections if c.get_label().startswith("final model")]
    assert len(final) == 1
    assert [tuple(map(float, p)) for p in final[0].get_offsets()] == [(0.46, 0.97)]
    assert "re-measured 0.46 ms" in final[0].get_label()
    assert "test acc. 97.0%" in final[0].get_label()


def test_no_star_when_the_chosen_key_was_not_evaluated():
    data = accuracy_data(HISTORY, LATENCY, chosen_key="nowhere")
    assert data.chosen is None and data.final is None
    labels = [c.get_label() for c in accuracy_figure(data).axes[0].collections]
    assert not any(label.startswith("chosen") for label in labels)


# PPO-Lagrangian's extra["lagrange"], as it logs it: counters and one multiplier per constraint.
LAGRANGE = [
    {"update": 0, "evaluations": 2, "latency": 0.0, "params": 0.0},
    {"update": 1, "evaluations": 4, "latency": 0.2, "params": 0.0},
    {"update": 2, "evaluations": 6, "latency": 0.3, "params": 0.1},
    {"update": 3, "evaluations": 8, "latency": 0.25, "params": 0.05},
]


def test_lagrange_plot_has_one_line_per_constraint_and_no_counters():
    data = lagrange_data(LAGRANGE, names=["latency", "params"], history=HISTORY)
    assert data.x_label == "evaluation"
    assert data.x == (2.0, 4.0, 6.0, 8.0)
    fig = lagrange_figure(data)
    left, right = fig.axes
    lines = {line.get_label(): line for line in left.get_lines()}
    assert set(lines) == {"latency", "params"}
    # step(where="post") draws each value twice; the distinct values in order are the log's.
    ys = [float(y) for y in lines["latency"].get_ydata()]
    assert [y for i, y in enumerate(ys) if i == 0 or y != ys[i - 1]] == [0.0, 0.2, 0.3, 0.25]
    assert max(lines["params"].get_ydata()) == pytest.approx(0.1)
    # Beside it: every candidate's cost (value / bound) by evaluation, and the budget at 1.
    costs = offsets(right, "latency: candidate")
    assert costs[0] == (1.0, pytest.approx(1.8)) and len(costs) == len(HISTORY)
    # Each update's mean cost over the evaluations since the previous one (3-4, 5-6, 7-8).
    assert data.mean_costs["latency"][0] is None
    assert data.mean_costs["latency"][1] == pytest.approx((0.8 + 0.9) / 2)
    assert data.mean_costs["latency"][3] == pytest.approx((0.6 + 1.2) / 2)


def test_lagrange_plot_uses_updates_when_a_resume_restarted_the_evaluation_count():
    resumed = [*LAGRANGE[:2], {"update": 2, "evaluations": 1, "latency": 0.1, "params": 0.0}]
    data = lagrange_data(resumed, names=["latency", "params"], history=HISTORY)
    assert data.x_label == "update" and data.x == (0.0, 1.0, 2.0)
    assert data.mean_costs == {}


def test_lagrange_plot_takes_the_searchers_own_mean_costs_when_given():
    means = [{"latency": 1.5, "params": 0.5}] * 3
    data = lagrange_data(LAGRANGE, names=["latency", "params"], mean_costs=means)
    assert data.mean_costs["latency"] == (None, 1.5, 1.5, 1.5)


def test_best_feasible_curve_is_the_running_maximum_over_feasible_candidates():
    curve = search_curve(HISTORY, chosen_key=CHOSEN)
    assert curve.best_feasible == (None, None, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7)
    assert curve.chosen == (6.0, 0.7)
    ax = best_feasible_figure(curve).axes[0]
    assert ax.get_title(loc="left") == "3 of 8 evaluations feasible"
    (step,) = [line for line in ax.get_lines() if line.get_label() == "best feasible so far"]
    assert float(max(step.get_ydata())) == 0.7 and float(min(step.get_xdata())) == 3.0
    assert not [line for line in ax.get_lines() if "repairs" in line.get_label()]


def test_best_feasible_curve_marks_where_the_search_ended_and_repairs_began():
    curve = search_curve(HISTORY, chosen_key=CHOSEN, search_budget=6)
    ax = best_feasible_figure(curve).axes[0]
    (line,) = [line for line in ax.get_lines() if "repairs" in line.get_label()]
    assert line.get_label() == "end of the search (6); then repairs"
    assert list(line.get_xdata()) == [6.5, 6.5]


def test_write_plots_writes_every_png_and_the_plotted_data(tmp_path: Path):
    class Policy:
        keep = (1.0, 0.5, 0.25)

    paths = write_plots(
        tmp_path,
        history=HISTORY,
        chosen_key=CHOSEN,
        constraints=[LATENCY, PARAMS],
        policy=Policy(),
        lagrange=LAGRANGE,
        final_values={"latency": 0.46, "params": 500.0},
        final_accuracy=0.97,
    )
    names = sorted(p.name for p in paths)
    assert names == [
        "accuracy_vs_latency.png",
        "accuracy_vs_params.png",
        "best_feasible.png",
        "keep_ratios.png",
        "lagrange.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
    data = json.loads((tmp_path / "plots" / "plots.json").read_text())
    acc = data["accuracy_vs_latency"]
    assert acc["chosen"] in acc["feasible"]
    assert acc["final"] == [0.46, 0.97]
    assert set(data["lagrange"]["multipliers"]) == {"latency", "params"}
    assert data["best_feasible"]["best_feasible"][-1] == 0.7


def test_report_says_how_many_evaluations_were_feasible(tmp_path: Path):
    result = PruneResult(
        run_dir=tmp_path,
        policy=HwPolicy(keep=(0.5,)),
        budgets=(
            BudgetCheck("latency<=50%", "latency", "test-oracle", "ms", 1.0, 0.5, 0.46, True, 0.08),
        ),  # fmt: skip
        dense={"latency": 1.0},
        final={"latency": 0.46},
        met={"latency": True},
        accuracy_dense=0.99,
        accuracy_pruned=0.7,
        accuracy_finetuned=0.97,
        params_dense=1000,
        params_final=500,
        stage_seconds={"search": 1.0},
        paths={},
        searcher="ppo-lagrangian",
        evaluations=len(HISTORY),
        first_feasible_evaluation=3,
        repairs=0,
        export_max_abs_diff=None,
        tensorrt="not installed",
    )
    plots = write_report(
        tmp_path,
        result=result,
        history=HISTORY,
        chosen_key=CHOSEN,
        constraints=[LATENCY],
        lagrange=LAGRANGE,
        options={"model": "m", "data": "d"},
    )
    report = (tmp_path / "report.md").read_text()
    assert "feasible candidates (every budget met by the search measurement): 3 of 8 (38%)" in (
        report
    )
    assert "![best_feasible](plots/best_feasible.png)" in report
    assert {p.name for p in plots} >= {"lagrange.png", "best_feasible.png"}
    assert json.loads((tmp_path / "plots" / "plots.json").read_text())["accuracy_vs_latency"][
        "final"
    ] == [0.46, 0.97]

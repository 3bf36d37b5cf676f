"""``latency-knapsack``: HALP's method (Shen et al., NeurIPS 2022) on any runtime.

Each unit's latency against its channel count is the staircase measured on the
latency budget's own oracle (``hwprune.space.staircase``, the run's
``staircase`` stage); each channel has an importance (the space's criterion,
``--importance``: the scores that decide which channels a pruned unit keeps).
One multiple-choice knapsack picks a kept count per unit: the value of keeping
``k`` channels is, by default (``value="log"``), the log of the share of the
unit's importance its ``k`` best channels hold (a group of coupled channels is
one unit, so it counts once), the cost the unit's measured latency at ``k``, and
the sum must fit the bound. The log counts once per layer whose output the unit's
channels are (``Unit.outputs``: a ResNet stage's stream is written by every block).
Summed logs are the log of the product of every layer output's kept share: a
signal passes each in turn, so a unit cut to a sliver costs the whole model,
which a sum cannot say. HALP's value, the summed importance itself
(``value="sum"``), is linear within a unit and sends the units whose channels
cost most to their fewest channels first; on the demo's model it shipped 0.71
mean test accuracy after fine-tuning against 0.94 for ``log`` (seeds 0-2,
``benchmarks.knapsack_start`` at commits 1b6eb23 and 8487a9b).

The predicted latency of a model maps the sum of its units' staircase
latencies linearly onto two whole-model measurements: the dense model (measured
by the run) and the smallest allowed model (every unit at its fewest channels,
measured first, as a logged candidate). So the constant part of the network
(the layers no unit changes) and the staircase's scale (a layer timed alone
runs faster than inside the network) are measured, not assumed, and the
prediction is exact at both ends. A smallest model that misses a budget ends
the search at once: no allowed policy meets it. Between the ends the model is
first-order: a layer between two pruned units shrinks on both sides, fusion or
a kernel switch is in no staircase. So every solution is measured (through the
evaluator: a logged candidate like any other) and the knapsack's bound
corrected until the measured latency sits in ``[window * bound, bound]``: the
first correction moves the bound by the gap between measured and aimed-at
latency, then the bound is bisected between the largest bound measured under
the window and the smallest measured over it (the point interpolated between
the two, kept within the middle of the bracket). A solution one call puts in the
window is re-measured as the final proof measures (the median of fresh calls) and
accepted only if that value is in the window too. It stops in the window, after
``steps`` corrections, when no new solution lies between the two, or when the
oracle's noise inverts the bracket (a larger bound measured faster).

Several budgets: the first latency budget (else the first budget) is the
knapsack's capacity; every other budget is folded into the objective with a
Lagrange multiplier found by bisection (:func:`~hwprune.agents.knapsack.
solve_mck_lagrangian`), its per-unit cost a static estimate (the unit's share
of the dense model's parameters for params and weight memory, of its MACs for
the rest) mapped onto the same two measurements, and its bound moved by the
gap between measured and aimed-at value after each measurement that misses it
or that it held well under its bound (a positive multiplier).

Without a staircase for the budget's oracle (no latency budget, or a probe
that failed) latency costs come from each unit's share of the MACs, said in
one log line and in the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hwprune.agents.base import BudgetedEvaluator, Searcher
from hwprune.agents.knapsack import solve_mck_lagrangian, total
from hwprune.agents.registry import SEARCHERS
from hwprune.errors import ConfigError, InfeasibleBudgetError

log = logging.getLogger(__name__)

__all__ = ["LatencyKnapsackSearch", "unit_options", "knapsack_section"]

#: Quantities whose per-unit cost is estimated from the unit's parameter share.
_PARAM_LIKE = ("params", "weight-memory")
#: Options per unit above which the dominance filter is skipped (its cost grows as n^2).
_DOMINANCE_LIMIT = 1024
#: Whole-model measurements of the bound's correction, by default (after the smallest model).
STEPS = 8
#: Pure re-solves tried for a bound that gives a solution not measured yet.
_RESOLVE_TRIES = 24
#: How a unit's kept channels are valued (see ``LatencyKnapsackSearch._values``).
VALUES = ("log", "sum")
#: Smallest kept share of a unit's importance the ``log`` value takes (its log is finite).
_LOG_FLOOR = 1e-6


def unit_options(space: Any, unit: Any) -> list[int]:
    """Every kept-channel count ``space`` can build for ``unit`` (ascending): its
    ``channel_choices`` (staircase step tops) or the multiples of ``round_to``,
    from ``min_keep`` up to the full count."""
    c = int(unit.channels)
    return sorted({int(space.unit_channels_for(k / c, unit)) for k in range(1, c + 1)})


def _load_staircase(staircase: Any) -> Any:
    if staircase is None:
        return None
    from hwprune.space.staircase import Staircase

    if isinstance(staircase, Staircase):
        return staircase
    if isinstance(staircase, (str, Path)):
        return Staircase.load(staircase)
    if isinstance(staircase, Mapping):
        return Staircase.from_dict(staircase)
    raise ConfigError(
        f"staircase must be a Staircase, a staircase.json path or its dict, got "
        f"{type(staircase).__name__}"
    )


@SEARCHERS.register("latency-knapsack")
class LatencyKnapsackSearch(Searcher):
    """One multiple-choice knapsack over measured latency staircases and channel importance.

    Options: ``staircase`` (a ``Staircase``, its JSON path or dict; the run
    passes the one its ``staircase`` stage measured), ``steps`` (most whole-model
    measurements of the bound's correction, default 8), ``window`` (the
    measured latency is accepted in ``[window * bound, bound]``, default 0.95),
    ``bins`` (the knapsack's budget resolution, default 4096), ``value`` (``"log"``,
    the default: the log of each unit's kept share of importance; ``"sum"``: HALP's
    summed importance).
    """

    name = "latency-knapsack"
    #: The run probes the latency staircase for this searcher whatever its ``round_to``.
    needs_staircase: ClassVar[bool] = True

    def __init__(
        self,
        *,
        seed: int = 0,
        staircase: Any = None,
        steps: int = STEPS,
        window: float = 0.95,
        bins: int = 4096,
        value: str = "log",
        **options: Any,
    ) -> None:
        super().__init__(seed=seed, **options)
        if value not in VALUES:
            raise ConfigError(f"value must be one of {', '.join(VALUES)}, got {value!r}")
        self.value = value
        self.staircase = _load_staircase(staircase)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}")
        try:
            self.window = float(window)
        except (TypeError, ValueError):
            raise ConfigError(f"window must be a number in (0, 1), got {window!r}") from None
        if not 0.0 < self.window < 1.0:
            raise ConfigError(f"window must be a number in (0, 1), got {window!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16:
            raise ConfigError(f"bins must be a whole number >= 16, got {bins!r}")
        self.steps = steps
        self.bins = bins

    # ------------------------------------------------------------------ tables
    def _values(self, space: Any, counts: list[list[int]]) -> tuple[list[np.ndarray], bool]:
        """Per unit, the value of keeping its ``k`` best channels for each count ``k``.

        ``value="sum"`` (HALP's): the summed importance of the ``k`` best channels.
        ``value="log"``: the log of the share of the unit's importance they hold, once per
        layer whose output the unit's channels are, so the model's value is the log of the
        product of every layer output's kept share.
        """
        importance = str(space.importance)
        scores = space.channel_importance()
        # Loss-change estimates (taylor) compare across layers as they are; norms of weights
        # do not (a layer's scale is arbitrary): each unit's are divided by their mean, as
        # Torch-Pruning's global ranking does. A share (``log``) has no scale to compare.
        normalise = importance != "taylor" and self.value == "sum"
        out = []
        for unit, s, ks in zip(space.units, scores, counts, strict=True):
            s = np.clip(np.nan_to_num(np.asarray(s, dtype=np.float64)), 0.0, None)
            if normalise:
                s = s / max(float(s.mean()), 1e-12)
            top = np.concatenate([[0.0], np.cumsum(np.sort(s)[::-1])])
            kept = np.array([top[min(k, s.size)] for k in ks], dtype=np.float64)
            if self.value == "log":
                whole = max(float(top[-1]), 1e-12)
                # Each layer whose output the unit's channels are is one step of the signal's
                # path: a ResNet stage's stream is cut at every block it couples.
                kept = unit.outputs * np.log(np.clip(kept / whole, _LOG_FLOOR, None))
            out.append(kept)
        return out, normalise

    def _costs(
        self, space: Any, constraint: Any, counts: list[list[int]]
    ) -> tuple[list[np.ndarray], str]:
        """Per unit, the predicted ``constraint`` value's part at each count, and the model used."""
        dense = float(constraint.dense_value)
        stairs = self.staircase
        by_unit = stairs.by_unit() if stairs is not None else {}
        use_stairs = (
            constraint.name == "latency"
            and stairs is not None
            and stairs.oracle == constraint.oracle
        )
        param_like = constraint.name in _PARAM_LIKE
        out = []
        for unit, ks in zip(space.units, counts, strict=True):
            probed = by_unit.get(unit.id) if use_stairs else None
            if probed is not None:
                out.append(np.array([probed.latency_at(k) for k in ks], dtype=np.float64))
            else:
                part = dense * float(unit.params_share if param_like else unit.flops_share)
                out.append(np.array([part * k / unit.channels for k in ks], dtype=np.float64))
        if use_stairs:
            return out, "staircase"
        return out, "params-share" if param_like else "flops-share"

    # --------------------------------------------------------------------- run
    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        if space.granularity != "channel":
            raise ConfigError(
                "latency-knapsack chooses kept channel counts; it needs granularity 'channel', "
                f"got {space.granularity!r}"
            )
        constraints = list(evaluate.evaluator.constraints)
        if not constraints:
            raise ConfigError("latency-knapsack needs at least one budget")
        run = _KnapsackRun(self, space, evaluate, constraints)
        # The constant part of the network and the staircase's scale, measured once: the
        # smallest allowed model (every unit at its fewest channels) and the dense model.
        # Each budget's prediction maps the sum of its per-unit costs linearly onto them.
        floor = run.measure(run.smallest, None, {})
        if not floor.feasible:
            run.record(converged=False)
            raise _infeasible(constraints, floor.values, space)
        run.fit(floor)
        if run.low[run.primary] >= self.window * run.bounds[run.lead.name]:
            run.record(converged=True)  # the smallest model already fills the window
            self.extra["answer"] = floor.key
            return
        converged = run.correct(floor)
        run.record(converged=converged)
        # The solution accepted in the window is the knapsack's answer: the most importance
        # that fits. It ships if its confirmation holds (not the proxy's favourite of the
        # bisection's candidates, which are the same method at smaller bounds).
        self.extra["answer"] = run.calls[-1]["key"] if converged else run.best_key()

    def repair(
        self, space: Any, evaluator: Any, failed: Any, *, limit: float, tried: set[str]
    ) -> Any:
        """The knapsack's answer to ``limit`` of every bound: the bound's correction run again
        with the bounds scaled by ``limit`` (the margin the final proof's miss asked for), on
        the same tables and the same two whole-model measurements (read from the log). A
        uniformly scaled-down copy of the failed policy, the generic repair, is not the most
        importance that fits, and a proxy ranking of the bisection's candidates ships one
        far under the bound. Returns the largest measured solution within ``limit`` of every
        bound (its confirmation too, where it has one), or None (the generic repair then)."""
        constraints = list(evaluator.constraints)
        if space.granularity != "channel" or not constraints or not 0.0 < limit < 1.0:
            return None
        run = _KnapsackRun(self, space, BudgetedEvaluator(evaluator, self.steps + 1),
                           constraints)  # fmt: skip
        floor = run.measure(run.smallest, None, {})
        if not floor.feasible:
            return None
        run.fit(floor)
        run.bounds = {name: limit * b for name, b in run.bounds.items()}
        run.eff = dict(run.bounds)
        log.info("latency-knapsack repair: the bounds scaled by %.3f", limit)
        if run.low[run.primary] < self.window * run.bounds[run.lead.name]:
            run.correct(floor)
        key = run.best_key(exclude=tried)
        return evaluator.outcome(key) if key is not None else None

    @staticmethod
    def _fresh(
        solve: Any,
        cap: float,
        below: tuple[float, float] | None,
        above: tuple[float, float] | None,
        verdicts: Mapping[str, str],
        key_of: Any,
        step: float,
    ) -> tuple[float, tuple[int, ...], tuple[float, ...]] | None:
        """A knapsack bound near ``cap`` whose solution has not been measured yet, or None.

        A solution measured under the window asks for a larger bound, one measured over
        the bound for a smaller one: halving inside the bracket, doubling steps outside.
        """
        lo = below[0] if below is not None else None
        hi = above[0] if above is not None else None
        trial = cap
        for i in range(_RESOLVE_TRIES):
            found = solve(trial)
            verdict = "under" if found is None else verdicts.get(key_of(found[0]))
            if verdict is None:
                return trial, found[0], found[1]
            if verdict == "under":
                lo = trial if lo is None else max(lo, trial)
            elif verdict == "over":
                hi = trial if hi is None else min(hi, trial)
            else:
                return None  # another budget holds it there
            if lo is not None and hi is not None:
                if hi - lo <= 1e-9 * max(1.0, abs(hi)):
                    return None
                trial = (lo + hi) / 2.0
            elif hi is not None:
                trial = hi - step * 2.0**i
            else:
                trial = lo + step * 2.0**i
        return None

    def _record(
        self,
        calls: list[dict[str, Any]],
        models: dict[str, str],
        seconds: dict[str, float],
        timing: Mapping[str, float],
        lead: Any,
        normalised: bool,
        space: Any,
        *,
        converged: bool,
    ) -> None:
        stairs = self.staircase
        self.extra["knapsack"] = {
            "primary": lead.name,
            "oracle": lead.oracle,
            "unit": lead.unit,
            "bound": float(lead.bound),
            "window": [self.window * float(lead.bound), float(lead.bound)],
            "cost_model": dict(models),
            "importance": str(space.importance),
            "importance_normalised": normalised,
            "value": self.value,
            "seconds": {**seconds, **timing},
            "staircase_oracle_calls": int(stairs.oracle_calls) if stairs is not None else None,
            "staircase_cached_calls": int(stairs.cached_calls) if stairs is not None else None,
            "candidates": len({c["key"] for c in calls}),
            "calls": calls,
            "converged": converged,
        }

    @classmethod
    def report_section(cls, extra: Mapping[str, Any]) -> str:
        return knapsack_section(extra)

    @classmethod
    def candidates_at_most(cls, evaluations: int) -> int:
        """The smallest model and at most ``steps`` (default 8) solutions: it stops once one
        is in its window."""
        return min(int(evaluations), 1 + STEPS)


class _KnapsackRun:
    """One latency-knapsack search: the knapsack's tables, its measurements, and the
    correction of its bound (see the module's docstring)."""

    def __init__(
        self,
        searcher: LatencyKnapsackSearch,
        space: Any,
        evaluate: BudgetedEvaluator,
        constraints: list[Any],
    ) -> None:
        from hwprune.space import Policy

        self.searcher, self.space, self.evaluate = searcher, space, evaluate
        self.constraints = constraints
        self.seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        counts = [unit_options(space, u) for u in space.units]
        values, self.normalised = searcher._values(space, counts)
        self.seconds["importance"] = time.perf_counter() - t0

        self.primary = next((i for i, c in enumerate(constraints) if c.name == "latency"), 0)
        self.lead = constraints[self.primary]
        tables: list[list[np.ndarray]] = []
        self.models: dict[str, str] = {}
        for c in constraints:
            table, model = searcher._costs(space, c, counts)
            tables.append(table)
            self.models[c.name] = model
        self.counts, self.values, self.tables = _undominated(counts, values, tables)
        if self.lead.name == "latency" and self.models[self.lead.name] != "staircase":
            log.info(
                "latency-knapsack: no latency staircase for %s; each unit's latency cost is "
                "estimated from its share of the model's MACs", self.lead.oracle,
            )  # fmt: skip
        stairs = searcher.staircase
        if stairs is not None and self.models.get("latency") == "staircase":
            self.seconds["staircase"] = float(stairs.seconds)
        self.template = Policy.dense(space)
        self.calls: list[dict[str, Any]] = []
        self.timing = {"solve": 0.0, "verify": 0.0}
        self.smallest = tuple(0 for _ in self.counts)
        self.full = tuple(len(c) - 1 for c in self.counts)
        self.bounds = {c.name: float(c.bound) for c in constraints}
        # Each other budget's bound in the prediction's terms, as corrected.
        self.eff = dict(self.bounds)
        self.tried: dict[str, list[tuple[float, float]]] = {c.name: [] for c in constraints}

    def policy_of(self, choice: Sequence[int]) -> Any:
        units = self.space.units
        keep = [self.counts[u][i] / units[u].channels for u, i in enumerate(choice)]
        return self.template.with_keep(tuple(float(k) for k in keep))

    def key_of(self, choice: Sequence[int]) -> str:
        return self.space.shape_key(self.policy_of(choice))

    def measure(self, choice: tuple[int, ...], cap: float | None, guess: dict[str, float],
                multipliers: Sequence[float] = ()) -> Any:  # fmt: skip
        t = time.perf_counter()
        # The correction needs measurements, not predictions.
        with self.evaluate.evaluator.measured_only():
            out = self.evaluate(self.policy_of(choice))
        took = time.perf_counter() - t
        self.timing["verify"] += took
        calls, lead = self.calls, self.lead
        calls.append({
            "step": len(calls), "key": out.key, "bound": cap, "predicted": guess,
            "measured": {k: float(v) for k, v in out.values.items()},
            "feasible": bool(out.feasible), "cached": bool(out.cached), "seconds": took,
            "multipliers": [float(m) for m in multipliers],
            "kept": [int(self.counts[u][i]) for u, i in enumerate(choice)],
        })  # fmt: skip
        log.info(
            "latency-knapsack call %d: knapsack bound %s, predicted %s %s, measured %.5g "
            "(bound %.5g), %s", len(calls) - 1, "-" if cap is None else f"{cap:.5g}",
            lead.name, f"{guess[lead.name]:.5g}" if lead.name in guess else "-",
            float(out.values[lead.name]), float(lead.bound),
            "feasible" if out.feasible else "infeasible",
        )  # fmt: skip
        return out

    def confirm(self, choice: tuple[int, ...]) -> tuple[float, float]:
        """The lead budget's value of a solution one call put in its window, re-measured as
        the final proof will measure the shipped model (the median of fresh calls), and the
        relative half-range of those calls (what the proof's own median may move).

        One call on a busy machine is several percent off, and a bisection that stops at the
        first call inside a narrow window keeps the solutions that measured high: the final
        proof then reads them lower than their search value, under the window."""
        t = time.perf_counter()
        ev = self.evaluate.evaluator
        policy = self.policy_of(choice)
        value = float(ev.remeasured_values(policy)[self.lead.name])
        spread = float(ev.remeasured_spread(self.space.shape_key(policy)).get(self.lead.name, 0.0))
        took = time.perf_counter() - t
        self.timing["verify"] += took
        self.calls[-1].update(confirmed=value, confirm_spread=spread, confirm_seconds=took)
        log.info("latency-knapsack call %d re-measured: %s %.5g (+-%.1f%%; bound %.5g)",
                 len(self.calls) - 1, self.lead.name, value, 100 * spread,
                 float(self.lead.bound))  # fmt: skip
        return value, spread

    def best_key(self, *, exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The largest solution measured within every bound of this run (a repair's are scaled)
        and not in ``exclude``: confirmed with the margin its calls spread over, else on one
        call (the final choice confirms it). Without a solution in the window, the answer."""
        name, bound = self.lead.name, self.bounds[self.lead.name]

        def value(c: dict[str, Any]) -> float | None:
            if c["key"] in exclude or not c["feasible"]:
                return None
            if any(c["measured"][n] > b for n, b in self.bounds.items()):
                return None
            if "confirmed" in c:
                ok = c["confirmed"] * (1.0 + c.get("confirm_spread", 0.0)) <= bound
                return c["confirmed"] if ok else None
            return c["measured"][name]

        found = [(v, c["key"]) for c in self.calls if (v := value(c)) is not None]
        return max(found)[1] if found else None

    def record(self, *, converged: bool) -> None:
        self.searcher._record(self.calls, self.models, self.seconds, self.timing, self.lead,
                              self.normalised, self.space, converged=converged)  # fmt: skip

    def fit(self, floor: Any) -> None:
        """Map each budget's summed costs onto the measured smallest model and the dense one."""
        self.low = [float(floor.values[c.name]) for c in self.constraints]
        self.high = [float(c.dense_value) for c in self.constraints]
        self.t_low = [total(t, self.smallest) for t in self.tables]
        self.t_high = [total(t, self.full) for t in self.tables]
        self.calls[0]["predicted"] = self.predicted(self.smallest)

    def slope(self, j: int) -> float:
        span = self.t_high[j] - self.t_low[j]
        return (self.high[j] - self.low[j]) / span if span > 1e-12 else 0.0

    def predicted(self, choice: Sequence[int]) -> dict[str, float]:
        return {c.name: self.low[j] + self.slope(j) * (total(self.tables[j], choice)
                                                         - self.t_low[j])
                for j, c in enumerate(self.constraints)}  # fmt: skip

    def table_bound(self, j: int, value: float) -> float:
        """The bound on the sum of budget ``j``'s costs whose prediction is ``value``."""
        k = self.slope(j)
        return self.t_low[j] + (value - self.low[j]) / k if k > 0 else (
            np.inf if value >= self.low[j] else -np.inf)  # fmt: skip

    def solve(self, cap: float) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
        t = time.perf_counter()
        others = [(self.tables[j], self.table_bound(j, self.eff[c.name]))
                  for j, c in enumerate(self.constraints) if j != self.primary]  # fmt: skip
        others = [(t_, min(b, 1e300)) for t_, b in others]
        cap_t = self.table_bound(self.primary, cap)
        sol = None
        if cap_t >= self.t_low[self.primary] - 1e-12:
            sol = solve_mck_lagrangian(self.values, self.tables[self.primary], min(cap_t, 1e300),
                                       others=others, bins=self.searcher.bins)  # fmt: skip
        self.timing["solve"] += time.perf_counter() - t
        return None if sol is None else (sol.choice, sol.multipliers)

    def correct(self, floor: Any) -> bool:
        """Measure solutions and correct the knapsack's bound until the lead budget's measured
        value sits in its window; whether it got there."""
        window, lead = self.searcher.window, self.lead
        bound = self.bounds[lead.name]
        aim = (1.0 + window) / 2.0 * bound
        below: tuple[float, float] | None = None  # (knapsack bound, measured) under the window
        above: tuple[float, float] | None = None  # (knapsack bound, measured) over the bound
        verdicts: dict[str, str] = {floor.key: "under"}  # measured: "under", "over", "other"
        cap = bound
        while len(self.calls) <= self.searcher.steps and not self.evaluate.exhausted:
            found = self.solve(cap)
            if found is None or self.key_of(found[0]) in verdicts:
                found_fresh = self.searcher._fresh(self.solve, cap, below, above, verdicts,
                                                   self.key_of, 0.01 * bound)  # fmt: skip
                if found_fresh is None:
                    break
                cap, choice, multipliers = found_fresh
            else:
                choice, multipliers = found
            out = self.measure(choice, cap, self.predicted(choice), multipliers)
            value = float(out.values[lead.name])
            moved, filled = self._correct_others(out, multipliers)
            others_met = all(c.met(float(out.values[c.name])) for c in self.constraints
                             if c is not lead)  # fmt: skip
            over = value > bound
            if not over and others_met and (value >= window * bound or filled):
                if filled:
                    return True  # another budget holds the solution, in its own window
                value, spread = self.confirm(choice)
                # The window's top leaves the margin the re-measurement's own calls spread
                # over (a solution the final proof may read over its bound is too large); it
                # stays at least 3% wide.
                top = bound / (1.0 + spread)
                if min(window * bound, 0.97 * top) <= value <= top:
                    return True  # the lead budget's solution sits in its window
                over = value > top
            if over:
                verdicts[out.key] = "over"
                above = (cap, value) if above is None or cap < above[0] else above
            elif others_met and not moved:
                verdicts[out.key] = "under"
                below = (cap, value) if below is None or cap > below[0] else below
            else:
                verdicts[out.key] = "other"
                continue  # the same bound again, with the other budgets' bounds corrected
            if below is not None and above is not None and below[0] >= above[0]:
                # A larger bound measured faster than a smaller one: the oracle's noise is
                # larger than what is left to correct; the candidates so far are ranked.
                break
            self.tried[lead.name].append((cap, value))
            cap = _next_bound(cap, value, aim, below, above, self.tried[lead.name])
        return False

    def _correct_others(self, out: Any, multipliers: Sequence[float]) -> tuple[bool, bool]:
        """The other budgets: one missed, or one that held the solution (its multiplier is
        positive) while measured under its window, moves its bound by the gap. Returns
        (whether a bound moved, whether a budget that held the solution fills its window)."""
        window = self.searcher.window
        others = [j for j in range(len(self.constraints)) if j != self.primary]
        moved = filled = False
        for n, j in enumerate(others):
            c, got = self.constraints[j], float(out.values[self.constraints[j].name])
            bound = self.bounds[c.name]
            held = n < len(multipliers) and multipliers[n] > 0
            filled |= held and window * bound <= got <= bound
            if not c.met(got) or (held and got < window * bound):
                self.tried[c.name].append((self.eff[c.name], got))
                self.eff[c.name] = _next_bound(self.eff[c.name], got, (1.0 + window) / 2.0 * bound,
                                               None, None, self.tried[c.name])  # fmt: skip
                moved = True
        return moved, filled


def _next_bound(
    cap: float,
    measured: float,
    aim: float,
    below: tuple[float, float] | None,
    above: tuple[float, float] | None,
    tried: Sequence[tuple[float, float]] = (),
) -> float:
    """The knapsack's next bound for one budget (the prediction's terms), aiming the measured
    value at ``aim``.

    Inside a bracket (a bound measured under the window, a smaller one over the bound): the
    point interpolated between them, kept within the bracket's middle 80%. Else the secant
    through the last two bounds tried (``tried``: (bound, measured) in order), its step at
    most four times the last one; else (one point, or a secant that does not rise) the
    bound moved by the gap between the measured and the aimed-at value.
    """
    if below is not None and above is not None:
        (b0, m0), (b1, m1) = below, above
        if m1 <= m0:
            return (b0 + b1) / 2.0
        x = b0 + (aim - m0) * (b1 - b0) / (m1 - m0)
        lo, hi = b0 + 0.1 * (b1 - b0), b1 - 0.1 * (b1 - b0)
        return min(max(x, lo), hi)
    if len(tried) >= 2:
        (x0, m0), (x1, m1) = tried[-2], tried[-1]
        if x1 != x0 and (m1 - m0) / (x1 - x0) > 0:
            x = x1 + (aim - m1) * (x1 - x0) / (m1 - m0)
            reach = 4.0 * abs(x1 - x0)
            return min(max(x, x1 - reach), x1 + reach)
    return cap + (aim - measured)


def _undominated(
    counts: list[list[int]], values: list[np.ndarray], tables: list[list[np.ndarray]]
) -> tuple[list[list[int]], list[np.ndarray], list[list[np.ndarray]]]:
    """Each unit's options without those another option beats (no less value, no more cost
    in any budget): on a staircase only step tops are worth buying. The smallest count
    (index 0) and the full count (last) are always kept: the run's floor and its anchor."""
    out_c, out_v, out_t = [], [], [[] for _ in tables]
    for u, ks in enumerate(counts):
        n = len(ks)
        v = values[u]
        cost = np.stack([t[u] for t in tables], axis=1)  # (n, budgets)
        keep = np.ones(n, dtype=bool)
        if 2 < n <= _DOMINANCE_LIMIT:
            ge_v = v[:, None] >= v[None, :]  # [j, i]: j has at least i's value
            le_c = np.all(cost[:, None, :] <= cost[None, :, :], axis=2)
            strictly = (v[:, None] > v[None, :]) | np.any(
                cost[:, None, :] < cost[None, :, :], axis=2
            )
            later = np.arange(n)[:, None] > np.arange(n)[None, :]
            beats = ge_v & le_c & (strictly | later)
            np.fill_diagonal(beats, False)
            keep = ~beats.any(axis=0)
            keep[0] = keep[-1] = True
        idx = np.flatnonzero(keep)
        out_c.append([ks[i] for i in idx])
        out_v.append(v[idx])
        for j, t in enumerate(tables):
            out_t[j].append(t[u][idx])
    return out_c, out_v, out_t


def _infeasible(
    constraints: Sequence[Any], values: Mapping[str, float], space: Any
) -> InfeasibleBudgetError:
    from hwprune.budgets import format_value

    missed = [
        f"{c.budget.text} on {c.oracle}: the smallest allowed model (every unit at its fewest "
        f"channels) measures {format_value(float(values[c.name]), c.unit)} against a bound of "
        f"{format_value(float(c.bound), c.unit)}"
        for c in constraints
        if not c.met(float(values[c.name]))
    ]
    return InfeasibleBudgetError(
        f"latency-knapsack: no allowed policy meets the budgets ({'; '.join(missed)}, with "
        f"min_keep={space.min_keep}); loosen the budget or lower min_keep",
        smallest={c.name: float(values[c.name]) for c in constraints},
    )


def knapsack_section(extra: Mapping[str, Any]) -> str:
    """report.md's section: the knapsack's predicted value against the measured one, per call,
    and what the method cost."""
    k = extra.get("knapsack") if isinstance(extra, Mapping) else None
    if not isinstance(k, Mapping) or not k.get("calls"):
        return ""
    name, unit = str(k["primary"]), str(k.get("unit", ""))
    sec = dict(k.get("seconds", {}))
    model = dict(k.get("cost_model", {}))
    lines = ["## Latency knapsack", ""]
    if model.get(name) == "staircase":
        lines.append(
            f"Per-unit {name} costs: the measured staircase on `{k['oracle']}` "
            f"({sec.get('staircase', 0.0):.1f} s, {k.get('staircase_oracle_calls')} oracle calls, "
            f"{k.get('staircase_cached_calls')} answered by the measurement cache)."
        )
    else:
        lines.append(
            f"No staircase was measured for `{k['oracle']}`: per-unit {name} costs are the "
            f"unit's {model.get(name, 'flops-share')} of the dense value (a static estimate)."
        )
    others = {q: m for q, m in model.items() if q != name}
    if others:
        lines.append(
            "Other budgets, folded into the objective with Lagrange multipliers: "
            + ", ".join(f"{q} ({m})" for q, m in others.items())
            + "."
        )
    lines.append(
        f"Importance `{k.get('importance')}`"
        + (" (each unit's scores divided by their mean)" if k.get("importance_normalised") else "")
        + (
            ", valued as the log of each unit's kept share"
            if k.get("value", "sum") == "log"
            else ", valued as its sum"
        )
        + f": {sec.get('importance', 0.0):.2f} s; knapsack solves {sec.get('solve', 0.0):.2f} s; "
        f"{len(k['calls'])} whole-model measurements ({k.get('candidates')} candidates) "
        f"{sec.get('verify', 0.0):.1f} s; "
        + ("converged in the window." if k.get("converged") else "stopped before the window.")
    )
    lo, hi = k["window"]
    lines += [
        "",
        f"Measured {name} is accepted in [{lo:.4g}, {hi:.4g}] {unit}. Predicted: the sum of the "
        "units' costs, mapped linearly onto the measured smallest allowed model (call 0) and "
        "the dense model; knapsack bound: the corrected bound the knapsack solved for; "
        "re-measured: a solution one call put in the window, measured again as the final "
        "proof measures (the median of fresh calls), which decides whether it is accepted.",
        "",
        f"| step | knapsack bound ({unit}) | predicted ({unit}) | measured ({unit}) "
        f"| measured / predicted | re-measured ({unit}) | feasible |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in k["calls"]:
        p, m = c["predicted"].get(name), float(c["measured"][name])
        ratio = f"{m / float(p):.3f}" if p is not None and float(p) > 0 else "-"
        cap = "smallest model" if c.get("bound") is None else f"{float(c['bound']):.4g}"
        guess = "-" if p is None else f"{float(p):.4g}"
        again = "-" if c.get("confirmed") is None else f"{float(c['confirmed']):.4g}"
        lines.append(f"| {c['step']} | {cap} | {guess} | {m:.4g} | {ratio} | {again} "
                     f"| {'yes' if c['feasible'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)

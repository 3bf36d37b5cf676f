"""Multiple-choice knapsack solvers: one option per unit, the most value that fits a budget.

Pure functions on plain numbers (no model, no oracle), used by the
``latency-knapsack`` searcher (``hwprune.agents.latency_knapsack``):

- :func:`solve_mck`: one budget. Dynamic programming over the budget cut into
  ``bins`` equal parts; each option's cost is rounded *up* to whole parts, so
  the choice returned never exceeds the capacity. Where every cost is a whole
  number and the budget spans no more than ``bins`` of them, the parts are
  single units of cost and the answer is the exact optimum.
- :func:`solve_mck_lagrangian`: several budgets. The first is the knapsack's
  capacity; every other one is folded into the objective as
  ``value - multiplier * cost`` (a Lagrangian relaxation), each multiplier the
  smallest that brings its budget within bound, found by bisection (one
  multiplier after the other, a few rounds where there are several).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MckSolution", "solve_mck", "solve_mck_lagrangian", "total"]

#: Rounds of one-multiplier-at-a-time bisection when several budgets are folded in.
LAGRANGE_ROUNDS = 4
#: Bisection steps per multiplier.
LAGRANGE_STEPS = 30


def _tables(rows: Sequence[Sequence[float]], what: str) -> list[np.ndarray]:
    out = []
    for u, row in enumerate(rows):
        a = np.asarray(row, dtype=np.float64).reshape(-1)
        if a.size == 0:
            raise ValueError(f"{what}[{u}] has no option; every unit needs at least one")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what}[{u}] has a value that is not a finite number")
        out.append(a)
    return out


def total(table: Sequence[Sequence[float]], choice: Sequence[int]) -> float:
    """The sum of ``table[u][choice[u]]`` over the units."""
    return float(sum(float(row[i]) for row, i in zip(table, choice, strict=True)))


def solve_mck(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[float]],
    capacity: float,
    *,
    bins: int = 4096,
) -> tuple[int, ...] | None:
    """One option index per unit: the largest total value whose total cost is at most ``capacity``.

    ``values[u][i]`` and ``costs[u][i]`` describe option ``i`` of unit ``u``
    (finite numbers; costs may be any sign). Returns None when even the
    cheapest option of every unit exceeds ``capacity``. Among options of equal
    value the first one listed wins, so the answer is deterministic.
    """
    vals = _tables(values, "values")
    cost = _tables(costs, "costs")
    if len(vals) != len(cost):
        raise ValueError(f"values has {len(vals)} units, costs {len(cost)}")
    for u, (v, c) in enumerate(zip(vals, cost, strict=True)):
        if v.shape != c.shape:
            raise ValueError(f"unit {u}: {v.size} values but {c.size} costs")
    if not vals:
        return ()
    bins = max(1, int(bins))
    base = sum(float(c.min()) for c in cost)
    room = float(capacity) - base
    scale = max(1e-12, abs(float(capacity)), abs(base))
    if room < -1e-9 * scale:
        return None
    room = max(0.0, room)
    rel = [c - c.min() for c in cost]
    span = sum(float(r.max()) for r in rel)
    if span <= room:  # everything fits: each unit's most valuable option
        return tuple(int(np.argmax(v)) for v in vals)
    integral = all(np.allclose(r, np.round(r), rtol=0.0, atol=1e-9) for r in rel)
    if integral and room <= bins:
        step = 1.0
        weights = [np.round(r).astype(np.int64) for r in rel]
        budget = int(math.floor(room + 1e-9))
    else:
        step = room / bins if room > 0 else 1.0
        # Up, so that the discretised sum never hides an excess over the capacity.
        weights = [np.ceil(r / step - 1e-9).astype(np.int64) for r in rel]
        budget = bins if room > 0 else 0
    best = np.zeros(budget + 1, dtype=np.float64)  # best[b]: most value at cost <= b
    picks: list[np.ndarray] = []
    for v, w in zip(vals, weights, strict=True):
        new = np.full(budget + 1, -np.inf)
        pick = np.full(budget + 1, -1, dtype=np.int64)
        for i in range(v.size):
            wi = int(w[i])
            if wi > budget:
                continue
            cand = best[: budget + 1 - wi] + v[i]
            target = new[wi:]
            better = cand > target
            target[better] = cand[better]
            pick[wi:][better] = i
        best = new
        picks.append(pick)
    if not np.isfinite(best[budget]):
        return None
    choice = [0] * len(vals)
    b = budget
    for u in range(len(vals) - 1, -1, -1):
        i = int(picks[u][b])
        choice[u] = i
        b -= int(weights[u][i])
    return tuple(choice)


@dataclass(frozen=True)
class MckSolution:
    """A choice (one option index per unit) and the Lagrange multipliers that gave it.

    ``met``: whether each folded-in budget is within its bound (False where
    even the largest multiplier tried could not bring it there).
    """

    choice: tuple[int, ...]
    multipliers: tuple[float, ...] = ()
    met: tuple[bool, ...] = ()
    totals: tuple[float, ...] = field(default=())


def solve_mck_lagrangian(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[float]],
    capacity: float,
    *,
    others: Sequence[tuple[Sequence[Sequence[float]], float]] = (),
    bins: int = 4096,
) -> MckSolution | None:
    """:func:`solve_mck` under ``capacity``, with every ``(costs_j, bound_j)`` of ``others``
    folded into the objective as ``value - multiplier_j * costs_j``.

    Each multiplier is the smallest (to the bisection's precision) for which
    the choice's total ``costs_j`` is at most ``bound_j``; with several, they
    are found one after the other for ``LAGRANGE_ROUNDS`` rounds. Costs are
    scaled by their range and values by theirs, so multipliers are
    comparable across budgets. Returns None where ``capacity`` itself cannot
    be met (see :func:`solve_mck`).
    """
    vals = _tables(values, "values")
    extra = [(_tables(c, f"others[{j}]"), float(b)) for j, (c, b) in enumerate(others)]
    v_range = max(1e-12, sum(float(v.max() - v.min()) for v in vals))
    scaled = [
        ([t / max(1e-12, sum(float(r.max() - r.min()) for r in table)) for t in table], table, b)
        for table, b in extra
    ]
    lam = [0.0] * len(extra)

    def solve() -> tuple[int, ...] | None:
        objective = [v / v_range for v in vals]
        for m, (norm, _, _) in zip(lam, scaled, strict=True):
            if m:
                objective = [o - m * n for o, n in zip(objective, norm, strict=True)]
        return solve_mck(objective, costs, capacity, bins=bins)

    choice = solve()
    if choice is None:
        return None

    def fits(j: int, ch: tuple[int, ...]) -> bool:
        table, bound = scaled[j][1], scaled[j][2]
        return total(table, ch) <= bound + 1e-9 * max(1.0, abs(bound))

    for _ in range(LAGRANGE_ROUNDS if len(extra) > 1 else 1):
        changed = False
        for j in range(len(extra)):
            if fits(j, choice):
                continue
            lo, hi = lam[j], max(1.0, 2.0 * lam[j])
            lam[j] = hi
            ch = solve()
            while ch is not None and not fits(j, ch) and hi < 2.0**40:
                lo, hi = hi, hi * 2.0
                lam[j] = hi
                ch = solve()
            best = ch
            for _ in range(LAGRANGE_STEPS):
                lam[j] = (lo + hi) / 2.0
                mid = solve()
                if mid is not None and fits(j, mid):
                    hi, best = lam[j], mid
                else:
                    lo = lam[j]
            lam[j] = hi
            if best is not None and best != choice:
                choice, changed = best, True
        if not changed:
            break
    met = tuple(fits(j, choice) for j in range(len(extra)))
    return MckSolution(
        choice=choice,
        multipliers=tuple(lam),
        met=met,
        totals=tuple(total(t, choice) for _, t, _ in scaled),
    )

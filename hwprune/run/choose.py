"""Which logged candidate ships: rank, confirm, rescue, repair. The one rule every path follows.

A searcher proposes candidates and the evaluator scores and logs them; what ships is
decided here, from the outcomes alone, the same way for ``hwprune.prune``, ``hwprune
prune``, a resumed run and the benchmarks:

1. rank (:func:`rank_feasible`): the most accurate feasible candidates first; within
   sampling noise of each other, the least pruned first; candidates at chance after
   every informed one, the largest first;
2. confirm (:func:`confirm_best`): a search value rests on one measurement, so the
   first ``CONFIRM_TOP`` of the ranking are measured again, afresh, and the first whose
   re-measurement meets every budget is chosen;
3. rescue (:func:`rescue`): if the most accurate failed its re-measurement and the one
   confirmed is clearly less accurate, the failed one scaled down to a margin competes;
4. repair (:func:`repair`): none confirmed, the most accurate candidate is scaled down
   until every budget holds, measuring every value.

The final proof's repair (:func:`repair_candidate`, after fine-tuning) ranks by the same rule.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hwprune.evaluate.evaluator import Evaluator, Outcome, accuracy_tolerance

log = logging.getLogger(__name__)

__all__ = [
    "CONFIRM_TOP",
    "DEFERRED_LIMIT",
    "Choice",
    "choose_candidate",
    "confirm_best",
    "rank_feasible",
    "ranking",
    "repair",
    "repair_candidate",
    "repair_limit",
    "rescue",
]

# How many of rank_feasible's first candidates the final choice re-measures (confirm_best).
CONFIRM_TOP = 5

# How many candidates deferred by the latency surrogate the final choice may measure and pass
# over (confirm_best): one call each.
DEFERRED_LIMIT = 20


@dataclass(frozen=True)
class Choice:
    """The candidate that ships (None: no allowed policy met the budgets), the records of
    every re-measurement that decided it, and whether the repair step made it."""

    best: Outcome | None
    confirmations: list[dict[str, Any]] = field(default_factory=list)
    repaired: bool = False


def ranking(evaluator: Evaluator) -> dict[str, Any]:
    """:func:`rank_feasible`'s ``samples`` and ``floor`` for the outcomes of ``evaluator``."""
    return {"samples": evaluator.eval_samples, "floor": evaluator.score_floor}


def rank_feasible(
    outcomes: Sequence[Outcome],
    *,
    samples: int,
    undecided: bool = False,
    floor: float | None = None,
) -> list[Outcome]:
    """The distinct feasible outcomes, in the order the final choice considers them.

    The most accurate first, except that a proxy accuracy is a sample estimate:
    outcomes within :func:`~hwprune.evaluate.accuracy_tolerance` of the most accurate
    one count as tied with it, and of those the least pruned (the largest worst cost:
    the closest to its bounds) comes first. The rest are ranked the same way, group
    by group.

    ``floor`` (:func:`~hwprune.evaluate.chance_floor`): outcomes scored at or below it
    are at chance. A deep net cut hard sits there before fine-tuning, and its proxy
    then ranks noise: a 2-channel floor model can score a few points above a
    model ten times its size. They come after every outcome above the floor,
    all tied, the one keeping the most parameters first (then the closest to
    its bounds): fine-tuning recovers far more from the larger model.

    A raced outcome (:attr:`Outcome.raced`: its score stopped early, on fewer images, once it
    was clearly below a feasible candidate scored in full) comes after every full score above
    the floor; at or below it, it is ranked by size as the others.

    ``undecided``: rank the outcomes whose verdict the surrogate deferred
    (:attr:`Outcome.undecided`) with the feasible ones; the final choice measures
    them before it may choose one. Within a tie group those predicted over a bound
    come after the rest, the closest to their bounds first: each is more likely
    infeasible than not, and measuring it costs a call. (Without predictions
    every ranked outcome is within its bounds and the order is as above.)
    """
    seen: set[str] = set()
    pool: list[Outcome] = []
    for o in outcomes:
        if (o.feasible or (undecided and o.undecided)) and o.key not in seen:
            seen.add(o.key)
            pool.append(o)
    over = lambda o: o.max_cost > 1.0  # noqa: E731
    chance: list[Outcome] = []
    if floor is not None:
        # At chance: scored at or below the floor, or stopped by a race as at chance.
        at = {o.key for o in pool if o.accuracy <= floor or o.raced == "chance"}
        chance = [o for o in pool if o.key in at]
        pool = [o for o in pool if o.key not in at]
    # A raced score (stopped early, clearly below a feasible candidate scored in full) is an
    # estimate on fewer images: those come after every full score above the floor.
    ranked = _tie_groups([o for o in pool if o.raced is None], samples, over)
    ranked += _tie_groups([o for o in pool if o.raced is not None], samples, over)
    chance.sort(
        key=lambda o: (
            over(o),
            o.max_cost if over(o) else -(o.params or 0),
            -o.max_cost,
            -o.accuracy,
        )
    )
    return ranked + chance


def _tie_groups(
    pool: list[Outcome], samples: int, over: Callable[[Outcome], bool]
) -> list[Outcome]:
    """``pool`` the most accurate first, in groups tied within the sampling tolerance."""
    ranked: list[Outcome] = []
    while pool:
        top = max(o.accuracy for o in pool)
        tol = accuracy_tolerance(top, samples)
        tied = [o for o in pool if o.accuracy >= top - tol]
        # Within bounds: the least pruned first. Predicted over a bound: after them, the
        # closest to its bound first.
        tied.sort(key=lambda o: (over(o), o.max_cost if over(o) else -o.max_cost, -o.accuracy))
        ranked.extend(tied)
        keys = {o.key for o in tied}
        pool = [o for o in pool if o.key not in keys]
    return ranked


def choose_candidate(
    *,
    space: Any,
    evaluator: Evaluator,
    outcomes: Sequence[Outcome] | None = None,
    confirm: int = CONFIRM_TOP,
    repair_infeasible: bool = True,
    evaluate: Callable[[Any], Outcome] | None = None,
    answer: str | None = None,
) -> Choice:
    """The candidate that ships, of ``outcomes`` (default: every candidate ``evaluator`` holds,
    those read back from its episodes log included).

    ``answer``: the key of the candidate the searcher itself answers with, where its answer
    is not a ranking of candidates (``latency-knapsack``: the most importance that fits the
    bound, ``extra["answer"]``). It ships if its fresh re-measurement meets every budget;
    else the rule below decides among the rest.

    The first of :func:`rank_feasible` whose fresh re-measurement meets every budget
    (:func:`confirm_best`, at most ``confirm`` tried; 0 ships the first ranked unconfirmed),
    or a better one :func:`rescue` makes of a candidate that failed it. None confirmed and
    ``repair_infeasible``: :func:`repair` from the most accurate candidate, every value
    measured; its evaluations go through ``evaluate`` (default ``evaluator.evaluate``: a
    searcher passes its budget counter, so they are recorded with its own).
    """
    pool = list(evaluator.history if outcomes is None else outcomes)
    records: list[dict[str, Any]] = []
    own = next((o for o in pool if answer is not None and o.key == answer and o.feasible), None)
    if own is not None:
        if confirm <= 0:
            return Choice(best=own)
        # A searcher that re-measured its answer as the final proof measures (the median of
        # fresh calls, logged) has confirmed it: one more median would only add a coin toss.
        seen = evaluator.remeasured(own.key)
        if seen is not None and all(c.name in seen for c in evaluator.constraints):
            ok = all(c.met(seen[c.name]) for c in evaluator.constraints)
            record = _record(own, dict(own.values), seen, "answer", ok)
            if ok:
                return Choice(best=own, confirmations=[record])
            records.append(record)
        else:
            best, records = confirm_best(space, evaluator, [own], top=1)
            if best is not None:
                return Choice(best=best, confirmations=records)
        log.info("the searcher's answer %s failed its re-measurement; the most accurate "
                 "confirmed candidate ships", own.key)  # fmt: skip
        pool = [o for o in pool if o.key != own.key]
    if confirm > 0:
        best, more = confirm_best(space, evaluator, pool, top=confirm)
        records += more
        best = rescue(space, evaluator, best, records)
    else:
        ranked = rank_feasible(pool, **ranking(evaluator))
        best = ranked[0] if ranked else None
    if best is not None or not repair_infeasible:
        return Choice(best=best, confirmations=records)
    start = max(pool or evaluator.history, key=lambda o: o.accuracy, default=None)
    with evaluator.measured_only():
        best = repair(space, evaluate or evaluator.evaluate, start.policy if start else None)
    return Choice(best=best, confirmations=records, repaired=best is not None)


def confirm_best(
    space: Any, evaluator: Evaluator, outcomes: Sequence[Outcome], *, top: int = CONFIRM_TOP
) -> tuple[Outcome | None, list[dict[str, Any]]]:
    """The best feasible outcome that a fresh measurement also finds feasible.

    Tries the first ``top`` distinct feasible outcomes in the order of
    :func:`rank_feasible` (most accurate first; within sampling noise of each other,
    least pruned first); returns (outcome or None, one record per re-measurement with
    its values and verdict).

    Outcomes whose verdict the latency surrogate deferred (their predicted
    interval straddled a bound: :attr:`~hwprune.evaluate.Outcome.undecided`) are
    ranked with them. Such a one is first measured as a search candidate is (once,
    logged, ``stage`` "measured"): if that says infeasible it is passed over without
    counting against ``top``, else it is re-measured like the rest. At most
    ``DEFERRED_LIMIT`` are passed over: each costs one call, and a search whose
    unsure candidates outrank its feasible ones by that many has a surrogate too
    unsure to save anything. Any other predicted value is measured the same way before its
    confirmation, so the outcome returned holds only measured values.
    """
    ranked = rank_feasible(outcomes, **ranking(evaluator), undecided=True)
    records: list[dict[str, Any]] = []
    tried = passed_over = 0
    for o in ranked:
        if tried >= max(0, int(top)) or passed_over >= DEFERRED_LIMIT:
            break
        if o.predicted:
            search_values = dict(o.values)
            with evaluator.measured_only():
                o = evaluator.evaluate(o.policy)  # its predicted values measured, once
            if not o.feasible:
                passed_over += 1
                records.append(_record(o, search_values, dict(o.values), "measured", False))
                log.info("candidate %s (accuracy %.4f), deferred by the surrogate, measured "
                         "infeasible: %s", o.key, o.accuracy, o.values)  # fmt: skip
                continue
        tried += 1
        measured = evaluator.remeasure(space.apply(o.policy))
        values = {c.name: float(measured[c.name].value) for c in evaluator.constraints}
        ok = all(c.met(values[c.name]) for c in evaluator.constraints)
        records.append(_record(o, dict(o.values), values, "confirmed", ok))
        if ok:
            return o, records
        log.info("candidate %s (accuracy %.4f) was feasible once but not when re-measured: %s",
                 o.key, o.accuracy, values)  # fmt: skip
    return None, records


def _record(
    o: Outcome, search_values: dict[str, float], values: dict[str, float], stage: str, ok: bool
) -> dict[str, Any]:
    """One re-measurement, as ``extra["confirmations"]`` lists it."""
    return {"key": o.key, "accuracy": float(o.accuracy), "search_values": search_values,
            "values": values, "stage": stage, "confirmed": ok}  # fmt: skip


def rescue(
    space: Any, evaluator: Evaluator, best: Outcome | None, confirmations: list[dict[str, Any]]
) -> Outcome | None:
    """``best``, or the most accurate candidate that failed its confirmation made feasible
    with a margin, whichever ranks first.

    A candidate near its bound can fail its re-measurement by noise (a busy machine); the
    next one in rank order may be far smaller and far less accurate (a bisection leaves one
    candidate near the bound and the rest near the floor). Then, as the final proof's
    repair does, the failed candidate is scaled down until its search value is below the
    bound by the margin the re-measurement asks for; the result is confirmed like any
    candidate and shipped if it ranks above ``best``. Appends its confirmation records.
    """
    failed = [r for r in confirmations if r.get("stage") == "confirmed" and not r["confirmed"]]
    if not failed:
        return best
    top = evaluator.outcome(failed[0]["key"])
    if top is None:
        return best
    samples, floor = evaluator.eval_samples, evaluator.score_floor
    # At chance (``rank_feasible``'s floor) accuracies say nothing and the larger model leads:
    # scaling it down to a margin may still beat the confirmed one.
    if (
        best is not None
        and (floor is None or top.accuracy > floor)
        and best.accuracy >= top.accuracy - accuracy_tolerance(top.accuracy, samples)
    ):
        return best
    worst = max(c.cost(failed[0]["values"][c.name]) for c in evaluator.constraints)
    tried = {r["key"] for r in failed}  # (the repair's bisection starts at the floor model)
    rescued = repair_candidate(evaluator, space, top, worst=worst, tried=tried)
    if rescued is None or (best is not None and rescued.key == best.key):
        return best
    confirmed, records = confirm_best(space, evaluator, [rescued], top=1)
    confirmations.extend({**r, "stage": "rescued"} for r in records)
    if confirmed is None:
        return best
    log.info("candidate %s (accuracy %.4f) failed its confirmation; scaled down to a margin: "
             "%s (accuracy %.4f)", top.key, top.accuracy, confirmed.key,
             confirmed.accuracy)  # fmt: skip
    if best is None:
        return confirmed
    return rank_feasible([confirmed, best], **ranking(evaluator))[0]


def repair(
    space: Any, evaluate: Callable[[Any], Outcome], policy: Any | None, *, steps: int = 8
) -> Outcome | None:
    """Scale a policy's pruning up until the oracles call it feasible (bisection on the scale).

    keep(s) = min_keep + s * (keep - min_keep) for s in [0, 1]: s=1 is the
    policy itself, s=0 the smallest allowed model. Returns the feasible outcome
    with the largest s found, or None if even the smallest allowed model fails.
    """
    from hwprune.space import Policy

    if policy is None:
        policy = Policy.dense(space)
    min_keep = float(space.min_keep)

    def scaled(s: float) -> Any:
        keep = tuple(min_keep + s * (k - min_keep) for k in policy.keep)
        return dataclasses.replace(policy, keep=keep)

    smallest = evaluate(scaled(0.0))
    if not smallest.feasible:
        return None
    lo, hi, best = 0.0, 1.0, smallest
    for _ in range(steps):
        mid = (lo + hi) / 2
        out = evaluate(scaled(mid))
        if out.feasible:
            lo, best = mid, out
        else:
            hi = mid
    return best


def repair_limit(failed: Outcome, worst: float) -> float:
    """The cost (value / bound, every budget) a replacement for ``failed`` must have been
    measured at, ``worst`` being the failed model's largest re-measured cost: the search
    value scaled by how far the re-measurement moved it, with 2% to spare
    (:func:`repair_candidate`)."""
    return 0.98 * failed.max_cost / max(worst, 1.0)


def repair_candidate(
    evaluator: Evaluator, space: Any, failed: Outcome, *, worst: float, tried: set[str]
) -> Outcome | None:
    """The best of: the earlier candidates with more margin, and the failed policy scaled
    down until it has that margin.

    ``worst`` is the failed model's largest re-measured cost. Timing noise is a
    factor (a busy machine slows every model alike), so the margin is one too:
    the failed model measured ``worst / failed.max_cost`` times its search value,
    and a replacement must have been measured that much under its bounds, with
    2% to spare. Earlier candidates with that margin may all be far smaller (a
    bisection leaves one near the bound and the rest near the floor), while a
    slightly smaller version of the failed policy usually keeps its accuracy;
    the scaling costs a few evaluations, and repairs are rare. Every value a repair
    looks at is measured (none predicted by the surrogate).

    Best: the first of :func:`rank_feasible`, the rule the search's own choice
    follows (most accurate; within sampling noise of it, the least pruned).
    """
    limit = repair_limit(failed, worst)
    pool = [
        o
        for o in evaluator.history
        if o.feasible and not o.predicted and o.key not in tried and o.max_cost <= limit
    ]

    def strict(policy: Any) -> Outcome:
        outcome = evaluator.evaluate(policy)
        ok = outcome.feasible and outcome.max_cost <= limit and outcome.key not in tried
        return dataclasses.replace(outcome, feasible=ok)

    with evaluator.measured_only():
        found = repair(space, strict, failed.policy)
    if found is not None:
        pool.append(evaluator.outcome(found.key) or found)
    if not pool:
        return None
    return rank_feasible(pool, **ranking(evaluator))[0]

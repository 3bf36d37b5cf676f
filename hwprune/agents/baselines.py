"""Baselines every RL searcher must beat: uniform ratio, global magnitude, random search.

``uniform`` and ``global-magnitude`` each reduce the policy to one number (a
keep ratio, a global pruning ratio) and find, by bisection on the oracles, the
largest one that meets the budgets; ``random`` draws policies until the
evaluation budget is spent. All are seeded and deterministic given the seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hwprune.agents.base import BudgetedEvaluator, Searcher
from hwprune.agents.registry import SEARCHERS
from hwprune.errors import ConfigError
from hwprune.evaluate import Outcome

log = logging.getLogger(__name__)

__all__ = [
    "UniformSearch",
    "GlobalMagnitudeSearch",
    "RandomSearch",
    "bisect_largest_feasible",
    "ANCHORS",
    "anchor_start",
    "KnapsackStart",
    "knapsack_anchor",
    "start_anchor",
    "uniform_anchor",
    "channel_magnitudes",
    "global_keep",
]


def _policy_cls() -> Any:
    from hwprune.space import Policy

    return Policy


def _positive(name: str, value: Any, *, upper: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not v > 0 or (upper is not None and v > upper):
        bound = f" and at most {upper:g}" if upper is not None else ""
        raise ConfigError(f"{name} must be above 0{bound}, got {value!r}")
    return v


#: The bisection searchers' default width of the final interval (``tolerance``).
TOLERANCE = 0.005


def bisect_largest_feasible(
    make_policy: Callable[[float], Any],
    evaluate: BudgetedEvaluator,
    *,
    space: Any,
    lo: float,
    hi: float,
    tolerance: float = TOLERANCE,
    width: int = 1,
) -> Outcome | None:
    """Largest x in [lo, hi] whose policy ``make_policy(x)`` is feasible, by bisection.

    Assumes cost grows with x (more kept, more cost). Evaluates ``hi`` first
    (done if feasible), then ``lo`` (nothing feasible if not), then halves the
    interval until it is narrower than ``tolerance``, the two ends give the
    same pruned shape, or the evaluation budget runs out. A midpoint whose
    pruned shape equals an end's shape takes that end's verdict without an
    evaluation. Returns the feasible outcome at the largest x found, or None.

    ``width`` > 1 (an evaluator that works on several candidates at once)
    evaluates ``width`` points at a time: ``hi`` and ``lo`` together, then the
    interval cut into ``width + 1`` equal parts (so ``width=1`` is the
    bisection above, point for point).
    """
    width = max(1, int(width))
    if width == 1 or evaluate.budget - evaluate.used < 2:
        top = evaluate(make_policy(hi))
        if top.feasible or evaluate.exhausted:
            return top if top.feasible else None
        bottom = evaluate(make_policy(lo))
    else:
        top, bottom = evaluate.evaluate_many([make_policy(hi), make_policy(lo)])
        if top.feasible:
            return top
    if not bottom.feasible:
        log.info("bisection: even the smallest policy (x=%.4g) is infeasible", lo)
        return None
    keys = {lo: bottom.key, hi: top.key}
    best = bottom
    while hi - lo > tolerance and keys[lo] != keys[hi] and not evaluate.exhausted:
        room = max(1, evaluate.budget - evaluate.used)
        n = min(width, room)
        verdicts: dict[float, bool] = {}
        asked: list[tuple[float, Any]] = []
        for i in range(1, n + 1):
            x = lo + (hi - lo) * i / (n + 1)
            policy = make_policy(x)
            key = space.shape_key(policy)
            keys[x] = key
            if key == keys[lo]:
                verdicts[x] = True
            elif key == keys[hi]:
                verdicts[x] = False
            else:
                asked.append((x, policy))
        outcomes = evaluate.evaluate_many([p for _, p in asked]) if asked else []
        found: dict[float, Outcome] = {}
        for (x, _), out in zip(asked, outcomes, strict=True):
            verdicts[x] = out.feasible
            keys[x] = out.key
            found[x] = out
        # The largest feasible point below the smallest infeasible one bounds the new interval.
        for x in sorted(verdicts):
            if not verdicts[x]:
                hi = x
                break
            lo = x
            best = found.get(x, best)
    log.info("bisection: largest feasible x=%.4g (interval %.4g..%.4g)", lo, lo, hi)
    return best


def bisection_evaluations(tolerance: float, *, span: float = 1.0) -> int:
    """The most candidates :func:`bisect_largest_feasible` evaluates one at a time over an
    interval ``span`` wide: both ends, then one midpoint per halving until the interval is
    narrower than ``tolerance``."""
    return 2 + max(0, math.ceil(math.log2(span / tolerance)))


def uniform_anchor(
    space: Any, evaluate: BudgetedEvaluator, *, tolerance: float = 0.02, width: int = 1
) -> float | None:
    """The largest uniform keep ratio that meets the budgets (coarse bisection), or None.

    RL searchers start from it (``LayerPruningEnv(anchor=...)``) so that their
    first policies lie on the budget's boundary; the evaluations it spends
    (about log2(1/tolerance) + 2) count against the searcher's budget, and
    its candidates are part of the search's history like any other.
    """
    policy_cls = _policy_cls()
    min_keep = float(space.min_keep)
    best = bisect_largest_feasible(
        lambda k: policy_cls.uniform(space, k),
        evaluate,
        space=space,
        lo=min_keep,
        hi=1.0,
        tolerance=tolerance,
        width=width,
    )
    if best is None:
        return None
    return float(best.policy.keep[0])


#: Where an RL searcher's episodes start (its ``anchor`` option): the largest uniform keep
#: ratio that meets the budgets, or the latency knapsack's per-unit policy.
ANCHORS = ("uniform", "knapsack")


def anchor_start(anchor: bool | str) -> str | None:
    """An RL searcher's ``anchor`` option as the start it names (None: no anchor)."""
    if anchor is True:
        return "uniform"
    if anchor is False or anchor is None:
        return None
    if anchor in ANCHORS:
        return str(anchor)
    raise ConfigError(f"anchor must be true, false or one of {', '.join(ANCHORS)}, got {anchor!r}")


def knapsack_anchor(
    space: Any, evaluate: BudgetedEvaluator, *, staircase: Any = None, seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> tuple[float, ...] | None:  # fmt: skip
    """The latency knapsack's per-unit keep ratios (``hwprune.agents.latency_knapsack``), or
    None where no solution meets the budgets.

    The knapsack's whole-model measurements are evaluations of the search (they count
    against its budget and are in its history); of the feasible ones, the start is the one
    closest to its bounds (the knapsack's answer: the most importance the budget holds).
    ``extra`` gets the knapsack's record under ``knapsack``.
    """
    from hwprune.agents.latency_knapsack import LatencyKnapsackSearch

    first = len(evaluate.outcomes)
    solver = LatencyKnapsackSearch(seed=seed, staircase=staircase)
    try:
        solver._run(space, evaluate, checkpoint_dir=None)
    except ConfigError as exc:  # an infeasible bound: the searcher goes on without an anchor
        log.warning("the latency knapsack found no start: %s", exc)
        return None
    finally:
        if extra is not None and "knapsack" in solver.extra:
            extra["knapsack"] = solver.extra["knapsack"]
    feasible = [o for o in evaluate.outcomes[first:] if o.feasible]
    if not feasible:
        return None
    best = max(feasible, key=lambda o: (o.max_cost, o.accuracy))
    # A unit's fewest channels can sit a little under ``min_keep`` of them (counts are
    # whole): as an anchor, the ratio is the floor the agent's actions may reach.
    floor = float(space.min_keep)
    return tuple(min(1.0, max(floor, float(k))) for k in best.policy.keep)


class KnapsackStart:
    """What an RL searcher started from the knapsack's policy (``anchor="knapsack"``) adds:
    the run probes the latency staircase for it, and its report shows the knapsack's start."""

    #: The run probes the latency staircase for this searcher whatever its ``round_to``.
    needs_staircase: ClassVar[bool] = True

    @classmethod
    def report_section(cls, extra: Mapping[str, Any]) -> str:
        from hwprune.agents.latency_knapsack import knapsack_section

        return knapsack_section(extra) if "knapsack" in extra else ""


def start_anchor(
    space: Any,
    evaluate: BudgetedEvaluator,
    *,
    start: str | None = "uniform",
    staircase: Any = None,
    seed: int = 0,
    who: str = "search",
    extra: dict[str, Any] | None = None,
) -> float | tuple[float, ...] | None:
    """An RL searcher's anchor: None if ``start`` is None; the largest uniform keep ratio that
    meets the budgets (:func:`uniform_anchor`) for "uniform"; the latency knapsack's per-unit
    keep ratios (:func:`knapsack_anchor`) for "knapsack". ``extra`` gets ``anchor``,
    ``anchor_start`` and ``anchor_calls`` (how many of the history's first outcomes finding
    it took)."""
    calls = evaluate.calls
    anchor: float | tuple[float, ...] | None = None
    if start == "uniform":
        anchor = uniform_anchor(space, evaluate)
    elif start == "knapsack":
        anchor = knapsack_anchor(space, evaluate, staircase=staircase, seed=seed, extra=extra)
    if start is not None:
        if anchor is None:
            log.warning("no %s policy meets the budgets; %s searches without an anchor",
                        start, who)  # fmt: skip
        else:
            log.info("%s anchored at the %s policy %s", who, start, anchor)
    if extra is not None:
        extra["anchor"] = list(anchor) if isinstance(anchor, tuple) else anchor
        extra["anchor_start"] = start
        extra["anchor_calls"] = evaluate.calls - calls
    return anchor


@SEARCHERS.register("uniform")
class UniformSearch(Searcher):
    """One keep ratio for every unit: the largest one that meets the budgets, by bisection.

    Options: ``tolerance`` (width of the final keep interval, default 0.005).
    Spends only the evaluations the bisection needs (about log2(1/tolerance) + 2).
    """

    name = "uniform"

    def __init__(self, *, seed: int = 0, tolerance: float = TOLERANCE, **options: Any) -> None:
        super().__init__(seed=seed, **options)
        self.tolerance = _positive("tolerance", tolerance, upper=1.0)

    @classmethod
    def candidates_at_most(cls, evaluations: int) -> int:
        """Both ends of the keep interval and one midpoint per halving (default tolerance)."""
        return min(int(evaluations), bisection_evaluations(TOLERANCE))

    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        self.extra["keep"] = uniform_anchor(
            space, evaluate, tolerance=self.tolerance, width=evaluate.width
        )


# ---------------------------------------------------------------- global magnitude
def _module(model: Any, name: str) -> Any:
    return dict(model.named_modules()).get(name)


def channel_magnitudes(space: Any, *, p: int = 2) -> list[np.ndarray]:
    """Per-channel magnitude of every unit, normalised by the unit's mean (Torch-Pruning style).

    For a channel space: a channel's score is the Lp norm of every weight that
    goes with it in its group (the producing layers' output filters, their
    batch-norm scale and bias, the consuming layers' input slices), summed over
    the group's layers, then divided by the unit's mean score so that units of
    different sizes and scales compete fairly in one global ranking.

    For a weight space: the absolute values of every weight of each layer (no
    normalisation: classic global magnitude pruning of weights).
    """
    if space.granularity == "weight":
        return _weight_magnitudes(space)
    return _group_channel_magnitudes(space, p=p)


def _weight_magnitudes(space: Any) -> list[np.ndarray]:
    out = []
    for unit in space.units:
        values = []
        for name in unit.layers:
            m = _module(space.model, name)
            if m is not None and getattr(m, "weight", None) is not None:
                values.append(m.weight.detach().abs().flatten().cpu().numpy())
        out.append(np.concatenate(values).astype(np.float64) if values else np.zeros(1))
    return out


def _group_channel_magnitudes(space: Any, *, p: int) -> list[np.ndarray]:
    """Trace the dense model once with Torch-Pruning and score every unit's group."""
    import torch
    import torch_pruning as tp
    from torch import nn

    model = space.model
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in space.output_layers if n in modules]
    was_training = model.training
    model.eval()
    try:
        dg = space.dependency_graph()  # traced with the space's inputs and options
        groups = list(
            dg.get_all_groups(
                ignored_layers=ignored, root_module_types=(nn.modules.conv._ConvNd, nn.Linear)
            )
        )
        imp = tp.importance.MagnitudeImportance(p=p, group_reduction="mean", normalizer="mean")
        by_unit: dict[str, np.ndarray] = {}
        ids = {u.id for u in space.units}
        for group in groups:
            producers = [
                names.get(dep.target.module)
                for dep, _ in group
                if isinstance(dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))
                and dg.is_out_channel_pruning_fn(dep.handler)
            ]
            match = [n for n in producers if n in ids and n not in by_unit]
            if not match:
                continue
            with torch.no_grad():
                s = imp(group)
            if s is not None:
                by_unit[match[0]] = s.detach().float().cpu().numpy().astype(np.float64)
    finally:
        model.train(was_training)
    out = []
    for unit in space.units:
        s = by_unit.get(unit.id)
        if s is None or s.shape[0] != unit.channels:
            log.warning("global-magnitude: no group scores for unit %s; using its layers", unit.id)
            return _layer_channel_magnitudes(space, p=p)
        out.append(s)
    return out


def _layer_channel_magnitudes(space: Any, *, p: int) -> list[np.ndarray]:
    """Fallback from Unit.layers: output filters of producers and BN scales with the unit's width."""
    import torch
    from torch import nn

    out = []
    for unit in space.units:
        total = np.zeros(unit.channels, dtype=np.float64)
        found = 0
        for name in unit.layers:
            m = _module(space.model, name)
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() == 0:
                continue
            w = w.detach().float().cpu()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and w.shape[0] == unit.channels:
                local = w.flatten(1).norm(p=p, dim=1)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and w.shape[0] == unit.channels:
                local = w.abs() ** p if p != 1 else w.abs()
            else:
                continue
            local = local.numpy().astype(np.float64)
            total += local / max(local.mean(), 1e-12)
            found += 1
        if not found:
            total[:] = 1.0
        out.append(total / max(total.mean(), 1e-12))
    return out


def global_keep(
    scores: Sequence[np.ndarray], ratio: float, *, min_keep: float = 0.0
) -> tuple[float, ...]:
    """Per-unit keep ratios after removing the lowest ``ratio`` of all scores globally.

    Each unit keeps at least ``min_keep`` of its entries. Ties at the
    threshold are resolved by removing exactly the global count.
    """
    sizes = [len(s) for s in scores]
    total = sum(sizes)
    flat = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    n_remove = int(round(min(max(ratio, 0.0), 1.0) * total))
    removed = np.zeros(total, dtype=bool)
    if n_remove:
        order = np.argsort(flat, kind="stable")
        removed[order[:n_remove]] = True
    keep = []
    start = 0
    for size in sizes:
        kept = size - int(removed[start : start + size].sum())
        keep.append(max(min_keep, kept / size))
        start += size
    return tuple(min(1.0, k) for k in keep)


@SEARCHERS.register("global-magnitude")
class GlobalMagnitudeSearch(Searcher):
    """Torch-Pruning-style global magnitude pruning; the global ratio found by bisection.

    All channels of all units (or all weights, for a weight space) are ranked
    by group-normalised magnitude; a global ratio removes the lowest-ranked
    ones, which gives each unit its keep ratio. The largest-keep feasible
    ratio is found by bisection. Options: ``tolerance`` (default 0.005),
    ``p`` (norm, default 2).
    """

    name = "global-magnitude"

    def __init__(
        self, *, seed: int = 0, tolerance: float = TOLERANCE, p: int = 2, **options: Any
    ) -> None:
        super().__init__(seed=seed, **options)
        self.tolerance = _positive("tolerance", tolerance, upper=1.0)
        if p not in (1, 2):
            raise ConfigError(f"p must be 1 or 2 (the magnitude norm), got {p!r}")
        self.p = int(p)

    @classmethod
    def candidates_at_most(cls, evaluations: int) -> int:
        """Both ends of the kept fraction and one midpoint per halving (default tolerance)."""
        return min(int(evaluations), bisection_evaluations(TOLERANCE))

    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        min_keep = float(space.min_keep)
        scores = channel_magnitudes(space, p=self.p)
        template = _policy_cls().dense(space)

        def make(keep_fraction: float) -> Any:
            # x is the global fraction kept, so larger x -> more cost, as bisection assumes.
            return template.with_keep(global_keep(scores, 1.0 - keep_fraction, min_keep=min_keep))

        # x=0 is the smallest allowed model (every unit at min_keep), x=1 the dense one.
        best = bisect_largest_feasible(
            make,
            evaluate,
            space=space,
            lo=0.0,
            hi=1.0,
            tolerance=self.tolerance,
            width=evaluate.width,
        )
        self.extra["policy"] = list(best.policy.keep) if best is not None else None


@SEARCHERS.register("random")
class RandomSearch(Searcher):
    """Random policies until the evaluation budget is spent; the best feasible one wins.

    Each draw picks a global level g uniformly in [min_keep, 1] and adds
    independent per-unit noise uniform in [-spread, spread] (clipped to
    [min_keep, 1]), so draws cover the whole range from the smallest allowed
    model to dense while still varying per unit. Options: ``spread`` (0.25).
    """

    name = "random"

    def __init__(self, *, seed: int = 0, spread: float = 0.25, **options: Any) -> None:
        super().__init__(seed=seed, **options)
        self.spread = float(spread)
        if not 0.0 <= self.spread <= 1.0:
            raise ConfigError(f"spread must lie in [0, 1], got {spread!r}")

    def _run(self, space: Any, evaluate: BudgetedEvaluator, *, checkpoint_dir: Path | None) -> None:
        rng = np.random.default_rng(self.seed)
        min_keep = float(space.min_keep)
        template = _policy_cls().dense(space)
        n = len(space.units)
        draws = 0
        while not evaluate.exhausted:
            # Draws do not depend on results: a batch as wide as the evaluator, never more
            # than the budget has left, gives the same sequence as one draw at a time.
            batch = []
            for _ in range(max(1, min(evaluate.width, evaluate.budget - evaluate.used))):
                level = rng.uniform(min_keep, 1.0)
                noise = rng.uniform(-self.spread, self.spread, size=n)
                keep = np.clip(level + noise, min_keep, 1.0)
                batch.append(template.with_keep(tuple(float(k) for k in keep)))
            evaluate.evaluate_many(batch)
            draws += len(batch)
        self.extra["draws"] = draws

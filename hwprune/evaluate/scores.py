"""What a proxy score says: its sampling noise, the floor of chance, the signal a searcher learns.

Shared by the evaluator, the surrogate gate and the final choice, and by nothing else they
depend on: a leaf module.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CHANCE_SHARE",
    "accuracy_tolerance",
    "candidate_params",
    "chance_floor",
    "search_signal",
]

# A proxy score counts as "at chance" (it says nothing of the accuracy after fine-tuning)
# until it is above the task's chance score by this share of the dense model's margin over
# chance (and by sampling noise). Measured (benchmarks/proxy_study.py, ResNet-32 on Fashion-
# MNIST cut to 30% of its latency): with every candidate's bn accuracy under 0.16 against the
# dense model's 0.88, bn ranked the fine-tuned accuracies at Spearman 0.22, parameters kept 0.87.
CHANCE_SHARE = 0.1


def accuracy_tolerance(accuracy: float, samples: int) -> float:
    """How far apart two proxy accuracies on ``samples`` images can be by sampling alone.

    Two standard errors of a proportion at ``accuracy``, and at least one image.
    ``samples`` < 1 (unknown) gives 0: only exact ties.
    """
    import math

    if samples < 1:
        return 0.0
    p = min(max(float(accuracy), 0.0), 1.0)
    return max(2.0 * math.sqrt(p * (1.0 - p) / samples), 1.0 / samples)


def chance_floor(chance: float | None, dense: float | None, samples: int) -> float | None:
    """The proxy score at or below which a candidate counts as at chance (None: no floor).

    ``chance`` is the task's score of a model that knows nothing (the largest class's
    share of the proxy's images), ``dense`` the dense model's score. The floor is chance
    plus the larger of :func:`accuracy_tolerance` at chance and ``CHANCE_SHARE`` of the
    dense model's margin over chance. Without a chance score (a task that does not give
    one, a continuous proxy) there is no floor.
    """
    if chance is None or dense is None:
        return None
    margin = max(float(dense) - float(chance), 0.0)
    return float(chance) + max(accuracy_tolerance(chance, samples), CHANCE_SHARE * margin)


def candidate_params(space: Any, policy: Any, module: Any) -> int:
    """A candidate's size: the parameters it keeps.

    A channel space builds a smaller model, so its parameter count is the size. A weight space
    zeroes weights in a model of the dense shape, where that count is the dense one for every
    candidate; its size is the weights left non-zero (``space.nonzero_params``), or the search
    signal at chance and the final choice's tie-break would see every candidate as dense.
    """
    if space.granularity == "weight":
        return int(space.nonzero_params(policy))
    return sum(p.numel() for p in module.parameters())


def search_signal(
    accuracy: float,
    params: int | None,
    *,
    floor: float | None,
    dense_params: int | None,
    at_chance: bool = False,
) -> float:
    """The score a searcher learns from: the proxy score, or the model's size at chance.

    A candidate scored at or below ``floor`` (:func:`chance_floor`) is at chance, and its
    score is noise: a deep net cut hard sits there before fine-tuning, where parameters
    kept predict the accuracy after fine-tuning far better (proxy study: Spearman 0.87
    against 0.22 for the score on ResNet-32). Such a candidate is given
    ``floor * params / dense_params``: monotone in its size and never above an informed
    candidate's score, the same order the final choice (:func:`hwprune.run.choose.rank_feasible`) uses. Without
    a floor or a parameter count, the proxy score itself. ``at_chance``: the candidate is at
    chance whatever its score (a race stopped it as such, on a few images).
    """
    if floor is None or (accuracy > floor and not at_chance) or not params or not dense_params:
        return float(accuracy)
    return float(floor) * min(float(params) / float(dense_params), 1.0)

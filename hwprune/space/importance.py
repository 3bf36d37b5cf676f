"""Channel importance criteria by name: which channels of a group go first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hwprune.registry import Registry

__all__ = ["IMPORTANCE", "Criterion", "get_criterion"]

# A scorer takes a Torch-Pruning group with full indices and returns one score per root channel.
Scorer = Callable[[object], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A channel-ranking rule: ``build(seed)`` makes the scorer; gradient rules need a calibration batch."""

    name: str
    build: Callable[[int], Scorer]
    needs_gradients: bool = False
    description: str = ""


IMPORTANCE: Registry[Criterion] = Registry("importance criterion")


def _magnitude(p: int) -> Callable[[int], Scorer]:
    def build(seed: int) -> Scorer:
        import torch_pruning as tp

        # Group norm averaged over every coupled layer; no normaliser: only the order matters.
        return tp.importance.MagnitudeImportance(p=p, group_reduction="mean", normalizer=None)

    return build


def _taylor(seed: int) -> Scorer:
    import torch_pruning as tp

    return tp.importance.TaylorImportance(group_reduction="mean", normalizer=None)


def _random(seed: int) -> Scorer:
    generator = torch.Generator().manual_seed(seed)

    def score(group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=generator)

    return score


IMPORTANCE.register("l1", Criterion("l1", _magnitude(1), description="group L1 norm of weights"))
IMPORTANCE.register("l2", Criterion("l2", _magnitude(2), description="group L2 norm of weights"))
IMPORTANCE.register(
    "taylor",
    Criterion(
        "taylor",
        _taylor,
        needs_gradients=True,
        description="first-order Taylor |w * dL/dw| on a calibration batch",
    ),
)
IMPORTANCE.register("random", Criterion("random", _random, description="random order (seeded)"))


def get_criterion(name: str) -> Criterion:
    """The registered criterion ``name`` (l1, l2, taylor, random), with "did you mean" on a typo."""
    return IMPORTANCE.get(name)

"""Gymnasium environments for pruning: layer by layer (constrained RL, AMC) and multi-visit (QLP)."""

from hwprune.envs.layer import ADDITIVE, AdditiveCostModel, LayerPruningEnv, additive_targets
from hwprune.envs.multivisit import DEFAULT_ACTIONS, MultiVisitEnv

__all__ = [
    "ADDITIVE",
    "DEFAULT_ACTIONS",
    "AdditiveCostModel",
    "LayerPruningEnv",
    "MultiVisitEnv",
    "additive_targets",
]

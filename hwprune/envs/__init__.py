"""Gymnasium environments for pruning: layer by layer (constrained RL, AMC) and multi-visit (QLP)."""

from hwprune.envs.layer import ADDITIVE, AdditiveCostModel, LayerPruningEnv, additive_targets

__all__ = ["ADDITIVE", "AdditiveCostModel", "LayerPruningEnv", "additive_targets"]

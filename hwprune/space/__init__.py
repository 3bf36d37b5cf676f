"""What can be pruned: channel groups (physically removed) or weights (zeroed), and policies over them.

Every space implements ``PruneSpace`` (``hwprune.space.protocol``).

Example::

    from hwprune.space import ChannelSpace, Policy

    space = ChannelSpace(model, example_input_shape=(1, 3, 32, 32), round_to=8)
    policy = Policy.uniform(space, 0.5)
    small = space.apply(policy)          # a new, smaller nn.Module
    space.shape_key(policy)              # same key <=> same pruned architecture
"""

from hwprune.space.channel import ChannelSpace, Unit
from hwprune.space.importance import IMPORTANCE, Criterion, get_criterion
from hwprune.space.policy import PATTERNS, Policy
from hwprune.space.protocol import PruneSpace
from hwprune.space.weight import WeightSpace, two_four_mask

__all__ = [
    "IMPORTANCE",
    "PATTERNS",
    "ChannelSpace",
    "Criterion",
    "Policy",
    "PruneSpace",
    "Unit",
    "WeightSpace",
    "get_criterion",
    "two_four_mask",
]

"""Every prune space implements ``PruneSpace``: the attributes and methods searchers read."""

from __future__ import annotations

import pytest
import torch

from hwprune.space import ChannelSpace, Policy, PruneSpace, WeightSpace
from tests.nets import TinyNet

# What the searchers, the evaluator and the run read from any space.
MEMBERS = ("granularity", "pattern", "min_keep", "units", "example_inputs", "example_input_shape",
           "output_layers", "model", "skipped", "dense_params", "dense_macs", "apply",
           "shape_key", "describe", "__len__")  # fmt: skip


def _spaces() -> list[PruneSpace]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    return [
        ChannelSpace(model, example_input_shape=(1, 3, 16, 16)),
        WeightSpace(model, example_input_shape=(1, 3, 16, 16)),
        WeightSpace(model, example_input_shape=(1, 3, 16, 16), pattern="2:4"),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["channel", "weight", "2:4"])
def test_each_space_is_a_prune_space_and_its_members_work(index: int) -> None:
    space = _spaces()[index]
    assert isinstance(space, PruneSpace)
    missing = [name for name in MEMBERS if not hasattr(space, name)]
    assert not missing, f"{type(space).__name__} lacks {missing}"
    policy = Policy.uniform(space, 0.5)
    assert policy.granularity == space.granularity and policy.pattern == space.pattern
    assert len(space) == len(space.units) == len(space.describe()) > 0
    assert space.example_input_shape == (1, 3, 16, 16)
    assert set(space.output_layers) <= {n for n, _ in space.model.named_modules()}
    assert space.shape_key(policy) != space.shape_key(Policy.dense(space))
    assert isinstance(space.apply(policy), torch.nn.Module)


def test_the_channel_space_names_the_layer_that_makes_the_output() -> None:
    channel, weight, _ = _spaces()
    assert channel.output_layers == ("fc",)
    assert weight.output_layers == ()  # zeroing weights keeps every output shape


def test_an_object_without_a_member_is_not_a_prune_space() -> None:
    class Partial:
        granularity, pattern, min_keep, units = "channel", None, 0.1, []

        def apply(self, policy: Policy) -> None: ...

    assert not isinstance(Partial(), PruneSpace)

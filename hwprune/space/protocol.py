"""``PruneSpace``: what every prune space offers the searchers, the evaluator and the run.

``ChannelSpace`` (channels removed) and ``WeightSpace`` (weights zeroed,
unstructured or 2:4) implement it; a new space implements it too and is then
searched like them. It is checked structurally: ``isinstance(space, PruneSpace)``
holds for any object with these attributes and methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

    from hwprune.inputs import ExampleInputs
    from hwprune.space.channel import Skipped, Unit
    from hwprune.space.policy import Policy

__all__ = ["PruneSpace"]


@runtime_checkable
class PruneSpace(Protocol):
    """A model's prunable units and how a ``Policy`` (one keep ratio per unit) prunes it.

    Attributes: ``model`` the dense model (never changed); ``granularity``
    ("channel" or "weight") and ``pattern`` (None, or the weight pattern:
    "unstructured", "2:4") name the policies it takes; ``units`` its prunable
    units in order; ``min_keep`` the smallest fraction a unit keeps;
    ``example_inputs`` what the model is called with (``example_input_shape``
    the first input's shape); ``output_layers`` the layers whose outputs the
    space never prunes; ``skipped`` what was left out, and why; ``dense_params``
    and ``dense_macs`` the dense model's size.
    """

    model: nn.Module
    granularity: str
    pattern: str | None
    min_keep: float
    units: Sequence[Unit]
    example_inputs: ExampleInputs
    example_input_shape: tuple[int, ...]
    output_layers: tuple[str, ...]
    skipped: list[Skipped]
    dense_params: int
    dense_macs: int

    def __len__(self) -> int:
        """The number of units (a policy's length)."""
        ...

    def apply(self, policy: Policy) -> nn.Module:
        """The pruned model: a copy of ``model`` cut as ``policy`` says (``model`` untouched)."""
        ...

    def shape_key(self, policy: Policy) -> str:
        """A key equal for two policies exactly when they build the same pruned model."""
        ...

    def describe(self) -> list[dict[str, Any]]:
        """Per-unit features (index, kind, geometry, MAC and parameter shares)."""
        ...

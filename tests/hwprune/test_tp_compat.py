"""The Torch-Pruning internals ``hwprune.space._tp_compat`` replaces exist in the installed
release, that release lies in the range pyproject.toml pins, and the replacement is undone
when its context ends."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import torch
from torch_pruning.dependency import index_mapping

from hwprune.space import ChannelSpace, Policy
from hwprune.space._tp_compat import (
    PATCHED_CLASSES,
    PATCHED_FUNCTIONS,
    SUPPORTED,
    Unmapped,
    param_names,
    supported_version,
    tolerant_index_mapping,
)

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_pins_the_supported_torch_pruning_range() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [d.replace(" ", "") for d in deps if d.startswith("torch-pruning")]
    assert pinned == [SUPPORTED]


def test_installed_torch_pruning_is_in_the_supported_range() -> None:
    installed = metadata.version("torch-pruning")
    assert supported_version(installed), (
        f"torch-pruning {installed} is outside {SUPPORTED}: check hwprune/space/_tp_compat.py "
        "against it, then widen the range there and in pyproject.toml"
    )


@pytest.mark.parametrize("name", PATCHED_FUNCTIONS)
def test_each_replaced_function_still_exists(name: str) -> None:
    assert callable(vars(index_mapping).get(name)), f"index_mapping.{name} is gone"


@pytest.mark.parametrize("name", PATCHED_CLASSES)
def test_each_capped_mapping_class_still_has_its_call(name: str) -> None:
    cls = vars(index_mapping).get(name)
    assert isinstance(cls, type) and "__call__" in vars(cls), f"index_mapping.{name} is gone"


def test_the_replacement_lives_only_inside_the_context() -> None:
    before = {n: vars(index_mapping)[n] for n in PATCHED_FUNCTIONS}
    calls = {n: vars(vars(index_mapping)[n])["__call__"] for n in PATCHED_CLASSES}
    with tolerant_index_mapping(Unmapped()):
        assert all(vars(index_mapping)[n] is not f for n, f in before.items())
        assert all(vars(vars(index_mapping)[n])["__call__"] is not f for n, f in calls.items())
    assert {n: vars(index_mapping)[n] for n in PATCHED_FUNCTIONS} == before
    assert {n: vars(vars(index_mapping)[n])["__call__"] for n in PATCHED_CLASSES} == calls


class _Scaled(torch.nn.Module):
    """A convolution whose output is scaled by a bare parameter (no layer of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.scale = torch.nn.Parameter(torch.ones(1, 8, 1, 1))
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.conv(x) * self.scale).mean((2, 3)))


def test_a_traced_graph_names_its_unwrapped_parameters() -> None:
    torch.manual_seed(0)
    model = _Scaled().eval()
    space = ChannelSpace(model, example_input_shape=(1, 3, 16, 16),
                         unwrapped_parameters={"scale": 1})  # fmt: skip
    assert param_names(space.dependency_graph())[model.scale] == "scale"
    # The parameter is cut with its convolution: half of the 8 channels stay.
    assert space.apply(Policy.uniform(space, 0.5)).scale.shape == (1, 4, 1, 1)

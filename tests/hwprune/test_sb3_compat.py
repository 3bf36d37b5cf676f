"""The Stable-Baselines3 private method hwprune overrides still exists as overridden, on a
version in the range pyproject.toml pins; each check fails naming the method or the range."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from hwprune.agents._sb3_compat import PRIVATE_OVERRIDES, SB3_VERSIONS, supported

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_installed_stable_baselines3_is_in_the_supported_range() -> None:
    installed = version("stable-baselines3")
    assert installed in SpecifierSet(SB3_VERSIONS), (
        f"stable-baselines3 {installed} is outside {SB3_VERSIONS}, the versions "
        "hwprune/agents/_sb3_compat.py was checked against"
    )
    assert supported(installed)


def test_pyproject_pins_the_supported_range() -> None:
    assert f'"stable-baselines3{SB3_VERSIONS}"' in PYPROJECT.read_text()


def test_supported_reads_versions_against_the_range() -> None:
    low, high = SB3_VERSIONS.split(",")
    assert supported(low.lstrip(">=")) and not supported(high.lstrip("<"))
    assert supported(f"{low.lstrip('>=')}.1") and not supported("1.8.0")
    assert not supported(f"{high.lstrip('<')}.0a1")


@pytest.mark.parametrize(
    ("where", "method", "parameters"),
    PRIVATE_OVERRIDES,
    ids=[f"{where.split(':')[1]}.{method}" for where, method, _ in PRIVATE_OVERRIDES],
)
def test_overridden_private_method_still_exists(
    where: str, method: str, parameters: tuple[str, ...]
) -> None:
    module, name = where.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert method in vars(cls), f"{where} no longer defines {method}"
    found = tuple(inspect.signature(vars(cls)[method]).parameters)
    assert found == parameters, f"{where}.{method} now takes {found}, not {parameters}"

"""Oracles and searchers from another installed package, found by name through entry points.

A tiny package is written to a temporary folder with its ``.dist-info`` (METADATA and
entry_points.txt), as pip would install it, and that folder is put on ``sys.path``:
``importlib.metadata`` finds it there. Its oracle and searcher are then used by name by
``oracles.get_oracle``, ``hwprune measure`` and ``hwprune.prune``, with no registration in
hwprune.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import hwprune
import oracles
from hwprune.agents import SEARCHERS, get_searcher, list_searchers
from hwprune.cli import main
from hwprune.config import default_round_to
from hwprune.errors import ConfigError, UnknownNameError
from oracles.registry import _REGISTRY
from tests.test_cli_measure import write_model
from tests.user_task import FidelityTask, small_net

PACKAGE = "hwprune_testplugin"
ORACLE = "test-plugin-latency"
SEARCHER = "test-plugin-search"

ORACLE_MODULE = '''
"""Latency stand-in: 1e-4 ms per parameter. Imports only oracles, as a device-side plugin would."""

import dataclasses
from typing import ClassVar

import oracles


@dataclasses.dataclass
class ParamLatency(oracles.Oracle):
    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    timed: ClassVar[bool] = True
    devices: ClassVar[tuple[str, ...]] = ("cpu", "npu")
    runtime: ClassVar[str] = "testplugin"
    gpu_devices: ClassVar[tuple[str, ...]] = ("npu",)
    slow_devices: ClassVar[tuple[str, ...]] = ("npu",)
    device: str = "cpu"
    scale: float = 1.0

    def measure(self, model, *, input_shapes=None):
        params = oracles.get_oracle("params").measure(model).value
        return oracles.Measurement(quantity="latency", value=1e-4 * params * self.scale,
                                   unit="ms", oracle=self.spec, statistic="median")


class NotAnOracle:
    pass
'''

SEARCHER_MODULE = '''
"""Uniform keep ratios, largest first, until the evaluation budget is spent."""

from hwprune.agents import Searcher
from hwprune.space import Policy


class UniformSteps(Searcher):
    def _run(self, space, evaluate, *, checkpoint_dir):
        for keep in (1.0, 0.75, 0.5, 0.25):
            if evaluate.exhausted:
                break
            evaluate(Policy.dense(space).with_keep(tuple(keep for _ in space.units)))
'''

ENTRY_POINTS = f"""
[hwprune.oracles]
{ORACLE} = {PACKAGE}.oracle:ParamLatency
test-plugin-broken = {PACKAGE}.oracle:NotAnOracle
test-plugin-missing = {PACKAGE}.no_such_module:Nothing
params = {PACKAGE}.oracle:ParamLatency

[hwprune.searchers]
{SEARCHER} = {PACKAGE}.searcher:UniformSteps
test-plugin-not-a-searcher = {PACKAGE}.oracle:NotAnOracle
"""


@pytest.fixture
def plugin(tmp_path: Path):
    """The package installed into a folder on sys.path; everything forgotten afterwards."""
    site = tmp_path / "site"
    pkg = site / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "oracle.py").write_text(textwrap.dedent(ORACLE_MODULE))
    (pkg / "searcher.py").write_text(textwrap.dedent(SEARCHER_MODULE))
    info = site / f"{PACKAGE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        for name in [k for k in _REGISTRY if k.startswith("test-plugin-")]:
            del _REGISTRY[name]
        for name in (SEARCHER, "test-plugin-not-a-searcher"):
            SEARCHERS.unregister(name)


def test_a_plugin_oracle_is_found_by_name_and_checked(plugin) -> None:
    assert ORACLE in oracles.list_oracles()
    assert PACKAGE + ".oracle" not in sys.modules  # listed, not imported
    oracle = oracles.get_oracle(f"{ORACLE}:npu?scale=0.5")
    assert type(oracle).__name__ == "ParamLatency" and oracle.name == ORACLE
    assert oracle.spec == f"{ORACLE}:npu?scale=0.5"
    # Its capabilities come from its class, not from its name.
    assert oracle.needs_gpu and oracle.slow and oracle.runtime == "testplugin"
    assert not oracles.capabilities(ORACLE).needs_gpu
    assert default_round_to([f"{ORACLE}:npu"]) == 8 and default_round_to([ORACLE]) == 1
    # A built-in name is not taken over; broken entries fail in one sentence when used.
    assert oracles.oracle_class("params").__module__ == "oracles.static"
    with pytest.raises(oracles.OracleSpecError, match=r"not a subclass of oracles\.Oracle"):
        oracles.get_oracle("test-plugin-broken")
    with pytest.raises(oracles.BackendUnavailableError, match="cannot be imported"):
        oracles.get_oracle("test-plugin-missing")


def test_hwprune_measure_uses_a_plugin_oracle(plugin, tmp_path: Path, capsys) -> None:
    model = write_model(tmp_path / "net.onnx")
    assert main(["measure", str(model), "--oracle", ORACLE, "--oracle", "params",
                 "--json", "--no-cache"]) == 0  # fmt: skip
    latency, params = json.loads(capsys.readouterr().out)
    assert latency["oracle"] == f"{ORACLE}:cpu"  # two devices: the spec names the one used
    assert latency["value"] == pytest.approx(1e-4 * params["value"])


def test_a_plugin_searcher_is_found_by_name_and_checked(plugin) -> None:
    assert SEARCHER in list_searchers()
    searcher = get_searcher(SEARCHER, seed=3)
    assert type(searcher).__name__ == "UniformSteps" and searcher.name == SEARCHER
    with pytest.raises(ConfigError, match=r"not a subclass of hwprune\.agents\.Searcher"):
        get_searcher("test-plugin-not-a-searcher")
    with pytest.raises(UnknownNameError, match=f"Did you mean '{SEARCHER}'"):
        get_searcher("test-plugin-serch")


def test_a_run_searches_with_a_plugin_searcher_on_a_plugin_oracle(plugin, tmp_path: Path):
    model = small_net()
    task = FidelityTask(model)
    result = hwprune.prune(model, example_inputs=torch.randn(1, 3, 16, 16),
                           score=task.score, out=tmp_path / "run",
                           budgets=["latency<=10ms"], oracles={"latency": ORACLE},
                           agent=SEARCHER, evaluations=3, round_to=1)  # fmt: skip
    assert result.searcher == SEARCHER and result.all_met
    check = next(b for b in result.budgets if b.quantity == "latency")
    assert check.oracle == f"{ORACLE}:cpu"


def test_without_the_package_the_names_are_unknown() -> None:
    with pytest.raises(oracles.UnknownOracleError, match="unknown oracle"):
        oracles.get_oracle(ORACLE)
    assert SEARCHER not in list_searchers()

"""``round_to='auto'``: a run probes the latency staircase once, searches on it, and keeps it.

A small user module (two channel units) with the real ONNX Runtime oracle on a
short timing protocol: the probe runs and is saved, a second run on the same
machine cache answers it without an oracle call, a resume reads the saved one
back (never probes), the pruned model restores to the same architecture, and
every built count is one the staircase allows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import hwprune
import hwprune.space.staircase as staircase_mod
import oracles
from hwprune.api import _checked
from hwprune.cli import main
from hwprune.config import PruneConfig
from hwprune.errors import ConfigError
from hwprune.evaluate import read_jsonl
from tests.user_task import FidelityTask, small_net

FAST_ORT = "onnxruntime:cpu?threads=1&warmup=2&min_runs=5&max_runs=50&min_time=0.01&max_time=0.5"
# An absolute bound far above the model's latency: met whatever the load on the machine.
RUN = dict(budgets=["latency<=10ms"], oracles={"latency": FAST_ORT}, agent="random", evaluations=3)


def _prune(out: Path, **extra) -> hwprune.PruneResult:
    model = small_net()
    return hwprune.prune(model, example_inputs=torch.randn(1, 3, 16, 16),
                         task=FidelityTask(model), out=out, **RUN, **extra)  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    """One auto run on its own machine cache (module scope: the autouse cache fixture is not set yet)."""
    root = tmp_path_factory.mktemp("auto")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWPRUNE_CACHE", str(root / "machine" / "oracles.sqlite"))
        result = _prune(root / "first")
    return result, root


def test_auto_probes_the_staircase_and_builds_step_tops(first_run) -> None:
    result, root = first_run
    first = root / "first"
    config = json.loads((first / "config.json").read_text())["options"]
    assert config["round_to"] == "auto"  # the default where a latency budget prunes channels
    stairs = staircase_mod.Staircase.load(first / "staircase.json")
    assert stairs.oracle_calls > 0 and {u.unit for u in stairs.units} == {"body.0", "body.3"}
    choices = stairs.choices()

    # Every candidate's built counts are step tops; the log says what was proposed.
    records = [r for r in read_jsonl(first / "episodes.jsonl") if r.get("type") == "candidate"]
    assert records
    for r in records:
        for unit, (proposed, built) in r["channels"].items():
            assert built in choices[unit] and built >= proposed

    # The checkpoint keeps the choices: restore rebuilds the same architecture and outputs.
    meta = torch.load(first / "model.pt", weights_only=True)["meta"]
    assert meta["space"]["channel_choices"] == {k: list(v) for k, v in choices.items()}
    again = hwprune.restore(small_net(), first / "model.pt")
    x = torch.randn(2, 3, 16, 16)
    assert [p.shape for p in again.parameters()] == [p.shape for p in result.model.parameters()]
    torch.testing.assert_close(again(x), result.model.eval()(x))
    report = (first / "report.md").read_text()
    assert "## Channel counts" in report and "staircase_" in report


def test_a_second_run_is_answered_by_the_cache_and_a_resume_never_probes(
    first_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root = first_run
    first = root / "first"
    stairs = staircase_mod.Staircase.load(first / "staircase.json")
    # A second run on the same machine cache: no oracle call, the same choices.
    monkeypatch.setenv("HWPRUNE_CACHE", str(root / "machine" / "oracles.sqlite"))
    _prune(root / "second")
    cached = staircase_mod.Staircase.load(root / "second" / "staircase.json")
    assert cached.oracle_calls == 0 and cached.cached_calls > 0
    assert cached.choices() == stairs.choices()

    # A resume reads staircase.json back and never probes, even with an empty cache.
    monkeypatch.setenv("HWPRUNE_CACHE", str(root / "empty" / "oracles.sqlite"))

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run probed the staircase again")

    monkeypatch.setattr(staircase_mod, "probe_staircase", no_probe)
    model = small_net()
    resumed = hwprune.resume(first, model=model, example_inputs=torch.randn(1, 3, 16, 16),
                             task=FidelityTask(model), evaluations=4)  # fmt: skip
    assert staircase_mod.Staircase.load(first / "staircase.json") == stairs
    assert resumed.all_met


def test_round_to_resolves_to_auto_or_a_fixed_multiple() -> None:
    def resolved(**options) -> object:
        return _checked(PruneConfig(model="vgg11_cifar", **options), objects=False)[0].round_to

    assert resolved(budgets=("latency<=50%",)) == "auto"
    assert resolved(budgets=("latency<=50%",), round_to=16) == 16
    assert resolved(budgets=("latency<=50%",), round_to="8") == 8
    # auto without a latency oracle, or on weight sparsity: the fixed default multiple (1 on CPU)
    assert resolved(budgets=("params<=50%",), round_to="auto") == 1
    assert resolved(budgets=("params<=50%",)) == 1
    assert resolved(budgets=("latency<=50%",), granularity="weight", round_to="auto") == 1
    with pytest.raises(ConfigError, match="round_to must be a positive integer or 'auto'"):
        PruneConfig(round_to=0)


@pytest.mark.parametrize("value", ["fast", "0", "-8", "8.5"])
def test_a_bad_round_to_is_one_line_and_exit_2(value, tmp_path: Path, capsys) -> None:
    code = main(["prune", "--model", "vgg11_cifar", "--budget", "latency<=50%",
                 "--round-to", value, "--out", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"round_to must be a positive integer or 'auto', got {value!r}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# A stand-in runtime that runs whole networks only (it refuses a lone layer, as some
# compilers and remote boards do): its "latency" is 0.01 ms per graph node.
@oracles.register_oracle("test-whole-net-latency")
@dataclasses.dataclass
class WholeNetLatency(oracles.Oracle):
    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    input_format: ClassVar[str] = "onnx"
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        import onnx

        graph = (onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray))
                 else onnx.load(str(model))).graph  # fmt: skip
        if len(graph.node) < 3:
            raise oracles.OracleError("this runtime runs whole networks, not single layers")
        return oracles.Measurement(quantity="latency", value=0.01 * len(graph.node), unit="ms",
                                   oracle=self.spec)  # fmt: skip


def test_a_staircase_that_cannot_be_probed_warns_and_the_run_goes_on(tmp_path: Path, caplog):
    model = small_net()
    with caplog.at_level(logging.WARNING, logger="hwprune.run.stairs"):
        result = hwprune.prune(model, example_inputs=torch.randn(1, 3, 16, 16),
                               task=FidelityTask(model), out=tmp_path / "run",
                               budgets=["latency<=10ms"],
                               oracles={"latency": "test-whole-net-latency"},
                               agent="random", evaluations=2)  # fmt: skip
    assert result.all_met
    assert "could not be probed" in caplog.text and "single layers" in caplog.text
    assert not (tmp_path / "run" / "staircase.json").exists()


def test_a_probe_past_its_time_budget_keeps_what_it_timed_and_the_report_says_so(
    tmp_path: Path,
) -> None:
    # A millisecond: the budget runs out before the first unit's coarse grid is timed.
    result = _prune(tmp_path / "run", staircase_seconds=0.001)
    stairs = staircase_mod.Staircase.load(tmp_path / "run" / "staircase.json")
    assert not stairs.complete and set(stairs.left_out) == {"body.0", "body.3"}
    assert stairs.settings["seconds_budget"] == 0.001
    # On a CPU oracle a unit not probed is not rounded: every count may be built.
    assert stairs.choices() == {} and all(v == () for v in stairs.left_out.values())
    assert result.all_met
    report = (tmp_path / "run" / "report.md").read_text()
    assert "time budget (0.001 s, `staircase_seconds`) ran out" in report
    assert "not probed" in report


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_staircase_budget_is_one_line_and_exit_2(value, tmp_path: Path, capsys) -> None:
    code = main(["prune", "--model", "vgg11_cifar", "--budget", "latency<=50%",
                 "--staircase-seconds", value, "--out", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "staircase_seconds" in err.replace("-", "_"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()

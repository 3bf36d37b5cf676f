"""A user's own nn.Module and task through ``hwprune.prune``, ``save``/``restore`` and ``--task``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import hwprune
from hwprune.cli import main
from hwprune.config import PruneConfig
from hwprune.errors import CheckpointError, ConfigError
from hwprune.evaluate import read_jsonl
from tests.user_task import FidelityTask, SmallNet, factory, small_net

SMALL = dict(budgets=["params<=60%"], agent="random", evaluations=4)


def _candidates(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "episodes.jsonl") if r.get("type") == "candidate"]


# --------------------------------------------------------------------------- config


def test_config_round_trips_and_the_cli_offers_every_field() -> None:
    from hwprune.cli import build_parser

    cfg = PruneConfig(model="vgg11_cifar", budgets=("latency<=50%",), oracles={"latency": "x"})
    assert PruneConfig.from_mapping(json.loads(json.dumps(cfg.to_dict()))) == cfg
    parser = build_parser()
    args = parser.parse_args(["prune"])
    for f in dataclasses.fields(PruneConfig):
        assert hasattr(args, f.name), f"no CLI option for {f.name}"
        assert getattr(args, f.name) is None, f"the CLI sets a default for {f.name}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": "quarter"}, "width must be a number, got 'quarter'"),
        ({"seed": "x"}, "seed must be an integer, got 'x'"),
        ({"opset": "17"}, "opset must be an integer, got '17'"),
        ({"oracles": 5}, "oracles must be QUANTITY=SPEC"),
        ({"width": 0}, r"width must be a multiplier in \(0, 16\], got 0"),
        ({"opset": 5}, "opset must be an ONNX opset from 9 to 21, got 5"),
        ({"device": "tpu"}, "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"evaluations": True}, "evaluations must be an integer"),
        ({"modle": "x"}, "unknown option 'modle'"),
    ],
)
def test_config_values_of_the_wrong_type_are_one_sentence(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PruneConfig.from_mapping({"model": "vgg11_cifar", "budgets": ["params<=50%"], **options})


# --------------------------------------------------------------------------- API


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("user") / "run"
    model = small_net()
    result = hwprune.prune(model, example_inputs=torch.randn(1, 3, 16, 16),
                           task=FidelityTask(model), out=out, **SMALL)  # fmt: skip
    return result, out


def test_a_user_module_is_pruned_to_its_budget(user_run) -> None:
    result, out = user_run
    assert result.all_met and result.met == {"params": True}
    assert isinstance(result.model, SmallNet)
    params = sum(p.numel() for p in result.model.parameters())
    assert params == result.params_final <= 0.6 * result.params_dense
    assert set(result.metrics) == {"dense", "pruned", "final"}
    assert result.metrics["final"]["mse"] <= result.metrics["pruned"]["mse"]  # fine-tuned
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == {"name": "FidelityTask", "finetune": True, "evaluate": True}
    assert "| mse |" in (out / "report.md").read_text()


def test_save_and_restore_rebuild_the_pruned_module(user_run, tmp_path: Path) -> None:
    result, out = user_run
    path = hwprune.save(result.model, tmp_path / "pruned.pt")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want = result.model(x)
        for source in (path, out):
            got = hwprune.restore(small_net(), source)(x)
            assert torch.equal(got, want)
    again = hwprune.restore(small_net(), path)
    assert hwprune.save(again, tmp_path / "again.pt").is_file()


def test_restore_names_the_first_unit_that_differs(user_run) -> None:
    _, out = user_run

    class Wider(SmallNet):
        def __init__(self) -> None:
            super().__init__()
            self.body[0] = nn.Conv2d(3, 24, 3, padding=1)
            self.body[1] = nn.BatchNorm2d(24)
            self.body[3] = nn.Conv2d(24, 32, 3, padding=1, stride=2)

    with pytest.raises(
        CheckpointError, match=r"unit 'body.0' has 24 channels in the base model, 16"
    ):
        hwprune.restore(Wider().eval(), out)
    with pytest.raises(CheckpointError, match="pruned from a module handed to hwprune.prune"):
        hwprune.load_pruned(out)


def test_save_refuses_a_module_prune_did_not_return(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without its pruning record"):
        hwprune.save(small_net(), tmp_path / "x.pt")


def test_plain_callables_are_a_task_and_the_report_says_what_is_missing(tmp_path: Path) -> None:
    model = small_net()
    inner = FidelityTask(model)
    result = hwprune.prune(model, example_inputs=torch.randn(1, 3, 16, 16), score=inner.score,
                           calibrate=inner.loader, out=tmp_path / "run", **SMALL)  # fmt: skip
    assert result.all_met and not result.finetuned and not result.evaluated
    assert result.metrics == {} and result.accuracy_finetuned is None
    text = (tmp_path / "run" / "report.md").read_text()
    assert "The task has no evaluate(model)" in text
    assert "Fine-tuning: none (the task has no finetune(model, teacher))" in text


# --------------------------------------------------------------------------- CLI --task


def _task_args(out: Path, factory: str) -> list[str]:
    return ["prune", "--task", f"tests.user_task:{factory}", "--budget", "params<=60%",
            "--agent", "random", "--evaluations", "4", "--out", str(out), "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("raising_factory", r"RaisingTask\.score raised RuntimeError \(the metric crashed\) on "
                            r"candidate 3 \(keep "),
        ("nan_factory", r"NanTask\.score returned nan for candidate 3 \(keep "),
    ],
)  # fmt: skip
def test_a_failing_user_score_stops_in_one_line_and_the_run_resumes(
    factory: str, message: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    import re

    out = tmp_path / "run"
    code = main(_task_args(out, factory))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, " ".join(err.split())), err
    assert "--resume" in err
    before = [r["key"] for r in _candidates(out)]
    assert len(before) == 2 and (out / "config.json").is_file()
    monkeypatch.setenv("HWPRUNE_TEST_FIXED", "1")
    code = main(["prune", "--resume", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["all_met"] is True
    keys = [r["key"] for r in _candidates(out)]
    assert keys[:2] == before and len(keys) == len(set(keys)) == 4


def test_task_factory_runs_end_to_end_and_load_pruned_reimports_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main([*_task_args(out, "factory"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["all_met"]
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["task"] == "tests.user_task:factory" and options["model"] is None
    with pytest.raises(CheckpointError, match="allow_import=True"):
        hwprune.load_pruned(out)
    module = hwprune.load_pruned(out, allow_import=True)
    assert sum(p.numel() for p in module.parameters()) == result["params"]["final"]
    # The reported error is the shipped model's, and pruning moved it off the dense outputs.
    _, _, task = factory()
    mse = result["metrics"]["final"]["mse"]
    assert mse == pytest.approx(task.evaluate(module)["mse"]) and mse > 0


def test_a_task_without_finetune_or_evaluate_is_reported(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(_task_args(out, "score_only_factory")[:-1])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "no evaluate(model)" in captured.out and "not fine-tuned" in captured.out


class TwoHeads(nn.Module):
    """Named inputs (an image and a scale vector) and a dict of outputs (logits and boxes)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())  # fmt: skip
        self.cls = nn.Linear(32, 4)
        self.box = nn.Linear(32 + 2, 4)

    def forward(self, image: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(image).mean((2, 3))
        return {"logits": self.cls(f), "boxes": self.box(torch.cat([f, scale], 1))}


def test_named_inputs_and_dict_outputs_with_an_ignored_head(tmp_path: Path) -> None:
    import onnx

    torch.manual_seed(0)
    model = TwoHeads().eval()
    inputs = {"image": torch.randn(1, 3, 16, 16), "scale": torch.randn(1, 2)}
    batch = {"image": torch.randn(8, 3, 16, 16), "scale": torch.randn(8, 2)}
    with torch.no_grad():
        target = model(**batch)

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            out = m(**batch)
        return -float(sum(((out[k] - target[k]) ** 2).mean() for k in out))

    out = tmp_path / "run"
    result = hwprune.prune(model, example_inputs=inputs, score=score, calibrate=[batch],
                           ignored_layers=[model.body[3]], out=out, **SMALL)  # fmt: skip
    assert result.all_met
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image", "scale"]
    assert len(graph.output) == 2
    assert result.model.body[3].out_channels == 32  # ignored: never pruned
    again = hwprune.restore(TwoHeads(), out)
    with torch.no_grad():
        want, got = result.model(**batch), again(**batch)
    assert all(torch.equal(want[k], got[k]) for k in want)

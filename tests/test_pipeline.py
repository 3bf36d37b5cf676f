"""End-to-end ``hwprune.prune`` on a tiny CIFAR VGG trained on digits: run directory, proof, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import hwprune
from hwprune.errors import CheckpointError, ConfigError, InfeasibleBudgetError, RunDirError

WIDTH = 0.25


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-0.25 vgg11_cifar trained one epoch on digits (a few seconds on 2 cores)."""
    from hwprune.data import get_dataset
    from hwprune.models import get_model, save_checkpoint
    from hwprune.train import train

    data = get_dataset("digits")
    model = get_model("vgg11_cifar", num_classes=data.num_classes, width=WIDTH)
    train(model, data, epochs=1)
    path = tmp_path_factory.mktemp("ckpt") / "vgg.pt"
    save_checkpoint(model, path, meta={"model": "vgg11_cifar", "width": WIDTH,
                                       "num_classes": data.num_classes})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = hwprune.prune(
        model="vgg11_cifar",
        weights=tiny_checkpoint,
        data="digits",
        budgets=["flops<=50%", "params<=60%"],
        agent="uniform",
        evaluations=12,
        finetune_epochs=1,
        finetune_lr=0.02,
        finetune_batch_size=32,
        out=out,
    )
    return result, out


def test_run_directory_holds_every_artifact(finished_run) -> None:
    _, out = finished_run
    for name in ("config.json", "episodes.jsonl", "oracle-cache.sqlite", "policy.json",
                 "model.pt", "model.onnx", "report.md", "report.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "plots" / "accuracy_vs_flops.png").is_file()
    assert (out / "plots" / "keep_ratios.png").is_file()
    assert not (out / "model.engine").exists()  # no TensorRT here
    assert not (out / "openvino").exists()  # no budget timed by OpenVINO


def test_budgets_are_met_on_remeasured_final_model(finished_run) -> None:
    import oracles

    result, out = finished_run
    assert result.all_met and set(result.met) == {"flops", "params"}
    report = json.loads((out / "report.json").read_text())
    by_quantity = {b["quantity"]: b for b in report["budgets"]}
    for quantity, fraction in (("flops", 0.5), ("params", 0.6)):
        b = by_quantity[quantity]
        assert b["met"] is True
        assert b["bound"] == pytest.approx(fraction * b["dense"])
        # The exported file itself, measured afresh, is within the bound.
        value = oracles.get_oracle(quantity).measure(str(out / "model.onnx")).value
        assert value <= b["bound"]
        assert value == pytest.approx(b["final"], rel=1e-6)
    assert report["accuracy"]["dense"] > 0.1
    # The fine-tuned accuracy is the shipped model's, measured on the test split.
    from hwprune.data import get_dataset
    from hwprune.train import accuracy

    shipped = accuracy(hwprune.load_pruned(out), get_dataset("digits").test)
    assert report["accuracy"]["finetuned"] == pytest.approx(shipped) == result.accuracy_finetuned
    assert report["search"]["evaluations"] >= 1
    assert set(report["stage_seconds"]) >= {"dense", "search", "finetune", "verify", "export"}


def test_onnx_matches_the_reloaded_torch_model(finished_run) -> None:
    import onnxruntime as ort
    import torch

    result, out = finished_run
    module = hwprune.load_pruned(out)
    assert sum(p.numel() for p in module.parameters()) == result.params_final
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2 if session.get_inputs()[0].shape[0] != 1 else 1, 3, 32, 32)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert np.max(np.abs(got - want)) < 1e-3


def test_the_fine_tuning_recipe_is_recorded(finished_run) -> None:
    _, out = finished_run
    options = json.loads((out / "config.json").read_text())["options"]
    assert (options["finetune_lr"], options["finetune_batch_size"]) == (0.02, 32)
    assert (
        "peak learning rate 0.02 with a cosine schedule, batch size 32"
        in (out / "report.md").read_text()
    )


def test_fine_tuning_trains_with_the_given_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import hwprune.train
    from hwprune.data import get_dataset
    from hwprune.task import ClassificationTask

    seen = []
    real = hwprune.train.finetune

    def spy(model, data, **kwargs):  # records the call, then trains for real
        seen.append(kwargs)
        return real(model, data, **kwargs)

    monkeypatch.setattr(hwprune.train, "finetune", spy)
    steps = []
    data = get_dataset("digits")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    task = ClassificationTask(data, finetune_epochs=1, finetune_lr=0.03, finetune_batch_size=64,
                              progress=steps.append)  # fmt: skip
    task.finetune(net, teacher=None)
    assert seen[0]["lr"] == 0.03 and seen[0]["batch_size"] == 64
    # The defaults are the config's: one place owns them.
    from hwprune.config import PruneConfig

    defaults = PruneConfig()
    ClassificationTask(data, finetune_epochs=1).finetune(net, teacher=None)
    assert (seen[1]["lr"], seen[1]["batch_size"]) == (
        defaults.finetune_lr,
        defaults.finetune_batch_size,
    )
    assert steps and steps[-1].stage == "finetune"


def test_resuming_a_finished_search_chooses_as_the_search_did(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    kwargs = dict(model="vgg11_cifar", weights=tiny_checkpoint, data="digits",
                  budgets=["params<=60%"], agent="random", evaluations=4, finetune_epochs=1,
                  finetune_batch_size=32)  # fmt: skip
    first = hwprune.prune(**kwargs, out=out)
    log = (out / "episodes.jsonl").read_text()
    again = hwprune.resume(out)
    # Nothing is searched again; the choice is re-confirmed afresh and is the same policy.
    assert (out / "episodes.jsonl").read_text().count('"type": "candidate"') == log.count(
        '"type": "candidate"'
    )
    assert again.policy.keep == first.policy.keep
    assert again.all_met


def test_occupied_output_folder_is_refused(finished_run, tiny_checkpoint: Path) -> None:
    _, out = finished_run
    before = (out / "episodes.jsonl").read_bytes()
    with pytest.raises(RunDirError, match="already holds a hwprune run"):
        hwprune.prune(model="vgg11_cifar", weights=tiny_checkpoint, budgets=["flops<=50%"],
                      agent="uniform", evaluations=2, out=out)  # fmt: skip
    assert (out / "episodes.jsonl").read_bytes() == before


def test_infeasible_budget_names_smallest_value_and_keeps_the_log(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(InfeasibleBudgetError, match=r"smallest flops measured was .* MAC") as info:
        hwprune.prune(model="vgg11_cifar", weights=tiny_checkpoint, budgets=["flops<=0.01%"],
                      agent="uniform", evaluations=3, finetune_epochs=0, out=out)  # fmt: skip
    assert info.value.smallest["flops"] > 0
    assert (out / "episodes.jsonl").stat().st_size > 0


def test_bad_options_fail_before_the_run_directory_exists(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="granularity"):
        hwprune.prune(model="vgg11_cifar", budgets=["flops<=50%"], granularity="block", out=out)
    with pytest.raises(ConfigError, match="Did you mean 'uniform'"):
        hwprune.prune(model="vgg11_cifar", budgets=["flops<=50%"], agent="unifrom", out=out)
    with pytest.raises(
        ConfigError, match=r"finetune_lr must be a learning rate in \(0, 10\), got 0"
    ):
        hwprune.prune(model="vgg11_cifar", budgets=["flops<=50%"], finetune_lr=0, out=out)
    with pytest.raises(ConfigError, match="finetune_batch_size must be a whole number from 1 to"):
        hwprune.prune(model="vgg11_cifar", budgets=["flops<=50%"], finetune_batch_size=0, out=out)
    with pytest.raises(CheckpointError, match="not found"):
        hwprune.prune(model="vgg11_cifar", weights=tmp_path / "nope.pt", budgets=["flops<=50%"],
                      out=out)  # fmt: skip
    assert not out.exists()


def test_load_pruned_refuses_a_plain_checkpoint(tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="not a pruned model"):
        hwprune.load_pruned(tiny_checkpoint)


def test_config_file_options(tmp_path: Path) -> None:
    from hwprune.config import read_config_file

    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "vgg11_cifar"\nbudget = "latency<=50%"\nfinetune-epochs = 2\n')
    assert read_config_file(cfg) == {"model": "vgg11_cifar", "budgets": ["latency<=50%"],
                                     "finetune_epochs": 2}  # fmt: skip
    cfg.write_text('modle = "x"\n')
    with pytest.raises(ConfigError, match="unknown option 'modle'"):
        read_config_file(cfg)


# Short timing: the budget below is far above any latency, only the export and the proof matter.
OPENVINO_SPEC = "openvino:cpu?threads=1&warmup=2&min_runs=5&min_time=0.05&max_time=0.5"


def test_a_budget_timed_by_openvino_ships_the_checked_ir_and_names_its_oracle(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    pytest.importorskip("openvino")
    import openvino as ov
    import torch

    out = tmp_path / "run"
    result = hwprune.prune(model="vgg11_cifar", weights=tiny_checkpoint, data="digits",
                           budgets=["params<=60%", "latency<=10s"],
                           oracles={"latency": OPENVINO_SPEC}, agent="uniform", evaluations=3,
                           finetune_epochs=1, finetune_batch_size=32, out=out)  # fmt: skip
    xml, weights = out / "openvino" / "model.xml", out / "openvino" / "model.bin"
    assert xml.is_file() and weights.is_file() and result.paths["openvino"] == xml
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["export"]["openvino_max_abs_diff"] <= 1e-3
    assert "openvino/model.xml" in (out / "report.md").read_text()
    # The shipped proof names the oracle with every setting, the default thread count included.
    latency = next(b for b in report["budgets"] if b["quantity"] == "latency")
    assert latency["oracle"] == OPENVINO_SPEC
    # The IR, read back on its own, computes what the shipped torch model computes (at f32, as
    # the oracle times it: OpenVINO's CPU default is bf16 where the CPU has it).
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    got = compiled(x.numpy())[compiled.outputs[0]]
    with torch.no_grad():
        want = hwprune.load_pruned(out)(x).numpy()
    assert np.max(np.abs(got - want)) < 1e-3


def test_the_default_latency_oracle_is_named_with_its_thread_count() -> None:
    from hwprune.budgets import bind_constraints

    (default,) = bind_constraints(["latency<=50%"])
    assert default.oracle == "onnxruntime:cpu?threads=1"
    assert default.describe() == "latency<=50% on onnxruntime:cpu?threads=1"
    (given,) = bind_constraints(["latency<=50%"], oracles={"latency": "torch"})
    assert given.oracle == "torch:cpu?threads=1"

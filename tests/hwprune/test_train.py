"""Training, fine-tuning with distillation, accuracy, BN re-estimation, and ``hwprune train``."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from hwprune.cli import main
from hwprune.data import get_dataset, make_loader
from hwprune.errors import ConfigError
from hwprune.models import get_model, model_from_checkpoint, read_checkpoint
from hwprune.train import (
    TrainProgress,
    accuracy,
    finetune,
    reestimate_bn,
    resolve_device,
    train,
)
from hwprune.train.loop import _lr_factor


def _small(data, n: int):
    """The same splits with only the first ``n`` training images (fast tests)."""
    return dataclasses.replace(data, train=Subset(data.train, range(n)))


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def trained_vgg(digits):
    """vgg11_cifar at width 0.5, trained on digits with the default recipe."""
    torch.manual_seed(0)
    model = get_model("vgg11_cifar", width=0.5)
    events: list[TrainProgress] = []
    result = train(model, digits, epochs=3, progress=events.append)
    return model, result, events


def test_vgg_half_width_learns_digits(trained_vgg, digits):
    model, result, events = trained_vgg
    assert result.test_accuracy >= 0.90, result
    assert result.epochs == 3 and len(result.history) == 3
    # The loss falls and the reported accuracies agree with an independent measurement.
    assert result.history[-1].loss < result.history[0].loss
    assert result.test_accuracy == pytest.approx(accuracy(model, digits.test))
    assert result.search_accuracy == pytest.approx(accuracy(model, digits.search))
    done = [e for e in events if e.epoch_done]
    assert [e.epoch for e in done] == [1, 2, 3]
    assert all(e.search_accuracy is not None for e in done)
    assert sum(not e.epoch_done for e in events) == 3 * done[0].steps
    # Warm-up then cosine decay: the lr peaks early and ends near zero.
    lrs = [e.lr for e in events if not e.epoch_done]
    assert max(lrs) == pytest.approx(0.05) and lrs[-1] < 0.005
    assert _lr_factor(0, total=100, warmup=5) == pytest.approx(0.2)
    assert _lr_factor(5, total=100, warmup=5) == pytest.approx(1.0)
    assert _lr_factor(52, total=100, warmup=5) == pytest.approx(0.5, abs=0.02)


def test_accuracy_restores_mode_and_takes_loaders(trained_vgg, digits):
    model, result, _ = trained_vgg
    model.train()
    loader = make_loader(digits.test, batch_size=50, shuffle=False)
    assert accuracy(model, loader) == pytest.approx(result.test_accuracy)
    assert model.training
    model.eval()


def test_reestimate_bn_recomputes_running_stats(trained_vgg, digits):
    model, result, _ = trained_vgg
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone(), bn.running_var.clone()
    # Corrupt the statistics, as channel pruning does; accuracy collapses.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(0.01)
    assert accuracy(model, digits.test) < 0.5
    seen = reestimate_bn(model, digits.train, batches=5, batch_size=100)
    assert seen == 500
    assert not model.training and bn.momentum == 0.1
    assert not torch.equal(bn.running_mean, torch.full_like(bn.running_mean, 3.0))
    # Cumulative statistics over 500 training images land close to the trained ones.
    assert torch.allclose(bn.running_mean, before[0], atol=0.5 * float(before[0].abs().max()))
    assert accuracy(model, digits.test) > result.test_accuracy - 0.05
    assert reestimate_bn(nn.Linear(3, 2), digits.train) == 0


def test_finetune_with_teacher_distils(trained_vgg, digits):
    teacher, _, _ = trained_vgg
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(1)
    student = get_model("vgg11_cifar", width=0.25)
    # kd_alpha=1: the labels are not used at all, so anything above chance (10%)
    # was learned from the teacher's soft targets.
    out = finetune(student, _small(digits, 512), epochs=2, teacher=teacher, lr=0.05,
                   kd_alpha=1.0, batch_size=64)  # fmt: skip
    assert out.test_accuracy > 0.3 and math.isfinite(out.train_loss)
    for k, v in teacher.state_dict().items():  # the teacher is only read
        assert torch.equal(v, teacher_state[k]), k
    with pytest.raises(ConfigError, match="kd_alpha must be in"):
        finetune(student, digits, epochs=1, teacher=teacher, kd_alpha=2.0)


def test_seeded_training_is_reproducible(digits):
    def run(seed: int) -> list[float]:
        torch.manual_seed(0)
        model = get_model("vgg11_cifar", width=0.25)
        result = train(model, _small(digits, 128), epochs=1, seed=seed, batch_size=32)
        return [h.loss for h in result.history]

    first = run(5)
    assert run(5) == first and run(6) != first


def test_bad_arguments(digits):
    model = get_model("resnet20_cifar", width=0.25)
    with pytest.raises(ConfigError, match="epochs must be a positive integer, got 0"):
        train(model, digits, epochs=0)
    with pytest.raises(ConfigError, match="lr must be positive"):
        train(model, digits, epochs=1, lr=0.0)
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            train(model, digits, epochs=1, device="cuda")


@pytest.mark.parametrize(
    "name", ["vgg11_cifar", "vgg16_cifar", "vgg19_cifar", "resnet18_cifar", "resnet56_cifar"]
)
@pytest.mark.slow
def test_every_cifar_model_trains_without_nan(name, digits):
    torch.manual_seed(0)
    model = get_model(name, width=0.25 if name == "resnet18_cifar" else 0.5)
    result = train(model, digits, epochs=2)
    assert all(math.isfinite(h.loss) for h in result.history)
    # Deep nets need more than 16 steps to beat chance on the test split; the loss must fall.
    assert result.history[-1].loss < result.history[0].loss, result


def test_cli_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "ck.pt"
    rc = main(["train", "--model", "vgg11_cifar", "--width", "0.25", "--data", "digits",
               "--epochs", "1", "--batch-size", "256", "--out", str(out), "--json"])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    meta = read_checkpoint(out).meta
    assert meta["model"] == "vgg11_cifar" and meta["width"] == 0.25
    assert meta["num_classes"] == 10 and meta["input_size"] == 32
    assert meta["accuracy"] == pytest.approx(printed["result"]["test_accuracy"])
    model = model_from_checkpoint(out)
    assert accuracy(model, get_dataset("digits").test) == pytest.approx(meta["accuracy"])


def test_cli_train_reports_bad_input_in_one_line(tmp_path, capsys):
    rc = main(["train", "--model", "vgg11_cifr", "--data", "digits", "--epochs", "1",
               "--out", str(tmp_path / "x.pt"), "--quiet"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "Did you mean 'vgg11_cifar'" in err and "Traceback" not in err
    rc = main(["train", "--model", "vgg11_cifar", "--data", f"cifar10:{tmp_path}", "--epochs", "1",
               "--out", str(tmp_path / "x.pt")])  # fmt: skip
    assert rc == 2 and "--download" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()

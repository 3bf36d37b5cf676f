"""``hwprune prune --proxy-racing --bn-settle TOL``: the raced proxy and the settling BatchNorm
re-estimation at the command line and in ``hwprune.prune``; both off unless asked for.

Real parts: the CLI in process, a CIFAR VGG-11 at width 0.25 trained briefly on the built-in
digits, Torch-Pruning surgery, BN re-estimation, the raced score.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwprune.cli import main
from hwprune.config import PruneConfig
from hwprune.errors import ConfigError


def _trained_checkpoint(folder: Path) -> Path:
    from hwprune.data import get_dataset
    from hwprune.models import get_model, save_checkpoint
    from hwprune.train import train

    data = get_dataset("digits")
    model = get_model("vgg11_cifar", num_classes=data.num_classes, width=0.25)
    train(model, data, epochs=3)  # well above chance: its cuts fall to it
    path = folder / "vgg.pt"
    save_checkpoint(model, path, meta={"model": "vgg11_cifar", "width": 0.25,
                                       "num_classes": data.num_classes})  # fmt: skip
    return path


def test_both_options_are_off_by_default_and_named_in_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = PruneConfig()
    assert config.proxy_racing is False and config.bn_settle is None
    assert main(["prune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--proxy-racing" in text and "--bn-settle TOL" in text
    assert text.count("off by default until measured") >= 2


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--proxy-racing", "--workers", "2"], "proxy_racing needs one worker"),
        (["--bn-settle", "1.5"], "bn_settle must be a fraction between 0 and 1"),
    ],
)
def test_bad_use_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    argv = ["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget", "flops<=50%",
            "--out", str(tmp_path / "run"), "--quiet", *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_bn_settle_is_refused_for_a_task_of_ones_own() -> None:
    config = PruneConfig(task="pkg.mod:factory", budgets=["flops<=50%"], bn_settle=0.05)
    with pytest.raises(ConfigError, match="bn_settle is an option of the built-in task"):
        config.require_runnable()
    PruneConfig(
        task="pkg.mod:factory", budgets=["flops<=50%"], proxy_racing=True
    ).require_runnable()  # racing needs only a score stream


@pytest.mark.slow
def test_a_raced_prune_run_logs_raced_candidates_and_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _trained_checkpoint(tmp_path)
    out = tmp_path / "run"
    # Bisection tries the dense net, then the smallest uniform cut: at 5% of its channels the
    # net is at chance, so a race stops it at an early look (needing no feasible candidate).
    argv = ["prune", "--model", "vgg11_cifar", "--weights", str(weights), "--budget",
            "flops<=50%", "--agent", "uniform", "--evaluations", "4", "--min-keep", "0.05",
            "--finetune-epochs", "0", "--proxy-racing", "--bn-settle", "0.05",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    candidates = [r for r in records if r.get("type") == "candidate"]
    raced = [r for r in candidates if r.get("raced")]
    assert raced, [(r["policy"]["keep"], r["accuracy"]) for r in candidates]
    assert all(r["raced"]["samples"] < 359 for r in raced)  # fewer than all the search images
    assert all("bn settle 0.05" in r["score_key"] for r in candidates)
    saved = json.loads((out / "config.json").read_text())["options"]
    assert saved["proxy_racing"] is True and saved["bn_settle"] == 0.05
    assert (out / "report.json").is_file() and (out / "model.pt").is_file()

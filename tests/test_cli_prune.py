"""``hwprune prune`` / ``export`` at the command line: bad input is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hwprune.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _prune_args(out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget", "flops<=50%",
            "--agent", "uniform", "--evaluations", "2", "--finetune-epochs", "0",
            "--out", str(out), "--quiet", *extra]  # fmt: skip


class Unexportable(torch.nn.Module):
    """A conv net whose forward uses an operator ONNX cannot express."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.special.airy_ai(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def unexportable(num_classes: int = 10) -> torch.nn.Module:
    return Unexportable(num_classes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--model", "vgg11_cifr"], "unknown model 'vgg11_cifr'. Did you mean 'vgg11_cifar'"),
        (["--data", "mnist"], "unknown dataset 'mnist'"),
        (["--agent", "ppo-lagrangain"], "unknown searcher 'ppo-lagrangain'"),
        (["--budget", "latency<5ms"], "only '<=' bounds are accepted"),
        (["--budget", "speed<=5ms"], "which no oracle measures"),
        (["--oracle", "flops=onnxruntme:cpu"], "onnxruntme"),
        (["--min-keep", "0"], "min_keep must lie in"),
        (["--proxy", "recover:0"], "proxy must be bn, kd or recover:STEPS"),
        (["--proxy", "accuracy"], "proxy must be bn, kd or recover:STEPS"),
        (["--surrogate", "sometimes"], "invalid choice: 'sometimes'"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    change: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _prune_args(tmp_path / "run")
    for i in range(0, len(change), 2):
        flag, value = change[i], change[i + 1]
        if flag in args and flag != "--budget":
            args[args.index(flag) + 1] = value
        elif flag == "--budget":
            args[args.index("--budget") + 1] = value
        else:
            args += [flag, value]
    code, _, err = _run(args, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_pickled_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "meta": {"when": Path("x")}}, bad)  # needs unpickling a Path
    code, _, err = _run(_prune_args(tmp_path / "run", "--weights", str(bad)), capsys)
    assert code == 2 and "weights_only" in err and "Traceback" not in err


def test_output_folder_of_another_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"options": {"model": "resnet18"}}))
    code, _, err = _run(_prune_args(out), capsys)
    assert code == 2 and "already holds a hwprune run" in err and "--resume" in err
    code, _, err = _run(["prune", "--resume", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no config.json" in err


def test_unexportable_model_names_the_operator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _prune_args(tmp_path / "run")
    args[args.index("--model") + 1] = "tests.test_cli_prune:unexportable"
    i = args.index("--width")
    del args[i : i + 2]
    code, _, err = _run(args, capsys)
    assert code == 2 and "airy_ai" in err and "Traceback" not in err


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = _run(_prune_args(out, "--json"), capsys)
    assert code == 0, err
    onnx_path = tmp_path / "again.onnx"
    code, stdout, err = _run(["export", str(out), "--onnx", str(onnx_path)], capsys)
    assert code == 0, err
    assert onnx_path.is_file() and "max |onnx - torch|" in stdout
    code, _, err = _run(["export", str(out / "model.pt"), "--onnx", str(onnx_path), "--overwrite",
                         "--tensorrt", str(tmp_path / "m.engine")], capsys)  # fmt: skip
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert code == 2 and 'pip install "hwprune[tensorrt]"' in err


def test_the_budgets_table_keeps_every_budget_and_oracle_whole_at_80_columns() -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from hwprune.cli.prune import summary_table

    budgets = [
        SimpleNamespace(budget="latency<=50%", oracle="onnxruntime:cpu?threads=1", unit="ms",
                        dense=0.8123, bound=0.40615, final=0.4012, met=True, margin=0.0122),
        SimpleNamespace(budget="params<=1M", oracle="params", unit="", dense=2.3e6, bound=1e6,
                        final=812345, met=False, margin=-0.1),
    ]  # fmt: skip
    console = Console(width=80, record=True, file=__import__("io").StringIO())
    console.print(summary_table(SimpleNamespace(budgets=budgets)))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    for whole in ("latency<=50%", "onnxruntime:cpu?threads=1", "params<=1M", "0.4062 ms", "NO"):
        assert whole in text
    assert "…" not in text

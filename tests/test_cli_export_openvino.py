"""``hwprune export --openvino DIR``: the OpenVINO IR beside the ONNX file, or one line naming the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hwprune.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_openvino_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    code, _, err = _run(["export", str(tmp_path / "no-run"), "--onnx", str(tmp_path / "m.onnx"),
                         "--openvino", str(tmp_path / "ir")], capsys)  # fmt: skip
    assert code == 2 and 'pip install "hwprune[openvino]"' in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # a prune run first: about 25 s on 2 cores
def test_export_writes_the_checked_ir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    run = tmp_path / "run"
    code, _, err = _run(["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget",
                         "flops<=50%", "--agent", "uniform", "--evaluations", "2",
                         "--finetune-epochs", "0", "--out", str(run), "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    ir = tmp_path / "ir"
    code, stdout, err = _run(["export", str(run), "--onnx", str(tmp_path / "m.onnx"),
                              "--openvino", str(ir)], capsys)  # fmt: skip
    assert code == 0, err
    assert (ir / "model.xml").is_file() and (ir / "model.bin").is_file()
    assert "max |openvino - torch|" in stdout

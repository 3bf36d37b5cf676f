"""Hostile conditions around what a run writes and exports: one line, exit code 2, nothing lost.

A full disk while writing any file hwprune replaces atomically, and a model whose forward
decides on its input's values (an ONNX export would keep one branch), each found in review.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.cli import main
from hwprune.errors import HwpruneError, WriteError

# ------------------------------------------------------------------------------ disk full


class _FullDisk(io.RawIOBase):
    """A file on a disk that fills up: the first ``room`` bytes land, then ENOSPC."""

    def __init__(self, real, room: int) -> None:
        self.real = real
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.real.write(data[: self.room])
            self.real.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real.write(data)
        self.room -= len(data)
        return len(data)

    def close(self) -> None:
        self.real.close()
        super().close()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch):
    """Files whose name contains ``.tmp`` (or a given name) fill the disk after 100 bytes.

    Python's ``open`` and ``io.open`` (pathlib's) are wrapped, and torch.save given a path
    fails the way its zip writer fails on a full disk (a RuntimeError, half a file left).
    """
    real_open = builtins.open
    real_save = torch.save
    names = [".tmp"]

    def hit(file) -> bool:
        return isinstance(file, (str, Path)) and any(n in Path(file).name for n in names)

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if hit(file) and any(c in mode for c in "wax"):
            raw = _FullDisk(f if "b" in mode else f.buffer, room=100)
            if "b" in mode:
                return io.BufferedWriter(raw) if kwargs.get("buffering", -1) != 0 else raw
            return io.TextIOWrapper(io.BufferedWriter(raw), encoding=kwargs.get("encoding"))
        return f

    def fake_save(obj, f, *args, **kwargs):
        if hit(f):
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 60)
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")  # fmt: skip
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(torch, "save", fake_save)
    return names


def _no_tmp(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if ".tmp" in p.name]
    assert not left, left


def _save_checkpoint(path: Path) -> None:
    from hwprune.models import save_checkpoint

    save_checkpoint(nn.Linear(64, 64), path, meta={"model": "linear"})


def _report_json(path: Path) -> None:
    from hwprune.report import write_report_json

    class Result:
        def to_dict(self):
            return {"x": "y" * 500}

    write_report_json(path.parent, result=Result(), options={})


def _config_json(path: Path) -> None:
    from hwprune.config import PruneConfig, write_run_config

    write_run_config(path.parent, PruneConfig(model="vgg11_cifar", budgets=("flops<=50%",)))


def _staircase(path: Path) -> None:
    from hwprune.space.staircase import Staircase

    Staircase(oracle="onnxruntime:cpu", unit="ms", units=(), settings={"x": "y" * 500}).save(path)


def _agent_state(path: Path) -> None:
    from hwprune.agents._sb3 import write_json

    write_json(path, {"episodes": list(range(200))})


def _replay_buffer(path: Path) -> None:
    from types import SimpleNamespace

    from hwprune.agents.amc import _save_buffer

    rows = np.zeros((64, 4), dtype=np.float32)
    _save_buffer(SimpleNamespace(observations=rows, actions=rows, rewards=rows, pos=3,
                                 full=False), path)  # fmt: skip


def _onnx_file(path: Path) -> None:
    from hwprune.export.final import final_export

    final_export(nn.Linear(16, 4), input_shape=(1, 16), onnx_path=path)


def _onnx_bytes(path: Path) -> None:
    from hwprune.export import export_onnx

    export_onnx(nn.Linear(16, 4), input_shape=(1, 16), path=path)


WRITERS = [
    ("model.pt", _save_checkpoint),
    ("report.json", _report_json),
    ("config.json", _config_json),
    ("staircase.json", _staircase),
    ("agent_state.json", _agent_state),
    ("replay.npz", _replay_buffer),
    ("model.onnx", _onnx_file),
    ("candidate.onnx", _onnx_bytes),
]


@pytest.mark.parametrize(("name", "write"), WRITERS, ids=[w[0] for w in WRITERS])
def test_full_disk_in_any_atomic_write_is_one_line_and_leaves_the_old_file(
    name, write, tmp_path: Path, disk_full
) -> None:
    target = tmp_path / name
    target.write_bytes(b"the previous version")
    with pytest.raises(HwpruneError) as info:
        write(target)
    message = str(info.value)
    assert "\n" not in message
    assert repr(str(target)) in message
    assert "no space left on device" in message
    assert "free" in message
    _no_tmp(tmp_path)
    assert target.read_bytes() == b"the previous version"


def test_write_error_is_an_oserror_that_survives_a_process_boundary(tmp_path: Path, disk_full):
    import pickle

    from hwprune.files import write_atomic

    with pytest.raises(WriteError) as info:
        write_atomic(tmp_path / "x.json", "x" * 1000)
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert "it needs 1.0 kB" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.errno == errno.ENOSPC


BASE = ["--model", "vgg11_cifar", "--width", "0.25", "--budget", "flops<=50%", "--agent",
        "uniform", "--evaluations", "2", "--finetune-epochs", "0", "--quiet"]  # fmt: skip


@pytest.mark.slow
def test_disk_full_while_saving_model_pt_is_one_line_and_resume_finishes(
    tmp_path: Path, disk_full, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was: a 20-line traceback from torch's zip writer and model.pt.tmp left in the run.
    out = tmp_path / "run"
    disk_full[:] = ["model.pt.tmp"]
    code = main(["prune", *BASE, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert repr(str(out / "model.pt")) in lines[0] and "no space left on device" in lines[0]
    _no_tmp(out)
    measured = (out / "episodes.jsonl").read_text().splitlines()
    assert measured
    disk_full[:] = ["nothing matches this"]  # space freed
    assert main(["prune", "--resume", str(out), "--quiet"]) == 0
    assert (out / "model.pt").is_file() and (out / "model.onnx").is_file()
    assert (out / "episodes.jsonl").read_text().splitlines()[: len(measured)] == measured


# --------------------------------------------------- a forward that decides on input values

BRANCHY = """
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        if y.mean() > 0.1:
            y = torch.relu(self.c2(y))
        return self.fc(y.mean((2, 3)))
"""


@pytest.mark.parametrize(
    "budget",
    [
        ["--budget", "flops<=50%"],  # an ONNX oracle: the dense model's measurement
        ["--budget", "latency<=90%", "--oracle", "latency=torch:cpu?threads=1"],  # staircase
        ["--budget", "latency<=90%", "--oracle", "latency=torch:cpu?threads=1",
         "--round-to", "1"],  # torch oracles only: the run's own check
    ],
    ids=["onnx_oracle", "before_staircase", "torch_oracle"],
)  # fmt: skip
def test_branch_on_input_values_stops_the_run_before_the_search(
    budget: list[str], tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "branchy_model.py").write_text(textwrap.dedent(BRANCHY))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    code = main(["prune", "--model", "branchy_model:Branchy", *budget, "--agent", "uniform",
                 "--evaluations", "2", "--finetune-epochs", "0", "--quiet", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "branchy_model.py:15 in Branchy.forward (`if y.mean() > 0.1`)" in lines[0]
    assert "--allow-trace-warnings" in lines[0]
    episodes = out / "episodes.jsonl"
    assert not episodes.exists() or not episodes.read_text().strip()  # nothing searched
    assert not (out / "staircase.json").exists()


def test_allow_trace_warnings_is_an_option_of_prune_and_export() -> None:
    from hwprune.cli import build_parser
    from hwprune.cli.prune import collect_options
    from hwprune.config import PruneConfig

    parser = build_parser()
    args = parser.parse_args(["prune", "--model", "m", "--allow-trace-warnings"])
    assert collect_options(args)["allow_trace_warnings"] is True
    config = PruneConfig(model="m", budgets=("flops<=50%",), allow_trace_warnings=True)
    assert PruneConfig.from_mapping(json.loads(json.dumps(config.to_dict()))) == config
    assert PruneConfig(model="m").allow_trace_warnings is False
    args = parser.parse_args(["export", "run", "--onnx", "x.onnx", "--allow-trace-warnings"])
    assert args.allow_trace_warnings is True

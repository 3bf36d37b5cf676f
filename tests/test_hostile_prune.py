"""Hostile input to ``hwprune prune``: one line, exit code 2, no traceback, nothing lost.

Each case is a defect a user found (issue 16); the suite grows with every new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hwprune.cli import main

BASE = ["--model", "vgg11_cifar", "--width", "0.25", "--budget", "flops<=50%", "--agent",
        "uniform", "--evaluations", "2", "--finetune-epochs", "0", "--quiet"]  # fmt: skip


CONFIG_FILES = [
    ('width = "quarter"\n', "width must be a number, got 'quarter'"),
    ('seed = "x"\n', "seed must be an integer, got 'x'"),
    ('opset = "17"\n', "opset must be an integer, got '17'"),
    ("oracles = 5\n", "oracles must be QUANTITY=SPEC"),
    ("evaluations = 1.5\n", "evaluations must be an integer"),
    ('budget = ["flops<=50%", 3]\n', "budgets must be a string or a list of strings"),
    (b"model = 'vgg\xff'\n", "is not UTF-8 text"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_FILES)
def test_bad_config_file(text, message, tmp_path: Path, cli_refusal) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "run"
    err = cli_refusal(["prune", "--config", str(cfg), *BASE, "--out", str(out)])
    assert message in err
    assert not out.exists()  # a failed start claims no folder


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "config.json must hold an object of options, got list"),
        ("null", "config.json must hold an object of options, got NoneType"),
        ('{"options": 5}', "config.json's options must be an object, got 5"),
        ('{"options": {"model": "vgg11_cifar"}}', "it names no budget"),
        ('{"options": {"model": "vgg11_cifar", "budgets": ["flops<=50%"], "seed": "x"}}',
         "seed must be an integer"),
        ("{not json", "config.json is unreadable"),
    ],
)  # fmt: skip
def test_resume_of_a_bad_config_json(
    content: str, message: str, tmp_path: Path, cli_refusal
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(content)
    err = cli_refusal(["prune", "--resume", str(out)])
    assert message in err
    assert (out / "config.json").read_text() == content


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "tpu"], "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (["--width", "0"], "width must be a multiplier in (0, 16], got 0"),
        (["--opset", "5"], "opset must be an ONNX opset from 9 to 21, got 5"),
        (["--evaluations", "0"], "evaluations must be a whole number from 1 to 10000000, got 0"),
        (["--task", "not a spec"], "task must be a factory written package.module:callable"),
    ],
)
def test_bad_option_refused_before_any_folder(extra, message, tmp_path: Path, cli_refusal) -> None:
    out = tmp_path / "run"
    err = cli_refusal(["prune", *BASE, "--out", str(out), *extra])
    assert message in err
    assert not out.exists()


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the refusal where no CUDA exists"
)
def test_cuda_without_cuda(tmp_path: Path, cli_refusal) -> None:
    out = tmp_path / "run"
    err = cli_refusal(["prune", *BASE, "--out", str(out), "--device", "cuda"])
    assert "no CUDA GPU is available" in err and not out.exists()


def test_out_below_a_regular_file(tmp_path: Path, cli_refusal) -> None:
    (tmp_path / "file").write_text("x")
    err = cli_refusal(["prune", *BASE, "--out", str(tmp_path / "file" / "run")])
    assert "is a file, not a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_under_a_read_only_folder(tmp_path: Path, cli_refusal) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = cli_refusal(["prune", *BASE, "--out", str(ro / "run")])
    finally:
        ro.chmod(0o700)
    assert "cannot create run directory" in err and "Permission denied" in err


def test_bad_weights_leave_no_folder_so_the_retry_is_not_refused(
    tmp_path: Path, cli_refusal
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "run"
    err = cli_refusal(["prune", *BASE, "--out", str(out), "--weights", str(bad)])
    assert "cannot read checkpoint" in err
    assert not out.exists()


@pytest.mark.parametrize("extra", [["--budget", "flops<=10%"], ["--out", "x"], ["--overwrite"]])
def test_resume_beside_run_options_is_refused(extra, tmp_path: Path, cli_refusal) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(
        json.dumps({"options": {"model": "vgg11_cifar", "budgets": ["flops<=50%"]}})
    )
    err = cli_refusal(["prune", "--resume", str(out), *extra])
    assert "--resume takes its options from the run's config.json; drop --" in err


def test_a_second_process_on_a_run_directory_is_refused(tmp_path: Path, cli_refusal) -> None:
    from hwprune.run import RunLock

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(
        json.dumps({"options": {"model": "vgg11_cifar", "budgets": ["flops<=50%"]}})
    )
    lock = RunLock(out).acquire()
    try:
        err = cli_refusal(["prune", "--resume", str(out)])
        assert f"in use by another hwprune process (pid {os.getpid()})" in err
        err = cli_refusal(["prune", *BASE, "--out", str(out), "--overwrite"])
        assert f"pid {os.getpid()}" in err
        assert (out / "config.json").is_file()  # the holder's run is untouched
    finally:
        lock.release()


def test_a_relative_imagefolder_path_is_stored_absolute(tmp_path: Path, monkeypatch) -> None:
    from hwprune.api import _checked
    from hwprune.config import PruneConfig

    monkeypatch.chdir(tmp_path)
    cfg = PruneConfig(model="vgg11_cifar", data="imagefolder:imgs", budgets=("flops<=50%",))
    checked, _ = _checked(cfg, objects=False)
    assert checked.data == f"imagefolder:{tmp_path / 'imgs'}"


def test_imagefolder_images_load_at_the_checkpoints_input_size(tmp_path: Path) -> None:
    """Issue 16 item 5: the checkpoint's meta says 32, so images are not loaded at 224."""
    import numpy as np
    from PIL import Image

    from hwprune.config import PruneConfig
    from hwprune.models import get_model, save_checkpoint
    from hwprune.run.context import RunContext
    from hwprune.run.load import load

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    ckpt = tmp_path / "m.pt"
    model = get_model("vgg11_cifar", num_classes=2, width=0.25)
    save_checkpoint(model, ckpt, meta={"model": "vgg11_cifar", "width": 0.25, "num_classes": 2,
                                       "input_size": 32})  # fmt: skip
    base = dict(model="vgg11_cifar", data=f"imagefolder:{tmp_path / 'imgs'}",
                budgets=("flops<=50%",), weights=str(ckpt))  # fmt: skip
    loaded = load(RunContext(config=PruneConfig(**base), run_dir=tmp_path))
    assert loaded.example_inputs.first_shape == (1, 3, 32, 32)
    loaded = load(RunContext(config=PruneConfig(**base, input_size=48), run_dir=tmp_path))
    assert loaded.example_inputs.first_shape == (1, 3, 48, 48)  # --input-size wins over the meta


def test_workers_from_a_script_without_a_main_guard_say_so(tmp_path: Path) -> None:
    """Spawned workers import the script again: each stops at its prune call in one line, and
    the run fails saying what to do (not a BrokenProcessPool, not a second run's RunDirError)."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import torch, hwprune\n"
        "from torch import nn\n"
        "def score(m):\n"
        "    return 1.0\n"
        "m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),\n"
        "                  nn.LazyLinear(2))\n"
        "m(torch.randn(1, 3, 8, 8))\n"
        "hwprune.prune(m, example_inputs=torch.randn(1, 3, 8, 8), budgets=['flops<=50%'],\n"
        "              out='run', workers=2, agent='random', evaluations=2, score=score,\n"
        "              finetune=False)\n",
        encoding="utf-8",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=600)  # fmt: skip
    assert done.returncode != 0
    assert "worker process stopped while starting" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert "RunDirError" not in done.stderr


def test_a_run_timed_on_another_machine_is_not_resumed_here(
    tmp_path: Path, capsys, cli_refusal
) -> None:
    """Two hosts of one CPU name timed the same model 2-3x apart: a run's logged latencies
    and a dense model re-measured on another machine would mix them. Refused in one line,
    the run untouched; a run that times nothing (a FLOPs budget) resumes anywhere."""
    import oracles

    timed = tmp_path / "timed"
    latency = "latency=onnxruntime:cpu?threads=1&min_time=0.01&max_time=0.2&min_runs=5"
    argv = ["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget", "latency<=90%",
            "--oracle", latency, "--agent", "uniform", "--evaluations", "2", "--round-to", "8",
            "--finetune-epochs", "0", "--quiet", "--out", str(timed)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    here = json.loads((timed / "machine.json").read_text())
    assert here["cpu"] == oracles.machine_identity()["cpu"] and "python" not in here
    other = {**here, "cpu_id": "vendor_id GenuineIntel, cpu family 6, model 143, stepping 8"}
    (timed / "machine.json").write_text(json.dumps(other))

    def kept() -> dict[str, bytes]:  # (SQLite's shared-memory index changes on any open)
        return {p.name: p.read_bytes() for p in timed.iterdir()
                if p.is_file() and not p.name.endswith(("-shm", "-wal", ".lock"))}  # fmt: skip

    before = kept()
    err = cli_refusal(["prune", "--resume", str(timed), "--evaluations", "3", "--quiet"])
    assert "its candidates were timed on another (" in err and "GenuineIntel" in err
    assert kept() == before and "episodes.jsonl" in before and "report.json" in before

    counted = tmp_path / "counted"
    assert main(["prune", *BASE, "--out", str(counted)]) == 0
    (counted / "machine.json").write_text(json.dumps(other))
    assert main(["prune", "--resume", str(counted), "--evaluations", "3", "--quiet"]) == 0
    assert json.loads((counted / "machine.json").read_text()) == here  # it times nothing

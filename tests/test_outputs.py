"""No command writes over what it did not create unless --overwrite is given, and every
output path is checked before any work starts (``hwprune.outputs``).

For each command that writes: the refusal is one line, exit code 2, within a fraction of a
second (nothing was loaded, trained or measured: what was there is byte-identical), and
``--overwrite`` does replace what the command itself wrote before. The demo resumes an
interrupted demo and refuses a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Imported now so that a test's clock measures the command's checks, not Python's imports.
import hwprune.api
import hwprune.cli.compare_oracles
import hwprune.cli.demo
import hwprune.cli.export
import hwprune.cli.measure
import hwprune.cli.prune
import hwprune.cli.train
import hwprune.compare
import hwprune.data
import hwprune.train  # noqa: F401
from hwprune.cli import build_parser, main
from hwprune.cli.demo import demo_checkpoint_path, demo_options
from hwprune.errors import RunDirError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "vgg11_cifar", "--width", "0.25", "--budget", "flops<=50%", "--agent",
        "uniform", "--evaluations", "2", "--finetune-epochs", "0", "--quiet", "--json"]  # fmt: skip
#: A refusal checks a few paths: far less than loading data or building a model takes.
FAST = 1.0

build_parser()  # the subcommands' modules are imported once, here


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the cache's -wal/-shm aside: SQLite folds them)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; assert one line, exit 2, well within FAST seconds; the line."""
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert seconds < FAST, f"refused after {seconds:.2f} s: work was done first"
    return lines[0]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished prune run (tiny: FLOPs budget, 2 evaluations, no fine-tuning), made once."""
    root = tmp_path_factory.mktemp("pruned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWPRUNE_HOME", str(root / "home"))
        mp.setenv("HWPRUNE_CACHE", str(root / "cache.sqlite"))
        assert main(["prune", *TINY, "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def run_copy(pruned: Path, tmp_path: Path) -> Path:
    """A copy of the finished run this test may have written over."""
    return Path(shutil.copytree(pruned, tmp_path / "run"))


# ------------------------------------------------------------------------------------ train


def test_train_refuses_an_existing_checkpoint_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hwprune.models import read_checkpoint

    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier checkpoint")
    argv = ["train", "--model", "vgg11_cifar", "--width", "0.25", "--data", "digits",
            "--epochs", "1", "--out", str(out), "--quiet"]  # fmt: skip
    line = refused(argv, capsys)
    assert "already exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"an earlier checkpoint"
    assert main([*argv, "--overwrite"]) == 0
    assert read_checkpoint(out).meta["model"] == "vgg11_cifar"


@pytest.mark.parametrize(
    ("target", "message"),
    [("folder", "is a folder"), ("notes.txt/model.pt", "is a file, not a folder")],
)
def test_train_refuses_an_out_it_cannot_write_before_training(
    target: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("notes\n")
    before = digest(tmp_path)
    line = refused(["train", "--model", "vgg11_cifar", "--width", "0.25", "--data", "digits",
                    "--epochs", "1", "--out", str(tmp_path / target), "--quiet"], capsys)  # fmt: skip
    assert message in line
    assert digest(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["folder", "notes.txt"]


# -------------------------------------------------------------------------- compare-oracles


COMPARE = ["compare-oracles", "--model", "vgg11_cifar", "--width", "0.25", "--oracle", "params",
           "--oracle", "flops", "--reference", "params", "--json"]  # fmt: skip


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_compare_oracles_never_writes_into_a_prune_run(
    overwrite: list[str], run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(run_copy)
    line = refused([*COMPARE, "--samples", "3", "--out", str(run_copy), *overwrite], capsys)
    assert "holds a hwprune run" in line and "choose another --out" in line
    assert digest(run_copy) == before


def test_compare_oracles_replaces_its_own_comparison_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    assert main([*COMPARE, "--samples", "3", "--out", str(out)]) == 0
    before = digest(out)
    line = refused([*COMPARE, "--samples", "4", "--out", str(out)], capsys)
    assert "already holds an oracle comparison" in line and "--overwrite" in line
    assert digest(out) == before
    (out / "scatter_an_old_oracle.png").write_bytes(b"from an earlier comparison")
    assert main([*COMPARE, "--samples", "4", "--out", str(out), "--overwrite"]) == 0
    assert len(json.loads((out / "comparison.json").read_text())["keeps"]) == 4
    assert not (out / "scatter_an_old_oracle.png").exists()  # replaced, not mixed


def test_compare_oracles_refuses_a_folder_of_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.txt").write_text("the user's\n")
    line = refused([*COMPARE, "--out", str(tmp_path), "--overwrite"], capsys)
    assert "holds other files" in line
    assert os.listdir(tmp_path) == ["mine.txt"]


# ------------------------------------------------------------------------------------ prune


def test_prune_refuses_an_occupied_folder_before_loading_and_overwrite_replaces_a_run(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(run_copy)
    line = refused(["prune", *TINY, "--out", str(run_copy)], capsys)
    assert "already holds a hwprune run" in line and "--overwrite" in line
    assert digest(run_copy) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("the user's\n")
    line = refused(["prune", *TINY, "--out", str(other), "--overwrite"], capsys)
    assert "holds other files" in line and os.listdir(other) == ["mine.txt"]
    line = refused(["prune", *TINY, "--out", str(tmp_path / "other" / "mine.txt" / "r")], capsys)
    assert "is a file, not a folder" in line

    (run_copy / "report.md").write_text("the earlier run's report\n")
    capsys.readouterr()
    assert main(["prune", *TINY, "--seed", "1", "--out", str(run_copy), "--overwrite"]) == 0
    assert json.loads((run_copy / "config.json").read_text())["options"]["seed"] == 1
    assert (run_copy / "report.md").read_text() != "the earlier run's report\n"


# -------------------------------------------------------------------------------------- API


def test_api_prune_refuses_out_before_calling_the_task_and_overwrite_replaces(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hwprune

    calls = tmp_path / "factory-called"
    (tmp_path / "counting_task.py").write_text(
        "from pathlib import Path\n"
        "def factory():\n"
        f"    Path({str(calls)!r}).write_text('called')\n"
        "    raise SystemExit('the factory ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    before = digest(run_copy)
    t0 = time.perf_counter()
    with pytest.raises(RunDirError, match="already holds a hwprune run"):
        hwprune.prune(task="counting_task:factory", budgets=["flops<=50%"], out=run_copy)
    assert time.perf_counter() - t0 < FAST
    assert not calls.exists() and digest(run_copy) == before

    (run_copy / "report.md").write_text("the earlier run's report\n")
    result = hwprune.prune("vgg11_cifar", width=0.25, budgets=["flops<=50%"], agent="uniform",
                           evaluations=2, finetune_epochs=0, seed=1, out=run_copy,
                           overwrite=True)  # fmt: skip
    assert result.budgets[0].met
    assert json.loads((run_copy / "config.json").read_text())["options"]["seed"] == 1
    assert (run_copy / "report.md").read_text() != "the earlier run's report\n"


# ----------------------------------------------------------------------------------- export


def test_export_refuses_before_loading_and_overwrite_replaces(
    pruned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    line = refused(["export", str(pruned), "--onnx", str(out)], capsys)
    assert "already exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"an earlier export"
    (tmp_path / "notes.txt").write_text("notes\n")
    line = refused(["export", str(pruned), "--onnx", str(tmp_path / "notes.txt" / "m.onnx")],
                   capsys)  # fmt: skip
    assert "is a file, not a folder" in line
    assert main(["export", str(pruned), "--onnx", str(out), "--overwrite"]) == 0
    onnx.checker.check_model(onnx.load(str(out)))


# ---------------------------------------------------------------------------------- measure


def test_measure_refuses_a_cache_it_cannot_make_before_measuring(
    pruned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("notes\n")
    line = refused(["measure", str(pruned / "model.onnx"), "--cache",
                    str(tmp_path / "notes.txt" / "c.sqlite")], capsys)  # fmt: skip
    assert "is a file, not a folder" in line
    line = refused(["measure", str(pruned / "model.onnx"), "--cache", str(tmp_path)], capsys)
    assert "is a folder" in line
    assert os.listdir(tmp_path) == ["notes.txt"]


# ------------------------------------------------------------------ hwprune's own folder


def _home_commands(pruned: Path, out: Path) -> dict[str, list[str]]:
    return {
        "demo": ["demo", "--out", str(out)],
        "measure": ["measure", str(pruned / "model.onnx"), "--oracle", "params"],
        "compare-oracles": [*COMPARE, "--out", str(out)],
        "prune": ["prune", *TINY, "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["demo", "measure", "compare-oracles", "prune"])
def test_a_file_as_hwprune_home_is_refused_before_any_work(
    command: str,
    pruned: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder\n")
    monkeypatch.setenv("HWPRUNE_HOME", str(home))
    monkeypatch.delenv("HWPRUNE_CACHE")
    out = tmp_path / "out"
    line = refused(_home_commands(pruned, out)[command], capsys)
    assert "$HWPRUNE_HOME" in line and "is a file" in line and "unset it" in line
    assert home.read_text() == "not a folder\n" and not out.exists()


def test_a_file_as_hwprune_home_is_refused_by_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hwprune
    from hwprune.errors import OutputError

    (tmp_path / "home").write_text("not a folder\n")
    monkeypatch.setenv("HWPRUNE_HOME", str(tmp_path / "home"))
    with pytest.raises(OutputError, match=r"\$HWPRUNE_HOME .* is a file"):
        hwprune.prune("vgg11_cifar", budgets=["flops<=50%"], out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_folder_as_hwprune_cache_is_refused_at_the_start(
    pruned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path))
    line = refused(["measure", str(pruned / "model.onnx"), "--oracle", "params"], capsys)
    assert "$HWPRUNE_CACHE" in line and "is a folder" in line


# ------------------------------------------------------------------------------------- demo


def _demo_checkpoint() -> Path:
    """The demo's model where the demo keeps it, untrained: a real checkpoint the demo reuses,
    so a test of what the demo does with its folder spends no minutes training."""
    from hwprune.models import get_model, save_checkpoint

    model = get_model("vgg11_cifar", num_classes=10, width=0.5)
    meta = {"model": "vgg11_cifar", "width": 0.5, "num_classes": 10, "input_size": 32,
            "dataset": "digits"}  # fmt: skip
    return save_checkpoint(model, demo_checkpoint_path(), meta=meta)


def _demo_run(folder: Path, *, finished: bool, candidates: int = 3) -> Path:
    """The folder a demo leaves: its config.json, episodes log, and (finished) its reports."""
    from hwprune.config import PruneConfig, write_run_config

    folder.mkdir(parents=True)
    write_run_config(folder, PruneConfig.from_mapping(demo_options(demo_checkpoint_path())))
    records = [{"type": "surrogate", "mode": "auto"}] + [
        {"index": i, "key": f"candidate{i}", "feasible": False} for i in range(candidates)
    ]
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (folder / "report.json").write_text("{}\n")
        (folder / "report.md").write_text("# the finished demo's report\n")
    return folder


def test_demo_refuses_a_finished_demo_naming_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _demo_run(tmp_path / "hwprune-demo", finished=True)  # where the demo runs by default
    before = digest(tmp_path)
    line = refused(["demo"], capsys)
    assert "finished demo" in line and "hwprune-demo/report.md" in line and "--overwrite" in line
    assert digest(tmp_path) == before


@pytest.mark.parametrize("holds", ["other files", "another run"])
def test_demo_refuses_a_folder_it_did_not_write(
    holds: str, pruned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    if holds == "other files":
        out.mkdir()
        (out / "mine.txt").write_text("the user's\n")
    else:
        shutil.copytree(pruned, out)
    before = digest(out)
    line = refused(["demo", "--out", str(out)], capsys)
    assert ("holds other files" if holds == "other files" else "not the demo") in line
    assert digest(out) == before


def _start_demo(cwd: Path, *argv: str) -> tuple[subprocess.Popen, queue.Queue]:
    """``python -m hwprune demo`` in ``cwd``, its stderr lines in a queue as they come.

    SIGINT is reset to its default in the child, so Python turns it into KeyboardInterrupt
    (the Ctrl-C of a user) even where the test runner was started with SIGINT ignored.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwprune", "demo", *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _interrupt_when(
    proc: subprocess.Popen, lines: queue.Queue, ready: Callable[[str], bool], *, seconds: float
) -> str:
    """Ctrl-C the demo once ``ready(stderr so far)``; its whole stderr. Fails on timeout."""
    text, deadline = "", time.monotonic() + seconds
    try:
        while not ready(text):
            assert time.monotonic() < deadline, f"not ready after {seconds} s:\n{text}"
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            assert line is not None, f"the demo ended first (exit {proc.wait()}):\n{text}"
            text += line
        proc.send_signal(signal.SIGINT)
        # 130 from the CLI's handler, or death by SIGINT: CPython ends a `python -m` process
        # that way when a KeyboardInterrupt passed through its run machinery, even once
        # handled; a shell reports both as 130.
        assert proc.wait(timeout=60) in (130, -signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    while (line := lines.get(timeout=10)) is not None:
        text += line
    return text


def test_demo_run_again_resumes_an_interrupted_demo(tmp_path: Path) -> None:
    _demo_checkpoint()
    run = _demo_run(tmp_path / "hwprune-demo", finished=False, candidates=3)
    before = {n: (run / n).read_bytes() for n in ("config.json", "episodes.jsonl")}

    def ready(text: str) -> bool:
        # Whatever the rerun does first, the interrupted demo's records must still be there.
        assert (run / "episodes.jsonl").is_file(), "the interrupted demo was deleted"
        return "demo model:" in text  # said after the resume line: Ctrl-C lands past it

    err = _interrupt_when(*_start_demo(tmp_path), ready, seconds=120)
    said = [line for line in err.splitlines() if "resuming" in line]
    assert said == ["resuming the interrupted demo in hwprune-demo (3 candidates measured; "
                    "--overwrite starts afresh)"]  # fmt: skip
    assert "interrupted" in err.split("resuming", 1)[1]
    assert (run / "config.json").read_bytes() == before["config.json"]
    assert (run / "episodes.jsonl").read_bytes().startswith(before["episodes.jsonl"])
    assert not (run / "report.json").exists()


def test_demo_overwrite_replaces_a_finished_demo(tmp_path: Path) -> None:
    _demo_checkpoint()
    run = _demo_run(tmp_path / "out", finished=True)
    old_config = (run / "config.json").read_bytes()

    def ready(text: str) -> bool:  # the new demo has claimed the folder
        config = run / "config.json"
        return not (run / "report.json").exists() and (
            config.is_file() and config.read_bytes() != old_config
        )

    _interrupt_when(*_start_demo(tmp_path, "--out", "out", "--overwrite", "--quiet"), ready,
                    seconds=120)  # fmt: skip
    assert not (run / "report.md").exists() and not (run / "report.json").exists()

"""Progress in a log file or a pipe, and a run stopped by SIGTERM: plain lines, resumable."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hwprune.cli._progress import LineProgress, ProgressView, progress_view
from hwprune.progress import ProgressEvent

ROOT = Path(__file__).resolve().parents[1]


def test_plain_lines_keep_coming_while_a_stage_waits_for_its_next_event() -> None:
    out = io.StringIO()
    with LineProgress(out, interval=0.2) as view:
        view(ProgressEvent("search", 0, 10, "searching"))
        view(ProgressEvent("search", 4, 10, info={"best_feasible_accuracy": 0.9}, seconds=2.0))
        time.sleep(1.0)  # one slow candidate: no event, the lines go on
        view(ProgressEvent("search", 10, 10, info={"best_feasible_accuracy": 0.95},
                           seconds=5.0, finished=True))  # fmt: skip
        time.sleep(0.5)  # nothing is printed for a finished stage
    lines = out.getvalue().splitlines()
    assert lines[0] == "search: started (0/10) | elapsed 0:00"
    beats = [line for line in lines[1:-1] if line.startswith("search: 4/10")]
    assert len(beats) >= 2, lines
    assert "best feasible: 90.0%" in beats[0]
    assert "elapsed 0:0" in beats[0] and "remaining ~0:0" in beats[0]
    assert lines[-1] == "search: done 10/10 | best feasible: 95.0% | elapsed 0:05"
    assert len(lines) == 2 + len(beats)


def test_elapsed_counts_from_the_stage_start_when_events_carry_no_seconds() -> None:
    now = [100.0]
    out = io.StringIO()
    with LineProgress(out, interval=30.0, clock=lambda: now[0]) as view:
        view(ProgressEvent("finetune", 0, 6, "fine-tuning"))
        for epoch, at in ((1, 140.0), (2, 175.0), (3, 210.0)):
            now[0] = at  # a task's own per-epoch events: seconds=0
            view(ProgressEvent("finetune", epoch, 6, info={"search_accuracy": 0.9}))
        now[0] = 220.0
        view(ProgressEvent("finetune", 6, 6, seconds=120.0, finished=True))
    lines = out.getvalue().splitlines()
    assert lines == [
        "fine-tune: started (0/6) | elapsed 0:00",
        "fine-tune: 1/6 | search acc 90.0% | elapsed 0:40 | remaining ~3:20",
        "fine-tune: 2/6 | search acc 90.0% | elapsed 1:15 | remaining ~2:30",
        "fine-tune: 3/6 | search acc 90.0% | elapsed 1:50 | remaining ~1:50",
        "fine-tune: done 6/6 | elapsed 2:00",
    ]


def test_a_console_that_is_not_a_terminal_gets_plain_lines() -> None:
    from rich.console import Console

    assert isinstance(progress_view(Console(file=io.StringIO()), show=True), LineProgress)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(progress_view(terminal, show=True), ProgressView)
    assert progress_view(terminal, show=False) is None


def _hwprune(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hwprune", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _records(path: Path) -> int:
    """Candidates in a run's episodes log (one JSON line each, appended as each completes)."""
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.mark.slow
def test_sigterm_mid_search_leaves_a_resumable_run_whose_stage_times_add_up(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    proc = _hwprune(
        "prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget", "flops<=50%",
        "--agent", "uniform", "--evaluations", "6", "--finetune-epochs", "0",
        "--out", str(run),
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    search_seen = None
    while time.monotonic() < deadline and proc.poll() is None:
        if search_seen is None and any(line.startswith("search: started") for line in lines):
            search_seen = time.monotonic()
        if search_seen is not None and _records(run / "episodes.jsonl") >= 2:
            break
        time.sleep(0.05)
    assert search_seen is not None, "".join(lines)
    assert proc.poll() is None, "the search ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert proc.wait(timeout=120) == 143
    reader.join(timeout=10)
    text = "".join(lines)
    for label in ("load data and model", "measure dense model"):
        assert f"{label}: started" in text and f"{label}: done" in text, text
    assert f"Resume with: hwprune prune --resume {run}" in text
    assert "Traceback" not in text
    interrupted = json.loads((run / "stages.json").read_text())
    assert interrupted["parts"] == 1
    assert interrupted["stage_seconds"]["search"] >= stopped - search_seen - 0.5

    resumed = _hwprune("prune", "--resume", str(run))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    for label in ("search", "confirm best", "verify budgets", "export", "report"):
        assert f"{label}: started" in err and f"{label}: done" in err, err
    report = json.loads((run / "report.json").read_text())
    assert report["parts"] == 2
    for stage, seconds in interrupted["stage_seconds"].items():
        assert report["stage_seconds"][stage] >= seconds
    # The stages run again on resume count twice: the first part and this one.
    assert report["stage_seconds"]["load"] > interrupted["stage_seconds"]["load"]
    assert "stopped and resumed 1 time" in (run / "report.md").read_text()

"""A real ``hwprune prune`` subprocess killed with SIGKILL mid-search, then resumed to completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hwprune.evaluate import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _episodes(out: Path) -> list[dict]:
    return [
        r for r in read_jsonl(out / "episodes.jsonl") if r.get("type", "candidate") == "candidate"
    ]


def test_sigkill_then_resume_evaluates_no_candidate_twice(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hwprune", "prune", "--model", "vgg11_cifar", "--width", "0.25",
           "--budget", "flops<=40%", "--agent", "random", "--evaluations", "14",
           "--finetune-epochs", "0", "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "episodes.jsonl").exists() and len(_episodes(out)) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "prune finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = _episodes(out)
    assert 3 <= len(before) < 14
    assert not (out / "report.json").exists()
    # Simulate a writer killed mid-line: the resumed run must tolerate it.
    with (out / "episodes.jsonl").open("a") as fh:
        fh.write('{"type": "candidate", "key": "half')

    done = subprocess.run([sys.executable, "-m", "hwprune", "prune", "--resume", str(out),
                           "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["all_met"] is True
    after = _episodes(out)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)), "a candidate was evaluated twice"
    assert [r["key"] for r in after[: len(before)]] == [r["key"] for r in before]
    assert len(after) > len(before)
    report = json.loads((out / "report.json").read_text())
    assert report["budgets"][0]["met"] is True
    assert report["search"]["evaluations"] == len(after)

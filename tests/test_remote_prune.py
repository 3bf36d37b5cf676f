"""``hwprune prune`` with its latency budget judged by a real ``hwprune serve`` process on loopback,
whose server is killed mid-run: the run fails in one line or waits, resumes, and loses nothing."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from oracle_server import FAST_ORT, Server, served, server_env, start, stop

from hwprune.evaluate import read_jsonl


def _episodes(out: Path) -> list[dict]:
    if not (out / "episodes.jsonl").exists():
        return []
    return [
        r for r in read_jsonl(out / "episodes.jsonl") if r.get("type", "candidate") == "candidate"
    ]


def _prune(out: Path, oracle: str, evaluations: int) -> list[str]:
    return [sys.executable, "-m", "hwprune", "prune", "--model", "vgg11_cifar", "--width", "0.25",
            "--budget", "latency<=70%", "--oracle", f"latency={oracle}", "--agent", "random",
            "--evaluations", str(evaluations), "--finetune-epochs", "0", "--out", str(out),
            "--quiet"]  # fmt: skip


def _kill_after(proc: subprocess.Popen, server: Server, out: Path, n: int) -> list[dict]:
    """SIGKILL the server once the run has logged ``n`` candidates; the episodes so far."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and len(_episodes(out)) < n:
        time.sleep(0.2)
    assert proc.poll() is None, "prune finished before the server could be killed"
    stop(server.proc, kill=True)
    return _episodes(out)


def _check_resumed(out: Path, before: list[dict], url: str) -> None:
    after = _episodes(out)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)), "a candidate was evaluated twice"
    assert keys[: len(before)] == [r["key"] for r in before], "a logged candidate was lost"
    assert len(after) > len(before)
    report = json.loads((out / "report.json").read_text())
    budget = report["budgets"][0]
    base = url.split("?")[0]
    assert budget["met"] is True and f"@{base}" in budget["oracle"]
    assert report["search"]["evaluations"] == len(after)
    latency = after[-1]["measurements"]["latency"]
    assert latency["oracle"] == budget["oracle"] and latency["extra"]["remote"]["url"] == base


@pytest.mark.slow
def test_search_budget_judged_by_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hwprune.cli import main

    out = tmp_path / "run"
    with served([FAST_ORT]) as server:
        argv = _prune(out, f"{FAST_ORT}@{server.url}", 4)[3:]
        argv[argv.index("random")] = "uniform"
        assert main([*argv, "--json"]) == 0
        measured = sum("latency =" in ln for ln in server.lines)
    result = json.loads(capsys.readouterr().out)
    assert result["all_met"] is True
    _check_resumed(out, [], server.url)
    # Dense (3 calls), every candidate, the proof (3 calls): all timed by the server.
    assert measured >= 3 + len(_episodes(out)) + 3


@pytest.mark.slow
def test_server_killed_mid_run_fails_in_one_line_then_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    server = start([FAST_ORT])
    port = server.port
    try:
        # Little patience: the run must give up, with one line, a few seconds after the kill.
        url = f"{server.url}?attempts=3&wait=3"
        proc = subprocess.Popen(_prune(out, f"{FAST_ORT}@{url}", 10), env=server_env(),
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        try:
            before = _kill_after(proc, server, out, 2)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == 2, err
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING")]
        assert len(lines) == 1 and "cannot reach the oracle server" in lines[0], err
        assert "connection refused" in lines[0]
        assert not (out / "report.json").exists()
        assert len(_episodes(out)) >= len(before) >= 2

        before = _episodes(out)
        server = start([FAST_ORT], port=port)
        done = subprocess.run([sys.executable, "-m", "hwprune", "prune", "--resume", str(out),
                               "--json"], env=server_env(), cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["all_met"] is True
        _check_resumed(out, before, url)
    finally:
        stop(server.proc)


@pytest.mark.slow
def test_run_waits_for_a_restarted_server_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    server = start([FAST_ORT])
    port = server.port
    stderr: list[str] = []
    try:
        proc = subprocess.Popen(_prune(out, f"{FAST_ORT}@{server.url}", 10), env=server_env(),
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            before = _kill_after(proc, server, out, 2)
            # Restart only once the run is seen retrying, so it surely waited for the server.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any("retrying" in ln for ln in stderr):
                assert proc.poll() is None, "".join(stderr)
                time.sleep(0.2)
            assert any("connection refused; retrying" in ln for ln in stderr), "".join(stderr)
            server = start([FAST_ORT], port=port)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            with contextlib.suppress(RuntimeError):
                reader.join(timeout=10)
        assert proc.returncode == 0, "".join(stderr)
        _check_resumed(out, before, server.url)
    finally:
        stop(server.proc)


def test_compare_oracles_with_a_remote_oracle(tmp_path: Path) -> None:
    import torch.nn as nn

    import oracles
    from hwprune.compare import compare_oracles

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))  # fmt: skip
    with served(["params", FAST_ORT]) as server:
        remote = oracles.get_oracle(f"{FAST_ORT}@{server.url}").spec
        result = compare_oracles(
            model=model,
            input_shape=(1, 3, 16, 16),
            oracle_specs=["params", f"params@{server.url}", remote],
            samples=3,
        )
    assert result.reference == remote
    assert result.values["params"] == result.values[f"params@{server.url}"]
    assert all(v > 0 for v in result.values[remote])

"""A real ``hwprune serve`` process on loopback, for the remote-oracle tests."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Fast timing settings: the tests check plumbing, not latency figures.
FAST_ORT = "onnxruntime:cpu?threads=1&min_time=0.05&max_time=0.5"
TOKEN = "test-token-0123456789abcdef"


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    port: int
    lines: list[str]


def server_env(token: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HWPRUNE_TOKEN", None)
    if token is not None:
        env["HWPRUNE_TOKEN"] = token
    return env


def start(
    specs: Sequence[str],
    *,
    port: int = 0,
    token: str | None = None,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
) -> Server:
    """Start the server and wait (at most ``timeout`` s) for the line with its address."""
    cmd = [sys.executable, "-m", "hwprune", "serve", "--port", str(port), *extra]
    for spec in specs:
        cmd += ["--oracle", spec]
    proc = subprocess.Popen(
        cmd, env=server_env(token), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"at (http://127\.0\.0\.1:(\d+))", line)
            if m:
                # Keep reading its output so a full pipe never blocks the server.
                threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
                return Server(proc, m.group(1), int(m.group(2)), lines)
        elif proc.poll() is not None:
            break
    stop(proc)
    raise RuntimeError(f"the server did not start: {''.join(lines)}")


def _drain(proc: subprocess.Popen, lines: list[str]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in proc.stdout:
            lines.append(line)


def stop(proc: subprocess.Popen, *, kill: bool = False) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@contextlib.contextmanager
def served(specs: Sequence[str], **kwargs) -> Iterator[Server]:
    server = start(specs, **kwargs)
    try:
        yield server
    finally:
        stop(server.proc)

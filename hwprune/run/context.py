"""What every stage of a run shares: the config, the run directory and its lock, progress.

``RunContext.stage(name, total)`` is the one timed-stage helper: it emits the
stage's first and last ProgressEvent, records its wall time, and hands the
stage a ``step(done, info=...)`` for the events in between. A run stopped by
Ctrl-C or SIGTERM keeps its stage times in ``RUN/stages.json``, so the times of a
stopped and resumed run add up every part.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwprune.config import PruneConfig, write_run_config
from hwprune.errors import ConfigError, RunDirError
from hwprune.progress import ProgressEvent, ProgressFn, emit

__all__ = ["RunContext", "RunLock", "StageStep", "prepare_run_dir", "read_stage_times"]

LOCK_NAME = ".hwprune.lock"
#: The stages' wall seconds so far and how many times the run was started (resumes + 1).
STAGES_FILE = "stages.json"

log = logging.getLogger(__name__)


class RunLock:
    """One process per run directory: an exclusive ``flock`` on RUN/.hwprune.lock.

    The OS drops the lock when the process dies (kill -9 included), so a stale
    lock never blocks a resume. The holder's pid is written into the file so a
    refused second process can name it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(
                f"cannot use {str(self.path.parent)!r} as a run directory: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"run directory {str(self.path.parent)!r} is in use by another hwprune process "
                f"(pid {holder}); wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _make_dir(out: Path) -> None:
    """``out`` created with its parents; RunDirError in one line when the filesystem says no."""
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(
                f"cannot create run directory {str(out)!r}: {str(parent)!r} is a file, not a folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {str(out)!r}: {exc.strerror}") from None


def prepare_run_dir(out: Path, config: PruneConfig, *, resume: bool, overwrite: bool) -> RunLock:
    """Take the run directory (locked before anything is written) and write config.json.

    A new run refuses an occupied folder unless ``overwrite`` (and then only a
    hwprune run folder); a resume needs config.json. Returns the held lock.
    """
    if resume and overwrite:
        raise ConfigError("give either resume or overwrite, not both")
    config_path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output {str(out)!r} is a file, expected a folder for the run")
    if resume:
        if not config_path.is_file():
            raise RunDirError(
                f"cannot resume {str(out)!r}: it has no config.json (not a hwprune run directory)"
            )
        return RunLock(out).acquire()
    occupied = out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())
    if occupied and not overwrite:
        what = "a hwprune run" if config_path.is_file() else "other files"
        raise RunDirError(
            f"output folder {str(out)!r} already holds {what}; pass --resume to continue "
            "it, --overwrite to replace it, or choose another --out"
        )
    if occupied and not config_path.is_file():
        raise RunDirError(
            f"refusing to overwrite {str(out)!r}: it is not a hwprune run directory "
            "(no config.json); choose another --out"
        )
    _make_dir(out)
    lock = RunLock(out).acquire()
    try:
        if occupied:
            for p in out.iterdir():
                if p.name == LOCK_NAME:
                    continue
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        write_run_config(out, config)
    except OSError as exc:
        lock.release()
        raise RunDirError(f"cannot write into run directory {str(out)!r}: {exc.strerror}") from None
    return lock


@dataclass
class StageStep:
    """Handed to a stage by ``RunContext.stage``: report intermediate progress."""

    ctx: RunContext
    name: str
    total: int | None
    t0: float

    def __call__(
        self, done: int, *, total: int | None = None, message: str = "", **info: Any
    ) -> None:
        if total is not None:
            self.total = total
        emit(
            self.ctx.progress,
            ProgressEvent(
                self.name, done, self.total, message, info, time.perf_counter() - self.t0
            ),
        )


@dataclass
class RunContext:
    """The run's shared state: config, run directory (locked), progress, stage times."""

    config: PruneConfig
    run_dir: Path
    progress: ProgressFn | None = None
    resumed: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    final_info: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    #: How many times this run was started: 1, plus one per resume.
    parts: int = 1

    def __post_init__(self) -> None:
        if self.resumed and not self.stage_seconds:
            earlier = read_stage_times(self.run_dir)
            if earlier is not None:
                self.stage_seconds = dict(earlier["stage_seconds"])
                self.parts = int(earlier["parts"]) + 1

    @property
    def episodes_path(self) -> Path:
        return self.run_dir / "episodes.jsonl"

    @property
    def cache_path(self) -> Path:
        return self.run_dir / "oracle-cache.sqlite"

    def path(self, name: str) -> Path:
        return self.run_dir / name

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, message: str = "") -> Iterator[StageStep]:
        """Time one stage; emit its opening event, hand it ``step``, emit its closing event.

        The closing event repeats the last ``step``'s figures with ``finished``
        set; the stage's seconds add up over repeated entries (repairs).
        """
        t0 = time.perf_counter()
        step = StageStep(self, name, total, t0)
        emit(self.progress, ProgressEvent(name, 0, total, message))
        last: dict[str, Any] = {}

        def record(event: ProgressEvent) -> None:
            last["event"] = event
            if outer is not None:
                outer(event)

        outer, self.progress = self.progress, record
        interrupted = False
        try:
            yield step
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run is resumed later
            interrupted = True
            raise
        finally:
            self.progress = outer
            seconds = time.perf_counter() - t0
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + seconds
            if interrupted:
                self._save_stage_times()
        prev = last.get("event")
        done = step.total if step.total is not None else (prev.done if prev else 1)
        emit(
            self.progress,
            ProgressEvent(
                name,
                done if done is not None else 1,
                step.total,
                prev.message if prev else message,
                dict(prev.info) if prev else {},
                seconds,
                finished=True,
            ),
        )

    def _save_stage_times(self) -> None:
        """Write the stage times of a run being stopped, for its resume to add to.

        Only when it is resumable (its episodes log holds a candidate): a run stopped before
        that is removed whole, with no file left behind. A run that fails or is refused
        (a resume on another machine) writes nothing: it is left as it was."""
        log_path = self.episodes_path
        if not (log_path.is_file() and log_path.stat().st_size > 0):
            return
        path = self.path(STAGES_FILE)
        data = {"stage_seconds": self.stage_seconds, "parts": self.parts}
        try:
            tmp = path.with_name(STAGES_FILE + ".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:  # the times are a report figure, not worth failing the run for
            log.warning("cannot record the stage times in %s: %s", path, exc)


def read_stage_times(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/stages.json``: {"stage_seconds": {stage: seconds}, "parts": n}, or None when
    absent or unreadable (the run's times then start from this part)."""
    path = Path(run_dir) / STAGES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        seconds = {str(k): float(v) for k, v in data["stage_seconds"].items()}
        parts = int(data.get("parts", 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {"stage_seconds": seconds, "parts": max(1, parts)}

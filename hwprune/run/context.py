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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwprune.config import PruneConfig, write_run_config
from hwprune.errors import ConfigError, RunDirError
from hwprune.outputs import LOCK_NAME, RUN, check_folder, clear_folder, make_folder
from hwprune.progress import ProgressEvent, ProgressFn, emit

__all__ = [
    "LOCK_NAME",
    "RunContext",
    "RunLock",
    "StageStep",
    "check_run_dir",
    "prepare_run_dir",
    "read_stage_times",
]

#: The stages' wall seconds so far and how many times the run was started (resumes + 1).
STAGES_FILE = "stages.json"

log = logging.getLogger(__name__)


class RunLock:
    """One process per run directory: an exclusive ``flock`` on RUN/.hwprune.lock.

    The OS drops the lock when the process dies (kill -9 included), so a stale
    lock never blocks a resume. The holder's pid is written into the file so a
    refused second process can name it. ``release`` removes the file: a run that
    finished (or stopped with an error or Ctrl-C) leaves none behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        while True:
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
                    f"run directory {str(self.path.parent)!r} is in use by another hwprune "
                    f"process (pid {holder}); wait for it to finish or stop it first"
                ) from None
            # The holder before us removes the file as it releases it: a lock taken on a
            # removed file excludes no one, so take the one now at the path instead.
            if self._is_at_path(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _is_at_path(self, fd: int) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            # Removed while still held, so no process can lock this file after us and
            # believe it owns the run.
            if self._is_at_path(self._fd):
                with contextlib.suppress(OSError):
                    self.path.unlink()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_run_dir(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """The run directory's checks, before any work (they only read; ``hwprune.outputs``'
    rule): a new run needs a new or empty folder, or one holding a hwprune run with
    ``overwrite``; a resume needs a run folder it may write. Returns True when the folder
    holds a run (continued, or replaced)."""
    if resume and overwrite:
        raise ConfigError("give either resume or overwrite, not both")
    if not resume:
        return check_folder(out, kind=RUN, overwrite=overwrite, resumable=True)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output {str(out)!r} is a file, expected a folder for the run")
    if not (out / "config.json").is_file():
        raise RunDirError(
            f"cannot resume {str(out)!r}: it has no config.json (not a hwprune run directory)"
        )
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot resume {str(out)!r}: the folder may not be written")
    return True


def prepare_run_dir(out: Path, config: PruneConfig, *, resume: bool, overwrite: bool) -> RunLock:
    """Take the run directory (locked before anything is written) and write config.json.

    ``check_run_dir`` again (the folder may have changed since the command checked it),
    then a new run's folder is made, or, with ``overwrite``, the old run in it is
    cleared once the lock is held. Returns the held lock.
    """
    holds = check_run_dir(out, resume=resume, overwrite=overwrite)
    if resume:
        return RunLock(out).acquire()
    make_folder(out, kind=RUN)
    lock = RunLock(out).acquire()
    try:
        if holds:
            clear_folder(out)
        write_run_config(out, config)
    except OSError as exc:
        lock.release()
        raise RunDirError(f"cannot write into run directory {str(out)!r}: {exc.strerror}") from None
    return lock


def keep_raised_budget(out: Path, config: PruneConfig) -> None:
    """A resume that raises the search's evaluations writes them into config.json once its
    search starts (every refusal is behind it): a later plain resume, after this one is
    stopped, continues that search rather than finding the earlier report and calling the
    run complete."""
    from hwprune.config import read_run_config

    stored = read_run_config(out, require_model=False)
    if config.evaluations > stored.evaluations:
        write_run_config(out, stored.replace(evaluations=config.evaluations))


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

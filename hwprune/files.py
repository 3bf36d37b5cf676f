"""Atomic file writes: a reader finds the old file or the whole new one, never half of one.

Every file hwprune replaces (model.pt, model.onnx, report.json, config.json, an agent's
state) goes through ``write_atomic``: the bytes go to ``NAME.tmp`` beside the target,
which is renamed over it only once complete. When the write fails (a full disk, a quota,
no permission) the temporary file is removed and the OSError becomes a
:class:`~hwprune.errors.WriteError` whose message is one line naming the file.

Example::

    write_atomic(run_dir / "report.json", json.dumps(data))
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import shutil
from pathlib import Path

from hwprune.errors import WriteError

log = logging.getLogger(__name__)

__all__ = ["temp_path", "write_atomic", "write_error"]

# What the OS says for a full disk or quota, in the words a user searches for.
_FULL = {_errno.ENOSPC: "no space left on device", _errno.EDQUOT: "disk quota exceeded"}


def temp_path(path: str | Path) -> Path:
    """Where ``write_atomic`` stages ``path``: ``NAME.tmp`` in the same folder (same filesystem,
    so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def _size(n: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


def write_error(
    path: str | Path, exc: OSError, *, size: int | None = None, what: str = ""
) -> WriteError:
    """``exc`` (raised writing ``path``) as one line: the file, the bytes it needed and the free
    space for a full disk, else what the OS said. ``what`` names the file's role ("the ONNX
    file")."""
    where = (f"{what} " if what else "") + repr(str(path))
    code = exc.errno
    if code in _FULL:
        free = None
        with contextlib.suppress(OSError):  # the message without the free space, then
            free = shutil.disk_usage(Path(path).parent).free
        room = []
        if size is not None:
            room.append(f"it needs {_size(size)}")
        if free is not None:
            room.append(f"{_size(free)} free there")
        detail = f" ({', '.join(room)})" if room else ""
        message = f"cannot write {where}: {_FULL[code]}{detail}; free some space and retry"
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
        message = f"cannot write {where}: {reason}"
    return WriteError(message, errno=code, strerror=exc.strerror, filename=str(path))


def write_atomic(
    path: str | Path, data: bytes | bytearray | memoryview | str, *, what: str = ""
) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through ``NAME.tmp`` and a rename.

    The folder is created if missing. On failure nothing is left beside ``path`` and
    the old file, if any, is untouched; the error is a WriteError naming ``path`` (and
    ``what`` it is, e.g. "the ONNX file").
    """
    path = Path(path)
    payload = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise write_error(path, exc, size=payload.nbytes, what=what) from exc
    except BaseException:
        # Interrupted (Ctrl-C) mid-write: no half file left either; the interrupt goes on.
        _remove(tmp)
        raise
    return path


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:  # the write's own error is the one to report
        log.warning("could not remove the partial file %s: %s", tmp, exc)

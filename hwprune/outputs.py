"""Every path a command writes, checked before any work starts, by one rule.

No command writes over a file or folder it did not create unless ``overwrite``
(``--overwrite``) is given; and a folder that holds anything other than this
command's own output (another command's run, the user's files) is never cleared,
``overwrite`` or not: the command is pointed elsewhere instead. The checks only
read the filesystem, so a refusal costs nothing and changes nothing:

- an output file: not a folder, not inside a file, in a folder it may write, and
  new unless ``overwrite`` (``check_file``);
- an output folder: not a file, in a folder it may write, and empty or holding this
  command's own kind of output (``check_folder``); ``make_folder`` and
  ``clear_folder`` are then the only code that creates or empties one;
- hwprune's own folder ($HWPRUNE_HOME) and its oracle cache file ($HWPRUNE_CACHE):
  the right kind of thing, before any command that writes there starts
  (``check_home``, ``check_cache_file``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hwprune.errors import OutputError, RunDirError

__all__ = [
    "COMPARISON",
    "LOCK_NAME",
    "RUN",
    "FolderKind",
    "check_cache_file",
    "check_file",
    "check_folder",
    "check_home",
    "clear_folder",
    "make_folder",
]

#: Held by the one process working on a run directory (``hwprune.run.context.RunLock``).
LOCK_NAME = ".hwprune.lock"


@dataclass(frozen=True)
class FolderKind:
    """One command's output folder: what it is called and the file that marks it."""

    what: str  # with its article, as a message says it: "a hwprune run"
    noun: str  # "run directory"
    marker: str  # a file only this kind of folder holds


RUN = FolderKind("a hwprune run", "run directory", "config.json")
COMPARISON = FolderKind("an oracle comparison", "comparison folder", "comparison.json")
#: Every kind of output folder a hwprune command writes, to name what an occupied folder holds.
KINDS = (RUN, COMPARISON)


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _check_ancestors(
    path: Path, *, label: str, error: type[OutputError], writable: bool = True
) -> None:
    """The folder that ``path`` will be made in: its nearest existing ancestor is a folder
    (and, if ``writable``, one this process may write in; the missing ones between are
    created)."""
    for parent in path.parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise error(f"{label}: {str(parent)!r} is a file, not a folder")
        if writable and not _writable(parent):
            raise error(f"{label}: cannot write in {str(parent)!r} (Permission denied)")
        return


def check_file(path: str | Path, *, option: str, overwrite: bool, example: str) -> Path:
    """An output file, refused (OutputError, one line) unless it can be written as asked.

    Refused: a folder (or a path that names one, ending in '/'), a path inside a file,
    a folder that may not be written, anything but a regular file in its place; an
    existing file unless ``overwrite``. ``example`` is a file name to suggest.
    """
    value = str(path)
    p = Path(path)
    if not value.strip() or value.endswith(("/", "\\")) or p.is_dir():
        raise OutputError(
            f"{option} {value!r} is a folder; give a file path such as {str(p / example)!r}"
        )
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise OutputError(f"{option} {value!r} already exists; pass --overwrite to replace it")
        if not p.is_file():
            raise OutputError(f"{option} {value!r} exists and is not a regular file")
    _check_ancestors(p, label=f"{option} {value!r}", error=OutputError)
    return p


def _holds(folder: Path) -> FolderKind | None | bool:
    """What a folder holds: a kind of hwprune output, False when empty, True for other files."""
    names = {p.name for p in folder.iterdir()} - {LOCK_NAME}
    if not names:
        return False
    return next((k for k in KINDS if k.marker in names), True)


def check_folder(
    path: str | Path,
    *,
    kind: FolderKind,
    overwrite: bool,
    option: str = "--out",
    resumable: bool = False,
) -> bool:
    """An output folder, refused (RunDirError, one line) unless ``kind`` may be written there.

    Accepted: a folder still to be made (in a folder that may be written), an empty
    one, and one holding ``kind``'s output when ``overwrite`` (to be replaced).
    Refused always: a file, a folder holding another kind of output or other files.
    Returns True when the folder holds ``kind``'s output (so ``clear_folder`` it
    before writing). ``resumable`` names --resume in the refusal.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunDirError(f"output {str(p)!r} is a file, expected a folder for the {kind.noun}")
    if not p.exists():
        _check_ancestors(p, label=f"cannot create {kind.noun} {str(p)!r}", error=RunDirError)
        return False
    if not _writable(p):
        raise RunDirError(f"cannot write into {kind.noun} {str(p)!r} (Permission denied)")
    holds = _holds(p)
    if holds is False:
        return False
    if holds is kind:
        if not overwrite:
            resume = "--resume to continue it, " if resumable else ""
            raise RunDirError(
                f"output folder {str(p)!r} already holds {kind.what}; pass {resume}--overwrite "
                f"to replace it, or choose another {option}"
            )
        return True
    what = holds.what if isinstance(holds, FolderKind) else f"other files (not {kind.what})"
    raise RunDirError(
        f"output folder {str(p)!r} holds {what}, which is not replaced, even with --overwrite; "
        f"choose another {option} (a new or empty folder)"
    )


def make_folder(path: str | Path, *, kind: FolderKind) -> Path:
    """``path`` created with its parents; RunDirError in one line when the filesystem says no."""
    p = Path(path)
    _check_ancestors(p, label=f"cannot create {kind.noun} {str(p)!r}", error=RunDirError)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {kind.noun} {str(p)!r}: {exc.strerror}") from None
    return p


def clear_folder(path: str | Path) -> None:
    """Empty a folder ``check_folder`` found holding the command's own output (the lock stays:
    its holder is the caller)."""
    for p in Path(path).iterdir():
        if p.name == LOCK_NAME:
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _home_label(home: Path) -> str:
    if os.environ.get("HWPRUNE_HOME"):
        return f"$HWPRUNE_HOME {str(home)!r}"
    return f"hwprune's cache folder {str(home)!r} ($HWPRUNE_HOME unset)"


def check_home(*, writable: bool = False) -> Path:
    """hwprune's own folder (``oracles.home_dir()``: $HWPRUNE_HOME, else ~/.cache/hwprune) and
    the oracle cache file in it (or $HWPRUNE_CACHE), checked before a command that keeps
    anything there starts: each must be able to be what it is (a folder, a file).

    ``writable``: the command must write there (the demo's model), not only use a cache
    it may read when it cannot write it (``oracles.MeasurementCache``).
    """
    from oracles.cache import home_dir

    home = home_dir()
    label = _home_label(home)
    fix = "point HWPRUNE_HOME at a folder, or unset it"
    if home.exists() and not home.is_dir():
        raise OutputError(
            f"{label} is a file; hwprune keeps its cache (measurements, the demo model, "
            f"datasets) in a folder: {fix}"
        )
    if not home.exists():
        _check_ancestors(home, label=f"{label} cannot be created ({fix})", error=OutputError,
                         writable=writable)  # fmt: skip
    elif writable and not _writable(home):
        raise OutputError(f"{label} is not writable (Permission denied); {fix}")
    check_cache_file(None)
    return home


def check_cache_file(path: str | Path | None, *, option: str = "--cache") -> None:
    """The oracle cache file (``path``, else $HWPRUNE_CACHE, else oracles.sqlite in the home
    folder): refused when it is a folder or sits inside a file. One that may not be written
    is not refused: it is read and not written (``oracles.MeasurementCache``)."""
    from oracles.cache import default_cache_path

    if path is None:
        if not os.environ.get("HWPRUNE_CACHE"):
            return  # inside the home folder, which check_home checks
        p, label = default_cache_path(), "$HWPRUNE_CACHE"
    else:
        p, label = Path(path), option
    if p.is_dir():
        raise OutputError(
            f"oracle cache {label} {str(p)!r} is a folder; give a file path such as "
            f"{str(p / 'oracles.sqlite')!r}"
        )
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(
                    f"oracle cache {label} {str(p)!r} cannot be created: {str(parent)!r} is a "
                    "file, not a folder"
                )
            return

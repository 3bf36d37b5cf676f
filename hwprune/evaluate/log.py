"""The episodes log: every evaluated candidate, one JSON line, appended as it completes."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["EpisodeLog", "read_jsonl"]


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file: every line that holds a JSON object.

    Anything else is skipped with a warning naming the line: a half-written last
    line (a killed writer), bytes that are not UTF-8, text that is not JSON, and
    JSON that is not an object (``42``, ``null``, a list), so a reader never
    sees a record that is not a dict.
    """
    p = Path(path)
    if not p.exists():
        return
    with p.open("rb") as fh:
        lines = fh.readlines()
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            # ValueError covers JSONDecodeError and numbers too long for int().
            if i == len(lines) - 1 and not raw.endswith(b"\n"):
                log.warning("%s: ignoring a half-written last line", p)
            else:
                log.warning("%s: ignoring unreadable line %d", p, i + 1)
            continue
        except RecursionError:
            log.warning("%s: ignoring line %d (nested too deeply)", p, i + 1)
            continue
        if not isinstance(record, dict):
            log.warning(
                "%s: ignoring line %d, a JSON %s where a record (an object) belongs",
                p,
                i + 1,
                type(record).__name__,
            )
            continue
        yield record


class EpisodeLog:
    """Append-only JSON-lines log, flushed and fsynced per record so a kill loses nothing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()

    def _repair_tail(self) -> None:
        # A writer killed mid-line leaves text without a newline; end it so the
        # next record starts on its own line (the broken one is skipped on read).
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb+") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, default=_jsonable, sort_keys=True) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.path))

    def __len__(self) -> int:
        return len(self.records())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)

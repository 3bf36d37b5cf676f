"""A persistent measurement cache in SQLite, shared safely between processes.

Keys combine the model's structure (not its weight values, for oracles whose
value does not depend on them), the oracle's settings and the machine's
identity (CPU model, GPU name, runtime versions), so a hit is only ever a
value this very setup produced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oracles.base import Measurement, Oracle
from oracles.errors import CacheError

log = logging.getLogger(__name__)

__all__ = [
    "MeasurementCache",
    "home_dir",
    "default_cache_path",
    "machine_identity",
    "cache_key",
    "measure",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    key TEXT PRIMARY KEY,
    oracle TEXT NOT NULL,
    measurement TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def home_dir() -> Path:
    """hwprune's own folder, one rule for every command: ``$HWPRUNE_HOME`` if set, else
    ``$XDG_CACHE_HOME/hwprune``, else ``~/.cache/hwprune``.

    The oracle cache, the demo's trained model and downloaded datasets live under it.
    """
    env = os.environ.get("HWPRUNE_HOME")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hwprune"


def default_cache_path() -> Path:
    """``$HWPRUNE_CACHE`` if set, else ``oracles.sqlite`` in ``home_dir()``."""
    env = os.environ.get("HWPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return home_dir() / "oracles.sqlite"


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (lower-case names); {} elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break  # the first processor's block is enough
                    continue
                name, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(name.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=1)
def machine_identity() -> dict[str, Any]:
    """What identifies this host for measurements: CPU model, core count, OS, Python.

    A cloud VM's CPU name can be as generic as "AMD EPYC" on hosts of different generations
    (one such pair here timed the same model 2-3x apart), so the CPU's family, model and
    stepping and a digest of its instruction-set flags (which decide the kernels a runtime
    picks) are part of it where ``/proc/cpuinfo`` has them: a measurement cache shared
    between such hosts never answers one with the other's timings.
    """
    info = _cpuinfo()
    cpu = info.get("model name") or platform.processor() or ""
    ident: dict[str, Any] = {
        "cpu": cpu or platform.machine(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
    }
    parts = [
        f"{k} {info[k]}" for k in ("vendor_id", "cpu family", "model", "stepping") if k in info
    ]
    if parts:
        ident["cpu_id"] = ", ".join(parts)
    flags = info.get("flags") or info.get("features")  # x86 / Arm
    if flags:
        ident["cpu_flags"] = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[
            :12
        ]
    return ident


def cache_key(oracle: Oracle, model_key: str) -> str:
    payload = {
        "oracle": oracle.name,
        "settings": oracle.settings(),
        "identity": oracle.identity(),
        "machine": machine_identity() if oracle.timed else None,
        "model": model_key,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class _Local(threading.local):
    """One thread's connection and the process that opened it (None until opened)."""

    pid: int | None = None
    conn: sqlite3.Connection | None = None


class MeasurementCache:
    """SQLite store of Measurements; safe for several processes on one file.

    A file that is not a readable database is moved aside (``.corrupt-<time>``)
    with a warning and a fresh one is made. A valid cache that cannot be
    written (a read-only file or folder) is read from and never written, with
    one warning. Measuring never fails because of the cache: where neither
    works, it measures without one.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        if self.path.is_dir():
            raise CacheError(
                f"oracle cache {str(self.path)!r} is a folder; give a file path such as "
                f"{str(self.path / 'oracles.sqlite')!r}"
            )
        self._local = _Local()
        #: True when the cache is read but never written (a read-only file or folder).
        self.read_only = False
        #: True when no cache could be opened at all; every lookup misses.
        self.disabled = False
        self._open()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            # Turning a new file to WAL takes an exclusive lock, and SQLite may answer "database
            # is locked" at once instead of waiting: two processes opening one new cache together.
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            conn.execute(_SCHEMA)
            conn.execute("SELECT count(*) FROM measurements").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_read_only(self) -> sqlite3.Connection | None:
        """A read-only connection to a valid cache file, or None where the file is no cache."""
        if not self.path.is_file():
            return None
        uri = self.path.resolve().as_uri()
        # mode=ro still needs the -shm file of a WAL database, which a read-only folder
        # may lack; immutable=1 reads the file as it is.
        for query in ("mode=ro", "immutable=1"):
            try:
                conn = sqlite3.connect(f"{uri}?{query}", uri=True, timeout=30.0)
                conn.execute("SELECT count(*) FROM measurements").fetchone()
            except sqlite3.Error:
                continue
            return conn
        return None

    def _open(self) -> None:
        self._local.pid = os.getpid()
        if self.disabled:
            self._local.conn = None
            return
        if self.read_only:
            self._local.conn = self._connect_read_only()
            return
        try:
            self._local.conn = self._connect()
            return
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            error: Exception = exc
        except OSError as exc:  # the folder cannot be created
            error = exc
        conn = self._connect_read_only()
        if conn is not None:
            # A valid cache we may not write: read from it, measure the rest without storing.
            self._warn_read_only(error)
            self.read_only = True
            self._local.conn = conn
            return
        if self.path.is_file():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                for suffix in ("", "-wal", "-shm"):
                    p = Path(str(self.path) + suffix)
                    if p.exists():
                        p.replace(Path(str(aside) + suffix))
                self._local.conn = self._connect()
            except (OSError, sqlite3.Error) as exc:
                self._disable(f"it is unreadable ({error}) and cannot be replaced ({exc})")
                return
            log.warning(
                "oracle cache %s is unreadable (%s); moved it to %s and started a new one",
                self.path,
                error,
                aside,
            )
            return
        self._disable(f"it cannot be created ({error})")

    def _warn_read_only(self, why: BaseException) -> None:
        log.warning(
            "oracle cache %s cannot be written (%s); reading from it and not storing new "
            "measurements",
            self.path,
            why,
        )

    def _disable(self, why: str) -> None:
        log.warning("oracle cache %s is not used: %s; measuring without a cache", self.path, why)
        self.disabled = True
        self._local.conn = None

    @property
    def _conn(self) -> sqlite3.Connection | None:
        # Connections are not shared across threads or forked processes.
        if self._local.pid != os.getpid() or (self._local.conn is None and not self.disabled):
            self._open()
        return self._local.conn

    def get(self, key: str) -> Measurement | None:
        conn = self._conn
        if conn is None:
            return None
        try:
            row = conn.execute(
                "SELECT measurement FROM measurements WHERE key = ?", (key,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            log.warning("oracle cache read failed (%s); measuring instead", exc)
            return None
        if row is None:
            return None
        try:
            return Measurement.from_dict(json.loads(row[0]))
        except (ValueError, TypeError):
            return None

    def put(self, key: str, measurement: Measurement) -> None:
        conn = self._conn
        if conn is None or self.read_only:
            return
        data = measurement.to_dict()
        data["cached"] = False
        try:
            conn.execute(
                "INSERT OR REPLACE INTO measurements (key, oracle, measurement, created) "
                "VALUES (?, ?, ?, ?)",
                (key, measurement.oracle, json.dumps(data, default=str), time.time()),
            )
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc):
                # SQLite opens a file it may not write read-only without a word: say it once.
                self.read_only = True
                self._warn_read_only(exc)
                return
            log.warning("oracle cache write failed (%s); the value is not cached", exc)

    def __len__(self) -> int:
        conn = self._conn
        if conn is None:
            return 0
        return int(conn.execute("SELECT count(*) FROM measurements").fetchone()[0])

    def close(self) -> None:
        conn = self._local.conn
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.path = Path(state["path"])
        self._local = _Local()
        self.read_only = False
        self.disabled = False
        self._open()


def measure(
    oracle: Oracle,
    model: Any,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    cache: MeasurementCache | None = None,
    repeats: int = 1,
) -> Measurement:
    """Measure ``model`` with ``oracle``, answering from ``cache`` when the same setup was seen.

    A hit returns the stored Measurement with ``cached=True``. With
    ``repeats > 1`` a timed oracle is called that many times independently
    (fresh session each) and the call with the median value is kept, with
    every call's value in ``extra["repeat_values"]``: one slow moment of the
    machine then cannot skew a value that others are judged against (the
    dense model's latency, which relative budgets are fractions of).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    start = time.perf_counter()
    key = None
    if cache is not None:
        key = cache_key(oracle, oracle.model_key(model, input_shapes=input_shapes))
        hit = cache.get(key)
        if hit is not None:
            return hit.replace(cached=True, seconds=time.perf_counter() - start)
    if repeats == 1 or not oracle.timed:
        result = oracle.measure(model, input_shapes=input_shapes)
    else:
        runs = sorted(
            (oracle.measure(model, input_shapes=input_shapes) for _ in range(repeats)),
            key=lambda m: m.value,
        )
        chosen = runs[len(runs) // 2]
        extra = dict(chosen.extra, repeat_values=[m.value for m in runs])
        result = chosen.replace(extra=extra, seconds=time.perf_counter() - start)
    if cache is not None:
        cache.put(key, result)
    return result

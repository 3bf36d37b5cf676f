"""Run one measurement in a fresh subprocess, so a crashing or hanging backend cannot take the caller down.

Native runtimes (TensorRT builds, GPU drivers, ONNX Runtime on an odd graph)
can segfault, abort or hang. ``measure_isolated`` runs ``oracle.measure`` in a
new interpreter (multiprocessing's *spawn* start method: no forked CUDA
context, no inherited locks) and turns every way it can go wrong into a
``MeasurementFailedError`` with one sentence; the caller survives and can
mark that candidate as failed.

>>> from oracles import get_oracle
>>> m = measure_isolated(get_oracle("onnxruntime:cpu"), "model.onnx", timeout_s=120)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from collections.abc import Mapping
from typing import Any

from oracles.base import Measurement, Oracle
from oracles.errors import MeasurementFailedError, OracleError, error_class

log = logging.getLogger(__name__)

__all__ = ["measure_isolated"]


def _child(
    conn: multiprocessing.connection.Connection,
    oracle: Oracle,
    model: Any,
    input_shapes: Mapping[str, tuple[int, ...]] | None,
) -> None:
    try:
        result = oracle.measure(model, input_shapes=input_shapes)
        conn.send(("ok", result.to_dict()))
    except BaseException as exc:  # everything goes back to the parent as data
        module = type(exc).__module__
        conn.send(
            (
                "error",
                {
                    "type": type(exc).__name__,
                    "oracle_error": isinstance(exc, OracleError) and module.startswith("oracles"),
                    "message": str(exc),
                    "traceback": traceback.format_exc(),
                },
            )
        )
    finally:
        conn.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "ended without an exit code"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


def _rebuild_error(info: Mapping[str, Any], label: str) -> Exception:
    if info.get("oracle_error"):
        cls = error_class(info.get("type"))
        if cls is not None:
            # A project error (bad input, missing device) keeps its type and its sentence.
            return cls(info.get("message", ""))
    message = str(info.get("message", "")).strip().splitlines()
    first = message[0] if message else ""
    return MeasurementFailedError(
        f"{label} raised {info.get('type')} in its subprocess" + (f": {first}" if first else "")
    )


def measure_isolated(
    oracle: Oracle,
    model: Any,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    timeout_s: float = 600,
) -> Measurement:
    """Measure ``model`` with ``oracle`` in a fresh subprocess and return the Measurement.

    ONNX models are sent as bytes (``oracle.input_format == "onnx"``); other
    models (a torch module) are pickled as they are. A crash (signal, non-zero
    exit), a timeout after ``timeout_s`` seconds (the subprocess is killed) or
    an unexpected exception raises MeasurementFailedError. The oracles' own
    errors (OracleError subclasses such as ModelInputError or
    DeviceUnavailableError) are re-raised with their type and message.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if oracle.input_format == "onnx":
        from oracles.model import model_bytes

        payload: Any = model_bytes(model)
    else:
        payload = model
    shapes = (
        {k: tuple(int(d) for d in v) for k, v in input_shapes.items()} if input_shapes else None
    )
    label = f"oracle {oracle.spec!r}"

    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child,
        args=(send, oracle, payload, shapes),
        name=f"hwprune-{oracle.name}",
        daemon=True,
    )
    start = time.monotonic()
    proc.start()
    send.close()  # the child holds the only writer, so its death shows up as EOF here
    try:
        ready = multiprocessing.connection.wait([recv, proc.sentinel], timeout=timeout_s)
        message = None
        if recv in ready or recv.poll():
            try:
                message = recv.recv()
            except (EOFError, OSError):
                message = None
        if message is None and not ready:
            raise MeasurementFailedError(
                f"{label} did not finish within {timeout_s:g} s; its subprocess was killed"
            )
        if message is None:
            proc.join(timeout=10)
            raise MeasurementFailedError(
                f"{label} crashed: its subprocess {_describe_exit(proc.exitcode)} "
                f"after {time.monotonic() - start:.1f} s"
            )
        kind, data = message
        if kind == "ok":
            proc.join(timeout=30)
            return Measurement.from_dict(data)
        log.debug("%s failed in its subprocess:\n%s", label, data.get("traceback", ""))
        raise _rebuild_error(data, label)
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)

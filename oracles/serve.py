"""``hwprune serve``: serve chosen ONNX oracles over HTTP on the target device.

A search on one machine measures on another (a Jetson, a GPU server) by
naming ``SPEC@http://HOST:PORT`` (``oracles.remote``). This module is the
other end: ONNX bytes in, a ``Measurement`` as JSON out.

Endpoints (protocol 1):

* ``GET /v1/info``: the served oracle specs, each one's runtime identity,
  the machine's identity, the request size limit.
* ``POST /v1/measure?oracle=SPEC[&input_shapes=JSON]``: the body is the
  ONNX model's bytes; the answer is ``{"measurement": ..., "machine": ...,
  "host": ..., "measure_s": ..., "queued_s": ..., "held": [start, end]}``
  (the server's seconds measuring, seconds waiting for the device, and the
  wall-clock span it held the device) or ``{"error": "one sentence",
  "type": "ErrorClass"}``.

What it guarantees:

* One measurement at a time on this machine: every request waits for one
  lock before its body is even read, so two timings never overlap and no
  parsing or upload competes with a timing for a core. At most
  ``max_queue`` requests wait; more are answered 503 (the client retries).
* Only the oracles it was started with, and only ONNX-input ones; a request
  for another gets 404 naming those it serves. Bodies are parsed as ONNX
  protobuf, nothing is unpickled or executed, and a model that points at
  external data files is refused (those paths would be read on this machine).
* Requests over ``max_bytes`` get 413 before their body is read.
* It binds to loopback unless told otherwise, and refuses to start on any
  other address without a token (at least 16 characters). The token is
  compared in constant time (``hmac.compare_digest``). Plain HTTP carries
  the token in clear: across a network, keep the server on loopback and
  reach it through an SSH tunnel, or put a TLS proxy in front.
* torch is never imported: the device needs only onnx and its runtime.

Why the standard library's ``http.server`` (``ThreadingHTTPServer``) and
``http.client``: nothing better is a dependency of hwprune (no aiohttp,
starlette or uvicorn; Ray's core installs none of them), and a target device
should need nothing beyond onnx and its runtime. Flask and Werkzeug happen to
be installed on the development machines but are not dependencies, and
Werkzeug's own development server is built on this same ``http.server``; a
production server (waitress, gunicorn, uvicorn) would add a dependency to
serve what is, by design, one request at a time. ``http.server`` warns that
it implements only basic security checks; the checks this service needs
(token, size cap, loopback default, ONNX only, per-connection socket
timeout) are made here, before any body is read.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from oracles.base import Oracle
from oracles.errors import (
    MeasurementFailedError,
    ModelInputError,
    OracleError,
    OracleSpecError,
    UnknownOracleError,
)
from oracles.remote import INFO_PATH, MEASURE_PATH, PROTOCOL, TOKEN_ENV

log = logging.getLogger(__name__)

__all__ = [
    "OracleServer",
    "external_data_tensors",
    "add_arguments",
    "start_from_args",
    "main",
    "DEFAULT_PORT",
    "DEFAULT_MAX_BYTES",
]

DEFAULT_PORT = 8765
#: 1 GiB: a dense VGG-16 (528 MB) fits; the whole body is held in memory once.
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_QUEUE = 16
MIN_TOKEN_CHARS = 16
#: A refused body up to this size is read and dropped, so the client sees the answer
#: rather than a reset connection.
_DRAIN_MAX = 16 << 20
#: Seconds one socket operation of a client may stall before its connection is dropped.
_SOCKET_TIMEOUT = 60.0


def external_data_tensors(proto: Any) -> list[str]:
    """Names of tensors anywhere in the model (subgraphs, functions, attributes) stored outside it."""
    import onnx

    found: list[str] = []

    def tensor(t: Any) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0:
            found.append(t.name or "(unnamed)")

    def nodes(items: Any) -> None:
        for node in items:
            for a in node.attribute:
                if a.HasField("t"):
                    tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                if a.HasField("sparse_tensor"):
                    tensor(a.sparse_tensor.values)
                    tensor(a.sparse_tensor.indices)
                if a.HasField("g"):
                    graph(a.g)
                for g in a.graphs:
                    graph(g)

    def graph(g: Any) -> None:
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            tensor(s.values)
            tensor(s.indices)
        nodes(g.node)

    graph(proto.graph)
    for fn in proto.functions:
        nodes(fn.node)
    return found


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise OracleSpecError(f"--host {host!r} does not resolve: {exc.strerror}") from None
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


_Shapes = Mapping[str, tuple[int, ...]] | None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: OracleServer


class OracleServer:
    """Serves ``specs`` (ONNX-input oracles) on ``host:port``; see the module doc.

    >>> server = OracleServer(["onnxruntime:cpu?threads=1"], port=0)  # doctest: +SKIP
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
    >>> server.url  # doctest: +SKIP
    'http://127.0.0.1:39211'
    """

    def __init__(
        self,
        specs: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_queue: int = DEFAULT_MAX_QUEUE,
        isolate: bool = False,
        isolate_timeout: float = 600.0,
    ) -> None:
        from oracles.cache import machine_identity
        from oracles.registry import get_oracle

        if not specs:
            raise OracleSpecError("give at least one --oracle SPEC to serve")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise OracleSpecError(f"--max-bytes must be a positive integer, got {max_bytes!r}")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise OracleSpecError(f"--max-queue must be a positive integer, got {max_queue!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise OracleSpecError(f"--port must be from 0 to 65535, got {port!r}")
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise OracleSpecError(
                f"the token must have at least {MIN_TOKEN_CHARS} characters (got {len(token)}); "
                'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        if not token and not _is_loopback(host):
            raise OracleSpecError(
                f"refusing to serve on {host!r} without a token: any machine that reaches it "
                f"could use this device; set ${TOKEN_ENV} (or --token), or bind to 127.0.0.1"
            )
        self.oracles: dict[str, Oracle] = {}
        for spec in specs:
            if "@" in spec:
                raise OracleSpecError(
                    f"--oracle {spec!r} names another server; serve local oracles only"
                )
            oracle = get_oracle(spec)  # checks the backend and device now
            if oracle.input_format != "onnx":
                raise OracleSpecError(
                    f"--oracle {oracle.spec!r} measures a PyTorch module; the server takes "
                    "ONNX only (onnxruntime, tensorrt, params, flops, memory oracles)"
                )
            if oracle.spec in self.oracles:
                raise OracleSpecError(f"--oracle {oracle.spec!r} is given twice")
            self.oracles[oracle.spec] = oracle
        self.token = token or None
        self.max_bytes = max_bytes
        self.isolate = isolate
        self.isolate_timeout = isolate_timeout
        self.machine = dict(machine_identity())
        self.host_name = socket.gethostname()
        self.identities = {spec: o.identity() for spec, o in self.oracles.items()}
        self.measurements = 0
        self._device_lock = threading.Lock()
        self._queue = threading.BoundedSemaphore(max_queue)
        self.max_queue = max_queue

        server_cls = _HTTPServer
        if ":" in host:
            server_cls = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        try:
            self.httpd = server_cls((host, port), _Handler)
        except OSError as exc:
            raise OracleSpecError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.httpd.app = self

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        """Stop serving (from another thread) and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the service ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "oracles": list(self.oracles),
            "identities": self.identities,
            "machine": self.machine,
            "host": self.host_name,
            "max_bytes": self.max_bytes,
            "max_queue": self.max_queue,
            "measurements": self.measurements,
        }

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def find(self, spec: str) -> Oracle:
        """The served oracle a request names (any spelling of the same spec)."""
        from oracles.registry import get_oracle

        oracle = self.oracles.get(spec)
        if oracle is None:
            try:
                oracle = self.oracles.get(get_oracle(spec, check=False).spec)
            except OracleError:
                oracle = None
        if oracle is None:
            raise UnknownOracleError(
                f"this server does not serve {spec!r}; it serves: {', '.join(self.oracles)}"
            )
        return oracle

    def measure(
        self, oracle: Oracle, data: bytes, input_shapes: Mapping[str, tuple[int, ...]] | None
    ) -> dict[str, Any]:
        """Measure ONNX ``data`` with ``oracle``; the caller holds the device lock."""
        from oracles.model import load_onnx

        proto = load_onnx(data)
        external = external_data_tensors(proto)
        if external:
            raise ModelInputError(
                f"the model keeps {len(external)} tensor(s) in external data files (first: "
                f"{external[0]!r}); send a self-contained ONNX model with its weights inside"
            )
        start = time.perf_counter()
        if self.isolate:
            from oracles.isolation import measure_isolated

            m = measure_isolated(
                oracle, data, input_shapes=input_shapes, timeout_s=self.isolate_timeout
            )
        else:
            m = oracle.measure(proto, input_shapes=input_shapes)
        seconds = time.perf_counter() - start
        self.measurements += 1
        return {
            "measurement": m.to_dict(),
            "machine": self.machine,
            "host": self.host_name,
            "measure_s": seconds,
        }


def _parse_shapes(raw: str | None) -> dict[str, tuple[int, ...]] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        shapes = {
            str(k): tuple(int(d) for d in dims)
            for k, dims in value.items()
            if isinstance(dims, list) and all(isinstance(d, int) and d > 0 for d in dims)
        }
        if len(shapes) != len(value):
            raise ValueError
    except (ValueError, AttributeError, TypeError):
        raise ModelInputError(
            'input_shapes must be a JSON object of positive integer lists, like {"input": [1, 3, 32, 32]}'
        ) from None
    return shapes


_STATUS = {
    ModelInputError: 400,
    OracleSpecError: 400,
    UnknownOracleError: 404,
}


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "hwprune-serve/1"
    timeout = _SOCKET_TIMEOUT
    #: Set once the request body is read (or drained), so that it is never read twice.
    _body_read = False

    # -- answers -------------------------------------------------------------------------------

    def _send_json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload, default=str).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError as exc:  # the client gave up waiting; nothing to answer
            self.close_connection = True
            log.warning("could not answer %s: %s", self.client_address[0], exc)

    def _refuse(
        self, status: int, message: str, kind: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self._drain()
        self.close_connection = True
        self._send_json(status, {"error": message, "type": kind}, headers)

    def _drain(self) -> None:
        """Read and drop a small unread body, so the client gets the answer, not a reset."""
        length = self._length()
        if length is None or length > _DRAIN_MAX or self._body_read:
            return
        self._body_read = True
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        return length if length >= 0 else None

    def _authorized(self) -> bool:
        if self.server.app.authorized(self.headers.get("Authorization")):
            return True
        given = "no token" if not self.headers.get("Authorization") else "a wrong token"
        self._refuse(401, f"the request carries {given}", "RemoteOracleError")
        return False

    # -- routes --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path != INFO_PATH:
            self._refuse(404, f"no such endpoint {path!r}; try {INFO_PATH}", "RemoteOracleError")
            return
        if self._authorized():
            self._send_json(200, self.server.app.info())

    def do_POST(self) -> None:
        app = self.server.app
        url = urllib.parse.urlsplit(self.path)
        if url.path != MEASURE_PATH:
            self._refuse(
                404, f"no such endpoint {url.path!r}; try {MEASURE_PATH}", "RemoteOracleError"
            )
            return
        if not self._authorized():
            return
        length = self._body_length(app.max_bytes)
        if length is None:
            return
        query = dict(urllib.parse.parse_qsl(url.query))
        try:
            oracle = app.find(query.get("oracle", ""))
            shapes = _parse_shapes(query.get("input_shapes"))
        except OracleError as exc:
            self._refuse(_STATUS.get(type(exc), 400), str(exc), type(exc).__name__)
            return
        if not app._queue.acquire(blocking=False):
            self._refuse(
                503,
                f"{app.max_queue} requests are already waiting; try again later",
                "RemoteOracleError",
                {"Retry-After": "2"},
            )
            return
        try:
            self._measure_on_device(app, oracle, shapes, length)
        finally:
            app._queue.release()

    def _body_length(self, max_bytes: int) -> int | None:
        """The announced body length, or None after refusing a body that is not acceptable."""
        if self.headers.get("Transfer-Encoding"):
            self._refuse(
                411, "send the model with a Content-Length, not chunked", "ModelInputError"
            )
            return None
        length = self._length()
        if length is None or length == 0:
            self._refuse(
                411, "the request has no Content-Length or an empty body", "ModelInputError"
            )
            return None
        if length > max_bytes:
            self._refuse(
                413,
                f"the request body of {length:,} bytes is over this server's limit of "
                f"{max_bytes:,} bytes (--max-bytes)",
                "RemoteOracleError",
            )
            return None
        return length

    def _measure_on_device(
        self, app: OracleServer, oracle: Oracle, shapes: _Shapes, length: int
    ) -> None:
        # Wait for the device before reading the body: no upload or parse runs beside a timing.
        arrived = time.time()
        with app._device_lock:
            start = time.perf_counter()
            began = time.time()
            try:
                data = self.rfile.read(length)
            except OSError as exc:  # a client that stalls past the socket timeout, or left
                data = b""
                log.warning("reading the model from %s failed: %s", self.client_address[0], exc)
            self._body_read = True
            if len(data) != length:
                self.close_connection = True
                log.warning(
                    "%s sent %d of %d bytes; dropped", self.client_address[0], len(data), length
                )
                return
            answer = self._measure(app, oracle, data, shapes)
            if answer is None:
                return
            # The server's clock: how long the request queued, when the device was held.
            answer["queued_s"] = began - arrived
            answer["held"] = [began, time.time()]
            log.info(
                "%s: %s = %.6g %s for %s (%d bytes, %.2f s)",
                oracle.spec,
                answer["measurement"]["quantity"],
                answer["measurement"]["value"],
                answer["measurement"]["unit"],
                self.client_address[0],
                length,
                time.perf_counter() - start,
            )
            self._send_json(200, answer)

    def _measure(
        self, app: OracleServer, oracle: Oracle, data: bytes, shapes: _Shapes
    ) -> dict[str, Any] | None:
        """The answer for one model, or None after refusing with the error's status."""
        try:
            return app.measure(oracle, data, shapes)
        except OracleError as exc:
            status = _STATUS.get(type(exc), 500)
            log.info("%s: %s: %s", oracle.spec, type(exc).__name__, exc)
            self._refuse(status, str(exc), type(exc).__name__)
        except Exception as exc:  # a backend's own error: one sentence back, trace here
            log.exception("%s failed on a model from %s", oracle.spec, self.client_address[0])
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self._refuse(
                500,
                f"{oracle.spec} failed: {type(exc).__name__}: {first}",
                MeasurementFailedError.__name__,
            )
        return None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.address_string(), format % args)


# -- command line ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options, shared by ``hwprune serve`` and ``python -m oracles.serve``."""
    p.add_argument(
        "--oracle",
        action="append",
        dest="oracles",
        metavar="SPEC",
        required=True,
        help="an ONNX oracle to serve, e.g. 'onnxruntime:cpu?threads=1' (repeatable)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other needs a token)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0 = any free)",
    )
    p.add_argument(
        "--token",
        default=None,
        help=f"shared secret clients send (default ${TOKEN_ENV}; prefer the variable: "
        "command lines are visible to other users)",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help=f"largest request body accepted, in bytes (default {DEFAULT_MAX_BYTES})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests that may wait for the device; more get 503 (default {DEFAULT_MAX_QUEUE})",
    )
    p.add_argument(
        "--isolate",
        action="store_true",
        help="measure each model in a fresh subprocess, so a crashing backend (TensorRT) "
        "cannot take the server down (about a second more per measurement)",
    )


def start_from_args(args: argparse.Namespace) -> OracleServer:
    """Build the server from parsed options (token from --token or $HWPRUNE_TOKEN)."""
    return OracleServer(
        args.oracles,
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        max_bytes=args.max_bytes,
        max_queue=args.max_queue,
        isolate=args.isolate,
    )


def describe(server: OracleServer) -> str:
    """The line a front end prints once the server listens."""
    guard = "token required" if server.token else "no token, loopback only"
    return f"serving {', '.join(server.oracles)} at {server.url} ({guard})"


def run(server: OracleServer, *, announce: Callable[[str], None]) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM); ``announce`` shows the address."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    announce(describe(server))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.httpd.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m oracles.serve``: the server on a device that has oracles but not hwprune."""
    parser = argparse.ArgumentParser(
        prog="python -m oracles.serve", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = start_from_args(args)
    except OracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(server, announce=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())

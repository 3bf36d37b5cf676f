"""An oracle on another machine: ONNX bytes go to ``hwprune serve`` over HTTP, a Measurement comes back.

Name it by appending the server's address to any ONNX-input oracle spec,
wherever a spec is accepted::

    onnxruntime:cpu?threads=1@http://127.0.0.1:8765
    tensorrt?precision=fp16@http://jetson:8765?timeout=900

The part after ``@`` is the server's URL (``http`` or ``https``, host and
port, nothing else) with optional client settings as its query:
``timeout`` (seconds one request may take once connected, default 600),
``attempts`` (tries per request, default 10) and ``wait`` (seconds of
retrying at most, default 120). A server that cannot be reached, or that
answers 503 (busy), is retried with exponential backoff (0.5 s doubling to
10 s) until ``attempts`` or ``wait`` runs out, then a one-line
RemoteOracleError says so. A refused token, a model the server rejects or an
oracle it does not serve fail at once.

The token comes from the ``HWPRUNE_TOKEN`` environment variable, never from
the spec: specs are written to run directories and reports.

The cache key of a remote measurement holds the server machine's identity and
the served oracle's runtime identity (both read from the server's
``/v1/info``), so measurements of different devices never share an entry.
A server whose identity changes during a run (another machine behind the same
address) is an error, not a silent mix.

The client is the standard library's ``http.client`` (see ``oracles.serve``
for why no third-party HTTP library): one connection per request, explicit
connect and read timeouts, JSON answers only.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import math
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from oracles.base import Capabilities, Measurement, Oracle
from oracles.errors import OracleError, OracleSpecError, RemoteOracleError, error_class

log = logging.getLogger(__name__)

__all__ = [
    "RemoteOracle",
    "split_remote",
    "TOKEN_ENV",
    "PROTOCOL",
    "INFO_PATH",
    "MEASURE_PATH",
]

#: Environment variable holding the shared token (client and server).
TOKEN_ENV = "HWPRUNE_TOKEN"
#: Version of the request/answer format; a server answering another one is refused.
PROTOCOL = 1
INFO_PATH = "/v1/info"
MEASURE_PATH = "/v1/measure"

_CONNECT_TIMEOUT = 10.0
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
#: Answers are a few kilobytes of JSON; anything far larger is not a server of ours.
_MAX_ANSWER = 16 << 20
_REMOTE = re.compile(r"^(?P<spec>[^@]*)@(?P<url>https?://\S+)$", re.IGNORECASE)
_CLIENT_SETTINGS = {"timeout": float, "attempts": int, "wait": float}


def split_remote(spec: str) -> tuple[str, str] | None:
    """``("SPEC", "http://HOST:PORT[?...]")`` for a remote spec, None for a local one.

    >>> split_remote("onnxruntime:cpu?threads=1@http://127.0.0.1:8765")
    ('onnxruntime:cpu?threads=1', 'http://127.0.0.1:8765')
    """
    if "@" not in spec:
        return None
    m = _REMOTE.match(spec.strip())
    if not m or not m["spec"].strip():
        raise OracleSpecError(
            f"oracle spec {spec!r}: expected SPEC@http://HOST:PORT, such as "
            f"'onnxruntime:cpu?threads=1@http://127.0.0.1:8765'"
        )
    return m["spec"].strip(), m["url"]


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    """The server's base URL (scheme://host:port) and the client settings in its query."""
    parts = urllib.parse.urlsplit(url)
    example = "expected http://HOST:PORT (optionally ?timeout=S&attempts=N&wait=S)"
    try:
        port = parts.port
    except ValueError:
        raise OracleSpecError(f"oracle server address {url!r} has a bad port; {example}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise OracleSpecError(f"oracle server address {url!r}: {example}")
    if parts.username or parts.password or parts.fragment or parts.path not in ("", "/"):
        raise OracleSpecError(
            f"oracle server address {url!r} has a user, path or fragment; {example} "
            f"(the token goes in ${TOKEN_ENV})"
        )
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    base = f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")
    settings: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key not in _CLIENT_SETTINGS:
            raise OracleSpecError(
                f"oracle server address {url!r} has no setting {key!r} "
                f"(accepted: {', '.join(_CLIENT_SETTINGS)})"
            )
        settings[key] = value
    return base, settings


@dataclass
class RemoteOracle(Oracle):
    """An ONNX-input oracle that runs on an ``hwprune serve`` server (see the module doc).

    ``target`` is the served oracle's spec, ``url`` the server's base URL,
    ``resolve`` the function that builds an oracle from a local spec without
    checking its backend (``oracles.get_oracle`` passes its registry's; this
    module knows no oracle by name). Quantity, unit, device, capabilities and
    the cache's notion of the model come from the target oracle, built here
    with ``resolve`` (the server has its backend, this machine need not).

    >>> oracle = get_oracle("onnxruntime:cpu?threads=1@http://127.0.0.1:8765")  # doctest: +SKIP
    >>> oracle.measure("model.onnx").extra["remote"]["host"]  # doctest: +SKIP
    'jetson'
    """

    name: ClassVar[str] = "remote"
    input_format: ClassVar[str] = "onnx"
    remote: ClassVar[bool] = True

    target: str = ""
    url: str = ""
    timeout: float = 600.0
    attempts: int = 10
    wait: float = 120.0
    resolve: Callable[[str], Oracle] | None = field(default=None, repr=False, compare=False)
    _inner: Oracle | None = field(default=None, init=False, repr=False, compare=False)
    _info: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.resolve is None:
            raise TypeError("RemoteOracle needs resolve=; build it with oracles.get_oracle")
        if split_remote(self.target) is not None:
            raise OracleSpecError(
                f"oracle spec {self.target!r}: one server address per spec ('@' given twice)"
            )
        inner = self.resolve(self.target)
        if inner.input_format != "onnx":
            raise OracleSpecError(
                f"oracle {inner.spec!r} measures a PyTorch module; a remote oracle takes ONNX "
                f"only (onnxruntime, tensorrt, static counts)"
            )
        self._inner = inner
        self.url, settings = _parse_url(self.url)
        for key, raw in settings.items():
            try:
                setattr(self, key, _CLIENT_SETTINGS[key](raw))
            except ValueError:
                kind = "an integer" if _CLIENT_SETTINGS[key] is int else "a number"
                raise OracleSpecError(
                    f"oracle server address {self.url!r}: {key} must be {kind}, got {raw!r}"
                ) from None
        self.validate()

    @classmethod
    def from_remote_spec(cls, spec: str, *, resolve: Callable[[str], Oracle]) -> RemoteOracle:
        """Build from ``SPEC@http://HOST:PORT[?...]``; ``resolve`` builds ``SPEC`` locally."""
        parts = split_remote(spec)
        if parts is None:
            raise OracleSpecError(f"oracle spec {spec!r} names no server (SPEC@http://HOST:PORT)")
        return cls(target=parts[0], url=parts[1], resolve=resolve)

    def validate(self) -> None:
        for key, value in (("timeout", self.timeout), ("wait", self.wait)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0.0:
                raise OracleSpecError(
                    f"oracle server address {self.url!r}: {key} must be a positive number of "
                    f"seconds, got {value!r}"
                )
        if not isinstance(self.attempts, int) or not 1 <= self.attempts <= 100:
            raise OracleSpecError(
                f"oracle server address {self.url!r}: attempts must be an integer from 1 to 100, "
                f"got {self.attempts!r}"
            )

    # -- what the target oracle decides --------------------------------------------------------

    @property
    def inner(self) -> Oracle:
        assert self._inner is not None
        return self._inner

    @property
    def quantity(self) -> str:  # type: ignore[override]
        return self.inner.quantity

    @property
    def unit(self) -> str:  # type: ignore[override]
        return self.inner.unit

    def precision_target(self) -> float | None:
        return self.inner.precision_target()

    @property
    def timed(self) -> bool:  # type: ignore[override]
        return self.inner.timed

    @property
    def value_sensitive(self) -> bool:  # type: ignore[override]
        return self.inner.value_sensitive

    @property
    def device(self) -> str:  # type: ignore[override]
        return self.inner.device

    @property
    def runtime(self) -> str:  # type: ignore[override]
        return self.inner.runtime

    @property
    def export_format(self) -> str:  # type: ignore[override]
        return self.inner.export_format

    @property
    def capabilities(self) -> Capabilities:
        """The served oracle's capabilities, with ``remote`` set."""
        return dataclasses.replace(self.inner.capabilities, remote=True)

    def _canonical(self, spec: str) -> str:
        """A served oracle's spec as this version writes it; unchanged where it cannot be read."""
        assert self.resolve is not None
        try:
            return self.resolve(str(spec)).spec
        except Exception:  # an oracle this client does not know: compared as written
            return str(spec)

    @property
    def spec(self) -> str:
        given = {"timeout": self.timeout, "attempts": self.attempts, "wait": self.wait}
        query = {k: v for k, v in given.items() if v != self.__dataclass_fields__[k].default}
        tail = "?" + "&".join(f"{k}={v:g}" for k, v in query.items()) if query else ""
        return f"{self.inner.spec}@{self.url}{tail}"

    def settings(self) -> dict[str, Any]:
        # The address and the client's patience do not change a value; the target does.
        return {"target": self.inner.spec, "settings": self.inner.settings()}

    def identity(self) -> dict[str, Any]:
        """The server machine's identity and the served oracle's runtime identity."""
        info = self._server_info()
        identities = {self._canonical(k): v for k, v in info.get("identities", {}).items()}
        return {"server": info.get("machine"), "oracle": identities.get(self.inner.spec)}

    def model_key(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> str:
        return self.inner.model_key(model, input_shapes=input_shapes)

    def check_available(self) -> None:
        """Reach the server, check the token and that it serves the target oracle."""
        info = self._server_info(refresh=True)
        served = info.get("oracles", [])
        # Canonical on both sides: a server of another version may name defaults differently
        # ("onnxruntime:cpu" for "onnxruntime:cpu?threads=1").
        if self.inner.spec not in {self._canonical(s) for s in served}:
            raise RemoteOracleError(
                f"the oracle server at {self.url} does not serve {self.inner.spec!r}; "
                f"it serves: {', '.join(served) or 'nothing'}"
            )

    # -- measuring -----------------------------------------------------------------------------

    def measure(
        self, model: Any, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Measurement:
        """Send ``model`` (ONNX bytes, path or ModelProto) to the server and return its Measurement."""
        from oracles.model import model_bytes

        start = time.perf_counter()
        data = model_bytes(model)
        info = self._server_info()
        limit = info.get("max_bytes")
        if isinstance(limit, int) and len(data) > limit:
            raise RemoteOracleError(
                f"the model is {len(data):,} bytes, over the {limit:,}-byte limit of the oracle "
                f"server at {self.url} (its --max-bytes)"
            )
        query = {"oracle": self.inner.spec}
        if input_shapes:
            shapes = {str(k): [int(d) for d in v] for k, v in input_shapes.items()}
            query["input_shapes"] = json.dumps(shapes, separators=(",", ":"))
        answer = self._request("POST", MEASURE_PATH + "?" + urllib.parse.urlencode(query), data)
        try:
            measurement = Measurement.from_dict(answer["measurement"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteOracleError(
                f"the oracle server at {self.url} sent an answer without a measurement ({exc})"
            ) from None
        if answer.get("machine") != info.get("machine"):
            raise RemoteOracleError(
                f"the oracle server at {self.url} now runs on another machine "
                f"({answer.get('machine')}) than when this run started ({info.get('machine')}); "
                "measurements of two machines must not mix: restart the run"
            )
        extra = dict(measurement.extra)
        extra["remote"] = {
            "url": self.url,
            "host": answer.get("host"),
            "machine": answer.get("machine"),
            "server_seconds": answer.get("measure_s", measurement.seconds),
            "queued_s": answer.get("queued_s"),
            "held": answer.get("held"),
        }
        return measurement.replace(
            oracle=self.spec, seconds=time.perf_counter() - start, extra=extra
        )

    def _server_info(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._info is None or refresh:
            info = self._request("GET", INFO_PATH, None)
            if info.get("protocol") != PROTOCOL:
                raise RemoteOracleError(
                    f"the server at {self.url} speaks protocol {info.get('protocol')!r}, this "
                    f"client {PROTOCOL}; run the same hwprune version on both machines"
                )
            self._info = info
        return self._info

    def _request(self, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        """One request, retried with backoff while the server is unreachable or busy."""
        parts = urllib.parse.urlsplit(self.url)
        conn_cls = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        headers = {"Accept": "application/json"}
        token = os.environ.get(TOKEN_ENV)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        start = time.monotonic()
        deadline = start + self.wait
        delay = _BACKOFF_FIRST
        reason = "no attempt made"
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            conn = conn_cls(parts.hostname, parts.port, timeout=min(_CONNECT_TIMEOUT, self.timeout))
            retry_after = 0.0
            try:
                try:
                    conn.connect()
                except OSError as exc:
                    reason = _describe(exc, "connecting")
                else:
                    conn.sock.settimeout(self.timeout)
                    try:
                        conn.request(method, path, body=body, headers=headers)
                        resp = conn.getresponse()
                        status = resp.status
                        data = resp.read(_MAX_ANSWER + 1)
                    except TimeoutError:
                        raise RemoteOracleError(
                            f"the oracle server at {self.url} sent no answer within "
                            f"{self.timeout:g} s (raise it with ?timeout=S after the address)"
                        ) from None
                    except (OSError, http.client.HTTPException) as exc:
                        # The server went away mid-request (killed, restarted): resend.
                        reason = _describe(exc, "waiting for the answer")
                    else:
                        if status == 200:
                            return _json(data, self.url)
                        if status != 503:
                            raise _answer_error(status, data, self.url)
                        reason = "busy: " + _message(data)
                        retry_after = _retry_after(resp.getheader("Retry-After"))
            finally:
                conn.close()
            pause = max(delay, retry_after)
            if attempt >= self.attempts or time.monotonic() + pause > deadline:
                break
            log.warning(
                "oracle server at %s: %s; retrying in %.1f s (attempt %d of %d)",
                self.url,
                reason,
                pause,
                attempt + 1,
                self.attempts,
            )
            time.sleep(pause)
            delay = min(delay * 2.0, _BACKOFF_MAX)
        raise RemoteOracleError(
            f"cannot reach the oracle server at {self.url} ({reason}) after {attempt} "
            f"attempt{'s' if attempt != 1 else ''} over {time.monotonic() - start:.0f} s; "
            "is 'hwprune serve' running there?"
        )


def _describe(exc: BaseException, when: str) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"timed out {when}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror or exc}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return f"the server closed the connection {when}"
    text = str(exc).strip() or type(exc).__name__
    return f"{text} ({when})"


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 0), 0.0), _BACKOFF_MAX)
    except ValueError:
        return 0.0


def _json(data: bytes, url: str) -> dict[str, Any]:
    if len(data) > _MAX_ANSWER:
        raise RemoteOracleError(f"the server at {url} sent an answer over {_MAX_ANSWER} bytes")
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise RemoteOracleError(f"the server at {url} did not answer with a JSON object")
    return answer


def _message(data: bytes) -> str:
    try:
        answer = json.loads(data)
        return str(answer.get("error", "")).strip() or "no message"
    except (ValueError, AttributeError):
        return data[:200].decode("utf-8", "replace").strip() or "no message"


def _answer_error(status: int, data: bytes, url: str) -> OracleError:
    """The error an answer other than 200 or 503 stands for, with the server's sentence."""
    message = _message(data)
    if status == 401:
        return RemoteOracleError(
            f"the oracle server at {url} refused the token ({message}); set ${TOKEN_ENV} to "
            "the token it was started with"
        )
    try:
        kind = json.loads(data).get("type")
    except (ValueError, AttributeError):
        kind = None
    cls = error_class(kind) or RemoteOracleError
    return cls(f"oracle server at {url} (HTTP {status}): {message}")

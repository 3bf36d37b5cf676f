"""The remote oracle against a real ``hwprune serve`` process on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import pickle
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator

import onnx
import pytest
from onnx_builders import conv_chain
from oracle_server import FAST_ORT, TOKEN, Server, served, server_env

import oracles
from oracles.cache import cache_key
from oracles.errors import ModelInputError, RemoteOracleError, UnknownOracleError
from oracles.remote import RemoteOracle, split_remote


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with served([FAST_ORT, "params"]) as s:
        yield s


@pytest.fixture(scope="module")
def model() -> bytes:
    return conv_chain(channels=(8, 16), size=16).SerializeToString()


def _post(server: Server, query: dict[str, str], body: bytes, token: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("POST", "/v1/measure?" + urllib.parse.urlencode(query), body, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_spec_parsing_and_canonical_form() -> None:
    assert split_remote("params") is None
    assert split_remote("onnxruntime:cpu?threads=2@http://10.0.0.5:8765?timeout=30") == (
        "onnxruntime:cpu?threads=2",
        "http://10.0.0.5:8765?timeout=30",
    )
    o = oracles.get_oracle("onnxruntime:cpu?threads=2@http://10.0.0.5:8765?timeout=30", check=False)
    assert isinstance(o, RemoteOracle)
    assert (o.quantity, o.unit, o.timed, o.device) == ("latency", "ms", True, "cpu")
    assert o.spec == "onnxruntime:cpu?threads=2@http://10.0.0.5:8765?timeout=30"
    assert oracles.get_oracle(o.spec, check=False) == o
    clone = pickle.loads(pickle.dumps(o))
    assert clone == o and clone.spec == o.spec and clone.inner.threads == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("params@localhost:8765", "expected SPEC@http://HOST:PORT"),
        ("params@ftp://h:1", "expected SPEC@http://HOST:PORT"),
        ("params@http://h:1/path", "has a user, path or fragment"),
        ("params@http://u:p@h:1", "the token goes in"),
        ("params@http://h:1?retries=3", "has no setting 'retries'"),
        ("params@http://h:1?timeout=0", "timeout must be a positive number"),
        ("params@http://h:1?attempts=1000", "attempts must be an integer"),
        ("torch:cpu@http://h:1", "a remote oracle takes ONNX only"),
        ("parms@http://h:1", "Did you mean 'params'"),
    ],
)
def test_bad_remote_specs_are_one_sentence(spec: str, message: str) -> None:
    with pytest.raises(oracles.OracleSpecError, match=message):
        oracles.get_oracle(spec, check=False)


def test_remote_measurement_matches_local_and_names_the_server(
    server: Server, model: bytes
) -> None:
    remote = oracles.get_oracle(f"params@{server.url}")
    assert remote.measure(model).value == oracles.get_oracle("params").measure(model).value

    latency = oracles.get_oracle(f"{FAST_ORT}@{server.url}")
    m = latency.measure(model, input_shapes={"input": (2, 3, 16, 16)})
    assert m.quantity == "latency" and m.unit == "ms" and m.statistic == "median"
    assert m.value > 0 and m.samples >= 20 and m.iqr > 0 and m.cv > 0
    assert m.oracle == latency.spec and m.oracle.endswith("@" + server.url)
    assert m.batch == 2 and m.extra["input_shapes"] == {"input": [2, 3, 16, 16]}
    assert m.extra["remote"]["machine"] == oracles.machine_identity()
    assert m.seconds >= m.extra["remote"]["server_seconds"] > 0
    # Built again from its spec alone (a worker process, a resumed run): the same answer shape.
    again = pickle.loads(pickle.dumps(latency)).measure(model)
    assert again.extra["remote"]["url"] == server.url


def test_cache_key_holds_the_server_identity(server: Server, model: bytes, tmp_path) -> None:
    remote = oracles.get_oracle(f"{FAST_ORT}@{server.url}")
    local = oracles.get_oracle(FAST_ORT)
    mkey = remote.model_key(model)
    assert mkey == local.model_key(model)
    assert cache_key(remote, mkey) != cache_key(local, mkey)
    assert remote.identity()["server"] == oracles.machine_identity()
    assert remote.identity()["oracle"]["onnxruntime"] == local.identity()["onnxruntime"]

    other = pickle.loads(pickle.dumps(remote))
    other._info = {**other._info, "machine": {**other._info["machine"], "cpu": "Jetson Orin"}}
    assert cache_key(other, mkey) != cache_key(remote, mkey)

    cache = oracles.MeasurementCache(tmp_path / "c.sqlite")
    first = oracles.measure(remote, model, cache=cache)
    assert not first.cached and oracles.measure(remote, model, cache=cache).cached
    # A measurement of another device is never answered from this one's entry.
    assert not oracles.measure(local, model, cache=cache).cached
    # A server that answers from another machine than the one keyed: refused, not mixed.
    with pytest.raises(RemoteOracleError, match="now runs on another machine"):
        other.measure(model)


def test_two_clients_at_once_never_overlap_on_the_device(server: Server, model: bytes) -> None:
    oracle = oracles.get_oracle(f"{FAST_ORT}@{server.url}")
    results: list = []
    errors: list = []

    def one() -> None:
        try:
            results.append(pickle.loads(pickle.dumps(oracle)).measure(model))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3
    held = sorted(tuple(m.extra["remote"]["held"]) for m in results)
    for (_, end), (start, _) in zip(held, held[1:], strict=False):
        assert end <= start, f"two timings overlapped: {held}"
    assert max(m.extra["remote"]["queued_s"] for m in results) > 0.01  # someone waited


def test_unknown_oracle_is_refused_naming_what_is_served(server: Server, model: bytes) -> None:
    with pytest.raises(RemoteOracleError, match=r"does not serve 'flops'; it serves: .*params"):
        oracles.get_oracle(f"flops@{server.url}")
    unchecked = oracles.get_oracle(f"flops@{server.url}", check=False)
    with pytest.raises(UnknownOracleError, match="this server does not serve 'flops'"):
        unchecked.measure(model)
    status, answer = _post(server, {"oracle": "tensorrt"}, model)
    assert status == 404 and "it serves: " in answer["error"]


def test_only_self_contained_onnx_is_accepted(server: Server, model: bytes) -> None:
    status, answer = _post(server, {"oracle": "params"}, pickle.dumps({"not": "onnx"}))
    assert status == 400 and answer["type"] == "ModelInputError"

    proto = onnx.load_from_string(model)
    weight = proto.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/passwd")
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    remote = oracles.get_oracle(f"params@{server.url}")
    with pytest.raises(ModelInputError, match="external data files"):
        remote.measure(proto.SerializeToString())


def test_server_down_fails_in_one_line_after_bounded_retries() -> None:
    # A port nobody listens on any more: a server's, after it stopped.
    with served(["params"]) as gone:
        url = gone.url
    oracle = oracles.get_oracle(f"params@{url}?attempts=3&wait=5", check=False)
    with pytest.raises(RemoteOracleError, match="connection refused.*after 3 attempts") as err:
        oracle.check_available()
    assert "\n" not in str(err.value)


def test_token_is_required_and_checked(model: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with served(["params"], token=TOKEN) as s:
        monkeypatch.delenv("HWPRUNE_TOKEN", raising=False)
        with pytest.raises(RemoteOracleError, match="refused the token .*no token"):
            oracles.get_oracle(f"params@{s.url}")
        monkeypatch.setenv("HWPRUNE_TOKEN", TOKEN[:-1] + "X")
        with pytest.raises(RemoteOracleError, match="refused the token .*wrong token"):
            oracles.get_oracle(f"params@{s.url}")
        status, _ = _post(s, {"oracle": "params"}, model, token="nope")
        assert status == 401
        monkeypatch.setenv("HWPRUNE_TOKEN", TOKEN)
        assert oracles.get_oracle(f"params@{s.url}").measure(model).value > 0


def test_oversized_request_gets_413(model: bytes) -> None:
    with served(["params"], extra=["--max-bytes", "1000"]) as s:
        status, answer = _post(s, {"oracle": "params"}, model)
        assert status == 413 and "over this server's limit of 1,000 bytes" in answer["error"]
        remote = oracles.get_oracle(f"params@{s.url}")
        with pytest.raises(RemoteOracleError, match="over the 1,000-byte limit"):
            remote.measure(model)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to serve on '0.0.0.0' without a token"),
        (["--token", "short"], "at least 16 characters"),
        (["--oracle", "torch:cpu"], "measures a PyTorch module"),
        (["--oracle", "parms"], "Did you mean 'params'"),
    ],
)
def test_server_refuses_to_start_in_one_line(args: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "hwprune", "serve", "--port", "0", *args]
    if "--oracle" not in args:
        cmd += ["--oracle", "params"]
    done = subprocess.run(cmd, env=server_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_server_imports_no_torch() -> None:
    code = (
        "import sys, threading\n"
        "from oracles.serve import OracleServer\n"
        f"s = OracleServer([{FAST_ORT!r}, 'params'], port=0)\n"
        "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
        "import oracles\n"
        "from onnx import helper, TensorProto\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',\n"
        "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])],\n"
        "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
        f"o = oracles.get_oracle({FAST_ORT!r} + '@' + s.url)\n"
        "assert o.measure(m.SerializeToString()).value > 0\n"
        "s.shutdown()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=server_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_measure_command_takes_a_remote_spec(
    server: Server, model: bytes, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hwprune.cli import main

    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    assert main(["measure", str(path), "--oracle", f"params@{server.url}", "--json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)
    assert m["oracle"] == f"params@{server.url}" and m["value"] > 0
    assert m["extra"]["remote"]["machine"] == oracles.machine_identity()

    with served(["params"]) as gone:
        url = gone.url
    code = main(["measure", str(path), "--oracle", f"params@{url}?attempts=2&wait=2"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING")]
    assert code == 2 and len(lines) == 1 and "cannot reach the oracle server" in lines[0]


def test_isolated_server_measures_in_a_subprocess(model: bytes) -> None:
    with served([FAST_ORT], extra=["--isolate"]) as s:
        m = oracles.get_oracle(f"{FAST_ORT}@{s.url}").measure(model)
    assert m.value > 0 and m.statistic == "median"


def test_served_specs_are_compared_canonically_across_versions() -> None:
    remote = oracles.get_oracle("params@http://127.0.0.1:9", check=False)
    # A server of an earlier version wrote the default thread count away.
    assert remote._canonical("onnxruntime:cpu") == "onnxruntime:cpu?threads=1"
    assert remote._canonical("openvino:gpu") == "openvino:gpu"
    assert remote._canonical("no-such-oracle:cpu?x=1") == "no-such-oracle:cpu?x=1"

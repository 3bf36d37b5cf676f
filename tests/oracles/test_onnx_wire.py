"""Structure keys from ONNX bytes without their weight payloads."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import oracles
from oracles._onnx_wire import load_onnx_structure, strip_payloads
from oracles.errors import ModelInputError
from oracles.model import load_onnx, resolve_input_shapes, structure_key


def reshape_net(*, target: tuple[int, ...], channels: int = 256, seed: int = 0) -> bytes:
    """Conv (large weight) -> Reshape (small int64 target) as ONNX bytes."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["c", "shape"], ["y"]),
        ],
        "reshape_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(target, np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _key(proto, shape=(1, 3, 8, 8)) -> str:
    return structure_key(proto, input_shapes=resolve_input_shapes(proto, {"x": shape}))


def test_stripped_key_equals_full_key_and_drops_weights() -> None:
    data = reshape_net(target=(1, -1))
    stripped = strip_payloads(data)
    assert len(stripped) < len(data) // 10
    assert _key(load_onnx_structure(data)) == _key(load_onnx(data))


def test_small_integer_tensors_are_kept() -> None:
    a = load_onnx_structure(reshape_net(target=(1, -1)))
    b = load_onnx_structure(reshape_net(target=(-1, 64)))
    assert _key(a) != _key(b)  # the reshape target shapes the graph
    shape = next(t for t in a.graph.initializer if t.name == "shape")
    assert numpy_helper.to_array(shape).tolist() == [1, -1]


def test_weight_values_do_not_change_the_key() -> None:
    a = load_onnx_structure(reshape_net(target=(1, -1), seed=0))
    b = load_onnx_structure(reshape_net(target=(1, -1), seed=1))
    assert _key(a) == _key(b)


def test_torch_export_keys_match(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 10),
    ).eval()
    path = tmp_path / "net.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, input_names=["x"]
        )
    assert _key(load_onnx_structure(path)) == _key(load_onnx(path))
    params = oracles.get_oracle("params")
    assert params.model_key(path) == params.model_key(path.read_bytes())


def test_not_onnx_gives_the_usual_error(tmp_path) -> None:
    with pytest.raises(ModelInputError, match="not an ONNX model"):
        load_onnx_structure(b"\xff\xfe garbage " * 10)
    with pytest.raises(ModelInputError, match="not found"):
        load_onnx_structure(tmp_path / "missing.onnx")
    with pytest.raises(ValueError):
        strip_payloads(b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end


def test_model_proto_passes_through() -> None:
    proto = load_onnx(reshape_net(target=(1, -1)))
    assert load_onnx_structure(proto) is proto


def test_cache_hit_on_a_large_model_is_fast(tmp_path) -> None:
    data = reshape_net(target=(1, -1), channels=200_000)  # ~21 MB of weights
    assert len(data) > 20_000_000
    oracle = oracles.get_oracle("onnxruntime:cpu")
    cache = oracles.MeasurementCache(tmp_path / "c.sqlite")
    fake_key = oracles.cache.cache_key(
        oracle, oracle.model_key(data, input_shapes={"x": (1, 3, 8, 8)})
    )
    # Store a value under the real key without timing a 21 MB model here.
    cache.put(fake_key, oracles.Measurement(quantity="latency", value=1.0, unit="ms", oracle="x"))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        hit = oracles.measure(oracle, data, input_shapes={"x": (1, 3, 8, 8)}, cache=cache)
        best = min(best, time.perf_counter() - start)
    assert hit.cached and hit.value == 1.0
    assert best < 0.010, f"cache hit took {best * 1e3:.1f} ms"

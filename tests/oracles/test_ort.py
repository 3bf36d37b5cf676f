"""The ONNX Runtime latency oracle with real sessions on small models."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import oracles
from oracles.errors import DeviceUnavailableError, ModelInputError, OracleSpecError
from oracles.ort import OnnxRuntimeLatency, trt_cache_dir

# Fast protocol for tests: enough runs for a median, no long waits.
FAST = "warmup=2&min_runs=10&max_runs=200&min_time=0.05&max_time=2&rel_ci=0.05"


def convnet(*, channels: int, size: int, layers: int = 2, dynamic: bool = False) -> bytes:
    """A conv -> relu stack -> global pool -> linear classifier, as ONNX bytes."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    prev, cin = "input", 3
    for i in range(layers):
        w = rng.standard_normal((channels, cin, 3, 3)).astype(np.float32) * 0.1
        b = np.zeros(channels, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1])
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, cin = f"r{i}", channels
    fc = rng.standard_normal((10, channels)).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fcb"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
    ]
    batch: int | str = "N" if dynamic else 1
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def small() -> bytes:
    return convnet(channels=8, size=16)


def test_registered_and_parsed_from_spec() -> None:
    oracle = oracles.get_oracle(f"onnxruntime:cpu?threads=2&batch=3&{FAST}")
    assert isinstance(oracle, OnnxRuntimeLatency)
    assert (oracle.device, oracle.threads, oracle.batch) == ("cpu", 2, 3)
    assert oracle.timed and oracle.quantity == "latency" and oracle.unit == "ms"
    # The canonical spec round-trips.
    again = oracles.get_oracle(oracle.spec)
    assert again.settings() == oracle.settings()


def test_direct_construction_is_validated() -> None:
    with pytest.raises(OracleSpecError, match="threads"):
        OnnxRuntimeLatency(threads=0)


def test_measures_a_real_session(small: bytes, cpu_timing_checked) -> None:
    oracle = oracles.get_oracle(f"onnxruntime:cpu?{FAST}")
    m = oracle.measure(small)
    cpu_timing_checked(m, oracle)
    assert m.backend == "onnxruntime"
    assert m.extra["provider"] == "CPUExecutionProvider"
    assert m.extra["providers"][0] == "CPUExecutionProvider"


def test_batch_setting_changes_the_input_batch() -> None:
    model = convnet(channels=8, size=16, dynamic=True)
    with pytest.raises(ModelInputError, match="dynamic shape"):
        oracles.get_oracle(f"onnxruntime:cpu?{FAST}").measure(model)
    m4 = oracles.get_oracle(f"onnxruntime:cpu?batch=4&{FAST}").measure(model)
    assert m4.batch == 4
    assert m4.extra["input_shapes"] == {"input": [4, 3, 16, 16]}
    m1 = oracles.get_oracle(f"onnxruntime:cpu?{FAST}").measure(
        model, input_shapes={"input": (2, 3, 16, 16)}
    )
    assert m1.extra["input_shapes"] == {"input": [2, 3, 16, 16]} and m1.batch == 2
    # batch overrides a static first dimension too.
    m_static = oracles.get_oracle(f"onnxruntime:cpu?batch=3&{FAST}").measure(
        convnet(channels=8, size=16)
    )
    assert m_static.extra["input_shapes"]["input"][0] == 3


def test_bigger_model_is_slower(small: bytes) -> None:
    big = convnet(channels=64, size=64, layers=3)  # ~350x the MACs of `small`
    oracle = oracles.get_oracle(f"onnxruntime:cpu?{FAST}")
    t_small = oracle.measure(small).value
    t_big = oracle.measure(big).value
    assert t_big > 3 * t_small


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")
def test_torch_exported_model(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from tests.nets import conv_net  # torch is optional for the oracles, so imported here

    net = conv_net(8, classes=4, bias=True).eval()
    path = tmp_path / "net.onnx"
    # The legacy TorchScript exporter: the dynamo one needs onnxscript, not installed here.
    torch.onnx.export(
        net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, input_names=["input"]
    )
    m = oracles.get_oracle(f"onnxruntime:cpu?{FAST}").measure(path)
    assert m.value > 0 and m.batch == 1


def test_cache_hit_is_fast_and_marked(small: bytes, tmp_path) -> None:
    cache = oracles.MeasurementCache(tmp_path / "c.sqlite")
    oracle = oracles.get_oracle(f"onnxruntime:cpu?{FAST}")
    first = oracles.measure(oracle, small, cache=cache)
    assert not first.cached
    start = time.perf_counter()
    hit = oracles.measure(oracle, small, cache=cache)
    elapsed = time.perf_counter() - start
    assert hit.cached
    assert hit.value == first.value and hit.samples == first.samples
    assert elapsed < 0.010, f"cache hit took {elapsed * 1e3:.1f} ms"
    # Another thread count is another setup, not a hit.
    other = oracles.measure(
        oracles.get_oracle(f"onnxruntime:cpu?threads=2&{FAST}"), small, cache=cache
    )
    assert not other.cached


def test_identity_names_runtime_and_cpu() -> None:
    import onnxruntime

    ident = oracles.get_oracle("onnxruntime:cpu").identity()
    assert ident["onnxruntime"] == onnxruntime.__version__
    assert ident["provider"] == "CPUExecutionProvider"
    assert ident["cpu"]


def test_cuda_is_refused_without_the_gpu_build() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(DeviceUnavailableError, match=r"CUDAExecutionProvider.*hwprune\[gpu\]"):
        oracles.get_oracle("onnxruntime:cuda")
    # Built without the check, measuring still refuses rather than falling back to the CPU.
    oracle = oracles.get_oracle("onnxruntime:cuda", check=False)
    with pytest.raises(DeviceUnavailableError):
        oracle.measure(convnet(channels=4, size=8))


def test_tensorrt_is_refused_naming_the_extra() -> None:
    with pytest.raises(DeviceUnavailableError, match=r"TensorrtExecutionProvider.*onnxruntime-gpu"):
        oracles.get_oracle("onnxruntime:tensorrt?fp16=1")


def test_trt_cache_dir_is_next_to_the_oracle_cache() -> None:
    assert trt_cache_dir().parent == oracles.default_cache_path().parent


def measured_on(device: str, provider: str, small: bytes) -> None:
    """Times ``small`` on ``device``, skipping where onnxruntime lacks ``provider``."""
    import onnxruntime

    if provider not in onnxruntime.get_available_providers():
        pytest.skip(f"needs onnxruntime-gpu with {provider}")
    m = oracles.get_oracle(f"onnxruntime:{device}?{FAST}").measure(small)
    assert m.extra["provider"] == provider and m.value > 0


@pytest.mark.gpu
def test_cuda_session_on_gpu(small: bytes) -> None:
    measured_on("cuda", "CUDAExecutionProvider", small)
    with_copies = oracles.get_oracle(f"onnxruntime:cuda?copies=1&{FAST}").measure(small)
    assert with_copies.value > 0


@pytest.mark.tensorrt
def test_tensorrt_session_on_gpu(small: bytes) -> None:
    measured_on("tensorrt", "TensorrtExecutionProvider", small)
    assert any(trt_cache_dir().iterdir())


def test_runs_rotate_over_several_sessions(small: bytes) -> None:
    fast = "min_time=0.05&warmup=2"
    auto = oracles.get_oracle(f"onnxruntime:cpu?{fast}").measure(
        small, input_shapes={"x": (1, 3, 16, 16)}
    )
    assert auto.extra["sessions"] == 3
    one = oracles.get_oracle(f"onnxruntime:cpu?{fast}&sessions=1").measure(
        small, input_shapes={"x": (1, 3, 16, 16)}
    )
    assert one.extra["sessions"] == 1 and one.value > 0
    with pytest.raises(OracleSpecError, match="sessions"):
        oracles.get_oracle("onnxruntime:cpu?sessions=17")

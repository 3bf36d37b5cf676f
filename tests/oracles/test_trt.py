"""TensorRT oracles: availability errors and settings here; engine builds and timing where TensorRT runs."""

from __future__ import annotations

import importlib.util
import io
import pickle
import subprocess
import sys
import types

import pytest

from oracles import (
    BackendUnavailableError,
    ModelInputError,
    OracleSpecError,
    get_oracle,
)
from oracles.trt import TensorRTLatency, TensorRTMemory, build_engine, strongly_typed_only

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_import_needs_neither_torch_nor_tensorrt() -> None:
    code = "import sys, oracles.trt; print('torch' in sys.modules, 'tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
# ids, not the names: tests/conftest.py reads a "tensorrt" keyword as the marker.
@pytest.mark.parametrize("name", ["tensorrt", "tensorrt-memory"], ids=["latency", "memory"])
def test_missing_tensorrt_names_the_extra(name: str) -> None:
    with pytest.raises(BackendUnavailableError, match=r'pip install "hwprune\[tensorrt\]"') as info:
        get_oracle(name)
    assert name in str(info.value)
    # Measuring without the up-front check fails the same way, never with a number.
    oracle = get_oracle(name, check=False)
    with pytest.raises(BackendUnavailableError, match=r"hwprune\[tensorrt\]"):
        oracle.measure(b"\x08\x07")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_names_the_extra() -> None:
    with pytest.raises(BackendUnavailableError, match=r"hwprune\[tensorrt\]"):
        build_engine(b"\x08\x07", input_shapes={"input": (1, 3, 8, 8)})


def test_settings_parse_and_round_trip() -> None:
    spec = "tensorrt?precision=fp16&sparse=1&batch=8&workspace=512&isolate=0&timeout=30&rel_ci=0.02"
    oracle = get_oracle(spec, check=False)
    assert isinstance(oracle, TensorRTLatency)
    assert (oracle.device, oracle.precision, oracle.sparse, oracle.batch) == (
        "cuda",
        "fp16",
        True,
        8,
    )
    assert (oracle.workspace, oracle.isolate, oracle.timeout) == (512, False, 30.0)
    again = get_oracle(oracle.spec, check=False)
    assert again == oracle
    assert get_oracle("tensorrt", check=False).spec == "tensorrt"
    memory = get_oracle("tensorrt-memory:cuda?precision=onnx", check=False)
    assert isinstance(memory, TensorRTMemory)
    assert (memory.quantity, memory.unit, memory.timed) == ("memory", "bytes", False)
    assert pickle.loads(pickle.dumps(oracle)) == oracle  # for subprocesses and Ray actors


def test_build_engine_refuses_bad_precision_before_importing_tensorrt() -> None:
    with pytest.raises(OracleSpecError, match="precision must be one of fp32, fp16, onnx"):
        build_engine(b"", input_shapes={"input": (1,)}, precision="int8")


def test_strongly_typed_detection_by_version_and_flags() -> None:
    trt10 = types.SimpleNamespace(
        __version__="10.9.0.34", BuilderFlag=types.SimpleNamespace(FP16=1)
    )
    trt11 = types.SimpleNamespace(__version__="11.0.0", BuilderFlag=types.SimpleNamespace())
    trt10_no_flag = types.SimpleNamespace(__version__="10.99", BuilderFlag=types.SimpleNamespace())
    assert strongly_typed_only(trt10) is False
    assert strongly_typed_only(trt11) is True
    assert strongly_typed_only(trt10_no_flag) is True


# ------------------------------------------------- TensorRT machines only (skipped elsewhere)


def _onnx_bytes(width: int = 16) -> bytes:
    import torch
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 32, 32),),
        buf,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}},
    )
    return buf.getvalue()


FAST = "min_time=0.2&max_time=3&min_runs=20"


@pytest.mark.tensorrt
def test_build_engine_and_timing_cache(tmp_path) -> None:
    cache = tmp_path / "timing.cache"
    plan = build_engine(
        _onnx_bytes(), input_shapes={"input": (2, 3, 32, 32)}, timing_cache_path=cache
    )
    assert isinstance(plan, bytes) and len(plan) > 1000
    assert cache.is_file() and cache.stat().st_size > 0
    again = build_engine(
        _onnx_bytes(), input_shapes={"input": (2, 3, 32, 32)}, timing_cache_path=cache
    )
    assert len(again) > 1000


@pytest.mark.tensorrt
@pytest.mark.parametrize("isolate", [0, 1])
def test_latency_positive(isolate: int) -> None:
    oracle = get_oracle(f"tensorrt?isolate={isolate}&{FAST}")
    m = oracle.measure(_onnx_bytes(), input_shapes={"input": (1, 3, 32, 32)})
    assert m.quantity == "latency" and m.unit == "ms" and m.value > 0
    assert m.ci_low <= m.value <= m.ci_high
    assert m.oracle == oracle.spec
    assert m.extra["tensorrt"] and m.extra["gpu"] and m.extra["engine_bytes"] > 0


@pytest.mark.tensorrt
def test_bigger_batch_is_slower() -> None:
    oracle = get_oracle(f"tensorrt?isolate=0&{FAST}")
    small = oracle.measure(_onnx_bytes(64), input_shapes={"input": (1, 3, 32, 32)})
    big = oracle.measure(_onnx_bytes(64), input_shapes={"input": (64, 3, 32, 32)})
    assert big.value > small.value


@pytest.mark.tensorrt
def test_memory_counts_scratch_and_engine() -> None:
    m = get_oracle("tensorrt-memory?isolate=0").measure(
        _onnx_bytes(), input_shapes={"input": (1, 3, 32, 32)}
    )
    assert m.unit == "bytes" and m.value > 0
    assert m.value == m.extra["device_memory_bytes"] + m.extra["engine_bytes"]


@pytest.mark.tensorrt
def test_fp16_and_strongly_typed_paths() -> None:
    import tensorrt as trt

    shapes = {"input": (1, 3, 32, 32)}
    typed = build_engine(_onnx_bytes(), input_shapes=shapes, precision="onnx")
    assert len(typed) > 0
    if not strongly_typed_only(trt) or importlib.util.find_spec("onnxconverter_common") is not None:
        assert len(build_engine(_onnx_bytes(), input_shapes=shapes, precision="fp16")) > 0
    else:
        with pytest.raises(BackendUnavailableError, match="precision=onnx"):
            build_engine(_onnx_bytes(), input_shapes=shapes, precision="fp16")


@pytest.mark.tensorrt
def test_parse_error_names_the_operator() -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("FrobnicateXyz", ["x"], ["y"], name="frob_1", domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    with pytest.raises(ModelInputError, match="FrobnicateXyz"):
        build_engine(model.SerializeToString(), input_shapes={"x": (1, 4)})

"""Every oracle family refuses a bad setting in its spec with one sentence naming it.

The spec is parsed before the runtime is looked for (``check=False`` skips that look),
so every family's refusals are checked on any machine.
"""

from __future__ import annotations

import pytest

from oracles import OracleSpecError, get_oracle


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        # onnxruntime
        ("onnxruntime:cpu?threads=zero", r"'threads' must be an integer, got 'zero'"),
        ("onnxruntime:cpu?threads=0", r"'threads' must be an integer from 1 to \d+ .* got 0"),
        ("onnxruntime:cpu?batch=-1", r"'batch' must be a positive integer"),
        ("onnxruntime:cpu?opt_level=max", r"'opt_level' must be one of all, extended"),
        ("onnxruntime:cpu?rel_ci=2", r"'rel_ci' must be a fraction"),
        ("onnxruntime:cpu?min_runs=50&max_runs=10", r"'max_runs' must be at least min_runs"),
        ("onnxruntime:cpu?fp16=1", r"fp16=1 applies to the tensorrt device only"),
        ("onnxruntime:cpu?copies=1", r"copies=1 applies to the cuda and tensorrt"),
        ("onnxruntime:npu", r"runs on cpu, cuda, tensorrt, not 'npu'"),
        ("onnxruntime:cpu?thread=1", r"has no setting 'thread'"),
        # openvino
        ("openvino:cpu?threads=0", r"'threads' must be an integer from 1 to \d+ .* got 0"),
        ("openvino:cpu?precision=fp8", r"'precision' must be one of f32, bf16, f16, auto"),
        ("openvino:cpu?sessions=99", r"'sessions' must be an integer from 0"),
        ("openvino:cpu?min_runs=50&max_runs=10", r"'max_runs' must be at least min_runs"),
        ("openvino:gpu?threads=2", r"threads applies to the cpu device only"),
        ("openvino:tpu", r"runs on cpu, gpu, npu, not 'tpu'"),
        ("openvino:cpu?thread=1", r"has no setting 'thread'"),
        # torch
        ("torch:cpu?dtype=fp64", r"dtype must be one of fp32, fp16, bf16, got 'fp64'"),
        ("torch:cpu?graph=1", r"graph=1 .* needs device cuda"),
        ("torch:cpu?threads=0", r"'threads' must be an integer from 1 to \d+ .* got 0"),
        ("torch:cpu?pool=0", r"pool must be an integer >= 1"),
        ("torch:cpu?batch=0", r"batch must be an integer >= 1"),
        ("torch:cpu?max_runs=5&min_runs=10", r"max_runs \(5\) must be >= min_runs \(10\)"),
        ("torch:cpu?rel_ci=2", r"rel_ci must be a fraction"),
        ("torch:tpu", r"runs on cpu, cuda, not 'tpu'"),
        ("torch:cpu?speed=fast", r"no setting 'speed'"),
        # tensorrt
        ("tensorrt?precision=int8", r"precision must be one of fp32, fp16, onnx, got 'int8'"),
        ("tensorrt-memory?precision=bf16", r"precision must be one of"),
        ("tensorrt?workspace=0", r"workspace must be at least 1"),
        ("tensorrt?batch=0", r"batch must be an integer >= 1"),
        ("tensorrt?timeout=0", r"timeout must be positive"),
        ("tensorrt?min_runs=50&max_runs=10", r"1 <= min_runs <= max_runs"),
        ("tensorrt?rel_ci=0", r"rel_ci must be a fraction"),
        ("tensorrt:cpu", r"runs on cuda, not 'cpu'"),
        ("tensorrt?sparse=maybe", r"'sparse' must be 0 or 1"),
        ("tensorrt-memory?warmup=3", r"no setting 'warmup'"),
    ],
)
def test_bad_settings_raise_one_clear_sentence(spec: str, match: str) -> None:
    with pytest.raises(OracleSpecError, match=match) as info:
        get_oracle(spec, check=False)
    assert "\n" not in str(info.value)

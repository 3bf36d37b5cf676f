"""Measuring in a subprocess: real results come back, crashes and hangs become errors."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import oracles
from oracles.base import Measurement, Oracle
from oracles.errors import MeasurementFailedError, ModelInputError
from oracles.isolation import measure_isolated


def tiny_model(*, dynamic: bool = False) -> bytes:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    dim: int | str = "N" if dynamic else 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 4, 8, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# Oracles that misbehave on purpose. They live at module level so the spawned
# child can import them by name.
@dataclass
class _Misbehaving(Oracle):
    name: ClassVar[str] = "misbehaving"
    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    how: str = "exit"
    device: str = "cpu"

    def measure(self, model: Any, *, input_shapes: Any = None) -> Measurement:
        if self.how == "exit":
            os._exit(3)
        if self.how == "abort":
            sys.stderr.flush()
            os.abort()
        if self.how == "sleep":
            time.sleep(60)
        if self.how == "raise":
            raise KeyError("no such tensor")
        if self.how == "pid":
            return Measurement(quantity="pid", value=float(os.getpid()), unit="", oracle="pid")
        raise AssertionError(self.how)


def test_real_oracle_result_comes_back() -> None:
    oracle = oracles.get_oracle("onnxruntime:cpu?warmup=1&min_runs=5&min_time=0.01&max_time=2")
    m = measure_isolated(oracle, tiny_model(), timeout_s=120)
    assert isinstance(m, Measurement)
    assert m.quantity == "latency" and m.value > 0 and m.samples >= 5
    assert m.ci_low <= m.value <= m.ci_high
    assert m.extra["provider"] == "CPUExecutionProvider"


def test_runs_in_another_process() -> None:
    m = measure_isolated(_Misbehaving(how="pid"), tiny_model(), timeout_s=120)
    assert int(m.value) != os.getpid()


def test_input_shapes_are_passed_and_oracle_errors_keep_their_type() -> None:
    oracle = oracles.get_oracle("onnxruntime:cpu?warmup=1&min_runs=5&min_time=0.01&max_time=2")
    with pytest.raises(ModelInputError, match="dynamic shape"):
        measure_isolated(oracle, tiny_model(dynamic=True), timeout_s=120)
    m = measure_isolated(
        oracle, tiny_model(dynamic=True), input_shapes={"x": (2, 3, 8, 8)}, timeout_s=120
    )
    assert m.batch == 2


def test_nonzero_exit_becomes_an_error() -> None:
    with pytest.raises(MeasurementFailedError, match=r"crashed: its subprocess exited with code 3"):
        measure_isolated(_Misbehaving(how="exit"), tiny_model(), timeout_s=120)


def test_abort_becomes_an_error_naming_the_signal() -> None:
    with pytest.raises(MeasurementFailedError, match=r"killed by SIGABRT"):
        measure_isolated(_Misbehaving(how="abort"), tiny_model(), timeout_s=120)


def test_python_exception_becomes_an_error() -> None:
    with pytest.raises(MeasurementFailedError, match=r"raised KeyError in its subprocess"):
        measure_isolated(_Misbehaving(how="raise"), tiny_model(), timeout_s=120)


def test_timeout_kills_the_subprocess() -> None:
    start = time.monotonic()
    with pytest.raises(MeasurementFailedError, match=r"did not finish within 3 s"):
        measure_isolated(_Misbehaving(how="sleep"), tiny_model(), timeout_s=3)
    assert time.monotonic() - start < 20


def test_bad_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        measure_isolated(_Misbehaving(how="pid"), tiny_model(), timeout_s=0)


def test_message_is_one_line() -> None:
    with pytest.raises(MeasurementFailedError) as info:
        measure_isolated(_Misbehaving(how="exit"), tiny_model(), timeout_s=120)
    assert "\n" not in str(info.value)

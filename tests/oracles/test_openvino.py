"""The OpenVINO latency oracle with the real OpenVINO runtime on small ONNX models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

openvino = pytest.importorskip("openvino")

from onnx_builders import conv_chain  # noqa: E402

import oracles  # noqa: E402
from oracles.cache import cache_key  # noqa: E402
from oracles.errors import (  # noqa: E402
    BackendUnavailableError,
    DeviceUnavailableError,
    ModelInputError,
    OracleSpecError,
)
from oracles.openvino import OpenVINOLatency  # noqa: E402

# Fast protocol for tests: enough runs for a median, no long waits.
FAST = "warmup=2&min_runs=10&max_runs=200&min_time=0.05&max_time=2&rel_ci=0.05"


@pytest.fixture(scope="module")
def small() -> bytes:
    return conv_chain(channels=(8, 8), size=16).SerializeToString()


def test_import_needs_neither_torch_nor_openvino() -> None:
    code = (
        "import sys, oracles, oracles.openvino; "
        "print('torch' in sys.modules, 'openvino' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_registered_and_parsed_from_spec() -> None:
    oracle = oracles.get_oracle(f"openvino:cpu?threads=1&batch=2&precision=auto&{FAST}")
    assert isinstance(oracle, OpenVINOLatency)
    assert (oracle.device, oracle.threads, oracle.batch, oracle.precision) == ("cpu", 1, 2, "auto")
    assert oracle.timed and oracle.quantity == "latency" and oracle.unit == "ms"
    assert "openvino" in oracles.list_oracles()
    assert oracles.get_oracle(oracle.spec).settings() == oracle.settings()


@pytest.mark.parametrize("device", ["gpu", "npu"])
def test_absent_device_is_refused_in_one_line(device: str) -> None:
    name = device.upper()
    if any(d == name or d.startswith(name + ".") for d in openvino.Core().available_devices):
        pytest.skip(f"this machine has an OpenVINO {name} device")
    with pytest.raises(DeviceUnavailableError, match=rf"openvino:{device} needs an OpenVINO") as e:
        oracles.get_oracle(f"openvino:{device}")
    assert "\n" not in str(e.value) and "refusing to time another device" in str(e.value)


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from oracles import openvino as ov_oracle

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    ov_oracle._core.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match=r'pip install "hwprune\[openvino\]"'):
            oracles.get_oracle("openvino:cpu")
    finally:
        ov_oracle._core.cache_clear()


def test_measurement_follows_the_protocol(small: bytes, cpu_timing_checked) -> None:
    oracle = oracles.get_oracle(f"openvino:cpu?threads=1&{FAST}")
    m = oracle.measure(small)
    cpu_timing_checked(m, oracle)
    assert m.backend == "openvino"
    # Read back from the compiled model: what ran, not what was asked.
    assert m.extra["performance_hint"] == "LATENCY"
    assert m.extra["num_streams"] == 1
    assert m.extra["inference_num_threads"] == 1
    assert m.extra["inference_precision"] == "f32"
    assert m.extra["execution_devices"] == ["CPU"]
    assert m.extra["sessions"] == 3  # one thread on the CPU: three compiled models rotated
    assert m.extra["openvino"] == openvino.__version__


def test_threads_are_bound_and_an_impossible_count_is_refused(small: bytes) -> None:
    # OpenVINO caps INFERENCE_NUM_THREADS at the cores the process may use; no silent cap.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    too_many = (usable or 1) + 1
    if too_many > (os.cpu_count() or 1):  # above the machine's CPUs: refused in the spec
        with pytest.raises(OracleSpecError, match=r"'threads' must be an integer from 1 to"):
            oracles.get_oracle(f"openvino:cpu?threads={too_many}&{FAST}")
        return
    with pytest.raises(DeviceUnavailableError, match=rf"asked for {too_many} inference threads"):
        oracles.get_oracle(f"openvino:cpu?threads={too_many}&{FAST}").measure(small)


def test_precision_auto_records_what_ran(small: bytes) -> None:
    m = oracles.get_oracle(f"openvino:cpu?precision=auto&{FAST}").measure(small)
    assert m.extra["inference_precision"] in {"f32", "bf16", "f16"}


def test_batch_setting_changes_the_input_batch() -> None:
    dynamic = conv_chain(channels=(8,), size=16, batch="N").SerializeToString()
    with pytest.raises(ModelInputError, match="dynamic shape"):
        oracles.get_oracle(f"openvino:cpu?{FAST}").measure(dynamic)
    m = oracles.get_oracle(f"openvino:cpu?batch=4&{FAST}").measure(dynamic)
    assert m.batch == 4 and m.extra["input_shapes"] == {"input": [4, 3, 16, 16]}


def test_bigger_model_is_slower(small: bytes) -> None:
    big = conv_chain(channels=(64, 64, 64), size=64).SerializeToString()
    oracle = oracles.get_oracle(f"openvino:cpu?{FAST}")
    assert oracle.measure(big).value > 3 * oracle.measure(small).value


def test_second_call_is_a_cache_hit(small: bytes, tmp_path) -> None:
    cache = oracles.MeasurementCache(tmp_path / "c.sqlite")
    oracle = oracles.get_oracle(f"openvino:cpu?{FAST}")
    first = oracles.measure(oracle, small, cache=cache)
    again = oracles.measure(oracles.get_oracle(f"openvino:cpu?{FAST}"), small, cache=cache)
    assert not first.cached and again.cached
    assert again.value == first.value and again.samples == first.samples
    assert len(cache) == 1


def test_cache_key_holds_the_runtime_version_and_settings(small: bytes) -> None:
    oracle = oracles.get_oracle(f"openvino:cpu?{FAST}")
    model_key = oracle.model_key(small)
    assert oracle.identity()["openvino"] == openvino.__version__
    key = cache_key(oracle, model_key)
    for other in (
        f"openvino:cpu?precision=bf16&{FAST}",
        f"openvino:cpu?sessions=1&{FAST}",
        f"onnxruntime:cpu?{FAST}",
    ):
        assert cache_key(oracles.get_oracle(other), model_key) != key

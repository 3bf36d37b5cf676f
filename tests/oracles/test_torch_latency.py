"""The torch latency oracle: real eager forward passes timed on the CPU (and on CUDA where present)."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

from oracles import (
    DeviceUnavailableError,
    MeasurementCache,
    ModelInputError,
    get_oracle,
    measure,
)
from oracles.torch_latency import TorchLatency

FAST = "min_time=0.05&max_time=1&min_runs=10&max_runs=300&warmup=3"


def tiny_net(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def test_import_does_not_import_torch() -> None:
    code = "import sys, oracles.torch_latency; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cpu_latency_is_positive_with_ordered_interval() -> None:
    oracle = get_oracle(f"torch:cpu?{FAST}")
    m = oracle.measure(tiny_net(), input_shapes={"input": (1, 3, 32, 32)})
    assert m.quantity == "latency" and m.unit == "ms" and m.statistic == "median"
    assert m.value > 0
    assert m.ci_low is not None and m.ci_high is not None
    assert m.ci_low <= m.value <= m.ci_high
    assert m.samples >= 10
    assert m.device == "cpu" and m.threads == 1 and m.batch == 1
    assert m.backend.startswith("torch ")


def test_bigger_model_is_slower() -> None:
    oracle = get_oracle(f"torch:cpu?{FAST}")
    small = oracle.measure(tiny_net(4), input_shapes={"input": (1, 3, 32, 32)})
    big = oracle.measure(tiny_net(96), input_shapes={"input": (1, 3, 32, 32)})
    assert big.value > 2 * small.value, (small.value, big.value)


def test_callers_module_is_unchanged_and_threads_restored() -> None:
    net = tiny_net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    threads = torch.get_num_threads()
    get_oracle(f"torch:cpu?threads=1&dtype=bf16&channels_last=1&{FAST}").measure(net)
    assert net.training
    for k, v in net.state_dict().items():
        assert v.device.type == "cpu" and v.dtype == before[k].dtype
        assert torch.equal(v, before[k]), k  # BN running stats not updated by the oracle
    assert torch.get_num_threads() == threads


def test_batch_setting_replaces_first_dimension() -> None:
    m = get_oracle(f"torch:cpu?batch=4&{FAST}").measure(tiny_net())
    assert m.batch == 4
    assert m.extra["input_shapes"] == {"input": [4, 3, 32, 32]}


def test_cuda_refused_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailableError, match=r"torch.cuda.is_available\(\) is False"):
        get_oracle("torch:cuda")
    # Built without the check, measuring still refuses instead of timing the CPU.
    oracle = get_oracle("torch:cuda", check=False)
    with pytest.raises(DeviceUnavailableError):
        oracle.measure(tiny_net())


def test_spec_parsing_round_trips() -> None:
    oracle = get_oracle("torch:cuda?graph=1&dtype=fp16", check=False)
    assert isinstance(oracle, TorchLatency)
    assert oracle.device == "cuda" and oracle.graph is True and oracle.dtype == "fp16"
    assert oracle.spec == "torch:cuda?dtype=fp16&graph=1"
    # On the cpu the thread count is named even at its default: a CPU latency needs it.
    assert get_oracle("torch").spec == "torch:cpu?threads=1"
    assert get_oracle("torch:cuda", check=False).spec == "torch:cuda"


def test_bad_model_and_shapes() -> None:
    oracle = get_oracle(f"torch:cpu?{FAST}")
    with pytest.raises(ModelInputError, match="torch.nn.Module"):
        oracle.measure(b"not a module")
    with pytest.raises(ModelInputError, match="positive integers"):
        oracle.measure(tiny_net(), input_shapes={"input": (1, 3, 0, 32)})
    with pytest.raises(ModelInputError, match="forward pass failed"):
        oracle.measure(tiny_net(), input_shapes={"input": (1, 5, 32, 32)})


def test_model_key_ignores_weight_values_but_not_structure() -> None:
    oracle = get_oracle("torch:cpu")
    a, b = tiny_net(8), tiny_net(8)
    shapes = {"input": (1, 3, 32, 32)}
    assert oracle.model_key(a, input_shapes=shapes) == oracle.model_key(b, input_shapes=shapes)
    assert oracle.model_key(a, input_shapes=shapes) != oracle.model_key(
        tiny_net(16), input_shapes=shapes
    )
    assert oracle.model_key(a, input_shapes=shapes) != oracle.model_key(
        a, input_shapes={"input": (2, 3, 32, 32)}
    )


def test_cache_answers_a_second_identical_structure(tmp_path) -> None:
    cache = MeasurementCache(tmp_path / "c.sqlite")
    oracle = get_oracle(f"torch:cpu?{FAST}")
    first = measure(oracle, tiny_net(), cache=cache)
    second = measure(oracle, tiny_net(), cache=cache)
    assert not first.cached and second.cached
    assert second.value == first.value


# ----------------------------------------------------------- CUDA (skipped without a CUDA GPU)

CUDA_FAST = "min_time=0.2&max_time=3&min_runs=20&warmup=20"


def conv_net() -> nn.Module:
    return nn.Sequential(
        *[m for _ in range(6) for m in (nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


@pytest.mark.gpu
def test_cuda_latency_positive_with_gpu_info() -> None:
    net = tiny_net()
    m = get_oracle(f"torch:cuda?{CUDA_FAST}").measure(net)
    assert m.value > 0 and m.device == "cuda"
    assert m.ci_low <= m.value <= m.ci_high
    assert m.extra["gpu"] == torch.cuda.get_device_name()
    assert "compute_capability" in m.extra
    assert next(net.parameters()).device.type == "cpu"


@pytest.mark.gpu
def test_cuda_graph_not_slower_than_eager_at_batch_1() -> None:
    shapes = {"input": (1, 32, 16, 16)}
    eager = get_oracle(f"torch:cuda?{CUDA_FAST}").measure(conv_net(), input_shapes=shapes)
    graph = get_oracle(f"torch:cuda?graph=1&{CUDA_FAST}").measure(conv_net(), input_shapes=shapes)
    # Launch-bound at batch 1: replaying a graph removes the gaps between kernels.
    assert graph.value <= eager.value * 1.05, (graph.value, eager.value)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_low_precision_runs(dtype: str) -> None:
    m = get_oracle(f"torch:cuda?dtype={dtype}&channels_last=1&{CUDA_FAST}").measure(
        conv_net(), input_shapes={"input": (8, 32, 32, 32)}
    )
    assert m.value > 0 and m.extra["dtype"] == dtype


@pytest.mark.gpu
def test_cuda_median_is_repeatable() -> None:
    oracle = get_oracle("torch:cuda?graph=1&min_time=0.3&max_time=3&warmup=50")
    shapes = {"input": (16, 32, 32, 32)}
    net = conv_net()
    values = [oracle.measure(net, input_shapes=shapes).value for _ in range(5)]
    cv = statistics.stdev(values) / statistics.mean(values)
    assert cv <= 0.02, values

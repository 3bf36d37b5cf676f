"""compare-oracles on a tiny conv chain, with real static and ONNX Runtime oracles."""

from __future__ import annotations

import json

import pytest

from hwprune.compare import compare_oracles, sample_policies, write_report
from tests.nets import conv_net


def test_samples_cover_the_whole_range():
    from hwprune.space import ChannelSpace

    space = ChannelSpace(
        conv_net(32, 64, 64, bias=True), example_input_shape=(1, 3, 16, 16), min_keep=0.1
    )
    policies = sample_policies(space, 8, seed=0)
    means = [sum(p.keep) / len(p.keep) for p in policies]
    assert means[0] == 1.0
    assert min(means) <= 0.15
    with pytest.raises(ValueError, match="at least 3"):
        sample_policies(space, 2)


def test_correlations_from_real_measurements(tmp_path):
    from oracles import MeasurementCache

    cache = MeasurementCache(tmp_path / "cache.sqlite")
    result = compare_oracles(
        model=conv_net(32, 64, 64, bias=True),
        model_name="chain",
        input_shape=(1, 3, 16, 16),
        oracle_specs=[
            "flops",
            "params",
            "params?nonzero=1",
            "onnxruntime:cpu?threads=1&min_time=0.05",
        ],
        samples=6,
        cache=cache,
    )
    pairs = {(p.a, p.b): p for p in result.pairs}
    assert pairs[("flops", "params")].spearman > 0.8
    # Two oracles that count the same thing rank every sample identically.
    same = pairs[("params", "params?nonzero=1")]
    assert same.spearman == pytest.approx(1.0) and same.kendall == pytest.approx(1.0)
    assert result.reference.startswith("onnxruntime")
    assert result.ratio["flops"] < 0.5  # the smallest sample is far below dense
    report = write_report(result, tmp_path / "out")
    assert "Spearman" in report.read_text()
    data = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert len(data["values"]["flops"]) == 6
    # A second run answers from the oracle cache.
    again = compare_oracles(
        model=conv_net(32, 64, 64, bias=True),
        input_shape=(1, 3, 16, 16),
        oracle_specs=["flops", "onnxruntime:cpu?threads=1&min_time=0.05"],
        samples=6,
        cache=cache,
    )
    import oracles

    ort = oracles.get_oracle("onnxruntime:cpu?threads=1&min_time=0.05").spec
    assert again.cached == {"flops": 6, ort: 6}


def test_gpu_oracles_follow_what_the_machine_offers(monkeypatch):
    import importlib.util

    import onnxruntime
    import torch

    import oracles
    from hwprune.compare import DEFAULT_ORACLES, default_oracles, gpu_oracles, openvino_oracles

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # fmt: skip
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorrt" else real_find_spec(name, *a))  # fmt: skip
    assert gpu_oracles() == ("torch:cuda", "onnxruntime:cuda")
    assert default_oracles() == (
        *DEFAULT_ORACLES,
        *openvino_oracles(),
        "torch:cuda",
        "onnxruntime:cuda",
    )
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider"])  # fmt: skip
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt" else real_find_spec(name, *a))  # fmt: skip
    found = gpu_oracles()
    assert found == ("torch:cuda", "onnxruntime:cuda", "onnxruntime:tensorrt", "tensorrt")
    for spec in found:  # every name is a registered oracle with a valid device
        oracles.get_oracle(spec, check=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_oracles() == ()  # providers installed but no GPU: nothing to time on


@pytest.mark.gpu
def test_default_oracles_add_torch_cuda_on_a_gpu():
    from hwprune.compare import default_oracles

    assert "torch:cuda" in default_oracles()


def test_default_oracles_include_openvino_where_installed(monkeypatch):
    import importlib.util

    import oracles
    from hwprune.compare import DEFAULT_ORACLES, default_oracles

    pytest.importorskip("openvino")
    assert default_oracles()[: len(DEFAULT_ORACLES) + 1] == (
        *DEFAULT_ORACLES,
        "openvino:cpu?threads=1",
    )
    oracles.get_oracle("openvino:cpu?threads=1")  # registered, and runs on this machine
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real_find_spec(name, *a))  # fmt: skip
    assert "openvino:cpu?threads=1" not in default_oracles()

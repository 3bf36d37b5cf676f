"""export_openvino: the OpenVINO IR of a verified ONNX model, checked against torch or ONNX Runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

openvino = pytest.importorskip("openvino")

from hwprune.errors import ConfigError, ExportError  # noqa: E402
from hwprune.export import export_onnx  # noqa: E402
from hwprune.export.openvino import export_openvino  # noqa: E402
from oracles import capabilities  # noqa: E402
from tests.nets import conv_net  # noqa: E402


def _net(seed: int = 0) -> nn.Module:
    net = conv_net(8, classes=4, bias=True, seed=seed)
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def test_ir_matches_torch_and_is_written(tmp_path: Path) -> None:
    net = _net()
    data = export_onnx(net, input_shape=(1, 3, 16, 16))
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(data)
    result = export_openvino(onnx_path, tmp_path / "ir", module=net)
    assert result.reference == "torch"
    assert result.xml_path == tmp_path / "ir" / "model.xml" and result.xml_path.is_file()
    assert result.bin_path.is_file() and result.bin_path.stat().st_size > 0
    assert 0 <= result.max_abs_diff <= 1e-3
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["model.bin", "model.xml"]
    # The written IR itself reproduces torch on a fresh input.
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(result.xml_path)), "CPU")
    x = torch.randn(1, 3, 16, 16)
    got = compiled({"input": x.numpy()})[compiled.outputs[0]]
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-2)


def test_without_a_module_onnxruntime_is_the_reference(tmp_path: Path) -> None:
    data = export_onnx(_net(), input_shape=(1, 3, 16, 16))
    result = export_openvino(data, tmp_path / "ir", name="net")
    assert result.reference == "onnxruntime" and result.xml_path.name == "net.xml"
    assert result.max_abs_diff <= 1e-3 and not result.fp16_weights


def test_outputs_beyond_tolerance_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    data = export_onnx(_net(0), input_shape=(1, 3, 16, 16))
    out = tmp_path / "ir"
    with pytest.raises(ExportError, match=r"differ from torch's by up to .* not faithful"):
        export_openvino(data, out, module=_net(1))  # another net's weights: outputs differ
    assert not out.exists()


def test_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no ONNX file at"):
        export_openvino(tmp_path / "missing.onnx", tmp_path / "ir")
    data = export_onnx(_net(), input_shape=(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="plain file name"):
        export_openvino(data, tmp_path / "ir", name="../x")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ExportError, match=r'pip install "hwprune\[openvino\]"'):
        export_openvino(data, tmp_path / "ir")


def test_an_openvino_budget_ships_an_openvino_ir() -> None:
    # A run exports the IR where a budget's oracle declares it (output.export reads this).
    for spec in ("openvino:cpu?threads=1", "openvino:npu", "openvino:gpu@http://127.0.0.1:9"):
        assert capabilities(spec).export_format == "openvino-ir", spec
    for spec in ("params", "flops", "onnxruntime:cpu?threads=1", "onnxruntime:tensorrt"):
        assert capabilities(spec).export_format == "onnx", spec


class _TokensAndImage(nn.Module):
    """Named inputs, one of them integer token ids: random floats would index out of range."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(5, 4)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image, ids):
        return {"score": self.conv(image).mean(dim=(2, 3)) + self.embed(ids).mean(dim=1)}


def test_example_inputs_of_any_form_feed_both_sides(tmp_path: Path) -> None:
    net = _TokensAndImage().eval()
    example = {"image": torch.randn(2, 3, 8, 8), "ids": torch.tensor([[0, 4, 2], [1, 3, 0]])}
    data = export_onnx(net, example_inputs=example)
    result = export_openvino(data, tmp_path / "ir", module=net, example_inputs=example)
    assert result.reference == "torch" and 0 <= result.max_abs_diff <= 1e-3
    compiled = openvino.Core().compile_model(str(result.xml_path), "CPU")
    assert [tuple(p.get_shape()) for p in compiled.inputs] == [(2, 3, 8, 8), (2, 3)]

"""export_onnx: names, fixed shapes, eval mode, the checker, ONNX Runtime agreement, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hwprune.errors import ExportError
from hwprune.export import export_onnx


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _run(data: bytes, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.numpy()})[0]


def test_names_shapes_and_outputs_match_torch():
    model = _net().eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)  # non-trivial BN so eval vs train differs
        model[1].running_var.uniform_(0.5, 2)
    data = export_onnx(model, input_shape=(2, 3, 16, 16))
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 16, 16]  # fixed shape, no symbolic batch
    assert proto.opset_import[0].version == 17
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run(data, x), expected, rtol=1e-4, atol=1e-5)


def test_train_mode_module_is_exported_in_eval_mode_and_left_alone():
    model = _net().train()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = export_onnx(model, input_shape=(1, 3, 8, 8))
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats kept
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run(data, x), expected, rtol=1e-4, atol=1e-5)


def test_path_and_opset(tmp_path):
    out = tmp_path / "sub" / "model.onnx"
    data = export_onnx(_net(), input_shape=(1, 3, 8, 8), path=out, opset=13)
    assert out.read_bytes() == data
    assert onnx.load_from_string(data).opset_import[0].version == 13


class _FFT(nn.Module):
    def forward(self, x):
        return torch.fft.fft2(x).real


def test_unsupported_operator_is_named():
    with pytest.raises(ExportError, match="aten::fft_fft2"):
        export_onnx(_FFT(), input_shape=(1, 3, 8, 8))


def test_bad_arguments():
    with pytest.raises(ExportError, match="input_shape"):
        export_onnx(_net(), input_shape=(1, 0, 8, 8))
    with pytest.raises(ExportError, match="torch.nn.Module"):
        export_onnx(object(), input_shape=(1, 3, 8, 8))

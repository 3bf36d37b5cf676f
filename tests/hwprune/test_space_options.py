"""User models in the spaces and the export: several inputs, dict outputs, attention heads, options."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hwprune.errors import ConfigError, ExportError
from hwprune.export import export_onnx
from hwprune.export.final import final_export
from hwprune.space import ChannelSpace, Policy, WeightSpace


class TwoInputNet(nn.Module):
    """An image and a side vector, fused before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU())
        self.side = nn.Sequential(nn.Linear(5, 12), nn.ReLU())
        self.fc = nn.Linear(24 + 12, 4)

    def forward(self, image, side):
        x = self.conv2(self.conv(image)).mean(dim=(2, 3))
        return self.fc(torch.cat([x, self.side(side)], dim=1))


class DictHeads(nn.Module):
    """A backbone with a classification head and a box head, returned as a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        )
        self.cls = nn.Linear(32, 5)
        self.box = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        f = self.backbone(x).mean(dim=(2, 3))
        return {"logits": self.cls(f), "boxes": self.box(f)}


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=48,
        num_classes=6,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model.eval()


def _ort(data: bytes, feed: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def test_two_input_model_prunes_and_exports_both_inputs_by_name(tmp_path):
    torch.manual_seed(0)
    model = TwoInputNet().eval()
    inputs = (torch.randn(1, 3, 12, 12), torch.randn(1, 5))
    space = ChannelSpace(model, example_inputs=inputs)
    assert space.example_inputs.names == ("input_0", "input_1")
    assert space.example_input_shape == (1, 3, 12, 12)
    assert {"conv.0", "conv2.0", "side.0"} <= {u.id for u in space.units}
    small = space.apply(Policy.uniform(space, 0.5))
    assert small.side[0].out_features == 6 and small.fc.in_features == 12 + 6
    data = export_onnx(small, example_inputs=inputs)
    proto = onnx.load_from_string(data)
    assert [i.name for i in proto.graph.input] == ["input_0", "input_1"]
    got = _ort(data, {"input_0": inputs[0].numpy(), "input_1": inputs[1].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(*inputs).numpy(), rtol=1e-4, atol=1e-5)
    result = final_export(small, example_inputs=inputs, onnx_path=tmp_path / "m.onnx")
    assert result.input_names == ("input_0", "input_1") and result.max_rel_diff <= 1e-3
    weights = WeightSpace(model, example_inputs=inputs)
    assert weights.example_inputs.shapes["input_1"] == (1, 5)


def test_named_inputs_go_in_as_keywords(tmp_path):
    torch.manual_seed(0)
    model = TwoInputNet().eval()
    named = {"image": torch.randn(1, 3, 12, 12), "side": torch.randn(1, 5)}
    space = ChannelSpace(model, example_inputs=named)
    small = space.apply(Policy.uniform(space, 0.6))
    result = final_export(small, example_inputs=named, onnx_path=tmp_path / "m.onnx")
    proto = onnx.load(str(result.onnx_path))
    assert [i.name for i in proto.graph.input] == ["image", "side"]


def test_dict_outputs_keep_their_heads_and_every_output_is_checked(tmp_path):
    torch.manual_seed(0)
    model = DictHeads().eval()
    x = torch.randn(1, 3, 10, 10)
    space = ChannelSpace(model, example_inputs=x, ignored_layers=["box"])
    assert set(space.output_layers) == {"cls", "box.2"}
    assert "box.0" not in {u.id for u in space.units}  # ignored container: its layers too
    small = space.apply(Policy.uniform(space, 0.5))
    assert small.box[0].out_features == 16 and small.box[2].in_features == 16  # head kept whole
    assert small.box[0].in_features == 16  # the backbone feeding it shrank
    result = final_export(small, example_inputs=x, onnx_path=tmp_path / "heads.onnx")
    assert [p.name for p in result.outputs] == ["logits", "boxes"]
    assert [p.shape for p in result.outputs] == [(1, 5), (1, 4)]
    got = _ort(result.onnx_path.read_bytes(), {"input": x.numpy()})
    with torch.no_grad():
        want = small(x)
    np.testing.assert_allclose(got[1], want["boxes"].numpy(), rtol=1e-4, atol=1e-5)


class _SecondOutputDrifts(nn.Module):
    """The first output exports faithfully; the second bakes in a branch taken at trace time."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(x)
        aux = y * 2 if bool(x.sum() > 0) else y * -5
        return {"main": y, "aux": aux}


def test_a_mismatch_on_any_output_is_never_shipped(tmp_path):
    torch.manual_seed(0)
    x = torch.ones(1, 4)  # traced on the positive branch; random inputs take both
    out = tmp_path / "drift.onnx"
    with pytest.raises(ExportError, match="data-dependent control flow"):
        final_export(_SecondOutputDrifts().eval(), example_inputs=x, onnx_path=out)
    # Accepted knowingly, the branch is exported, and the parity check still refuses it.
    with pytest.raises(ExportError, match="output 'aux' differs from torch's"):
        final_export(_SecondOutputDrifts().eval(), example_inputs=x, onnx_path=out,
                     allow_trace_warnings=True)  # fmt: skip
    assert not out.exists()


def test_vit_attention_default_keeps_every_head_and_shrinks_them_alike(tmp_path):
    model = _vit()
    x = torch.randn(1, 3, 32, 32)
    space = ChannelSpace(model, example_inputs=x)
    hidden = next(u for u in space.units if u.id == "conv_proj")
    assert hidden.channels == 32 and hidden.step == 4  # one position of each of 4 heads
    small = space.apply(Policy.uniform(space, 0.3))
    attn = small.encoder.layers[0].self_attention
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (8, 4, 2)
    assert small.hidden_dim == 8
    result = final_export(small, example_inputs=x, onnx_path=tmp_path / "vit.onnx")
    assert result.max_rel_diff <= 1e-3 and result.outputs[0].scale >= 1.0


def test_vit_num_heads_removes_whole_heads_and_mlp_width(tmp_path):
    model = _vit()
    x = torch.randn(1, 3, 32, 32)
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    space = ChannelSpace(
        model, example_inputs=x, num_heads={m: m.num_heads for m in attention}, round_to=4
    )
    assert space.num_heads == {
        "encoder.layers.encoder_layer_0.self_attention": 4,
        "encoder.layers.encoder_layer_1.self_attention": 4,
    }
    hidden = next(u for u in space.units if u.id == "conv_proj")
    assert hidden.step == 8  # head size
    assert space.output_layers == ("heads.head",)
    dense_in_proj = model.encoder.layers[0].self_attention.in_proj_weight.detach()
    small = space.apply(Policy.uniform(space, 0.5))
    for block in small.encoder.layers:
        attn = block.self_attention
        assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (16, 2, 8)
        assert block.mlp[0].out_features == 24
    assert small.heads.head.out_features == 6
    # The hidden channels kept are two whole dense heads, and the query projection is the
    # dense one restricted to them.
    cols = _cols(model, small)
    assert sorted(cols) == cols and len(cols) == 16
    assert {c // 8 for c in cols} == {cols[0] // 8, cols[-1] // 8}
    assert all(
        cols[i * 8 : (i + 1) * 8] == list(range(cols[i * 8], cols[i * 8] + 8)) for i in (0, 1)
    )
    q = small.encoder.layers[0].self_attention.in_proj_weight.detach()[:16]
    assert torch.allclose(q, dense_in_proj[:32][cols][:, cols])
    with torch.no_grad():
        assert small(x).shape == (1, 6)
    result = final_export(small, example_inputs=x, onnx_path=tmp_path / "vit.onnx")
    assert result.max_rel_diff <= 1e-3


def _cols(dense: nn.Module, small: nn.Module) -> list[int]:
    """Which dense hidden channels the pruned ViT kept (matched through the patch embedding)."""
    wd = dense.conv_proj.weight.detach().flatten(1)
    ws = small.conv_proj.weight.detach().flatten(1)
    return [int(((wd - row).abs().sum(dim=1)).argmin()) for row in ws]


def test_num_heads_and_other_options_are_checked():
    model = _vit()
    attn = model.encoder.layers[0].self_attention
    with pytest.raises(ConfigError, match="has 4"):
        ChannelSpace(model, example_inputs=torch.randn(1, 3, 32, 32), num_heads={attn: 2})
    with pytest.raises(ConfigError, match="takes nn.MultiheadAttention modules.*Linear"):
        ChannelSpace(model, example_inputs=torch.randn(1, 3, 32, 32), num_heads={"heads.head": 1})
    with pytest.raises(ConfigError, match="not a module of the model"):
        ChannelSpace(model, example_inputs=torch.randn(1, 3, 32, 32), num_heads={"nope": 1})
    with pytest.raises(ConfigError, match="not a parameter of the model"):
        ChannelSpace(
            model, example_inputs=torch.randn(1, 3, 32, 32), unwrapped_parameters={"nope": 0}
        )
    # Only one attention module named: the shared hidden group cannot be pruned soundly, so it
    # is left out (and listed), the MLP groups stay.
    space = ChannelSpace(model, example_inputs=torch.randn(1, 3, 32, 32), num_heads={attn: 4})
    assert "conv_proj" not in {u.id for u in space.units}
    assert [s.id for s in space.skipped] == ["conv_proj"]
    assert "not in num_heads" in space.skipped[0].reason


def test_unwrapped_parameters_by_name_reach_torch_pruning():
    model = _vit()
    space = ChannelSpace(
        model,
        example_inputs=torch.randn(1, 3, 32, 32),
        unwrapped_parameters={"class_token": 2, "encoder.pos_embedding": 2},
    )
    small = space.apply(Policy.uniform(space, 0.5))
    assert small.class_token.shape[-1] == small.encoder.pos_embedding.shape[-1] == 16


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.odd = _Opaque()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.odd(self.conv(x)).mean(dim=(2, 3)))


class _Opaque(nn.Module):
    def forward(self, x):
        if torch.is_grad_enabled():  # tracing runs with gradients; inference does not
            raise RuntimeError("this block cannot run under autograd")
        return x


def test_a_module_that_cannot_be_traced_is_named_in_one_line():
    with pytest.raises(ConfigError) as info:
        ChannelSpace(_Untraceable().eval(), example_inputs=torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "module 'odd' (type _Opaque)" in message
    assert "customized_pruners" in message and "unwrapped_parameters" in message
    assert "num_heads" in message and "ignored_layers" in message


def test_a_model_that_rejects_its_example_inputs_is_a_config_error():
    with pytest.raises(ConfigError, match="calling TwoInputNet with the example inputs"):
        ChannelSpace(TwoInputNet(), example_inputs=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["onnxruntime:cpu?threads=1"], 1),
        (["openvino:cpu?threads=1", "params"], 1),
        (["torch:cuda"], 8),
        (["openvino:gpu"], 8),
        (["OpenVINO:NPU?min_time=0.1"], 8),
        (["params", "openvino:gpu@http://10.0.0.5:8765"], 8),
    ],
)
def test_default_round_to_is_8_on_gpu_and_npu_oracles_openvino_included(specs, expected):
    from hwprune.config import default_round_to

    assert default_round_to(specs) == expected

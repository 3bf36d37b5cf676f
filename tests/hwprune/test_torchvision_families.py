"""Torchvision families that broke the pruning step or the export, each fixed and held here."""

from __future__ import annotations

import pytest
import torch

import oracles
from hwprune.export import export_onnx
from hwprune.export.final import final_export
from hwprune.models import get_model
from hwprune.space import ChannelSpace, Policy
from tests.nets import Cancelling


def test_shufflenet_channel_shuffle_is_pruned_around_not_a_crash(tmp_path):
    # Torch-Pruning's reshape rule divides by zero on the channel shuffle (ZeroDivisionError
    # out of the pruning step, the support issue's first failure); its chunk mapping then
    # indexes out of range. The groups through them are left out and named; the rest prunes.
    torch.manual_seed(0)
    model = get_model("shufflenet_v2_x0_5", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    space = ChannelSpace(model, example_inputs=x)
    assert len(space.units) >= 16
    assert space.skipped and all("Torch-Pruning cannot" in s.reason for s in space.skipped)
    assert any(u.id.endswith("branch2.0") for u in space.units)
    small = space.apply(Policy.uniform(space, 0.5))
    assert small.stage2[1].branch2[0].out_channels < model.stage2[1].branch2[0].out_channels
    result = final_export(small, example_inputs=x, onnx_path=tmp_path / "shufflenet.onnx")
    assert result.max_rel_diff <= 1e-3


def test_shufflenet_chunk_shapes_reach_the_static_oracles():
    # x.chunk() is traced as Shape -> Gather -> Div -> Slice; ONNX shape inference does not
    # propagate through Div, so the flops oracle lost every shape after it.
    model = get_model("shufflenet_v2_x0_5", num_classes=10).eval()
    data = export_onnx(model, input_shape=(1, 3, 32, 32))
    flops = oracles.get_oracle("flops").measure(data, input_shapes={"input": (1, 3, 32, 32)})
    assert flops.value > 0
    # Unfolded, the oracle folds the chain itself (the shapes are known once the input's is).
    raw = export_onnx(model, input_shape=(1, 3, 32, 32), fold_shapes=False)
    measured = oracles.get_oracle("flops").measure(raw, input_shapes={"input": (1, 3, 32, 32)})
    assert measured.value == flops.value


def test_shufflenet_width_whose_shuffle_mapping_overruns_is_pruned_around(tmp_path):
    # At these widths Torch-Pruning's channel-shuffle mapping raises nothing but returns
    # indices past the layer's channels (index 144 of 48): an IndexError out of the
    # importance scoring, a traceback from ChannelSpace. Those groups are now left out.
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    torch.manual_seed(0)
    model = ShuffleNetV2([2, 2, 2], [16, 24, 48, 96, 128], num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    space = ChannelSpace(model, example_inputs=x)
    assert space.units
    assert any("Torch-Pruning cannot follow its channels (index" in s.reason for s in space.skipped)
    small = space.apply(Policy.uniform(space, 0.5))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    result = final_export(small, example_inputs=x, onnx_path=tmp_path / "shufflenet.onnx")
    assert result.max_rel_diff <= 1e-3


def test_export_as_close_to_float64_as_torch_itself_is_not_refused(tmp_path):
    torch.manual_seed(0)
    model = Cancelling().eval()
    x = torch.randn(1, 256)
    result = final_export(model, example_inputs=x, onnx_path=tmp_path / "m.onnx")
    (out,) = result.outputs
    assert out.rel_diff > 1e-3  # torch float32 against ONNX Runtime: past the tolerance
    assert out.torch_vs_float64 > 1e-4  # because torch float32 itself is that far off
    assert out.onnx_vs_float64 <= 10 * out.torch_vs_float64
    assert (tmp_path / "m.onnx").is_file()


def test_an_export_far_from_float64_is_still_refused():
    from hwprune.export.final import OutputParity

    # Accepted past the tolerance only when as close to the exact result as torch itself.
    def out(onnx, torch_own):
        return OutputParity("logits", (1, 10), 50.0, 1000.0, onnx_vs_float64=onnx,
                            torch_vs_float64=torch_own)  # fmt: skip

    assert out(0.004, 0.002).faithful(1e-3)
    assert not out(0.05, 0.002).faithful(1e-3)
    assert not OutputParity("logits", (1, 10), 50.0, 1000.0).faithful(1e-3)  # no reference


def test_maxvit_attention_grouping_is_cut_off_in_bounded_work_not_followed_for_hours():
    # Through MaxViT's window/grid partitions Torch-Pruning walks an attention group once
    # per channel (maxvit_t: ~18 M indices mapped through one reshape 768 times, 45-60 s per
    # group, the support sweep's 600 s limit passed). Here, one tiny block: 110 s to end
    # with the same groups left out for an overrun index; now cut off by the work caps.
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    model = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16],
                   block_layers=[1], head_dim=8, stochastic_depth_prob=0.0,
                   num_classes=10).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    space = ChannelSpace(model, example_inputs=x)
    qkv = {s.id: s.reason for s in space.skipped if s.id.endswith("to_qkv")}
    assert len(qkv) == 2  # window and grid attention
    assert all("cannot follow its channels in bounded work" in r for r in qkv.values()), qkv
    assert any(u.id.endswith("mlp_layer.1") for u in space.units)
    small = space.apply(Policy.uniform(space, 0.5))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert small(x).shape == (1, 10)


def _tiny_swin(v2: bool) -> torch.nn.Module:
    from torchvision.models import swin_transformer as st

    extra = (
        {"block": st.SwinTransformerBlockV2, "downsample_layer": st.PatchMergingV2} if v2 else {}
    )
    return st.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                              window_size=[4, 4], stochastic_depth_prob=0.1, num_classes=10,
                              **extra).eval()  # fmt: skip


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_swin_embedding_is_pruned_in_head_steps(v2):
    # Torch-Pruning could not follow Swin's embedding through the patch merging's NHWC
    # slices and window partitions: the patch embedding and every patch merging broke the
    # forward pass when pruned and were left out, only the MLPs pruned (swin_t: 74% of
    # dense FLOPs at most, refused at flops<=60%). Attention and patch merging are now
    # opaque layers with their own pruning functions; the embedding prunes, head-aligned.
    torch.manual_seed(0)
    model = _tiny_swin(v2)
    x = torch.randn(1, 3, 32, 32)
    space = ChannelSpace(model, example_inputs=x)
    units = {u.id: u for u in space.units}
    assert not space.skipped, space.skipped
    assert units["features.0.0"].step == 2 and units["features.2"].step == 2  # 2 heads
    small = space.apply(Policy.uniform(space, 0.5))
    assert small.features[0][0].out_channels == 8
    assert small.features[1][0].attn.qkv.weight.shape == (24, 8)
    assert small.features[3][0].attn.qkv.weight.shape == (48, 16)
    with torch.no_grad():
        assert small(x).shape == (1, 10)


@pytest.mark.slow
@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_swin_pruned_embedding_cuts_flops_and_the_export_matches(tmp_path, v2):
    torch.manual_seed(0)
    model = _tiny_swin(v2)
    x = torch.randn(1, 3, 32, 32)
    space = ChannelSpace(model, example_inputs=x)
    small = space.apply(Policy.uniform(space, 0.5))
    flops = oracles.get_oracle("flops")
    shapes = {"input": (1, 3, 32, 32)}
    dense = flops.measure(export_onnx(model, input_shape=shapes["input"]), input_shapes=shapes)
    after = flops.measure(export_onnx(small, input_shape=shapes["input"]), input_shapes=shapes)
    assert after.value < 0.45 * dense.value
    result = final_export(small, example_inputs=x, onnx_path=tmp_path / "swin.onnx")
    assert result.max_rel_diff <= 1e-3


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_swin_attention_pruning_is_the_attention_with_those_channels_masked(v2):
    # Embedding channel c goes with input column c of qkv and proj, inner channel c of q, k
    # and v, and output row c of proj; the pruned attention must compute exactly what the
    # dense one does with those weights zeroed (V1 scales q by the head size it reads).
    import copy
    import math

    from torchvision.models import swin_transformer as st

    from hwprune.space import _opaque

    torch.manual_seed(0)
    cls = st.ShiftedWindowAttentionV2 if v2 else st.ShiftedWindowAttention
    dense = cls(16, [4, 4], [2, 2], num_heads=2).eval()
    pruner = _opaque.builtin_pruners(torch.nn.Sequential(dense))[cls]
    drop = [1, 5, 9, 13]  # positions 1 and 5 of both heads
    keep = [i for i in range(16) if i not in drop]
    pruned = pruner.prune_out_channels(pruner.prune_in_channels(copy.deepcopy(dense), drop), drop)
    masked = copy.deepcopy(dense)
    rows = [k * 16 + i for k in range(3) for i in drop]
    with torch.no_grad():
        masked.qkv.weight[:, drop] = 0
        masked.qkv.weight[rows] = 0
        masked.qkv.bias[rows] = 0
        masked.proj.weight[:, drop] = 0
        if not v2:
            masked.qkv.weight[:16] *= math.sqrt(8 / 6)
            masked.qkv.bias[:16] *= math.sqrt(8 / 6)
        x = torch.randn(1, 8, 8, 16)
        assert pruned.qkv.weight.shape == (36, 12) and pruned.proj.weight.shape == (12, 12)
        torch.testing.assert_close(pruned(x[..., keep]), masked(x)[..., keep])


def test_swin_patch_merging_pruning_keeps_channel_c_of_each_of_the_four_patches():
    import copy

    from torchvision.models import swin_transformer as st

    from hwprune.space import _opaque

    torch.manual_seed(0)
    for cls in (st.PatchMerging, st.PatchMergingV2):
        dense = cls(8).eval()
        pruner = _opaque.builtin_pruners(torch.nn.Sequential(dense))[cls]
        pruned = pruner.prune_in_channels(copy.deepcopy(dense), [2, 7])
        pruned = pruner.prune_out_channels(pruned, [0])
        cols = [k * 8 + i for k in range(4) for i in range(8) if i not in (2, 7)]
        assert torch.equal(pruned.reduction.weight, dense.reduction.weight[1:, cols])
        norm = dense.norm.weight[cols] if cls is st.PatchMerging else dense.norm.weight[1:]
        assert torch.equal(pruned.norm.weight, norm)
        assert pruned(torch.randn(1, 4, 4, 6)).shape == (1, 2, 2, 15)

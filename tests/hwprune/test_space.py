"""Prune spaces on real models: Torch-Pruning surgery, ONNX export, ONNX Runtime outputs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from hwprune.errors import ConfigError, UnknownNameError
from hwprune.export import export_onnx
from hwprune.space import ChannelSpace, Policy, WeightSpace, two_four_mask


def _torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=10).eval()


def _hwprune_model(name: str) -> nn.Module:
    from hwprune.models import get_model

    torch.manual_seed(0)
    return get_model(name, num_classes=10).eval()


MODELS = {
    "resnet18": (lambda: _torchvision("resnet18"), 32),
    "mobilenet_v2": (lambda: _torchvision("mobilenet_v2"), 32),
    "efficientnet_b0": (lambda: _torchvision("efficientnet_b0"), 32),
    "vgg16_cifar": (lambda: _hwprune_model("vgg16_cifar"), 32),
    "resnet56_cifar": (lambda: _hwprune_model("resnet56_cifar"), 32),
}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _random_policy(space, seed: int, low: float = 0.1, high: float = 1.0) -> Policy:
    rng = np.random.default_rng(seed)
    return Policy(keep=tuple(rng.uniform(low, high, size=len(space.units))))


def _ort_logits(onnx_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    return sess.run(["logits"], {"input": x.numpy()})[0]


class _Tiny(nn.Module):
    """conv-bn-relu, a residual pair, a concat and a classifier: every coupling in a few layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)
        self.c = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.a(x)) + x  # stem and a are coupled by the addition
        x = torch.cat([self.b(x), self.c(x)], dim=1)
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def resnet18_space():
    model = _torchvision("resnet18")
    return ChannelSpace(model, example_input_shape=(1, 3, 64, 64))


# --------------------------------------------------------------- every model


@pytest.mark.parametrize("name", list(MODELS))
def test_random_policy_prunes_runs_and_exports(name):
    build, size = MODELS[name]
    model = build()
    dense_params = _params(model)
    space = ChannelSpace(model, example_input_shape=(1, 3, size, size))
    policy = _random_policy(space, seed=1, low=0.2, high=0.9)

    pruned = space.apply(policy).eval()
    assert _params(pruned) < dense_params
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = pruned(x)
    assert logits.shape == (2, 10)  # classifier output never pruned
    assert not any(u.id in space.output_layers for u in space.units)

    # The unit's kept channel count is what the root layer really has now.
    modules = dict(pruned.named_modules())
    for unit, kept in space.kept_channels(policy).items():
        layer = modules[unit]
        out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        assert out == kept, unit

    x1 = x[:1]
    onnx_bytes = export_onnx(pruned, input_shape=tuple(x1.shape))
    with torch.no_grad():
        expected = pruned(x1).numpy()
    np.testing.assert_allclose(_ort_logits(onnx_bytes, x1), expected, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------ channel space


def test_dense_model_untouched_by_build_and_apply(resnet18_space):
    model = resnet18_space.model
    model.train()  # apply must neither change the mode nor the BN statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_before = _params(model)
    pruned = resnet18_space.apply(_random_policy(resnet18_space, seed=3))
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)  # the copy shares no storage with the dense model
        for b in pruned.buffers():
            if b.is_floating_point():
                b.add_(1.0)
    model.eval()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _params(model) == n_before
    assert model.fc.out_features == 10 and model.conv1.out_channels == 64


def test_parameter_count_falls_with_keep(resnet18_space):
    counts = [
        _params(resnet18_space.apply(Policy.uniform(resnet18_space, k)))
        for k in (1.0, 0.75, 0.5, 0.25)
    ]
    assert counts[0] == _params(resnet18_space.model)
    assert all(a > b for a, b in zip(counts, counts[1:], strict=False)), counts


def test_residual_coupled_convs_keep_equal_channels(resnet18_space):
    pruned = resnet18_space.apply(_random_policy(resnet18_space, seed=4, low=0.1, high=0.9))
    assert pruned.layer1[0].conv2.out_channels == pruned.conv1.out_channels
    assert pruned.layer1[1].conv2.out_channels == pruned.conv1.out_channels
    for stage in (pruned.layer2, pruned.layer3, pruned.layer4):
        width = stage[0].downsample[0].out_channels
        assert stage[0].conv2.out_channels == width
        assert stage[1].conv2.out_channels == width
        assert stage[1].conv1.in_channels == width
    assert pruned.fc.in_features == pruned.layer4[1].conv2.out_channels
    # One unit per coupled group: 1 stem/stage-1 group, 3 downsample groups, 8 block-internal convs.
    assert len(resnet18_space.units) == 12


def test_round_to_gives_multiples():
    model = _torchvision("resnet18")
    space = ChannelSpace(model, example_input_shape=(1, 3, 64, 64), round_to=8)
    policy = _random_policy(space, seed=5, low=0.05, high=1.0)
    kept = space.kept_channels(policy)
    assert all(k % 8 == 0 and k >= 8 for k in kept.values()), kept
    pruned = space.apply(policy)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 8 == 0
    assert pruned.fc.out_features == 10


def test_channel_rounding_and_min_keep():
    space = ChannelSpace(_Tiny(), example_input_shape=(1, 3, 8, 8), round_to=4, min_keep=0.25)
    assert space.channels_for(0.0, 16) == 4  # min_keep * 16
    assert space.channels_for(0.4, 16) == 8  # 6.4 -> nearest multiple of 4
    assert space.channels_for(1.0, 16) == 16
    assert space.channels_for(0.3, 3) == 3  # fewer channels than round_to: keep them all
    one = ChannelSpace(_Tiny(), example_input_shape=(1, 3, 8, 8), min_keep=0.0)
    assert one.channels_for(0.0, 16) == 1  # never below one channel


def test_tiny_model_groups_and_outputs():
    space = ChannelSpace(_Tiny(), example_input_shape=(1, 3, 8, 8))
    ids = [u.id for u in space.units]
    assert space.output_layers == ("fc",)
    # stem and a form one group (addition); b and c are separate (concatenation); fc is ignored.
    assert ids == ["stem", "b", "c"]
    stem = space.units[0]
    assert set(stem.layers) >= {"stem", "bn", "a", "b", "c"}
    assert stem.channels == 16 and stem.kernel == 3 and stem.in_channels == 3
    assert 0 < stem.flops_share <= 1 and 0 < stem.params_share <= 1
    feats = space.describe()
    assert feats[0]["n_layers"] == len(stem.layers) and "layers" not in feats[0]
    pruned = space.apply(Policy(keep=(0.5, 0.25, 1.0)))
    assert pruned.stem.out_channels == pruned.a.out_channels == 8
    assert pruned.fc.in_features == 2 + 8  # concat of b (8 -> 2) and c (kept)
    assert pruned(torch.randn(1, 3, 8, 8)).shape == (1, 5)


def test_l1_importance_keeps_the_largest_filters():
    model = _Tiny()
    with torch.no_grad():
        for i in range(4):  # filters 0, 2, 4, 6 of b are tiny
            model.b.weight[2 * i].mul_(1e-3)
    space = ChannelSpace(model, example_input_shape=(1, 3, 8, 8), importance="l1", min_keep=0.0)
    pruned = space.apply(Policy(keep=(1.0, 0.5, 1.0)))
    torch.testing.assert_close(pruned.b.weight, model.b.weight[1::2])
    rand = ChannelSpace(model, example_input_shape=(1, 3, 8, 8), importance="random", seed=7)
    assert not torch.equal(rand.apply(Policy(keep=(1.0, 0.5, 1.0))).b.weight, model.b.weight[1::2])


def test_taylor_needs_calibration_and_unknown_criterion():
    with pytest.raises(ConfigError, match="calibration"):
        ChannelSpace(_Tiny(), example_input_shape=(1, 3, 8, 8), importance="taylor")
    with pytest.raises(UnknownNameError, match="Did you mean 'taylor'"):
        ChannelSpace(_Tiny(), example_input_shape=(1, 3, 8, 8), importance="tayler")
    model = _Tiny()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    space = ChannelSpace(
        model,
        example_input_shape=(1, 3, 8, 8),
        importance="taylor",
        calibration=(x, torch.tensor([0, 1, 2, 3])),
    )
    assert all(p.grad is None for p in model.parameters())  # gradients left as they were
    assert space.apply(Policy.uniform(space, 0.5))(x).shape == (4, 5)


def test_shape_key_follows_the_architecture():
    space = ChannelSpace(_torchvision("resnet18"), example_input_shape=(1, 3, 64, 64), round_to=8)
    a = Policy.uniform(space, 0.50)
    b = Policy.uniform(space, 0.505)  # 512 * 0.505 = 258.6 -> 256: same channels as 0.5 everywhere
    c = Policy.uniform(space, 0.75)
    assert space.kept_channels(a) == space.kept_channels(b)
    assert space.shape_key(a) == space.shape_key(b)
    assert space.shape_key(a) != space.shape_key(c)
    assert space.shape_key(Policy.dense(space)) != space.shape_key(a)


def test_bad_policies_are_rejected(resnet18_space):
    n = len(resnet18_space.units)
    with pytest.raises(ValueError, match=f"has 3 keep ratios but the space has {n} units"):
        resnet18_space.apply(Policy(keep=(0.5, 0.5, 0.5)))
    with pytest.raises(ValueError, match=r"\[0, 1\], got \[1.5, -0.2\]"):
        Policy(keep=(0.5, 1.5, -0.2))
    with pytest.raises(ValueError, match="granularity"):
        Policy(keep=(0.5,), granularity="filter")
    weight_policy = Policy(keep=(0.5,) * n, granularity="weight")
    with pytest.raises(ValueError, match="granularity 'channel'"):
        resnet18_space.apply(weight_policy)


def test_policy_round_trip_and_clip(resnet18_space):
    policy = _random_policy(resnet18_space, seed=6)
    data = policy.to_dict(resnet18_space)
    assert list(data["keep"]) == [u.id for u in resnet18_space.units]
    assert Policy.from_dict(data, space=resnet18_space) == policy
    assert Policy.from_dict(data) == policy  # without the space: the mapping's order
    del data["keep"]["conv1"]
    with pytest.raises(ValueError, match=r"missing units \['conv1'\]"):
        Policy.from_dict(data, space=resnet18_space)
    clipped = Policy(keep=(0.0, 0.5, 1.0)).clip(0.2, 0.9)
    assert clipped.keep == (0.2, 0.5, 0.9)
    assert Policy.dense(resnet18_space).keep == (1.0,) * len(resnet18_space.units)


def test_a_policy_read_back_from_sorted_json_prunes_the_same_units():
    # VGG unit ids do not sort in model order ("features.10" < "features.3"); the episode
    # log writes sorted keys, so a policy read back lists its units in another order.
    from hwprune.models import get_model

    space = ChannelSpace(get_model("vgg11_cifar", width=0.25), example_input_shape=(1, 3, 32, 32))
    ids = [u.id for u in space.units]
    assert ids != sorted(ids)
    policy = Policy(keep=tuple(np.linspace(0.2, 1.0, len(ids))), unit_ids=tuple(ids))
    data = json.loads(json.dumps(policy.to_dict(space), sort_keys=True))
    back = Policy.from_dict(data)
    assert back.unit_ids == tuple(sorted(ids)) and back.keep != policy.keep
    assert space.kept_channels(back) == space.kept_channels(policy)
    assert space.shape_key(back) == space.shape_key(policy)
    assert back.aligned(space).keep == policy.keep
    assert back.to_dict(space) == policy.to_dict(space)
    wrong = Policy(keep=policy.keep, unit_ids=("x", *ids[1:]))
    with pytest.raises(ConfigError, match="unknown units"):
        space.apply(wrong)


def test_depthwise_groups_stay_consistent():
    model = _torchvision("mobilenet_v2")
    space = ChannelSpace(model, example_input_shape=(1, 3, 64, 64), round_to=8)
    assert any(u.kind == "depthwise" for u in space.units)
    pruned = space.apply(Policy.uniform(space, 0.4))
    dw = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert all(m.weight.shape[0] == m.out_channels for m in dw)


# ------------------------------------------------------------- weight space


def _two_four_groups(weight: torch.Tensor) -> torch.Tensor:
    moved = weight if weight.dim() == 2 else weight.permute(0, 2, 3, 1)
    return moved.reshape(-1, 4)


def test_weight_space_unstructured_density_and_export():
    model = _hwprune_model("resnet20_cifar")
    space = WeightSpace(model, example_input_shape=(1, 3, 32, 32), min_keep=0.02)
    assert space.units[-1].id == "fc" or space.units[-1].kind == "linear"  # classifier included
    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy = Policy(
        keep=tuple(np.random.default_rng(0).uniform(0.0, 1.0, len(space.units))),
        granularity="weight",
    )
    pruned = space.apply(policy).eval()
    modules = dict(pruned.named_modules())
    for unit, keep in zip(space.units, policy.keep, strict=True):
        w = modules[unit.id].weight
        want = max(keep, 0.02) * unit.numel
        assert abs(int((w != 0).sum()) - want) <= 0.5 + 1e-6, unit.id
        dense_w = dict(model.named_modules())[unit.id].weight
        kept = w != 0
        # the zeroed entries are the smallest in magnitude
        assert dense_w.abs()[~kept].max() <= dense_w.abs()[kept].min()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    other = space.dense_params - sum(u.numel for u in space.units)  # BN, biases: not pruned
    nonzero = sum(int((modules[u.id].weight != 0).sum()) for u in space.units)
    assert space.nonzero_params(policy) == nonzero + other

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    onnx_bytes = export_onnx(pruned, input_shape=(1, 3, 32, 32))
    with torch.no_grad():
        np.testing.assert_allclose(
            _ort_logits(onnx_bytes, x), pruned(x).numpy(), rtol=1e-3, atol=1e-4
        )
    import onnx
    from onnx import numpy_helper

    zeros = sum(
        int((numpy_helper.to_array(t) == 0).sum())
        for t in onnx.load_from_string(onnx_bytes).graph.initializer
    )
    assert zeros >= sum(u.numel for u in space.units) - sum(space.kept_weights(policy).values())


def test_weight_space_two_four_pattern():
    model = _torchvision("resnet18")
    space = WeightSpace(model, example_input_shape=(1, 3, 64, 64), pattern="2:4")
    ids = [u.id for u in space.units]
    assert "conv1" not in ids  # 3 input channels: no 2:4 layout
    assert "fc" in ids
    keep = tuple(0.5 if i % 3 else 0.9 for i in range(len(ids)))
    policy = Policy(keep=keep, granularity="weight", pattern="2:4")
    pruned = space.apply(policy)
    modules = dict(pruned.named_modules())
    dense = dict(model.named_modules())
    for unit, k in zip(space.units, keep, strict=True):
        w = modules[unit.id].weight.detach()
        if k >= 0.75:
            assert torch.equal(w, dense[unit.id].weight)
            continue
        per_group = (_two_four_groups(w) != 0).sum(dim=1)
        assert int(per_group.max()) <= 2, unit.id
        assert int((w != 0).sum()) == unit.numel // 2
    assert space.densities(policy)[ids[1]] == 0.5
    assert space.shape_key(policy) != space.shape_key(Policy.dense(space))
    with torch.no_grad():
        assert pruned(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_two_four_mask_on_known_weights():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -1.0, 0.2]])
    assert two_four_mask(w).tolist() == [[False, True, True, False, True, False, True, False]]
    with pytest.raises(ConfigError, match="multiples of 4"):
        two_four_mask(torch.ones(2, 6))

"""A channel space keeps the shape of every model output unless told otherwise."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.inputs import flatten_outputs
from hwprune.space import ChannelSpace, Policy


class _FPNLike(nn.Module):
    """Two conv paths summed (lateral + upsampled top-down) as in an FPN. The top-down tensor
    is returned and also feeds the smoothing conv; the smoothed level is returned and also
    feeds an extra level (RetinaNet's P6 from P5). No returned tensor comes from a layer that
    feeds nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.lat1 = nn.Conv2d(8, 12, 1)
        self.lat2 = nn.Conv2d(16, 12, 1)
        self.smooth = nn.Conv2d(12, 12, 3, padding=1)
        self.extra = nn.Conv2d(12, 12, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = F.relu(self.c1(x))
        f2 = F.relu(self.c2(f1))
        top = self.lat2(f2)
        p1 = self.smooth(self.lat1(f1) + F.interpolate(top, scale_factor=2.0))
        p6 = self.extra(F.relu(p1))
        return {"p1": p1, "top": top, "p6": p6}


def _shapes(out) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in flatten_outputs(out)}


def test_every_returned_tensor_keeps_its_shape_when_its_producers_feed_further_layers():
    torch.manual_seed(0)
    model = _FPNLike().eval()
    x = torch.randn(1, 3, 16, 16)
    dense = _shapes(model(x))
    space = ChannelSpace(model, example_inputs=x, min_keep=0.1)
    # The backbone convs still prune; the lateral/top-down sum and the smoothing conv do not.
    assert {u.id for u in space.units} == {"c1", "c2"}
    assert space.output_shapes == dense
    for keep in (0.1, 0.5):
        pruned = space.apply(Policy.uniform(space, keep))
        assert _shapes(pruned(x)) == dense
    reasons = {s.id: s.reason for s in space.skipped}
    assert "output" in reasons["lat1"] and "output" in reasons["smooth"]
    assert {"lat1", "smooth"} <= set(space.output_layers)


def test_allow_output_change_prunes_the_returned_tensors_producers():
    torch.manual_seed(0)
    model = _FPNLike().eval()
    x = torch.randn(1, 3, 16, 16)
    space = ChannelSpace(model, example_inputs=x, allow_output_change=True)
    assert {"lat1", "smooth"} <= {u.id for u in space.units}
    pruned = space.apply(Policy.uniform(space, 0.5))
    assert _shapes(pruned(x))["top"] == (1, 6, 8, 8)


def test_retinanet_fpn_backbone_keeps_its_256_channel_levels():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None
    ).backbone.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        dense = _shapes(model(x))
    assert all(s[1] == 256 for s in dense.values()) and len(dense) == 5
    t0 = time.perf_counter()
    space = ChannelSpace(model, example_inputs=x)
    assert time.perf_counter() - t0 < 300
    assert space.units  # the ResNet body still prunes
    pruned = space.apply(Policy.uniform(space, 0.3)).eval()
    with torch.no_grad():
        assert _shapes(pruned(x)) == dense

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


@pytest.mark.slow
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


def _fidelity(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        target = model(x)

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            out = m(x)
        return -float(sum(((out[k] - target[k]) ** 2).mean() for k in target))

    return score


def test_a_run_reports_every_output_shape_and_the_groups_left_whole(tmp_path):
    import json

    import hwprune

    torch.manual_seed(0)
    model = _FPNLike().eval()
    x = torch.randn(1, 3, 16, 16)
    out = tmp_path / "run"
    result = hwprune.prune(model, example_inputs=x, score=_fidelity(model, x), out=out,
                           budgets=["macs<=80%"], agent="random", evaluations=4)  # fmt: skip
    assert result.all_met
    report = json.loads((out / "report.json").read_text())
    assert report["output_shapes"]["top"] == {"dense": [1, 12, 8, 8], "final": [1, 12, 8, 8]}
    assert set(report["output_shapes"]) == {"p1", "top", "p6"}
    assert {"lat1", "smooth"} <= set(report["left_whole"])
    md = (out / "report.md").read_text()
    assert "| `p6` | 1x12x8x8 | 1x12x8x8 |" in md
    assert "Every output keeps the dense model's shape." in md
    assert "channel groups left whole that keep the model's output shapes: 2" in md


def test_the_final_proof_refuses_a_model_whose_output_shape_changed():
    from hwprune.errors import OutputShapeError
    from hwprune.inputs import ExampleInputs
    from hwprune.run.final import output_shapes_of
    from hwprune.run.load import Loaded

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 1)).eval()
    smaller = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    inputs = ExampleInputs.from_user(torch.randn(1, 3, 8, 8))
    loaded = Loaded(model=dense, example_inputs=inputs, task=None, space=None)
    with pytest.raises(OutputShapeError, match=r"output 'output' has shape \[1, 4, 6, 6\] where "
                       r"the dense model's has \[1, 6, 6, 6\]; allow_output_change"):  # fmt: skip
        output_shapes_of(loaded, smaller, allow_change=False)
    shapes = output_shapes_of(loaded, smaller, allow_change=True)
    assert shapes == {"output": {"dense": [1, 6, 6, 6], "final": [1, 4, 6, 6]}}


def test_the_option_reaches_the_space_through_the_config():
    from hwprune.config import PruneConfig
    from hwprune.run.load import build_space, space_options

    config = PruneConfig(allow_output_change=True, budgets="params<=50%")
    options = space_options(config)
    assert options["allow_output_change"] is True
    x = torch.randn(1, 3, 16, 16)
    space = build_space(_FPNLike().eval(), example_inputs=x, options=options)
    assert space.allow_output_change and "lat1" in {u.id for u in space.units}
    # A model saved before output shapes were kept has no such option: built as it was then.
    old = {k: v for k, v in options.items() if k != "allow_output_change"}
    assert build_space(_FPNLike().eval(), example_inputs=x, options=old).allow_output_change

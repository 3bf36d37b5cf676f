"""Detectors as torchvision users call them: a list of 3-D images in, boxes after non-maximum
suppression out. The list reaches the model as one argument; parity is judged on the tensors
before the step whose output size depends on the input's values, never excused by float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwprune.errors import ExportError
from hwprune.export.final import final_export
from hwprune.inputs import ExampleInputs

torchvision = pytest.importorskip("torchvision")


class TinyDetector(nn.Module):
    """A backbone and a head of fixed-size outputs, then a score threshold and NMS."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Conv2d(16, 5, 1)  # per cell: 4 box offsets and a score

    def forward(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.head(self.backbone(torch.stack(images)))
        cells = out.flatten(2).transpose(1, 2)[0]  # (H*W, 5)
        side = out.shape[-1]
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        centre = torch.stack([xs.flatten(), ys.flatten()], 1).float() * 2.0
        boxes = torch.cat([centre - 2.0 + cells[:, :2], centre + 2.0 + cells[:, 2:4]], 1)
        scores = cells[:, 4].sigmoid()
        keep = scores > 0.4
        boxes, scores = boxes[keep], scores[keep]
        kept = torchvision.ops.nms(boxes, scores, 0.3)
        return {"boxes": boxes[kept], "scores": scores[kept]}


class Untyped(nn.Module):
    def forward(self, a, b):
        return a + b


class TypeComment(nn.Module):
    def forward(self, images):
        # type: (List[Tensor]) -> Tensor
        return torch.stack(images).sum()


def test_a_list_is_the_model_s_one_argument_where_its_forward_takes_a_list():
    a, b = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    # Annotated as torchvision's detectors are (SSD: list[Tensor]; RetinaNet: a type comment).
    for model in (TinyDetector(), TypeComment()):
        inputs = ExampleInputs.from_user([a, b], model=model)
        assert inputs.kind == "list" and inputs.names == ("input_0", "input_1")
        assert inputs.batch == 2
    assert ExampleInputs.from_user(([a, b],)).kind == "list"  # said outright, any model
    # A forward of several tensors keeps taking a list's tensors as its arguments.
    assert ExampleInputs.from_user([a, b], model=Untyped()).kind == "tuple"
    assert ExampleInputs.from_user([a, b]).kind == "tuple"
    rebuilt = ExampleInputs.from_json(ExampleInputs.from_user(([a, b],)).to_json())
    assert rebuilt.kind == "list" and rebuilt.shapes == {"input_0": (3, 8, 8), "input_1": (3, 8, 8)}


def test_boxes_after_nms_are_judged_on_the_backbone_and_head_before_it(tmp_path):
    torch.manual_seed(0)
    model = TinyDetector().eval()
    image = torch.rand(3, 32, 32)
    inputs = ExampleInputs.from_user([image], model=model)
    result = final_export(model, example_inputs=inputs, onnx_path=tmp_path / "det.onnx")
    by_name = {p.name: p for p in result.outputs}
    assert "NonZero" in by_name["boxes"].follows and "NonZero" in by_name["scores"].follows
    before = [p for p in result.outputs if p.follows is None]
    assert {p.name.split("[")[0] for p in before} == {"backbone", "head"}
    assert all(p.rel_diff <= 1e-3 for p in before)
    assert result.max_rel_diff <= 1e-3


def test_a_post_processing_layer_that_cannot_be_compared_refuses_the_export(tmp_path):
    class ScoresAfterNms(TinyDetector):
        def __init__(self) -> None:
            super().__init__()
            self.rescore = nn.Linear(4, 1)  # runs on the kept boxes only

        def forward(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            out = super().forward(images)
            return {"boxes": out["boxes"], "scores": self.rescore(out["boxes"])}

    torch.manual_seed(0)
    model = ScoresAfterNms().eval()
    inputs = ExampleInputs.from_user([torch.rand(3, 32, 32)], model=model)
    with pytest.raises(ExportError, match=r"the layer 'rescore' runs after that step.*cannot be "
                       "checked") as info:  # fmt: skip
        final_export(model, example_inputs=inputs, onnx_path=tmp_path / "det.onnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "det.onnx").exists()


def test_flops_of_a_detector_name_the_tensor_whose_size_follows_nms():
    import oracles
    from hwprune.export import export_onnx

    class CountsAfterNms(TinyDetector):
        def __init__(self) -> None:
            super().__init__()
            self.rescore = nn.Linear(4, 1)

        def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
            return self.rescore(super().forward(images)["boxes"])

    torch.manual_seed(0)
    model = CountsAfterNms().eval()
    inputs = ExampleInputs.from_user([torch.rand(3, 32, 32)], model=model)
    data = export_onnx(model, example_inputs=inputs)
    with pytest.raises(oracles.MeasurementFailedError, match="depends on the input's values: it "
                       "follows the NonZero node") as info:  # fmt: skip
        oracles.get_oracle("flops").measure(data, input_shapes=inputs.shapes)
    assert "timed oracle" in str(info.value) and "\n" not in str(info.value)


def _torchvision_detector(name: str) -> nn.Module:
    ctor = getattr(torchvision.models.detection, name)
    model = ctor(weights=None, weights_backbone=None).eval()
    # Small images keep it fast: SSDlite would resize every image to 320x320.
    model.transform.min_size, model.transform.max_size = (128,), 128
    if model.transform.fixed_size:
        model.transform.fixed_size = (128, 128)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_whole_torchvision_detectors_prune_with_a_list_of_images(tmp_path, name):
    import json

    import hwprune

    torch.manual_seed(0)
    model = _torchvision_detector(name)
    image = torch.rand(3, 128, 128)

    def head(m: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return m.head(list(m.backbone(image[None]).values()))

    dense = head(model)

    def score(m: nn.Module) -> float:
        out = head(m)
        return -float(sum(((out[k] - dense[k]) ** 2).mean() for k in dense))

    result = hwprune.prune(model, example_inputs=[image], score=score, out=tmp_path / "run",
                           budgets=["macs<=85%"], agent="random", evaluations=2)  # fmt: skip
    assert result.all_met
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["output_shapes"]  # the detections' shapes are listed
    assert (tmp_path / "run" / "model.onnx").is_file()


@pytest.mark.slow
def test_faster_rcnn_is_refused_in_one_line_where_its_box_head_follows_the_proposals(tmp_path):
    torch.manual_seed(0)
    model = _torchvision_detector("fasterrcnn_mobilenet_v3_large_fpn")
    inputs = ExampleInputs.from_user([torch.rand(3, 128, 128)], model=model)
    with pytest.raises(ExportError, match=r"the layer 'roi_heads\.box_head\.fc6' runs after that "
                       "step") as info:  # fmt: skip
        final_export(model, example_inputs=inputs, onnx_path=tmp_path / "frcnn.onnx")
    assert "\n" not in str(info.value)


def test_a_detection_count_that_changes_after_pruning_is_no_changed_output_shape(tmp_path):
    import json

    import hwprune
    from hwprune.space import ChannelSpace, Policy

    torch.manual_seed(0)
    model = TinyDetector().eval()
    image = torch.rand(3, 32, 32)
    space = ChannelSpace(model, example_inputs=[image])
    assert [u.id for u in space.units] and not space.skipped  # the backbone stays prunable
    with torch.no_grad():
        dense = model([image])["boxes"].shape
        small = space.apply(Policy.uniform(space, 0.25))([image])["boxes"].shape
    assert small[0] != dense[0] and small[1:] == dense[1:]  # another count, same box layout

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(m.head(m.backbone(image[None])).pow(2).mean())

    result = hwprune.prune(model, example_inputs=[image], score=score, out=tmp_path / "run",
                           budgets=["macs<=50%"], agent="uniform", evaluations=3)  # fmt: skip
    assert result.all_met
    shapes = json.loads((tmp_path / "run" / "report.json").read_text())["output_shapes"]
    assert shapes["boxes"]["dense"][1:] == shapes["boxes"]["final"][1:] == [4]


def test_only_the_count_of_detections_may_change_not_their_layout():
    from hwprune.export.before_steps import data_dependent_dims, same_fixed_dims

    class Features(TinyDetector):
        """Each kept detection carries its backbone feature: (count, channels)."""

        def forward(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            feats = self.backbone(torch.stack(images))
            scores = self.head(feats)[0, 4].flatten().sigmoid()
            keep = torch.nonzero(scores > 0.4).flatten()
            return {"features": feats[0].flatten(1).t()[keep], "map": feats}

    torch.manual_seed(0)
    model = Features().eval()
    inputs = ExampleInputs.from_user([torch.rand(3, 32, 32)], model=model)
    free = data_dependent_dims(model, inputs)
    assert free == {"features": frozenset({0})}  # "map" has a fixed size: compared whole
    assert same_fixed_dims((120, 16), (7, 16), free["features"])
    assert not same_fixed_dims((120, 16), (120, 9), free["features"])
    assert not same_fixed_dims((120, 16), (120, 16, 1), free["features"])
    assert not same_fixed_dims((1, 16, 16, 16), (1, 9, 16, 16), free.get("map", frozenset()))

"""ExampleInputs and flatten_outputs: the forms a model's inputs and outputs take, and their names."""

from __future__ import annotations

import pytest
import torch

from hwprune.errors import ConfigError
from hwprune.inputs import ExampleInputs, flatten_outputs


class _TwoArgs(torch.nn.Module):
    def forward(self, a, b):
        return a.sum() + b.sum()


class _Named(torch.nn.Module):
    def forward(self, image, tokens):
        return image.mean() + tokens.float().mean()


def test_single_tensor_tuple_and_dict_are_named_and_called_their_way():
    x = torch.randn(2, 3, 8, 8)
    single = ExampleInputs.from_user(x)
    assert single.kind == "tensor" and single.names == ("input",)
    assert single.shapes == {"input": (2, 3, 8, 8)} and single.batch == 2

    pair = ExampleInputs.from_user((torch.ones(1, 4), torch.ones(1, 2)))
    assert pair.names == ("input_0", "input_1")
    assert float(pair.call(_TwoArgs())) == 6.0

    named = ExampleInputs.from_user({"image": torch.zeros(1, 3), "tokens": torch.arange(4)})
    assert named.names == ("image", "tokens")
    assert named.shapes == {"image": (1, 3), "tokens": (4,)}
    assert float(named.call(_Named())) == pytest.approx(1.5)
    assert ExampleInputs.from_user(named) is named


@pytest.mark.parametrize(
    ("obj", "said"),
    [
        ("a string", "got str"),
        ([], "empty list"),
        ((torch.ones(1), 3), "holding int"),
        ({"x": torch.ones(1), "y": [1]}, "y: list"),
        ({"not valid": torch.ones(1)}, "not a Python identifier"),
    ],
)
def test_anything_else_is_refused_in_one_sentence(obj, said):
    with pytest.raises(ConfigError, match=f"tensor, a tuple/list of tensors or a dict.*{said}"):
        ExampleInputs.from_user(obj)


def test_random_keeps_shapes_dtypes_and_integer_ranges():
    tokens = torch.tensor([[3, 7, 5, 9]])
    inputs = ExampleInputs.from_user({"image": torch.randn(1, 3, 4, 4), "tokens": tokens})
    a, b = inputs.random(1), inputs.random(2)
    assert a.shapes == inputs.shapes and a.dtypes == {"image": "float32", "tokens": "int64"}
    assert not torch.equal(a.tensors[0], b.tensors[0])  # new values
    assert torch.equal(a.tensors[0], inputs.random(1).tensors[0])  # seeded
    drawn = torch.cat([inputs.random(s).tensors[1] for s in range(20)])
    assert int(drawn.min()) >= 3 and int(drawn.max()) <= 9 and len(drawn.unique()) > 2


def test_json_round_trip_has_no_values_and_rebuilds_the_form():
    inputs = ExampleInputs.from_user((torch.randn(1, 3, 4, 4), torch.tensor([[2, 4]])))
    data = inputs.to_json()
    assert data == {
        "kind": "tuple",
        "names": ["input_0", "input_1"],
        "shapes": [[1, 3, 4, 4], [1, 2]],
        "dtypes": ["float32", "int64"],
        "ranges": [None, [2, 4]],
    }
    back = ExampleInputs.from_json(data)
    assert back.kind == "tuple" and back.shapes == inputs.shapes and back.dtypes == inputs.dtypes
    assert 2 <= int(back.tensors[1].min()) <= int(back.tensors[1].max()) <= 4
    with pytest.raises(ConfigError, match="need kind, names, shapes and dtypes"):
        ExampleInputs.from_json({"names": ["x"]})


def test_from_shape_is_todays_single_input():
    inputs = ExampleInputs.from_shape((1, 3, 32, 32))
    assert inputs.kind == "tensor" and inputs.first_shape == (1, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(inputs.tensors[0], torch.randn(1, 3, 32, 32, generator=g))
    with pytest.raises(ConfigError, match="positive sizes"):
        ExampleInputs.from_shape((1, 0, 4))


def test_flatten_outputs_names_tensors_tuples_and_dicts():
    t = torch.ones(2)
    assert [n for n, _ in flatten_outputs(t)] == ["output"]
    assert [n for n, _ in flatten_outputs(t, single="logits")] == ["logits"]
    nested = (t, [t * 2, (t * 3, None)], 7)
    names = [n for n, _ in flatten_outputs(nested)]
    assert names == ["output_0", "output_1", "output_2"]
    assert float(flatten_outputs(nested)[2][1][0]) == 3.0
    named = flatten_outputs({"logits": t, "boxes": (t, t * 2)})
    assert [n for n, _ in named] == ["logits", "boxes_0", "boxes_1"]
    with pytest.raises(ConfigError, match="got str"):
        flatten_outputs("no")

"""Integer inputs are drawn from the range the model's metadata names, and the static counts
see through shape arithmetic that ONNX's own inference cannot follow."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import oracles
from oracles.errors import MeasurementFailedError
from oracles.model import INPUT_RANGES_KEY, input_ranges, random_feeds, set_input_ranges
from oracles.onnx_graph import count_macs
from tests.oracles.onnx_builders import make_model

FAST = "onnxruntime:cpu?threads=1&warmup=1&min_runs=3&max_runs=3&min_time=0&sessions=1"


def _embedding(rows: int) -> onnx.ModelProto:
    """Token type ids (1x16 int64) into a table of ``rows`` rows, as BERT's type embedding."""
    table = numpy_helper.from_array(np.ones((rows, 8), np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0)]
    return make_model(nodes, inputs=[("ids", [1, 16], TensorProto.INT64)],
                      outputs=[("emb", TensorProto.FLOAT)], initializers=[table])  # fmt: skip


def test_onnxruntime_draws_integer_inputs_within_the_named_range():
    model = _embedding(2)
    # Without a range, ids 0-7 index past a 2-row table: ONNX Runtime refuses the run.
    with pytest.raises(MeasurementFailedError, match="indices element out of data bounds"):
        oracles.get_oracle(FAST).measure(model)
    set_input_ranges(model, {"ids": (0, 1)})
    assert input_ranges(model) == {"ids": (0, 1)}
    assert oracles.get_oracle(FAST).measure(model).value > 0
    # The range rides in the bytes (a remote oracle reads it) and changes no cache key.
    assert input_ranges(onnx.load_from_string(model.SerializeToString())) == {"ids": (0, 1)}
    oracle = oracles.get_oracle(FAST)
    assert oracle.model_key(model) == oracle.model_key(_embedding(2))


def test_random_feeds_keep_to_the_range_and_an_unreadable_entry_is_ignored():
    (feed,) = random_feeds([("ids", np.int64, (4, 64))], count=1, ranges={"ids": (5, 9)})
    assert feed["ids"].min() >= 5 and feed["ids"].max() <= 9 and feed["ids"].max() > 5
    model = _embedding(2)
    entry = model.metadata_props.add()
    entry.key, entry.value = INPUT_RANGES_KEY, "not json"
    assert input_ranges(model) == {}


def test_flops_see_an_expand_whose_target_is_computed_from_constants():
    # BERT's default token type ids: a (1, 64) buffer expanded to Where(Equal(...)) of
    # constants; ONNX's data propagation stops at Where, and the MatMul after it lost its
    # batch dimension (a MeasurementFailedError out of the flops oracle).
    const = numpy_helper.from_array(np.zeros((1, 16), np.float32), "buf")
    nodes = [
        helper.make_node(
            "Constant", [], ["two"], value=numpy_helper.from_array(np.array([2], np.int64))
        ),  # fmt: skip
        helper.make_node(
            "ConstantOfShape",
            ["two"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1], np.int64)),
        ),  # fmt: skip
        helper.make_node(
            "Constant", [], ["minus"], value=numpy_helper.from_array(np.array([-1, -1], np.int64))
        ),  # fmt: skip
        helper.make_node("Mul", ["ones", "minus"], ["neg"]),
        helper.make_node(
            "Constant", [], ["size"], value=numpy_helper.from_array(np.array([3, 16], np.int64))
        ),  # fmt: skip
        helper.make_node("Equal", ["size", "neg"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "size"], ["target"]),
        helper.make_node("Expand", ["buf", "target"], ["b"]),
        helper.make_node("Unsqueeze", ["b", "axis"], ["b3"]),
        helper.make_node("Add", ["x", "b3"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    inits = [const, numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(np.ones((8, 4), np.float32), "w")]  # fmt: skip
    m = make_model(nodes, inputs=[("x", ["batch", 16, 8], TensorProto.FLOAT)],
                   outputs=[("y", TensorProto.FLOAT)], initializers=inits)  # fmt: skip
    # 3 x 16 rows of 4 outputs, 8 MACs each.
    assert count_macs(m, {"x": (3, 16, 8)}).total == 3 * 16 * 4 * 8
    flops = oracles.get_oracle("flops").measure(m, input_shapes={"x": (3, 16, 8)})
    assert flops.value == 3 * 16 * 4 * 8


def _windowed(src: str, dst: str, axis_size: int, rows: int) -> list:
    """``dst`` = ``src`` reshaped to (rows, -1), ``rows`` chosen by Where(Equal(...)) on the
    size of ``src``'s axis 1: data propagation stops at Where, so the shape is found only by
    folding once ``src``'s own shape is known."""

    def const(name: str, value: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name],
                                value=numpy_helper.from_array(np.array(value, np.int64)))  # fmt: skip

    return [
        helper.make_node("Shape", [src], [f"{dst}_shape"]),
        const(f"{dst}_one", [1]),
        helper.make_node("Gather", [f"{dst}_shape", f"{dst}_one"], [f"{dst}_n"], axis=0),
        const(f"{dst}_want", [axis_size]),
        helper.make_node("Equal", [f"{dst}_n", f"{dst}_want"], [f"{dst}_eq"]),
        const(f"{dst}_rows", [rows]),
        const(f"{dst}_none", [1]),
        helper.make_node("Where", [f"{dst}_eq", f"{dst}_rows", f"{dst}_none"], [f"{dst}_r"]),
        const(f"{dst}_rest", [-1]),
        helper.make_node("Concat", [f"{dst}_r", f"{dst}_rest"], [f"{dst}_target"], axis=0),
        helper.make_node("Reshape", [src, f"{dst}_target"], [dst]),
    ]


def test_flops_see_a_shape_read_from_a_tensor_sized_only_by_folding():
    # A Swin block's window partition: a reshape whose target is computed from the input's
    # shape through Where, then a second one computed from the first's output. The first
    # folding round sizes the first reshape; its output's shape folds in the next round.
    nodes = [*_windowed("x", "y", 6, 3), *_windowed("y", "z", 16, 12),
             helper.make_node("MatMul", ["z", "w"], ["out"])]  # fmt: skip
    m = make_model(nodes, inputs=[("x", [2, 6, 4], TensorProto.FLOAT)],
                   outputs=[("out", TensorProto.FLOAT)],
                   initializers=[numpy_helper.from_array(np.ones((4, 5), np.float32), "w")])  # fmt: skip
    # x (2, 6, 4) -> y (3, 16) -> z (12, 4) -> out (12, 5): 12 * 5 outputs of 4 MACs each.
    assert count_macs(m).total == 12 * 5 * 4

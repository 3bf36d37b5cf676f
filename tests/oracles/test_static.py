"""The static ONNX oracles: parameters, MACs, weight bytes and peak memory, checked by hand and against torch."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import conv_chain, export_torch, make_model

import oracles
from oracles.errors import MeasurementFailedError, ModelInputError, OracleSpecError
from oracles.onnx_graph import count_macs, count_params, peak_memory, weight_bytes
from oracles.static import FlopsOracle, ParamsOracle, PeakMemoryOracle, WeightMemoryOracle

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

# conv_chain(channels=(8, 16), size=16), worked out on paper.
CHAIN_PARAMS = (8 * 3 * 9 + 8) + (16 * 8 * 9 + 16) + (10 * 16 + 10)  # 1562
CHAIN_MACS = 8 * 16 * 16 * 3 * 9 + 16 * 16 * 16 * 8 * 9 + 10 * 16  # 350368
CHAIN_ELEMENTWISE = 8 * 256 + 16 * 256 + 16  # two Relu outputs and the pooled vector


def torch_macs(module, shape) -> int:
    """MACs torch's own FlopCounterMode sees (it counts conv and matmul FLOPs as 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(torch.randn(*shape))
    return counter.get_total_flops() // 2


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return (
        model,
        export_torch(model, (1, 3, 224, 224)),
        export_torch(model, (1, 3, 224, 224), fold=False),
    )


@pytest.fixture(scope="module")
def mobilenet_v2():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    return model, export_torch(model, (1, 3, 224, 224), fold=False)


# --------------------------------------------------------------------------- params


def test_params_of_hand_built_chain():
    m = conv_chain()
    assert count_params(m) == CHAIN_PARAMS
    meas = ParamsOracle().measure(m)
    assert (meas.value, meas.unit, meas.quantity, meas.statistic) == (
        CHAIN_PARAMS,
        "params",
        "params",
        "exact",
    )


def test_params_match_torch_without_batch_norm():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, groups=4),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(32, 32, 3, groups=32, bias=False),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 5 * 5, 7),
    )
    onnx_bytes = export_torch(net, (1, 3, 16, 16))
    assert count_params(onnx_bytes) == sum(p.numel() for p in net.parameters())
    assert count_macs(onnx_bytes).total == torch_macs(net, (1, 3, 16, 16))


def test_params_with_batch_norm_kept_and_folded(resnet18):
    model, folded, kept = resnet18
    torch_params = sum(p.numel() for p in model.parameters())
    assert torch_params == 11_689_512
    # BN survives: its scale and shift count, running statistics do not.
    assert count_params(kept) == torch_params
    # BN folded into bias-free convs: 2 BN parameters per channel become 1 conv bias.
    bn_channels = sum(
        m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert count_params(folded) == torch_params - bn_channels


def test_params_with_batch_norm_mobilenet(mobilenet_v2):
    model, kept = mobilenet_v2
    assert count_params(kept) == sum(p.numel() for p in model.parameters())


def test_shared_and_aliased_initializers_count_per_reader():
    """A tensor read by two convs, and an Identity copy, count once per reader; stored once."""
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [
        helper.make_node("Identity", ["w"], ["w_copy"]),
        helper.make_node("Conv", ["x", "w", "b"], ["c1"]),
        helper.make_node("Conv", ["c1", "w", "b"], ["c2"]),
        helper.make_node("Conv", ["c2", "w_copy"], ["c3"]),
    ]
    m = make_model(
        nodes,
        inputs=[("x", [1, 4, 2, 2], TensorProto.FLOAT)],
        outputs=[("c3", TensorProto.FLOAT)],
        initializers=[w, b],
    )
    assert count_params(m) == 3 * 16 + 2 * 4
    assert weight_bytes(m) == (16 + 4) * 4


def test_scalar_constants_and_clip_bounds_are_not_params():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    scale = numpy_helper.from_array(np.full(3, 2.0, np.float32), "scale")  # per-channel: a weight
    nodes = [
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(0))),
        helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.float32(6))),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Mul", ["y", "half"], ["h"]),
        helper.make_node("Mul", ["h", "scale"], ["s"]),
        helper.make_node("Clip", ["s", "lo", "hi"], ["out"]),
    ]
    m = make_model(
        nodes,
        inputs=[("x", [1, 2], TensorProto.FLOAT)],
        outputs=[("out", TensorProto.FLOAT)],
        initializers=[w, scale],
    )
    assert count_params(m) == 6 + 3


def test_nonzero_params_and_value_sensitive_cache(tmp_path):
    dense = conv_chain()
    sparse = onnx.ModelProto()
    sparse.CopyFrom(dense)
    w0 = next(t for t in sparse.graph.initializer if t.name == "w0")
    arr = numpy_helper.to_array(w0).copy()
    arr.flat[:50] = 0.0
    w0.CopyFrom(numpy_helper.from_array(arr, "w0"))

    assert count_params(sparse) == CHAIN_PARAMS
    assert count_params(sparse, nonzero=True) == CHAIN_PARAMS - 50
    nz = oracles.get_oracle("params?nonzero=1")
    assert nz == ParamsOracle(nonzero=True)
    assert nz.model_key(dense) != nz.model_key(sparse)
    assert ParamsOracle().model_key(dense) == ParamsOracle().model_key(sparse)

    cache = oracles.MeasurementCache(tmp_path / "c.sqlite")
    first = oracles.measure(nz, dense, cache=cache)
    second = oracles.measure(nz, sparse, cache=cache)
    assert (first.value, first.cached) == (CHAIN_PARAMS, False)
    assert (second.value, second.cached) == (CHAIN_PARAMS - 50, False)
    assert oracles.measure(nz, sparse, cache=cache).cached


def test_params_need_no_input_shapes():
    dynamic = conv_chain(batch="N")
    assert ParamsOracle().measure(dynamic).value == CHAIN_PARAMS
    assert WeightMemoryOracle().measure(dynamic).value == CHAIN_PARAMS * 4


# --------------------------------------------------------------------------- MACs


def test_macs_of_hand_built_chain():
    m = conv_chain()
    count = count_macs(m)
    assert count.total == CHAIN_MACS
    assert count.by_op == {"Conv": CHAIN_MACS - 160, "Gemm": 160}
    with_ew = count_macs(m, elementwise=True)
    assert with_ew.total == CHAIN_MACS + CHAIN_ELEMENTWISE
    assert with_ew.by_op["Relu"] == 8 * 256 + 16 * 256


def _one_node(node, x_shape, inits, out="y"):
    return make_model(
        [node],
        inputs=[("x", x_shape, TensorProto.FLOAT)],
        outputs=[(out, TensorProto.FLOAT)],
        initializers=[numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in inits],
    )


@pytest.mark.parametrize(
    ("node", "x_shape", "inits", "expected"),
    [
        # grouped: 16 outputs of 8x8, each (8/4)*3*3 MACs
        (
            helper.make_node("Conv", ["x", "w"], ["y"], group=4),
            [1, 8, 10, 10],
            [("w", (16, 2, 3, 3))],
            16 * 64 * 2 * 9,
        ),
        # depthwise, stride 2, pad 1: 8 channels of 5x5, 9 MACs each
        (
            helper.make_node("Conv", ["x", "w"], ["y"], group=8, strides=[2, 2], pads=[1] * 4),
            [2, 8, 10, 10],
            [("w", (8, 1, 3, 3))],
            2 * 8 * 25 * 9,
        ),
        # transposed: every input element scatters into Cout*k*k outputs
        (
            helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2]),
            [1, 4, 5, 5],
            [("w", (4, 6, 3, 3))],
            4 * 25 * 6 * 9,
        ),
        # batched MatMul with broadcast: output (3, 2, 4, 6), inner dim 5
        (
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            [3, 1, 4, 5],
            [("w", (2, 5, 6))],
            3 * 2 * 4 * 6 * 5,
        ),
        # Gemm with transA: A is (K=5, M=4)
        (
            helper.make_node("Gemm", ["x", "w"], ["y"], transA=1),
            [5, 4],
            [("w", (5, 3))],
            4 * 3 * 5,
        ),
    ],
    ids=["grouped", "depthwise", "conv-transpose", "batched-matmul", "gemm-transA"],
)
def test_macs_per_operator(node, x_shape, inits, expected):
    assert count_macs(_one_node(node, x_shape, inits)).total == expected


def test_macs_match_torch_counter_and_published_resnet18(resnet18):
    model, folded, kept = resnet18
    macs = count_macs(folded).total
    assert macs == torch_macs(model, (1, 3, 224, 224))
    assert macs == pytest.approx(1.814e9, rel=0.02)
    assert count_macs(kept).total == macs  # BN costs nothing unless elementwise is on
    assert count_macs(kept, elementwise=True).total > macs


def test_macs_match_published_mobilenet_v2(mobilenet_v2):
    model, kept = mobilenet_v2
    macs = count_macs(kept).total
    assert macs == torch_macs(model, (1, 3, 224, 224))
    assert macs == pytest.approx(0.300e9, rel=0.02)


@pytest.mark.slow
def test_macs_and_params_of_vgg16():
    """vgg16's ONNX is ~550 MB; published: 15.47 GMACs, 138.36 M parameters."""
    model = torchvision.models.vgg16(weights=None).eval()
    onnx_bytes = export_torch(model, (1, 3, 224, 224))
    assert count_macs(onnx_bytes).total == pytest.approx(15.47e9, rel=0.02)
    assert count_params(onnx_bytes) == sum(p.numel() for p in model.parameters())


def test_flops_oracle_batch_and_dynamic_inputs():
    dynamic = conv_chain(batch="N")
    with pytest.raises(ModelInputError, match="'input'"):
        FlopsOracle().measure(dynamic)
    m2 = FlopsOracle().measure(dynamic, input_shapes={"input": (2, 3, 16, 16)})
    assert (m2.value, m2.batch, m2.unit) == (2 * CHAIN_MACS, 2, "MAC")
    m4 = oracles.get_oracle("flops?batch=4").measure(dynamic)
    assert m4.value == 4 * CHAIN_MACS
    assert m4.extra["by_op"]["Gemm"] == 4 * 160
    with pytest.raises(OracleSpecError, match="batch"):
        oracles.get_oracle("flops?batch=0")


def test_unknown_shape_fails_with_the_tensor_named():
    nodes = [
        helper.make_node("NonZero", ["x"], ["idx"]),
        helper.make_node("Cast", ["idx"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["ft"]),
        helper.make_node("MatMul", ["ft", "w"], ["y"]),
    ]
    m = make_model(
        nodes,
        inputs=[("x", [1, 8], TensorProto.FLOAT)],
        outputs=[("y", TensorProto.FLOAT)],
        initializers=[numpy_helper.from_array(np.ones((2, 3), np.float32), "w")],
    )
    # One line that names the tensor, the operator it follows and what to measure instead.
    with pytest.raises(MeasurementFailedError, match="'ft'|'y'") as info:
        count_macs(m)
    assert "depends on the input's values: it follows the NonZero node" in str(info.value)
    assert "timed oracle" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MeasurementFailedError, match="'idx'.*depends on the input's values"):
        peak_memory(m)


# --------------------------------------------------------------------------- memory


def test_weight_memory_counts_dtype_bytes_and_bn_statistics():
    m = conv_chain()
    assert WeightMemoryOracle().measure(m).value == CHAIN_PARAMS * 4
    half = onnx.ModelProto()
    half.CopyFrom(m)
    for t in half.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    assert weight_bytes(half) == CHAIN_PARAMS * 2

    stats = [numpy_helper.from_array(np.ones(4, np.float32), n) for n in ("g", "b", "mu", "var")]
    bn = make_model(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "mu", "var"], ["y"])],
        inputs=[("x", [1, 4, 2, 2], TensorProto.FLOAT)],
        outputs=[("y", TensorProto.FLOAT)],
        initializers=stats,
    )
    assert count_params(bn) == 8  # scale and shift
    assert weight_bytes(bn) == 16 * 4  # the runtime also holds the running statistics


def test_peak_memory_of_chain_by_hand():
    # Live bytes (input 3072 held throughout): conv0 +8192, relu0 +8192 (conv0 freed after),
    # conv1 +16384 (relu0 freed after), relu1 +16384 -> peak 3072 + 16384 + 16384 = 35840.
    pm = PeakMemoryOracle().measure(conv_chain())
    assert pm.extra["activation_bytes"] == 3072 + 2 * 16384
    assert pm.extra["weight_bytes"] == CHAIN_PARAMS * 4
    assert pm.value == 3072 + 2 * 16384 + CHAIN_PARAMS * 4
    assert (pm.quantity, pm.unit, pm.extra["peak_node"]) == ("memory", "bytes", "Relu#3")


def _chain(ops):
    """x (1,4,8,8) through single-input ops; each op reads the previous output (a 1024-byte tensor)."""
    nodes, prev = [], "x"
    for i, (op, extra_inputs) in enumerate(ops):
        nodes.append(helper.make_node(op, [prev, *extra_inputs], [f"t{i}"]))
        prev = f"t{i}"
    return nodes, prev


def test_peak_memory_liveness_branch_and_views():
    shape = [1, 4, 8, 8]
    one = 4 * 64 * 4
    # Straight chain: at most input + two activations live.
    nodes, last = _chain([("Relu", []), ("Relu", []), ("Relu", [])])
    m = make_model(nodes, inputs=[("x", shape, 1)], outputs=[(last, 1)])
    assert peak_memory(m).activation_bytes == 3 * one

    # Residual: the skip tensor t0 stays live until the Add.
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["out"]),
    ]
    m = make_model(nodes, inputs=[("x", shape, 1)], outputs=[("out", 1)])
    assert peak_memory(m).activation_bytes == 4 * one

    # Reshape is a view: it allocates nothing but keeps its source alive.
    target = numpy_helper.from_array(np.array([1, 256], np.int64), "target")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Reshape", ["a", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["out"]),
    ]
    m = make_model(nodes, inputs=[("x", shape, 1)], outputs=[("out", 1)], initializers=[target])
    pm = peak_memory(m)
    assert pm.activation_bytes == 3 * one
    assert pm.weight_bytes == 16


def test_peak_memory_scales_with_batch_and_ignores_node_order():
    m = conv_chain(batch="N")
    one = PeakMemoryOracle(batch=1).measure(m)
    two = oracles.get_oracle("peak-memory?batch=2").measure(m)
    assert two.extra["activation_bytes"] == 2 * one.extra["activation_bytes"]
    assert two.value - two.extra["activation_bytes"] == CHAIN_PARAMS * 4

    shuffled = conv_chain()
    nodes = list(shuffled.graph.node)
    random.Random(1).shuffle(nodes)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)
    assert peak_memory(shuffled).total_bytes == peak_memory(conv_chain()).total_bytes
    assert count_macs(shuffled).total == CHAIN_MACS


def test_peak_memory_resnet18(resnet18):
    _, folded, _ = resnet18
    pm = peak_memory(folded)
    # First conv output and its Relu (64x112x112 floats each) plus the input image.
    assert pm.activation_bytes == 2 * 64 * 112 * 112 * 4 + 3 * 224 * 224 * 4
    assert pm.weight_bytes == weight_bytes(folded)


# --------------------------------------------------------------------------- oracles


@pytest.mark.parametrize(
    "spec",
    [
        "params",
        "params?nonzero=1",
        "flops",
        "flops?batch=2&elementwise=1",
        "weight-memory",
        "peak-memory?batch=3",
    ],
)
def test_static_specs_round_trip(spec):
    o = oracles.get_oracle(spec)
    assert o.spec == spec
    assert oracles.get_oracle(o.spec) == o


def test_static_oracles_through_the_cache(tmp_path):
    cache = oracles.MeasurementCache(tmp_path / "c.sqlite")
    m = conv_chain()
    for spec, value in [
        ("params", CHAIN_PARAMS),
        ("flops", CHAIN_MACS),
        ("weight-memory", CHAIN_PARAMS * 4),
    ]:
        o = oracles.get_oracle(spec)
        first = oracles.measure(o, m, cache=cache)
        again = oracles.measure(o, m, cache=cache)
        assert (first.value, first.cached, again.value, again.cached) == (value, False, value, True)

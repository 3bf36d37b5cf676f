"""Small ONNX models for the oracle tests: hand-built with onnx.helper, or exported from torch.

Hand-built models have counts that can be worked out on paper; exported
models come from the real torch exporter (the TorchScript one, ``dynamo=False``:
torch 2.14's default dynamo exporter needs onnxscript, which is not installed).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def make_model(
    nodes: Sequence[onnx.NodeProto],
    *,
    inputs: Sequence[tuple[str, Sequence[int | str], int]],
    outputs: Sequence[tuple[str, int]],
    initializers: Sequence[onnx.TensorProto] = (),
    name: str = "test",
) -> onnx.ModelProto:
    """A ModelProto from nodes, (name, shape, dtype) inputs and (name, dtype) outputs.

    Output shapes are left for shape inference to find.
    """
    graph = helper.make_graph(
        list(nodes),
        name,
        [helper.make_tensor_value_info(n, t, list(s)) for n, s, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def conv_chain(
    *,
    channels: Sequence[int] = (8, 16),
    size: int = 16,
    batch: int | str = 1,
    seed: int = 0,
    classes: int = 10,
) -> onnx.ModelProto:
    """Conv3x3(pad 1)+bias -> Relu, repeated, then global pool, flatten, Gemm classifier.

    Weights are random normal (seeded), so no two tensors are equal.
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    prev, cin = "input", 3
    for i, cout in enumerate(channels):
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1])
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, cin = f"r{i}", cout
    fc = rng.standard_normal((classes, cin)).astype(np.float32)
    fcb = rng.standard_normal(classes).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(fcb, "fcb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
    ]
    return make_model(
        nodes,
        inputs=[("input", [batch, 3, size, size], TensorProto.FLOAT)],
        outputs=[("logits", TensorProto.FLOAT)],
        initializers=inits,
        name="conv_chain",
    )


def export_torch(module, shape: Sequence[int], *, fold: bool = True) -> bytes:
    """ONNX bytes of a torch module in eval mode, exported by the TorchScript exporter.

    ``fold=False`` turns constant folding off, which keeps BatchNormalization
    nodes instead of folding them into the preceding Conv.
    """
    import torch

    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(*shape),),
            buf,
            dynamo=False,
            do_constant_folding=fold,
            input_names=["input"],
            output_names=["output"],
        )
    return buf.getvalue()

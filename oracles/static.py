"""Exact counts read from an ONNX graph: parameters, multiply-accumulates, weight and peak memory.

These oracles run nothing: they read the graph, infer every tensor's shape
with ``onnx.shape_inference`` and count. They need only the ``onnx`` package
(no torch, no runtime), their values do not depend on the machine, and the
same model always gives the same number (``statistic="exact"``). The counting
itself lives in ``oracles.onnx_graph`` (``count_params``, ``count_macs``,
``weight_bytes``, ``peak_memory``), usable without building an oracle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from oracles._onnx_wire import load_onnx_structure
from oracles.base import Measurement, Oracle
from oracles.errors import OracleSpecError
from oracles.model import load_onnx, structure_key
from oracles.onnx_graph import Shapes, count_macs, count_params, peak_memory, weight_bytes

__all__ = ["ParamsOracle", "FlopsOracle", "WeightMemoryOracle", "PeakMemoryOracle"]

# --------------------------------------------------------------------------- oracles


def _exact(
    oracle: Oracle,
    value: float,
    *,
    started: float,
    input_shapes: Shapes | None = None,
    extra: dict[str, Any] | None = None,
) -> Measurement:
    """The Measurement of a count ``value`` that took since ``started`` (``perf_counter``)."""
    first = next(iter(input_shapes.values()), ()) if input_shapes else ()
    return Measurement(
        quantity=oracle.quantity,
        value=float(value),
        unit=oracle.unit,
        oracle=oracle.spec,
        backend="onnx",
        device=oracle.device,
        batch=first[0] if first else None,
        seconds=time.perf_counter() - started,
        extra=extra or {},
    )


def _check_batch(oracle: Oracle, batch: int | None) -> None:
    if batch is not None and batch < 1:
        raise OracleSpecError(
            f"oracle {oracle.name!r}: setting 'batch' must be a positive integer, got {batch}"
        )


@dataclass(frozen=True)
class ParamsOracle(Oracle):
    """Counts the learned weight elements stored in an ONNX model.

    Definition: every constant tensor of the main graph (initializer or
    Constant-node value) that a node reads as a learned weight counts with
    all its elements:

    - float tensors in a weight slot: Conv/ConvTranspose weight and bias,
      Gemm/MatMul operands, the scale and bias of BatchNormalization and the
      other normalisations, the PReLU slope;
    - BatchNormalization's running mean and variance do *not* count (they are
      buffers in torch, not parameters), so a model whose batch norms survive
      export has exactly ``sum(p.numel() for p in model.parameters())``; when
      the exporter folds batch norm into the preceding Conv (torch's exporter
      does in eval mode), the BN scale and shift disappear and the folded
      Conv bias counts instead, so the count drops by one per folded channel
      for a conv that had no bias;
    - float tensors elsewhere (Add, Mul, ...) count when they have more than
      one element (a bias, a layer scale); one-element constants (0.5, eps,
      6.0), Clip bounds, pad values, resize scales, and tensors read only for
      their shape (by Shape, Size) do not;
    - integer tensors count only as the quantised weight of DequantizeLinear;
    - a tensor counts once for every node that reads it as a weight, so the
      count depends on the graph's structure only: exporters share equal
      initializers (torch's dynamo exporter reuses one name, the TorchScript
      exporter hands out copies through Identity nodes; both happen for the
      all-zero biases of an untrained model) and each reader still counts,
      as torch counts each module's own parameter. Weights tied on purpose
      (one tensor read by two layers) therefore count twice. Initializers
      that no node reads do not count.

    ``nonzero=1`` counts only the non-zero elements (for unstructured
    sparsity); the cache key then includes the weight values.
    Input shapes do not change the count and are not needed.
    """

    name = "params"
    quantity = "params"
    unit = "params"
    runtime = "static"

    device: str = "cpu"
    nonzero: bool = False

    def model_key(self, model: Any, *, input_shapes: Shapes | None = None) -> str:
        if self.nonzero:
            return structure_key(load_onnx(model), include_values=True)
        # Weight payloads are skipped: the count depends on shapes only, and a hit stays ~1 ms.
        return structure_key(load_onnx_structure(model))

    def measure(self, model: Any, *, input_shapes: Shapes | None = None) -> Measurement:
        start = time.perf_counter()
        value = count_params(model, nonzero=self.nonzero)
        return _exact(self, value, started=start, extra={"nonzero": self.nonzero})


@dataclass(frozen=True)
class FlopsOracle(Oracle):
    """Counts the multiply-accumulates (MACs) of one inference from the ONNX graph.

    Shapes come from ``onnx.shape_inference`` with the given input shapes
    (``batch`` overrides the first dimension of every input). Counted:

    - Conv (grouped and depthwise included):
      ``N * Cout * prod(out spatial) * (Cin / groups) * prod(kernel)``;
    - ConvTranspose: ``N * Cin * prod(in spatial) * (Cout / groups) * prod(kernel)``;
    - Gemm and MatMul (batched, broadcast): output elements times the inner
      dimension K;
    - with ``elementwise=1`` also the element-wise, normalisation, pooling
      and resize operators in ``ELEMENTWISE_OPS`` (Relu, Add, Mul, Sigmoid,
      Clip, HardSwish, BatchNormalization, MaxPool, ...) at one operation per
      output element.

    The default, ``elementwise=0``, counts only Conv/ConvTranspose/Gemm/
    MatMul: the convention of torchvision's published tables and fvcore, so
    budgets compare with published numbers. At 1x3x224x224 it gives
    1.814 G for torchvision's resnet18, 0.301 G for mobilenet_v2 and
    15.47 G for vgg16; ``elementwise=1`` would add 0.2% to resnet18 but 2.1%
    (BN folded) to 4.3% (BN kept) to mobilenet_v2, past the published 0.300 G.

    Bias additions of Conv/Gemm are not counted. Data-movement operators
    (Reshape, Concat, Slice, ...) cost nothing; other operators (LSTM, Einsum,
    custom domains) are not counted and are listed in
    ``Measurement.extra["uncounted_ops"]``.
    """

    name = "flops"
    quantity = "flops"
    unit = "MAC"
    runtime = "static"

    device: str = "cpu"
    batch: int | None = None
    elementwise: bool = False

    def validate(self) -> None:
        _check_batch(self, self.batch)

    def measure(self, model: Any, *, input_shapes: Shapes | None = None) -> Measurement:
        start = time.perf_counter()
        count = count_macs(model, input_shapes, batch=self.batch, elementwise=self.elementwise)
        return _exact(
            self,
            count.total,
            started=start,
            input_shapes=count.input_shapes,
            extra={
                "by_op": dict(count.by_op),
                "uncounted_ops": list(count.uncounted_ops),
                "input_shapes": {k: list(v) for k, v in count.input_shapes.items()},
            },
        )


@dataclass(frozen=True)
class WeightMemoryOracle(Oracle):
    """Bytes of the constant tensors an ONNX model stores: ``numel * dtype size`` summed.

    Every initializer and Constant-node value that some node reads counts
    once, whatever it holds (weights, batch-norm running statistics,
    reshape targets), since a runtime keeps them all in memory; Identity
    copies of a deduplicated initializer add nothing, unread initializers
    are left out. Sub-byte types (int4) are counted packed. Input shapes do
    not change the value and are not needed.
    """

    name = "weight-memory"
    quantity = "memory"
    unit = "bytes"
    runtime = "static"

    device: str = "cpu"

    def model_key(self, model: Any, *, input_shapes: Shapes | None = None) -> str:
        return structure_key(load_onnx_structure(model))

    def measure(self, model: Any, *, input_shapes: Shapes | None = None) -> Measurement:
        start = time.perf_counter()
        return _exact(self, weight_bytes(model), started=start)


@dataclass(frozen=True)
class PeakMemoryOracle(Oracle):
    """Peak memory of one inference: live activations at the worst step, plus the weight bytes.

    The nodes are walked in the graph's execution (topological) order. An
    activation is allocated when its node runs and freed after its last
    consumer; graph inputs are live for the whole run (the caller holds
    them), graph outputs from their node to the end; an output that nothing
    reads is freed right after its node. During a node, its inputs and its
    outputs are live together. Identity, Reshape, Flatten, Squeeze and
    Unsqueeze outputs are views that share their input's buffer (as in ONNX
    Runtime and torch). The value is the maximum over nodes of the live
    activation bytes, plus the stored weight bytes of ``WeightMemoryOracle``.
    ``extra`` holds ``activation_bytes`` (the activation-only peak),
    ``weight_bytes`` and ``peak_node``. It models a runtime that frees each
    buffer as soon as possible and never fragments; real allocators (arenas,
    workspaces) use more.
    """

    name = "peak-memory"
    quantity = "memory"
    unit = "bytes"
    runtime = "static"

    device: str = "cpu"
    batch: int | None = None

    def validate(self) -> None:
        _check_batch(self, self.batch)

    def measure(self, model: Any, *, input_shapes: Shapes | None = None) -> Measurement:
        start = time.perf_counter()
        pm = peak_memory(model, input_shapes, batch=self.batch)
        return _exact(
            self,
            pm.total_bytes,
            started=start,
            input_shapes=pm.input_shapes,
            extra={
                "activation_bytes": pm.activation_bytes,
                "weight_bytes": pm.weight_bytes,
                "peak_node": pm.peak_node,
                "input_bytes": pm.input_bytes,
                "output_bytes": pm.output_bytes,
            },
        )

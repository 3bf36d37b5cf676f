"""Modules Torch-Pruning cannot trace through, pruned as single layers: torchvision's Swin.

Torch-Pruning follows channels through every op inside a module, and two of Swin's
defeat it: the patch merging slices the spatial dims of NHWC tensors (its slice rule
takes dim 1 of a 4-d tensor for channels), and the window partitions reshape the
embedding through views it cannot map. Left to it, the embedding of every stage is
unprunable (pruning the patch embedding breaks the forward pass), and the attention
cannot be pruned alone either: ``shifted_window_attention`` reads the embedding size
``C`` from its input and reshapes q, k and v to ``C // num_heads`` per head, so the
attention's inner size is the embedding size.

Here each such module is one opaque layer for Torch-Pruning, with a pruning function:

- attention: embedding channel ``c`` goes with input column ``c`` of ``qkv`` and ``proj``
  and with inner channel ``c`` of q, k and v (rows ``c``, ``C + c``, ``2C + c`` of ``qkv``),
  and output row ``c`` of ``proj``; the number of heads is kept, so a group through it
  must lose the same count in every head (ChannelSpace prunes it in steps of the head
  count, the same position of every head);
- patch merging: input channel ``c`` is ``c`` of each of the four concatenated patches
  (``c + k * C`` of the norm and the reduction), output channels are the reduction's.

While Torch-Pruning traces, the forward of these modules is replaced by a stand-in
that computes the real output without gradient and adds zero times a channel-wise
function of the input, so the traced graph links input to output by element-wise ops
only (the module is one node whose input channels are its input's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# (module path, class name) of the modules handled here; matched by name so that
# torchvision is not imported for models that do not use it.
_SWIN = "torchvision.models.swin_transformer"
_ATTENTION = {(_SWIN, "ShiftedWindowAttention"), (_SWIN, "ShiftedWindowAttentionV2")}
_MERGING = {(_SWIN, "PatchMerging"), (_SWIN, "PatchMergingV2")}


def _key(module: nn.Module) -> tuple[str, str]:
    return type(module).__module__, type(module).__name__


def is_attention(module: Any) -> bool:
    """A Swin window attention (embedding = inner size, pruned in steps of its heads)."""
    return isinstance(module, nn.Module) and _key(module) in _ATTENTION


def is_opaque(module: Any) -> bool:
    return isinstance(module, nn.Module) and (_key(module) in _ATTENTION | _MERGING)


def weight_layer(module: nn.Module) -> nn.Module:
    """The Linear that stands for an opaque module in a unit's geometry (reduction, qkv)."""
    if _key(module) in _MERGING:
        return module.reduction
    if _key(module) in _ATTENTION:
        return module.qkv
    return module


def changed_layers(name: str, module: nn.Module) -> list[str]:
    """Names of the layers inside opaque ``module`` (named ``name``) whose weights its pruner cuts."""
    if _key(module) in _MERGING:
        return [f"{name}.reduction", f"{name}.norm"]
    if _key(module) in _ATTENTION:
        return [f"{name}.qkv", f"{name}.proj"]
    return []


def attention_layout(module: nn.Module) -> tuple[int, int]:
    """(embedding, heads) of a Swin attention."""
    return int(module.qkv.in_features), int(module.num_heads)


def _linear_rows(layer: nn.Linear, keep: list[int]) -> None:
    layer.weight = nn.Parameter(layer.weight.data[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.data[keep].clone())
    layer.out_features = len(keep)


def _linear_cols(layer: nn.Linear, keep: list[int]) -> None:
    layer.weight = nn.Parameter(layer.weight.data[:, keep].clone())
    layer.in_features = len(keep)


def _layernorm(norm: nn.LayerNorm, keep: list[int]) -> None:
    if norm.elementwise_affine:
        norm.weight = nn.Parameter(norm.weight.data[keep].clone())
        if norm.bias is not None:
            norm.bias = nn.Parameter(norm.bias.data[keep].clone())
    norm.normalized_shape = (len(keep),)


def _kept(size: int, idxs: Any) -> list[int]:
    drop = {int(i) for i in idxs}
    return [i for i in range(size) if i not in drop]


def _pruners() -> tuple[Any, Any]:
    from torch_pruning.pruner.function import BasePruningFunc

    class AttentionPruner(BasePruningFunc):
        """Swin window attention: embedding channels in, inner channels with them, proj out."""

        def prune_in_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            size = layer.qkv.in_features
            keep = _kept(size, idxs)
            _linear_rows(layer.qkv, [k * size + i for k in range(3) for i in keep])
            _linear_cols(layer.qkv, keep)
            _linear_cols(layer.proj, keep)
            return layer

        def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            _linear_rows(layer.proj, _kept(layer.proj.out_features, idxs))
            return layer

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.qkv.in_features)

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.proj.out_features)

    class MergingPruner(BasePruningFunc):
        """Swin patch merging: channel c of each of the four patches in, reduction out."""

        def prune_in_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            size = layer.reduction.in_features // 4
            keep = [k * size + i for k in range(4) for i in _kept(size, idxs)]
            _linear_cols(layer.reduction, keep)
            if type(layer).__name__ == "PatchMerging":  # V1 normalises before reducing
                _layernorm(layer.norm, keep)
            layer.dim = len(keep) // 4
            return layer

        def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            size = layer.reduction.out_features
            keep = _kept(size, idxs)
            _linear_rows(layer.reduction, keep)
            if type(layer).__name__ == "PatchMergingV2":  # V2 normalises after reducing
                _layernorm(layer.norm, keep)
            return layer

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.reduction.in_features // 4)

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.reduction.out_features)

    return AttentionPruner(), MergingPruner()


def builtin_pruners(model: nn.Module) -> dict[type, Any]:
    """Torch-Pruning customized pruners for the opaque module types ``model`` contains."""
    types = {type(m) for m in model.modules() if is_opaque(m)}
    if not types:
        return {}
    attention, merging = _pruners()
    return {t: attention if (t.__module__, t.__name__) in _ATTENTION else merging for t in types}


def _stand_in(module: nn.Module) -> Any:
    real = type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = real(module, x)
        # Zero times a per-sample value of the input: autograd links out to x through
        # element-wise ops only, whatever the shapes.
        link = x.mean(dim=(-3, -2), keepdim=True) if _key(module) in _MERGING else x
        if link.shape[-1] != out.shape[-1]:
            link = link.sum(dim=-1, keepdim=True)
        return out + link * 0.0

    return forward


@contextlib.contextmanager
def traced_as_layers(model: nn.Module, types: Any) -> Iterator[None]:
    """Within: the modules of ``types`` in ``model`` run their stand-in forward (for tracing)."""
    types = tuple(types)
    patched = [
        m
        for m in model.modules()
        if types and isinstance(m, types) and is_opaque(m) and "forward" not in vars(m)
    ]
    for m in patched:
        m.forward = _stand_in(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward

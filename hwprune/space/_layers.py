"""Per-layer facts of a dense model: MACs by forward hooks, parameters, geometry."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwprune.errors import ConfigError


@dataclass(frozen=True)
class LayerProfile:
    """MACs per sample of every Conv/Linear layer and parameters of every module, by name."""

    macs: dict[str, int]
    params: dict[str, int]
    total_macs: int
    total_params: int


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def example_input(model: nn.Module, shape: Sequence[int]) -> torch.Tensor:
    """A random input of ``shape`` on the model's device (fixed seed: tracing is deterministic)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g).to(model_device(model))


def profile(model: nn.Module, example: Any) -> LayerProfile:
    """Count MACs (per sample) of Conv/Linear layers with forward hooks, and parameters.

    ``example`` is one input tensor or anything ``ExampleInputs.from_user`` takes;
    "per sample" divides by the first input's leading size. It is moved to the model's
    device: a space keeps its inputs where the model was when the space was built, and a
    run may since have moved the model (``--device cuda``).
    """
    from hwprune.inputs import ExampleInputs

    inputs = ExampleInputs.from_user(example).to(model_device(model))
    macs: dict[str, int] = {}
    batch = inputs.batch

    def hook(name: str):
        def record(module: nn.Module, args, output) -> None:
            if isinstance(module, nn.MultiheadAttention) and isinstance(output, tuple):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                return
            out = output.numel() // batch
            if isinstance(module, nn.modules.conv._ConvNd):
                per_elem = module.weight[0].numel()
                if module.transposed:
                    # each input element scatters into (out / groups) x kernel outputs
                    macs[name] = macs.get(name, 0) + args[0].numel() // batch * per_elem
                else:
                    # each output element gathers (in / groups) x kernel inputs
                    macs[name] = macs.get(name, 0) + out * per_elem
            elif isinstance(module, nn.Linear):
                macs[name] = macs.get(name, 0) + out * module.in_features
            elif isinstance(module, nn.MultiheadAttention):
                # Projections run functionally inside the module, so no Linear hook sees them.
                tokens = out // max(1, module.embed_dim)
                e, kv = module.embed_dim, module.kdim + module.vdim
                keys = args[1] if len(args) > 1 else args[0] if args else None
                k_len = keys.shape[1 if module.batch_first else 0] if keys is not None else 1
                macs[name] = macs.get(name, 0) + tokens * (e * e + kv * e + e * e)
                macs[name] += 2 * tokens * int(k_len) * e  # scores and weighted sum

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs.call(model)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = {
        n: sum(p.numel() for p in m.parameters(recurse=False)) for n, m in model.named_modules()
    }
    return LayerProfile(
        macs=macs,
        params=params,
        total_macs=sum(macs.values()),
        total_params=sum(p.numel() for p in model.parameters()),
    )


def _scalar(value: int | Iterable[int] | str, *, kernel: int = 1) -> int:
    if isinstance(value, str):  # padding="same" / "valid"
        return (kernel - 1) // 2 if value == "same" else 0
    if isinstance(value, int):
        return value
    return max(int(v) for v in value) if value else 0


def geometry(module: nn.Module) -> dict[str, int]:
    """in/out channels, kernel, stride, padding of a Conv or Linear (largest spatial value)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        k = _scalar(module.kernel_size)
        return {
            "in_channels": int(module.in_channels),
            "out_channels": int(module.out_channels),
            "kernel": k,
            "stride": _scalar(module.stride),
            "padding": _scalar(module.padding, kernel=k),
        }
    if isinstance(module, nn.Linear):
        return {
            "in_channels": int(module.in_features),
            "out_channels": int(module.out_features),
            "kernel": 1,
            "stride": 1,
            "padding": 0,
        }
    raise TypeError(f"expected a Conv or Linear layer, got {type(module).__name__}")


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def is_grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (ResNeXt style)."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and not is_depthwise(module)
    )


def resolve_names(model: nn.Module, layers: Iterable[str | nn.Module] | None) -> set[str]:
    """Module names for a mix of names and modules; unknown names are an error."""
    if not layers:
        return set()
    name_of = {m: n for n, m in model.named_modules()}
    names: set[str] = set()
    for item in layers:
        if isinstance(item, nn.Module):
            if item not in name_of:
                raise ConfigError(f"ignored layer {type(item).__name__} is not part of the model")
            names.add(name_of[item])
        else:
            if str(item) not in dict(model.named_modules()):
                raise ConfigError(f"ignored layer {item!r} is not a module name of the model")
            names.add(str(item))
    return names


def copy_sharing_tensors(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are still the dense ones.

    Pruning replaces most tensors with smaller ones, so cloning them first is
    wasted time; ``unshare_tensors`` clones whatever pruning left shared.
    """
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        memo[id(t)] = t
    return copy.deepcopy(model, memo)


def unshare_tensors(copied: nn.Module, original: nn.Module) -> None:
    """Clone every parameter and buffer of ``copied`` that is still a tensor of ``original``."""
    dense = {id(t) for t in itertools.chain(original.parameters(), original.buffers())}
    clones: dict[int, Any] = {}
    for module in copied.modules():
        for table, is_param in ((module._parameters, True), (module._buffers, False)):
            for name, t in table.items():
                if t is None or id(t) not in dense:
                    continue
                if id(t) not in clones:
                    data = t.detach().clone()
                    clones[id(t)] = (
                        nn.Parameter(data, requires_grad=t.requires_grad) if is_param else data
                    )
                table[name] = clones[id(t)]


def tied_parameters(model: nn.Module) -> list[tuple[str, ...]]:
    """Parameters that several module attributes hold (a weight tie), each as the names of its
    holders ("c1.weight", "c2.weight"), in module order. A module registered under two names
    is one module, not a tie."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for attr, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append(f"{name}.{attr}" if name else attr)
    return [tuple(names) for names in holders.values() if len(names) > 1]


def check_ties(pruned: nn.Module, ties: Sequence[tuple[str, ...]]) -> None:
    """ConfigError when ``pruned`` holds two tensors where the dense model tied one parameter:
    a pruned model never silently holds two copies of a shared weight."""
    for names in ties:
        held = set()
        for n in names:
            owner, _, attr = n.rpartition(".")
            holder = pruned.get_submodule(owner) if owner else pruned
            held.add(id(holder._parameters.get(attr)))
        if len(held) > 1:
            raise ConfigError(
                f"pruning split the parameter that {', '.join(repr(n) for n in names)} share "
                "(a weight tie) into separate copies; leave those layers out with "
                "ignored_layers=[...] and describe them with customized_pruners, or untie them"
            )

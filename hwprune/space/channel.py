"""Channel pruning space: coupled channel groups found by Torch-Pruning, removed physically.

``ChannelSpace`` traces the dense model once with Torch-Pruning's
DependencyGraph, turns every group of coupled channels (residual additions,
concatenations, depthwise convolutions, a flatten into a Linear) into one
*unit*, ranks each unit's channels once by an importance criterion, and
records for every unit which indices of which layers belong to each channel.
``apply(policy)`` then needs no tracing: it deep-copies the dense model and
calls Torch-Pruning's per-layer pruning functions with the recorded indices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

import hwprune.space._layers as _layers
import hwprune.space._opaque as _opaque
import hwprune.space.attention as _attention
from hwprune.errors import ConfigError
from hwprune.inputs import ExampleInputs, check_model_device, flatten_outputs, none_output
from hwprune.space._tp_compat import MappingBlowup, Unmapped, param_names, tolerant_index_mapping
from hwprune.space.importance import get_criterion
from hwprune.space.policy import Policy

log = logging.getLogger(__name__)

__all__ = ["ChannelSpace", "Skipped", "Unit"]

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)

# Keep ratios a unit is tried at before the search (0: the smallest count min_keep and the
# rounding allow): a reshape that needs some channel counts breaks at others only.
_TRIED_KEEPS = (0.0, 0.25, 0.5, 0.75)
# Torch-Pruning's failures on one group (index mapping, importance), not on the whole trace.
_GROUP_ERRORS = (IndexError, KeyError, ValueError, ZeroDivisionError)


@dataclass(frozen=True)
class Unit:
    """One prunable unit: a coupled channel group (ChannelSpace) or one layer's weights (WeightSpace).

    ``id`` is stable across runs (the root layer's module name); ``layers``
    are the module names whose parameters the unit changes; ``channels`` the
    number of prunable channels (ChannelSpace) or output channels of the layer
    (WeightSpace); ``numel`` the root layer's weight count. ``in_channels`` ..
    ``padding`` describe the root layer (largest spatial value for non-square
    kernels). ``step``: the kept channel count is a multiple of it (attention). ``flops_share`` / ``params_share`` are the dense model's MACs and
    parameters in ``layers`` as fractions of the whole model; for channel
    groups they overlap (a conv belongs to the group of its outputs and to the
    group of its inputs), so they sum to more than 1.
    """

    id: str
    index: int
    layers: tuple[str, ...]
    channels: int
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    flops_share: float
    params_share: float
    numel: int
    # Channels leave in blocks of ``step``: whole attention heads (step = head size) or
    # one position of every head (step = number of heads); 1 elsewhere.
    step: int = 1
    # Weight layers whose output channels are this unit's: several where residual adds
    # couple them (a ResNet stage's stream), 1 elsewhere.
    outputs: int = 1

    def features(self) -> dict[str, Any]:
        """Per-unit numbers for an agent's observation (``layers`` reduced to its length)."""
        out = asdict(self)
        out["n_layers"] = len(out.pop("layers"))
        return out


@dataclass(frozen=True)
class _Op:
    """One pruning call recorded from a dense group: which layer indices belong to which channel."""

    target: str  # module name, or parameter name when ``is_param``
    handler: Any  # a Torch-Pruning pruning function (bound method of its pruner)
    pruning_dim: int
    is_param: bool
    idxs: np.ndarray  # indices in the target's pruned dimension (dense coordinates)
    roots: np.ndarray  # the unit channel each of those indices belongs to


@dataclass(frozen=True)
class _Plan:
    ops: tuple[_Op, ...]
    order: np.ndarray  # the unit's channels, most important first (in blocks of ``step``)
    step: int = 1
    scores: np.ndarray | None = None  # the criterion's score of each channel (dense order)


@dataclass(frozen=True)
class Skipped:
    """A channel group left out of the space, and why (for reports)."""

    id: str
    reason: str


def _kind(root: nn.Module, members: Sequence[nn.Module]) -> str:
    root = _opaque.weight_layer(root)
    if any(_layers.is_depthwise(m) for m in members):
        return "depthwise"
    if isinstance(root, nn.Linear):
        return "linear"
    if isinstance(root, nn.modules.conv._ConvNd) and root.transposed:
        return "transposed"
    return "conv"


def _final_layers(dg: Any) -> list[nn.Module]:
    """Conv/Linear layers whose output reaches the model output without another Conv/Linear.

    These produce the logits (or whatever the model returns); their output
    channels are never pruned.
    """
    finals = []
    for module, node in dg.module2node.items():
        if not isinstance(module, _PRUNABLE):
            continue
        stack, seen, feeds_layer = list(node.outputs), set(), False
        while stack:
            nxt = stack.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if isinstance(nxt.module, _PRUNABLE):
                feeds_layer = True
                break
            stack.extend(nxt.outputs)
        if not feeds_layer:
            finals.append(module)
    return finals


@dataclass(frozen=True)
class _Traced:
    """A traced DependencyGraph, the nodes whose mapping failed, and the groups it gave up on."""

    graph: Any
    unmapped: Unmapped
    failed: list[tuple[nn.Module, str]]


def _order(scores: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
    """The unit's channels, most important first; with ``keys``, whole blocks by mean score."""
    if keys is None:
        return np.argsort(-scores, kind="stable").astype(np.int64)
    uniq = np.unique(keys)
    block = {k: scores[keys == k].mean() for k in uniq.tolist()}
    ranked = sorted(uniq.tolist(), key=lambda k: -block[k])
    return np.concatenate([np.flatnonzero(keys == k) for k in ranked]).astype(np.int64)


def _vit_hidden_dim(module: nn.Module) -> None:
    # torchvision's VisionTransformer reshapes the patch embedding with self.hidden_dim.
    conv = module._modules.get("conv_proj")
    if isinstance(conv, nn.Conv2d) and "hidden_dim" in vars(module):
        module.hidden_dim = int(conv.out_channels)


# Model classes (by name: no import of their packages) whose forward reads a size attribute.
_FIXUPS = {"VisionTransformer": _vit_hidden_dim}


def output_shapes(out: Any) -> dict[str, tuple[int, ...]]:
    """Each output tensor's shape, by the name the ONNX export gives it (``flatten_outputs``)."""
    return {name: tuple(int(s) for s in t.shape) for name, t in flatten_outputs(out)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _resolve_inputs(
    example_inputs: Any, example_input_shape: Sequence[int], *, model: nn.Module
) -> ExampleInputs:
    check_model_device(model)  # first: the inputs are moved to the model's device
    if example_inputs is not None:
        return ExampleInputs.from_user(example_inputs, model=model)
    shape = tuple(int(s) for s in example_input_shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ConfigError(
            f"example_input_shape must be a batch shape such as (1, 3, 32, 32), got {shape}"
        )
    return ExampleInputs.from_shape(shape)


def _profile(
    model: nn.Module, inputs: ExampleInputs, *, outputs: list[Any] | None = None
) -> _layers.LayerProfile:
    """The dense model's per-layer MACs; a model that rejects its example inputs is a ConfigError.

    ``outputs``, when given, receives what the model returned."""
    handle = None
    if outputs is not None:
        handle = model.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    try:
        return _layers.profile(model, inputs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"calling {type(model).__name__} with the example inputs ({inputs!r}) failed: "
            f"{_first_line(exc)}"
        ) from exc
    finally:
        if handle is not None:
            handle.remove()


def _expand(model: nn.Module, names: set[str]) -> set[str]:
    """The named modules and every submodule of them (ignoring a container ignores its layers)."""
    out = set(names)
    for name in names:
        sub = model.get_submodule(name) if name else model
        out.update(f"{name}.{n}" if name else n for n, _ in sub.named_modules() if n)
    return out


def _resolve_heads(
    model: nn.Module,
    num_heads: Mapping[str | nn.Module, int] | None,
    transformer: _attention.Transformer | None = None,
) -> dict[nn.Module, int]:
    """``num_heads`` as {nn.MultiheadAttention: heads}, checked against the modules; the
    attention blocks of a transformers-style model are checked and left out (they are
    pruned by whole heads anyway)."""
    if not num_heads:
        return {}
    if not isinstance(num_heads, Mapping):
        raise ConfigError(
            f"num_heads must map attention modules (or their names) to head counts, "
            f"got {type(num_heads).__name__}"
        )
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    out: dict[nn.Module, int] = {}
    for key, heads in num_heads.items():
        module = modules.get(key) if isinstance(key, str) else key
        label = key if isinstance(key, str) else type(key).__name__
        if module is None or module not in names:
            raise ConfigError(f"num_heads names {label!r}, which is not a module of the model")
        if _attention.check_heads(module, heads, transformer, names[module]):
            continue
        if not isinstance(module, nn.MultiheadAttention):
            raise ConfigError(
                f"num_heads takes nn.MultiheadAttention modules or the attention modules of a "
                f"transformers model (those that own the query/key/value projections), got "
                f"{type(module).__name__} {names[module]!r}"
            )
        if not isinstance(heads, int) or isinstance(heads, bool) or heads != module.num_heads:
            raise ConfigError(
                f"num_heads gives {heads!r} heads for {names[module]!r}, which has "
                f"{module.num_heads}"
            )
        if module.kdim != module.embed_dim or module.vdim != module.embed_dim:
            raise ConfigError(
                f"num_heads: {names[module]!r} has key/value sizes unlike its embedding; "
                "only self-attention style modules (kdim = vdim = embed_dim) are pruned by head"
            )
        out[module] = heads
    return out


def _resolve_unwrapped(
    model: nn.Module, unwrapped: Mapping[Any, int] | Sequence[tuple[Any, int]] | None
) -> list[tuple[nn.Parameter, int]] | None:
    """``unwrapped_parameters`` as Torch-Pruning's [(parameter, dim)] (names resolved)."""
    if not unwrapped:
        return None
    items = unwrapped.items() if isinstance(unwrapped, Mapping) else unwrapped
    params = dict(model.named_parameters())
    known = {id(p) for p in params.values()}
    out = []
    for item in items:
        try:
            key, dim = item
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"unwrapped_parameters must map parameters (or their names) to the dim to prune, "
                f"got {item!r}"
            ) from exc
        param = params.get(key) if isinstance(key, str) else key
        if not isinstance(param, nn.Parameter) or id(param) not in known:
            raise ConfigError(
                f"unwrapped_parameters names {key!r}, which is not a parameter of the model"
            )
        if not isinstance(dim, int) or not -param.dim() <= dim < param.dim():
            raise ConfigError(
                f"unwrapped_parameters: dim {dim!r} is not a dimension of a {param.dim()}-d parameter"
            )
        out.append((param, dim))
    return out


def _failing_module(exc: BaseException, model: nn.Module) -> str:
    """The innermost module of ``model`` whose code was running when ``exc`` was raised."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = owner
        tb = tb.tb_next
    if found is None or found is model:
        return f"{type(model).__name__} (module type {type(model).__name__})"
    return f"module {names[id(found)]!r} (type {type(found).__name__})"


def _out_of_range(dg: Any, group: Any) -> str | None:
    """How a group's mapped channel indices overrun a member's channel count, or None."""
    for item in group:
        node, idxs = item.dep.target, item.idxs
        if not len(idxs):
            continue
        target = node.module
        if not isinstance(target, nn.Parameter) and getattr(target, "weight", None) is None:
            continue  # Torch-Pruning's own ops (concat, split, reshape) index their inputs
        try:
            if isinstance(target, nn.Parameter):
                size = int(target.shape[node.pruning_dim])
            elif dg.is_out_channel_pruning_fn(item.dep.handler):
                size = dg.get_out_channels(node)
            else:
                size = dg.get_in_channels(node)
        except Exception:  # Torch-Pruning has no channel count for this op: nothing to check
            continue
        if size is not None and max(idxs) >= size:
            return f"index {max(idxs)} of a layer with {size} channels"
    return None


def _group_ops(
    dg: Any, group: Any, names: dict[nn.Module, str], tied: dict[int, tuple[str, ...]]
) -> tuple[list[_Op], set[str], list[nn.Module], tuple[str, ...] | None]:
    """A group's pruning calls, the layers it changes, its layers that lose output channels,
    and the holders of a tied parameter it cuts (None when it cuts no tie)."""
    param_to_name = param_names(dg)
    ops: list[_Op] = []
    layer_names: set[str] = set()
    out_layers: list[nn.Module] = []
    cuts_tie: tuple[str, ...] | None = None
    for item in group:
        dep, idxs = item.dep, item.idxs
        target = dep.target.module
        if tied and cuts_tie is None:
            own = [target] if isinstance(target, nn.Parameter) else (
                target.parameters(recurse=False) if isinstance(target, nn.Module) else []
            )  # fmt: skip
            cuts_tie = next((tied[id(p)] for p in own if id(p) in tied), None)
        if isinstance(target, nn.Parameter):
            if target not in param_to_name:
                continue
            tname, is_param = param_to_name[target], True
        elif isinstance(target, nn.Module) and target in names:
            tname, is_param = names[target], False
            layer_names.add(tname)
            layer_names.update(_opaque.changed_layers(tname, target))
            rootable = isinstance(target, _PRUNABLE) or _opaque.is_opaque(target)
            if rootable and dg.is_out_channel_pruning_fn(dep.handler):
                out_layers.append(target)
        else:
            continue  # Torch-Pruning's bookkeeping ops (add, concat, flatten...)
        ops.append(
            _Op(
                target=tname,
                handler=dep.handler,
                pruning_dim=int(dep.target.pruning_dim),
                is_param=is_param,
                idxs=np.asarray(idxs, dtype=np.int64),
                roots=np.asarray(item.root_idxs, dtype=np.int64),
            )
        )
    return ops, layer_names, out_layers, cuts_tie


class ChannelSpace:
    """Every coupled channel group of a model, pruned by removing channels for real.

    ``keep`` ratios map to channel counts by ``round(max(keep, min_keep) *
    channels)`` rounded to a multiple of ``round_to`` (kept between
    ``max(1, round_to)`` and ``channels``). Which channels go is fixed once
    from the dense weights by ``importance`` ("l2" by default, "l1", "taylor" with a
    ``calibration`` batch, "random" with ``seed``). The layers that produce
    the model's outputs (a classifier, a detection head's last layers) are
    found automatically and their output channels never pruned; so is every
    group whose pruning would change the shape of any model output, however
    deep its layers sit behind additions, activations, upsampling,
    concatenations or pooling (an FPN level that also feeds the next level,
    a returned neck feature): each unit is tried one step smaller before the
    search, and those that change an output's shape are left whole and listed
    in ``skipped`` (``output_shapes`` holds the dense shapes).
    ``allow_output_change=True`` keeps only the first rule, so returned
    features may shrink. ``ignored_layers`` (names or modules; a container
    means all its submodules) adds more. A group through grouped (non-depthwise)
    convolutions loses the same positions in every convolution group; groups
    Torch-Pruning cannot follow are left out and listed in ``skipped``.

    ``example_inputs`` is what the model is called with: a tensor, a tuple of
    tensors (``model(*xs)``) or a dict of named tensors (``model(**named)``);
    ``example_input_shape`` is the older form for one float input.

    Attention (``nn.MultiheadAttention``): by default every head keeps the
    same positions (its embedding shrinks in steps of the head count, as
    Torch-Pruning's channel groups do). ``num_heads={module: heads}`` prunes
    whole heads instead (head size kept, ``num_heads`` reduced), like
    Torch-Pruning's ``num_heads`` with ``prune_num_heads``. Modules
    Torch-Pruning cannot trace take ``customized_pruners`` ({type or module:
    pruning function}) and ``unwrapped_parameters`` ({parameter or its name:
    dim to prune}), passed to its DependencyGraph. With ``check`` (default) a
    unit whose pruning breaks the forward pass at its smallest count or at a
    quarter, half or three quarters of its channels (a coupling Torch-Pruning
    missed, a reshape that needs some counts) is left out and listed in
    ``skipped``, and so is a group whose
    channels Torch-Pruning cannot follow in bounded work (MaxViT's attention).
    torchvision's Swin window attention and patch merging, which it cannot
    trace, are pruned as whole layers (``hwprune.space._opaque``): the
    embedding loses the same positions of every head.

    ``channel_choices`` (unit id -> allowed kept-channel counts, e.g. from
    ``hwprune.space.staircase.probe_staircase(...).choices()``) replaces
    ``round_to`` for the units it names: the count ``keep`` asks for is snapped
    up to the smallest allowed count at or above it (the top of the latency
    step it falls in), and the unit's full count is always allowed. Units it
    does not name keep ``round_to``.

    Example::

        space = ChannelSpace(model, example_input_shape=(1, 3, 32, 32), round_to=8)
        small = space.apply(Policy.uniform(space, 0.5))
        vit = ChannelSpace(vit_model, example_inputs=torch.randn(1, 3, 64, 64),
                           num_heads={m: m.num_heads for m in attention_modules})
    """

    granularity = "channel"
    pattern = None

    def __init__(
        self,
        model: nn.Module,
        *,
        example_inputs: Any = None,
        example_input_shape: Sequence[int] = (1, 3, 32, 32),
        importance: str = "l2",
        round_to: int = 1,
        min_keep: float = 0.1,
        ignored_layers: Iterable[str | nn.Module] | None = None,
        num_heads: Mapping[str | nn.Module, int] | None = None,
        customized_pruners: Mapping[Any, Any] | None = None,
        unwrapped_parameters: Mapping[Any, int] | Sequence[tuple[Any, int]] | None = None,
        calibration: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int = 0,
        channel_choices: Mapping[str, Sequence[int]] | None = None,
        check: bool = True,
        allow_output_change: bool = False,
    ) -> None:
        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
        if not 0.0 <= float(min_keep) <= 1.0:
            raise ConfigError(f"min_keep must lie in [0, 1], got {min_keep!r}")
        inputs = _resolve_inputs(example_inputs, example_input_shape, model=model)
        criterion = get_criterion(importance)
        if criterion.needs_gradients and calibration is None:
            raise ConfigError(
                f"importance {criterion.name!r} needs gradients: pass calibration=(inputs, labels) "
                "or a batch of inputs"
            )

        self.model = model
        self.example_inputs = inputs.to(_layers.model_device(model))
        self.example_input_shape = inputs.first_shape
        self.importance = criterion.name
        self.round_to = round_to
        self.min_keep = float(min_keep)
        self.seed = seed
        self.allow_output_change = bool(allow_output_change)
        self.skipped: list[Skipped] = []
        self._free_dims: dict[str, frozenset[int]] | None = None
        prof = self._profile_dense()
        user_ignored = _expand(model, _layers.resolve_names(model, ignored_layers))
        self._structure(num_heads, customized_pruners, unwrapped_parameters)
        if self._transformer is not None:
            self._build_transformer_units(user_ignored, prof)
        else:
            self._build_units(criterion, calibration, user_ignored, prof)
        self.channel_choices: dict = {}
        if not self.allow_output_change:
            self._protect_outputs()
        if check:
            self._drop_broken_units()
        self.channel_choices = self._check_choices(channel_choices)
        self._signature = self._space_signature()
        log.info(
            "channel space: %d units (%d groups left out), %d params, %d MACs, output layers %s",
            len(self.units),
            len(self.skipped),
            self.dense_params,
            self.dense_macs,
            ", ".join(self.output_layers) or "none",
        )

    def _profile_dense(self) -> _layers.LayerProfile:
        """The dense model's per-layer MACs and parameters; an output that is None is refused."""
        outputs: list[Any] = []
        prof = _profile(self.model, self.example_inputs, outputs=outputs)
        self.dense_params = prof.total_params
        self.dense_macs = prof.total_macs
        where = none_output(outputs[0]) if outputs else None
        if where is not None:
            # Torch-Pruning traces backwards from every output; a None stops it with a TypeError
            # that names no output.
            raise ConfigError(
                f"{type(self.model).__name__}'s {where} is None with the example inputs; a pruned "
                "model's outputs must be tensors (a tensor, or tuples, lists and dicts of tensors)"
            )
        cache = _attention.cache_output(outputs[0]) if outputs else None
        if cache is not None:
            # Torch-Pruning and the ONNX export follow tensors only; a key/value cache is an
            # object they fail on with messages that do not name it.
            raise ConfigError(
                f"{type(self.model).__name__}'s {cache} is not a tensor: a decoder's key/value "
                "cache cannot be traced or exported; set model.config.use_cache = False (or "
                "pass use_cache=False to the model) before pruning"
            )
        #: The dense model's output shapes by output name: what a pruned model keeps.
        self.output_shapes: dict[str, tuple[int, ...]] = {}
        try:
            self.output_shapes = output_shapes(outputs[0]) if outputs else {}
        except ConfigError as exc:  # outputs the export refuses too: nothing to compare here
            log.warning("the model's output shapes cannot be read (%s)", exc)
        return prof

    def _structure(
        self,
        num_heads: Mapping[str | nn.Module, int] | None,
        customized_pruners: Mapping[Any, Any] | None,
        unwrapped_parameters: Mapping[Any, int] | Sequence[tuple[Any, int]] | None,
    ) -> None:
        """Weight ties, attention heads, opaque layers and Torch-Pruning's tracing options."""
        model = self.model
        names = {m: n for n, m in model.named_modules()}
        self._ties = _layers.tied_parameters(model)
        self._transformer = _attention.find(model)
        self._heads = _resolve_heads(model, num_heads, self._transformer)
        self.num_heads = {names[m]: h for m, h in self._heads.items()}
        self._head_dims = {names[m]: m.embed_dim // h for m, h in self._heads.items()}
        # Modules Torch-Pruning cannot trace through (Swin) are opaque layers with their own
        # pruning functions; a user's pruner for the same type wins.
        self._opaque = _opaque.builtin_pruners(model)
        pruners = {**self._opaque, **(dict(customized_pruners) if customized_pruners else {})}
        self._tp_options = {
            "customized_pruners": pruners or None,
            "unwrapped_parameters": _resolve_unwrapped(model, unwrapped_parameters),
        }

    def _build_units(
        self, criterion: Any, calibration: Any, user_ignored: set[str], prof: _layers.LayerProfile
    ) -> None:
        """Trace the dense model, rank each group's channels, and keep the units in model order."""
        model = self.model
        names = {m: n for n, m in model.named_modules()}
        position = {n: i for i, n in enumerate(names.values())}
        was_training = model.training
        model.eval()  # tracing runs a forward pass; BN statistics must not move
        try:
            traced = self._trace()
            finals = _final_layers(traced.graph)
            self.output_layers = tuple(sorted((names[m] for m in finals), key=position.get))
            ignored = [m for n, m in model.named_modules() if n in user_ignored] + finals
            roots = _PRUNABLE + tuple(self._opaque)
            groups = list(
                traced.graph.get_all_groups(ignored_layers=ignored, root_module_types=roots)
            )
            scorer = criterion.build(self.seed)
            saved_grads = None
            if criterion.needs_gradients:
                saved_grads = self._backward(calibration)
            try:
                units, plans = self._plan(traced, groups, scorer, names, position, prof)
            finally:
                if saved_grads is not None:
                    for p, g in saved_grads.items():
                        p.grad = g
        finally:
            model.train(was_training)
        order = sorted(range(len(units)), key=lambda i: position[units[i]["id"]])
        self.units: list[Unit] = [Unit(index=j, **units[i]) for j, i in enumerate(order)]
        self._plans: list[_Plan] = [plans[i] for i in order]

    def _build_transformer_units(self, user_ignored: set[str], prof: _layers.LayerProfile) -> None:
        """The attention heads and MLP width of a transformers-style model as units
        (``hwprune.space.attention``); its hidden width and other layers stay whole."""
        import torch_pruning as tp

        assert self._transformer is not None
        families, skipped = _attention.plan(self.model, self._transformer,
                                            importance=self.importance, seed=self.seed,
                                            ignored=user_ignored)  # fmt: skip
        for unit_id, reason in skipped:
            self._skip(unit_id, reason)
        if not families:
            raise ConfigError(
                f"{type(self.model).__name__} has no prunable attention heads or MLP width "
                f"({self.skipped[0].id}: {self.skipped[0].reason})"
            )
        position = {n: i for i, (n, _) in enumerate(self.model.named_modules())}
        self.output_layers = ()
        self.units, self._plans = [], []
        for family in families:
            ops = tuple(
                _Op(target=c.layer, handler=tp.prune_linear_out_channels if c.out
                    else tp.prune_linear_in_channels, pruning_dim=0 if c.out else 1,
                    is_param=False, idxs=c.idxs, roots=c.roots)
                for c in family.cuts
            )  # fmt: skip
            layers = tuple(sorted(set(family.layers), key=position.get))
            root = self.model.get_submodule(family.root)
            self.units.append(Unit(
                id=family.id, index=len(self.units), layers=layers, channels=family.channels,
                kind=family.kind, **_layers.geometry(root), numel=int(root.weight.numel()),
                flops_share=sum(prof.macs.get(n, 0) for n in layers) / max(1, prof.total_macs),
                params_share=sum(prof.params.get(n, 0) for n in layers)
                / max(1, prof.total_params),
                step=family.step, outputs=sum(1 for c in family.cuts if c.out),
            ))  # fmt: skip
            order = np.arange(family.channels, dtype=np.int64)  # rank space: best first
            self._plans.append(_Plan(ops=ops, order=order, step=family.step,
                                     scores=family.scores))  # fmt: skip
        log.info(
            "%s: %s pruned as units of whole heads and MLP channels, alike in every layer",
            type(self.model).__name__, ", ".join(u.id for u in self.units),
        )  # fmt: skip

    def _space_signature(self) -> str:
        """What decides the pruned architectures: criterion, seed, input shapes and the units."""
        return hashlib.sha256(
            json.dumps(
                [
                    self.importance,
                    self.seed,
                    [list(s) for s in self.example_inputs.shapes.values()],
                    [(u.id, u.channels, u.step) for u in self.units],
                ]
            ).encode()
        ).hexdigest()[:16]

    def _check_choices(
        self, choices: Mapping[str, Sequence[int]] | None
    ) -> dict[str, tuple[int, ...]]:
        if choices is None:
            return {}
        if not isinstance(choices, Mapping):
            raise ConfigError(
                "channel_choices must map unit ids to allowed channel counts, "
                f"got {type(choices).__name__}"
            )
        by_id = {u.id: u for u in self.units}
        unknown = sorted(str(k) for k in choices if k not in by_id)
        if unknown:
            raise ConfigError(
                f"channel_choices names units this space does not have: {', '.join(unknown)} "
                f"(units: {', '.join(by_id)})"
            )
        out: dict[str, tuple[int, ...]] = {}
        for uid, counts in choices.items():
            channels = by_id[uid].channels
            try:
                allowed = {int(c) for c in counts}
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"channel_choices[{uid!r}] must be channel counts, got {counts!r}"
                ) from exc
            bad = sorted(c for c in allowed if not 1 <= c <= channels)
            if bad:
                raise ConfigError(
                    f"channel_choices[{uid!r}] has counts outside 1..{channels}: {bad}"
                )
            out[uid] = tuple(sorted(allowed | {channels}))
        return out

    def dependency_graph(self) -> Any:
        """A fresh Torch-Pruning DependencyGraph of the dense model, traced with this space's options.

        A tracing failure raises ConfigError naming the module that failed and
        the options that describe a module Torch-Pruning cannot trace.
        """
        return self._trace().graph

    def _trace(self) -> _Traced:
        """``dependency_graph``, with the nodes whose channel mapping failed and the groups
        whose channels Torch-Pruning could not follow (``hwprune.space._tp_compat``)."""
        import torch_pruning as tp

        # On the model's device now: a caller may have moved the dense model (to the GPU for
        # its accuracy) after the space was built on the CPU.
        inputs = self.example_inputs.to(_layers.model_device(self.model))
        unmapped = Unmapped()
        failed: list[tuple[nn.Module, str]] = []
        try:
            with (
                torch.enable_grad(),
                tolerant_index_mapping(unmapped),
                _opaque.traced_as_layers(self.model, self._opaque),
            ):
                dg = tp.DependencyGraph().build_dependency(
                    self.model,
                    example_inputs=inputs.as_user(),
                    forward_fn=lambda m, _: inputs.call(m),
                    verbose=False,
                    **self._tp_options,
                )
        except Exception as exc:
            where = _failing_module(exc, self.model)
            raise ConfigError(
                f"Torch-Pruning cannot trace {where}: {_first_line(exc)}; leave it out with "
                "ignored_layers=[...], describe it with customized_pruners={type: pruner} or "
                "unwrapped_parameters={parameter: dim}, or give attention heads with "
                "num_heads={module: heads}"
            ) from exc  # a decoder's cache in the output is refused before (_profile_dense)
        original = dg.get_pruning_group

        def get_pruning_group(module: Any, *args: Any, **kwargs: Any) -> Any:
            # Torch-Pruning re-runs the index mapping for every group it builds; a group
            # whose indices cannot be followed through a mapped node is left out (empty).
            with tolerant_index_mapping(unmapped):
                try:
                    return original(module, *args, **kwargs)
                except MappingBlowup as exc:
                    failed.append((module, f"Torch-Pruning cannot follow its channels in "
                                           f"bounded work ({exc})"))  # fmt: skip
                    return []
                except _GROUP_ERRORS as exc:
                    failed.append((module, f"Torch-Pruning cannot follow its channels "
                                           f"({type(exc).__name__}: {exc})"))  # fmt: skip
                    return []

        dg.get_pruning_group = get_pruning_group
        return _Traced(graph=dg, unmapped=unmapped, failed=failed)

    # ------------------------------------------------------------ building
    def _backward(self, calibration: Any) -> dict[nn.Parameter, torch.Tensor | None]:
        """One loss backward on the calibration batch (labels: the given ones or the model's own)."""
        device = _layers.model_device(self.model)
        if isinstance(calibration, (tuple, list)):
            inputs, labels = calibration[0], calibration[1] if len(calibration) > 1 else None
        else:
            inputs, labels = calibration, None
        if not isinstance(inputs, torch.Tensor):
            raise ConfigError(
                f"calibration must be a tensor or (inputs, labels), got {type(inputs).__name__}"
            )
        saved = {p: p.grad for p in self.model.parameters()}
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            out = self.model(inputs.to(device))
            if labels is None:
                labels = out.detach().argmax(dim=1)
            loss = nn.functional.cross_entropy(out, labels.to(device))
            loss.backward()
        return saved

    def _plan(
        self,
        traced: _Traced,
        groups: list[Any],
        scorer: Any,
        names: dict[nn.Module, str],
        position: dict[str, int],
        prof: _layers.LayerProfile,
    ) -> tuple[list[dict[str, Any]], list[_Plan]]:
        """Each group Torch-Pruning found as a unit (its features) and its plan; the groups that
        cannot be pruned soundly are left out and listed in ``skipped``."""
        units: list[dict[str, Any]] = []
        plans: list[_Plan] = []
        # A group that cuts a tied parameter would cut each holder's copy on its own (two
        # tensors where there was one): such groups are left out, so the tie is kept.
        tied: dict[int, tuple[str, ...]] = {}
        for holders in self._ties:
            tied[id(self.model.get_parameter(holders[0]))] = holders
        for group in groups:
            planned = self._plan_group(traced, group, scorer, names, position, tied)
            if planned is None:
                continue
            unit, plan = planned
            layers = unit["layers"]
            unit["flops_share"] = sum(prof.macs.get(n, 0) for n in layers) / max(1, prof.total_macs)
            unit["params_share"] = sum(prof.params.get(n, 0) for n in layers) / max(
                1, prof.total_params
            )
            units.append(unit)
            plans.append(plan)
        for module, reason in traced.failed:
            if module in names and names[module] not in {u["id"] for u in units}:
                self._skip(names[module], reason)
        if not units:
            why = (
                f"; {len(self.skipped)} groups were left out (first: {self.skipped[0].id}: "
                f"{self.skipped[0].reason})"
                if self.skipped
                else ""
            )
            raise ConfigError(
                "the model has no prunable channel group (every Conv/Linear output is ignored "
                f"or feeds the model output{why})"
            )
        return units, plans

    def _plan_group(
        self,
        traced: _Traced,
        group: Any,
        scorer: Any,
        names: dict[nn.Module, str],
        position: dict[str, int],
        tied: dict[int, tuple[str, ...]],
    ) -> tuple[dict[str, Any], _Plan] | None:
        """One group as a unit (its features but the MAC and parameter shares) and its plan, or
        None where it has no output layer here or cannot be pruned soundly (then skipped)."""
        dg = traced.graph
        members = [dep.target.module for dep, _ in group]
        blocked = [
            reason
            for dep, _ in group
            for node in (dep.source, dep.target)
            if (reason := traced.unmapped.get(node)) is not None
        ]
        if blocked:
            root_name = next(
                (names[m] for m in members if isinstance(m, _PRUNABLE) and m in names), "?"
            )
            self._skip(root_name, blocked[0])
            return None
        ops, layer_names, out_layers, cuts_tie = _group_ops(dg, group, names, tied)
        if not out_layers:
            return None
        channels = len(group[0].idxs)
        root = min(out_layers, key=lambda m: (_layers.is_depthwise(m), position[names[m]]))
        problem = None
        if cuts_tie is not None:
            problem = (
                f"it cuts the parameter that {' and '.join(repr(n) for n in cuts_tie)} share "
                "(a weight tie), which would leave two copies; the tie is kept unpruned"
            )
        elif (wild := _out_of_range(dg, group)) is not None:
            # A reshape Torch-Pruning follows without failing but maps wrongly (ShuffleNet's
            # channel shuffle at some widths): its indices pass the layer's channel count.
            problem = f"Torch-Pruning cannot follow its channels ({wild})"
        if problem is not None:
            self._skip(names[root], problem)
            return None
        try:
            with torch.no_grad():
                scores = scorer(group)
        except (*_GROUP_ERRORS, RuntimeError) as exc:
            # Torch-Pruning's importance indexes a depthwise conv with a channel multiplier
            # (groups=C, 2C outputs) past its weight: this group only cannot be ranked.
            self._skip(names[root], f"Torch-Pruning cannot score its channels ({_first_line(exc)})")
            return None
        if scores is None or len(scores) != channels:
            raise RuntimeError(
                f"importance {self.importance!r} gave no score for the group of {names[root]}"
            )
        scores = torch.nan_to_num(scores.detach().float().cpu(), nan=0.0).numpy()
        blocks = self._blocks(dg, members, ops, channels, names)
        if isinstance(blocks, str):
            self._skip(names[root], blocks)
            return None
        step, keys = blocks
        unit = {
            "id": names[root],
            "layers": tuple(sorted(layer_names, key=position.get)),
            "channels": channels,
            "kind": _kind(root, members),
            **_layers.geometry(_opaque.weight_layer(root)),
            "numel": int(_opaque.weight_layer(root).weight.numel()),
            "step": step,
            "outputs": max(1, len(set(out_layers))),
        }
        return unit, _Plan(ops=tuple(ops), order=_order(scores, keys), step=step, scores=scores)

    def _pruned_outputs(self, kept: Sequence[int]) -> dict[str, tuple[int, ...]] | str:
        """The output shapes of the model with each unit cut to ``kept[i]`` channels, or why
        its forward pass fails (the first line of the exception)."""
        try:
            pruned = self._apply_kept(kept)
            pruned.eval()
            with torch.no_grad():
                return output_shapes(self.example_inputs.call(pruned))
        except Exception as exc:
            return _first_line(exc)

    def _keep_units(self, kept: Sequence[int]) -> None:
        """Only the units at positions ``kept`` stay in the space (indices renumbered)."""
        self.units = [replace(self.units[i], index=j) for j, i in enumerate(kept)]
        self._plans = [self._plans[i] for i in kept]

    def _protect_outputs(self) -> None:
        """Leave whole every unit whose pruning changes the shape of a model output.

        Each unit is tried one step (its ``step``) smaller; an output's size only shrinks
        with a unit's channels, so all units are tried at once and only a set that changes
        an output is split in halves, down to single units: a model whose outputs no unit
        reaches costs one forward pass. A unit whose forward fails is left to
        ``_drop_broken_units``.
        """
        if not self.output_shapes:
            return
        t0, passes = time.perf_counter(), 0
        found: dict[int, str] = {}

        def search(indices: list[int]) -> None:
            nonlocal passes
            kept = [u.channels for u in self.units]
            for i in indices:
                kept[i] -= max(1, self.units[i].step)
            passes += 1
            shapes = self._pruned_outputs(kept)
            changed = [] if isinstance(shapes, str) else self._changed_outputs(shapes)
            if isinstance(shapes, dict) and not changed:
                return
            if len(indices) == 1:
                if changed:
                    n = changed[0]
                    found[indices[0]] = f"{n!r} {list(self.output_shapes[n])} -> {list(shapes[n])}"
                return
            mid = len(indices) // 2
            search(indices[:mid])
            search(indices[mid:])

        search([i for i, u in enumerate(self.units) if u.channels > max(1, u.step)])
        ids = [self.units[i].id for i in sorted(found)]
        log.info(
            "output shapes kept: %d channel groups left whole (%s), found with %d forward "
            "passes in %.2f s", len(ids), ", ".join(ids) or "none", passes,
            time.perf_counter() - t0,
        )  # fmt: skip
        if not found:
            return
        for i, change in sorted(found.items()):
            self.skipped.append(Skipped(
                id=self.units[i].id,
                reason=f"pruning it changes the shape of the model output {change}; "
                "allow_output_change=True prunes it",
            ))  # fmt: skip
        self.output_layers = (*self.output_layers, *(i for i in ids if i not in self.output_layers))
        if len(found) == len(self.units):
            raise ConfigError(
                f"nothing in {type(self.model).__name__} can be pruned without changing the shape "
                f"of its outputs ({', '.join(self.output_shapes)}); allow_output_change=True "
                "prunes the layers that produce them"
            )
        self._keep_units([i for i in range(len(self.units)) if i not in found])

    def _changed_outputs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        """The outputs whose shape differs from the dense model's in a dimension that does not
        depend on the input's values (a detector's count after NMS may change; read once, from
        the dense model's export, the first time a shape differs)."""
        changed = [n for n, dense in self.output_shapes.items() if shapes.get(n) != dense]
        if not changed:
            return []
        from hwprune.export.before_steps import data_dependent_dims, same_fixed_dims

        if self._free_dims is None:
            self._free_dims = data_dependent_dims(self.model, self.example_inputs)
        free = self._free_dims
        return [n for n in changed if not same_fixed_dims(
            self.output_shapes[n], shapes.get(n), free.get(n, frozenset()))]  # fmt: skip

    def _forward_error(self, indices: Sequence[int], keep: float) -> str | None:
        """Why the model with units ``indices`` pruned at ratio ``keep`` fails its forward
        pass, or None."""
        kept = [u.channels for u in self.units]
        for i in indices:
            kept[i] = self.unit_channels_for(keep, self.units[i])
        shapes = self._pruned_outputs(kept)
        return shapes if isinstance(shapes, str) else None

    def _drop_broken_units(self) -> None:
        """Leave out units whose pruning breaks the forward pass (a coupling Torch-Pruning
        missed, a reshape that needs some channel counts).

        Every unit is tried at each of ``_TRIED_KEEPS``: all units at once, and only when
        that fails halves, down to single units, so a sound model costs one forward pass
        per ratio.
        """
        bad: dict[int, str] = {}

        def search(indices: list[int], keep: float) -> None:
            error = self._forward_error(indices, keep)
            if error is None:
                return
            if len(indices) == 1:
                count = self.unit_channels_for(keep, self.units[indices[0]])
                bad[indices[0]] = f"{count} of {self.units[indices[0]].channels} channels: {error}"
                return
            mid = len(indices) // 2
            search(indices[:mid], keep)
            search(indices[mid:], keep)

        for keep in _TRIED_KEEPS:
            search([i for i in range(len(self.units)) if i not in bad], keep)
        if not bad:
            return
        for i, error in sorted(bad.items()):
            self._skip(self.units[i].id, f"pruning it breaks the forward pass ({error})")
        log.info(
            "%d channel groups left whole: pruning them breaks the forward pass (%s)",
            len(bad), ", ".join(self.units[i].id for i in sorted(bad)),
        )  # fmt: skip
        kept = [i for i in range(len(self.units)) if i not in bad]
        if not kept:
            first = self.skipped[-len(bad)]
            raise ConfigError(
                f"nothing in {type(self.model).__name__} can be pruned: all {len(bad)} channel "
                f"groups break its forward pass when pruned (first: {first.id}: {first.reason})"
            )
        self._keep_units(kept)
        everything = list(range(len(self.units)))
        if any(self._forward_error(everything, keep) is not None for keep in _TRIED_KEEPS):
            # Sound alone, broken together: no subset rule is worth guessing. A candidate that
            # breaks is the evaluator's infeasible candidate, never a model handed on.
            log.warning(
                "the prunable channel groups break the forward pass when pruned together at "
                "some counts; such candidates are recorded as infeasible (ignored_layers=[...] "
                "leaves the layers of the groups in space.units out)"
            )

    def _skip(self, unit_id: str, reason: str) -> None:
        log.info("channel group of %s left out: %s", unit_id, reason)
        self.skipped.append(Skipped(id=unit_id, reason=reason))

    def _blocks(
        self,
        dg: Any,
        members: Sequence[Any],
        ops: Sequence[_Op],
        channels: int,
        names: dict[nn.Module, str],
    ) -> tuple[int, np.ndarray | None] | str:
        """How a group loses channels: (step, block key per channel; None for one by one).

        Through attention modules: whole heads (key = head index, step = head
        size) where ``num_heads`` names them, else the same positions of every
        head (key = position in the head, step = number of heads). Through
        grouped convolutions: the same position of every convolution group
        (key = position, step = groups), the only pruning that keeps each
        group's slice of the weight whole. A reason string means the group
        cannot be pruned soundly and is left out.
        """
        mhas = [
            m
            for m in dict.fromkeys(members)
            if isinstance(m, nn.MultiheadAttention) or _opaque.is_attention(m)
        ]
        grouped = [m for m in dict.fromkeys(members) if _layers.is_grouped(m)]
        if mhas and grouped:
            return "couples attention with grouped convolutions"
        if grouped:
            return self._grouped_blocks(dg, grouped, ops, channels, names)
        if not mhas:
            return 1, None
        by_heads = [m in self._heads for m in mhas]
        if any(by_heads) and not all(by_heads):
            missing = [names[m] for m, h in zip(mhas, by_heads, strict=True) if not h]
            return f"shares channels with attention modules not in num_heads: {', '.join(missing)}"
        layouts = {
            _opaque.attention_layout(m) if _opaque.is_attention(m) else (m.embed_dim, m.num_heads)
            for m in mhas
        }
        if len(layouts) > 1:
            return f"couples attention modules with different head layouts {sorted(layouts)}"
        embed, heads = layouts.pop()
        if embed != channels or embed % heads:
            return f"attention embedding {embed} with {heads} heads is not the group's {channels}"
        head_dim = embed // heads
        op = next(o for o in ops if o.target == names[mhas[0]])
        keys = np.full(channels, -1, dtype=np.int64)
        index = op.idxs
        keys[op.roots] = index // head_dim if all(by_heads) else index % head_dim
        if (keys < 0).any():
            return "attention channels that do not map one-to-one to the group"
        return (head_dim if all(by_heads) else heads), keys

    def _grouped_blocks(
        self,
        dg: Any,
        grouped: Sequence[nn.Module],
        ops: Sequence[_Op],
        channels: int,
        names: dict[nn.Module, str],
    ) -> tuple[int, np.ndarray] | str:
        keys: np.ndarray | None = None
        step = 0
        for conv in grouped:
            for op in ops:
                if op.target != names[conv] or op.is_param:
                    continue
                out = dg.is_out_channel_pruning_fn(op.handler)
                size = conv.out_channels if out else conv.in_channels
                per_group = size // conv.groups
                if len(op.idxs) != channels:
                    return f"grouped convolution {names[conv]} takes part of the group's channels"
                mine = np.full(channels, -1, dtype=np.int64)
                mine[op.roots] = op.idxs % per_group
                if keys is None:
                    keys, step = mine, conv.groups
                elif conv.groups != step or not np.array_equal(keys, mine):
                    return "couples grouped convolutions whose groups do not line up"
        if keys is None or (keys < 0).any():
            return "grouped convolution channels that do not map one-to-one to the group"
        return step, keys

    # ------------------------------------------------------------- policies
    def __len__(self) -> int:
        return len(self.units)

    def _check(self, policy: Policy) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"expected a Policy, got {type(policy).__name__}")
        if policy.granularity != self.granularity:
            raise ConfigError(
                f"a channel space takes policies of granularity 'channel', got {policy.granularity!r}"
            )
        if len(policy.keep) != len(self.units):
            raise ConfigError(
                f"the policy has {len(policy.keep)} keep ratios but the space has "
                f"{len(self.units)} units"
            )

    def channels_for(self, keep: float, channels: int, *, step: int = 1) -> int:
        """Channels kept of ``channels`` at ratio ``keep`` (min_keep, round_to and ``step`` applied).

        The count is a multiple of lcm(round_to, step); a unit smaller than
        that multiple keeps everything.
        """
        r = math.lcm(self.round_to, max(1, int(step)))
        if r > channels:
            return int(channels)
        want = max(float(keep), self.min_keep) * channels
        n = math.floor(want / r + 0.5 + 1e-9) * r
        return int(min(channels, max(r, n)))

    def unit_channels_for(self, keep: float, unit: Unit) -> int:
        """Channels ``unit`` keeps at ratio ``keep``: snapped to its ``channel_choices`` if any."""
        step = max(1, int(unit.step))
        allowed = [
            c for c in self.channel_choices.get(unit.id, ()) if c % step == 0 or c == unit.channels
        ]
        if not allowed:
            return self.channels_for(keep, unit.channels, step=step)
        want = max(float(keep), self.min_keep) * unit.channels
        n = max(1, math.floor(want + 0.5 + 1e-9))
        return next((c for c in allowed if c >= n), allowed[-1])

    def _kept(self, policy: Policy) -> list[int]:
        self._check(policy)
        return [
            self.unit_channels_for(k, u)
            for k, u in zip(policy.aligned(self).keep, self.units, strict=True)
        ]

    def kept_channels(self, policy: Policy) -> dict[str, int]:
        """Channels each unit keeps under ``policy``, by unit id."""
        return {u.id: k for u, k in zip(self.units, self._kept(policy), strict=True)}

    def shape_key(self, policy: Policy) -> str:
        """A key of the pruned architecture: policies that round to the same channels share it."""
        kept = self._kept(policy)
        blob = json.dumps([self._signature, self.granularity, kept]).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def channel_importance(self) -> list[np.ndarray]:
        """Each unit's channel scores by the space's ``importance`` criterion (dense channel
        order; unnormalised): the scores that decided which channels a pruned unit keeps."""
        return [np.asarray(p.scores, dtype=np.float64).copy() for p in self._plans]

    def describe(self) -> list[dict[str, Any]]:
        """Per-unit features (index, channels, kind, geometry, MAC and parameter shares)."""
        return [u.features() for u in self.units]

    # --------------------------------------------------------------- apply
    def apply(self, policy: Policy) -> nn.Module:
        """A physically pruned deep copy of the dense model (the dense model is not touched)."""
        return self._apply_kept(self._kept(policy))

    def _apply_kept(self, kept: Sequence[int]) -> nn.Module:
        """The dense model with each unit cut to ``kept[i]`` channels (no rounding applied)."""
        calls: dict[tuple[str, Any], tuple[_Op, list[np.ndarray]]] = {}
        for unit, plan, k in zip(self.units, self._plans, kept, strict=True):
            if k >= unit.channels:
                continue
            drop = np.zeros(unit.channels, dtype=bool)
            drop[plan.order[k:]] = True
            for op in plan.ops:
                sel = op.idxs[drop[op.roots]]
                if sel.size:
                    calls.setdefault((op.target, op.handler), (op, []))[1].append(sel)
        pruned = _layers.copy_sharing_tensors(self.model)
        modules = dict(pruned.named_modules())
        for (target, _), (op, parts) in calls.items():
            # Indices of one dimension of one layer, all in dense coordinates: one call each.
            idxs = np.unique(np.concatenate(parts)).tolist()
            if op.is_param:
                parent_name, _, attr = target.rpartition(".")
                parent = pruned.get_submodule(parent_name) if parent_name else pruned
                op.handler.__self__.pruning_dim = op.pruning_dim
                setattr(parent, attr, op.handler(pruned.get_parameter(target), idxs))
            else:
                op.handler(modules[target], idxs)
        self._fix_attributes(pruned)
        _layers.unshare_tensors(pruned, self.model)
        _layers.check_ties(pruned, self._ties)
        return pruned

    def _fix_attributes(self, pruned: nn.Module) -> None:
        """Attributes the forward pass reads that Torch-Pruning's layer functions do not update."""
        for name, module in pruned.named_modules():
            if isinstance(module, nn.MultiheadAttention) and name in self._head_dims:
                module.head_dim = self._head_dims[name]
                module.num_heads = module.embed_dim // module.head_dim
            fix = _FIXUPS.get(type(module).__name__)
            if fix is not None:
                fix(module)
        if self._transformer is not None:
            _attention.fix_pruned(pruned, self._transformer)

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hwprune.errors import ConfigError
from hwprune.space import _layers
from hwprune.space.importance import get_criterion
from hwprune.space.policy import Policy

log = logging.getLogger(__name__)

__all__ = ["ChannelSpace", "Unit"]

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Unit:
    """One prunable unit: a coupled channel group (ChannelSpace) or one layer's weights (WeightSpace).

    ``id`` is stable across runs (the root layer's module name); ``layers``
    are the module names whose parameters the unit changes; ``channels`` the
    number of prunable channels (ChannelSpace) or output channels of the layer
    (WeightSpace); ``numel`` the root layer's weight count. ``in_channels`` ..
    ``padding`` describe the root layer (largest spatial value for non-square
    kernels). ``flops_share`` / ``params_share`` are the dense model's MACs and
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
    order: np.ndarray  # the unit's channels, most important first


def _kind(root: nn.Module, members: Sequence[nn.Module]) -> str:
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


class ChannelSpace:
    """Every coupled channel group of a model, pruned by removing channels for real.

    ``keep`` ratios map to channel counts by ``round(max(keep, min_keep) *
    channels)`` rounded to a multiple of ``round_to`` (kept between
    ``max(1, round_to)`` and ``channels``). Which channels go is fixed once
    from the dense weights by ``importance`` ("l2" by default, "l1", "taylor" with a
    ``calibration`` batch, "random" with ``seed``). The layers that produce
    the model's output (the classifier) are found automatically and their
    output channels never pruned; ``ignored_layers`` (names or modules) adds
    more. Grouped (non-depthwise) convolutions are left out.

    ``channel_choices`` (unit id -> allowed kept-channel counts, e.g. from
    ``hwprune.space.staircase.probe_staircase(...).choices()``) replaces
    ``round_to`` for the units it names: the count ``keep`` asks for is snapped
    up to the smallest allowed count at or above it (the top of the latency
    step it falls in), and the unit's full count is always allowed. Units it
    does not name keep ``round_to``.

    Example::

        space = ChannelSpace(model, example_input_shape=(1, 3, 32, 32), round_to=8)
        small = space.apply(Policy.uniform(space, 0.5))
    """

    granularity = "channel"
    pattern = None

    def __init__(
        self,
        model: nn.Module,
        *,
        example_input_shape: Sequence[int] = (1, 3, 32, 32),
        importance: str = "l2",
        round_to: int = 1,
        min_keep: float = 0.1,
        ignored_layers: Iterable[str | nn.Module] | None = None,
        calibration: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int = 0,
        channel_choices: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        import torch_pruning as tp

        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
        if not 0.0 <= float(min_keep) <= 1.0:
            raise ConfigError(f"min_keep must lie in [0, 1], got {min_keep!r}")
        shape = tuple(int(s) for s in example_input_shape)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ConfigError(
                f"example_input_shape must be a batch shape such as (1, 3, 32, 32), got {shape}"
            )
        criterion = get_criterion(importance)
        if criterion.needs_gradients and calibration is None:
            raise ConfigError(
                f"importance {criterion.name!r} needs gradients: pass calibration=(inputs, labels) "
                "or a batch of inputs"
            )

        self.model = model
        self.example_input_shape = shape
        self.importance = criterion.name
        self.round_to = round_to
        self.min_keep = float(min_keep)
        self.seed = seed

        example = _layers.example_input(model, shape)
        prof = _layers.profile(model, example)
        self.dense_params = prof.total_params
        self.dense_macs = prof.total_macs

        names = {m: n for n, m in model.named_modules()}
        position = {n: i for i, n in enumerate(names.values())}
        user_ignored = _layers.resolve_names(model, ignored_layers)

        was_training = model.training
        model.eval()  # tracing runs a forward pass; BN statistics must not move
        try:
            with torch.enable_grad():
                dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example, verbose=False
                )
            finals = _final_layers(dg)
            self.output_layers = tuple(sorted((names[m] for m in finals), key=position.get))
            ignored = [m for n, m in model.named_modules() if n in user_ignored] + finals
            groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=_PRUNABLE))
            scorer = criterion.build(seed)
            saved_grads = None
            if criterion.needs_gradients:
                saved_grads = self._backward(calibration)
            try:
                units, plans = self._plan(dg, groups, scorer, names, position, prof)
            finally:
                if saved_grads is not None:
                    for p, g in saved_grads.items():
                        p.grad = g
        finally:
            model.train(was_training)

        order = sorted(range(len(units)), key=lambda i: position[units[i]["id"]])
        self.units: list[Unit] = [Unit(index=j, **units[i]) for j, i in enumerate(order)]
        self._plans: list[_Plan] = [plans[i] for i in order]
        self.channel_choices = self._check_choices(channel_choices)
        self._signature = hashlib.sha256(
            json.dumps(
                [self.importance, self.seed, list(shape), [(u.id, u.channels) for u in self.units]]
            ).encode()
        ).hexdigest()[:16]
        log.info(
            "channel space: %d units, %d params, %d MACs, output layers %s",
            len(self.units),
            self.dense_params,
            self.dense_macs,
            ", ".join(self.output_layers) or "none",
        )

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
        dg: Any,
        groups: list[Any],
        scorer: Any,
        names: dict[nn.Module, str],
        position: dict[str, int],
        prof: _layers.LayerProfile,
    ) -> tuple[list[dict[str, Any]], list[_Plan]]:
        units: list[dict[str, Any]] = []
        plans: list[_Plan] = []
        param_names = getattr(dg, "_param_to_name", {})
        for group in groups:
            members = [dep.target.module for dep, _ in group]
            grouped = [
                names[m] for m in members if isinstance(m, nn.Module) and _layers.is_grouped(m)
            ]
            if grouped:
                log.info("skipping a channel group through grouped convolutions %s", grouped)
                continue
            ops: list[_Op] = []
            layer_names: set[str] = set()
            out_layers: list[nn.Module] = []
            for item in group:
                dep, idxs = item.dep, item.idxs
                target = dep.target.module
                if isinstance(target, nn.Parameter):
                    if target not in param_names:
                        continue
                    tname, is_param = param_names[target], True
                elif isinstance(target, nn.Module) and target in names:
                    tname, is_param = names[target], False
                    layer_names.add(tname)
                    if isinstance(target, _PRUNABLE) and dg.is_out_channel_pruning_fn(dep.handler):
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
            if not out_layers:
                continue
            channels = len(group[0].idxs)
            root = min(
                out_layers,
                key=lambda m: (_layers.is_depthwise(m), position[names[m]]),
            )
            with torch.no_grad():
                scores = scorer(group)
            if scores is None or len(scores) != channels:
                raise RuntimeError(
                    f"importance {self.importance!r} gave no score for the group of {names[root]}"
                )
            scores = torch.nan_to_num(scores.detach().float().cpu(), nan=0.0)
            order = np.argsort(-scores.numpy(), kind="stable").astype(np.int64)
            layers = tuple(sorted(layer_names, key=position.get))
            units.append(
                {
                    "id": names[root],
                    "layers": layers,
                    "channels": channels,
                    "kind": _kind(root, members),
                    **_layers.geometry(root),
                    "flops_share": sum(prof.macs.get(n, 0) for n in layers)
                    / max(1, prof.total_macs),
                    "params_share": sum(prof.params.get(n, 0) for n in layers)
                    / max(1, prof.total_params),
                    "numel": int(root.weight.numel()),
                }
            )
            plans.append(_Plan(ops=tuple(ops), order=order))
        if not units:
            raise ConfigError(
                "the model has no prunable channel group (every Conv/Linear output is ignored "
                "or feeds the model output)"
            )
        return units, plans

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

    def channels_for(self, keep: float, channels: int) -> int:
        """Channels kept of ``channels`` at ratio ``keep`` (min_keep and round_to applied)."""
        r = self.round_to
        want = max(float(keep), self.min_keep) * channels
        n = math.floor(want / r + 0.5 + 1e-9) * r
        return int(min(channels, max(min(channels, r), 1, n)))

    def unit_channels_for(self, keep: float, unit: Unit) -> int:
        """Channels ``unit`` keeps at ratio ``keep``: snapped to its ``channel_choices`` if any."""
        allowed = self.channel_choices.get(unit.id)
        if not allowed:
            return self.channels_for(keep, unit.channels)
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
                setattr(parent, attr, op.handler(getattr(parent, attr), idxs))
            else:
                op.handler(modules[target], idxs)
        _layers.unshare_tensors(pruned, self.model)
        return pruned

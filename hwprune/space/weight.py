"""Weight pruning space (QLP granularity): per-layer density by magnitude, unstructured or 2:4.

Weights are zeroed, not removed: the model keeps its shapes and the exported
ONNX stores the zeros. Unstructured sparsity only pays where a runtime or a
compressor exploits it; 2:4 ("two of every four consecutive input weights")
is the pattern NVIDIA sparse tensor cores accelerate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

import hwprune.space._layers as _layers
from hwprune.errors import ConfigError
from hwprune.space.channel import Skipped, Unit, _expand, _profile, _resolve_inputs
from hwprune.space.policy import PATTERNS, Policy

log = logging.getLogger(__name__)

__all__ = ["WeightSpace", "two_four_mask"]

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _reduction_last(weight: torch.Tensor) -> torch.Tensor:
    """View a Conv/Linear weight with the input-channel axis last: [out, *kernel, in]."""
    if weight.dim() == 2:
        return weight
    return weight.movedim(1, -1)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask of a weight: in every 4 consecutive input channels keep the 2 largest |w|.

    Groups run along the input-channel axis at each (output, kernel position),
    the reduction axis of the GEMM that sparse tensor cores run. The input
    channels (per group) must be a multiple of 4.
    """
    moved = _reduction_last(weight.detach())
    if moved.shape[-1] % 4:
        raise ConfigError(
            f"2:4 sparsity needs input channels in multiples of 4, got {moved.shape[-1]}"
        )
    groups = moved.abs().reshape(-1, 4)
    top = groups.topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    mask = mask.reshape(moved.shape)
    return mask if weight.dim() == 2 else mask.movedim(-1, 1)


def _zero_smallest(w: torch.Tensor, *, n_drop: int, sorted_abs: torch.Tensor) -> None:
    """Zero exactly ``n_drop`` smallest-|w| entries of ``w`` in place."""
    threshold = sorted_abs[n_drop - 1].item()
    flat = w.view(-1)
    drop = flat.abs() <= threshold
    if int(drop.sum()) != n_drop:
        # Ties at the threshold (e.g. weights already zero): fall back to an exact ranking.
        order = torch.argsort(flat.abs(), stable=True)
        drop = torch.zeros_like(drop)
        drop[order[:n_drop]] = True
    flat.masked_fill_(drop, 0)


def _two_four_ok(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return module.in_features % 4 == 0
    return (not module.transposed) and (module.in_channels // module.groups) % 4 == 0


def _kind(module: nn.Module) -> str:
    if _layers.is_depthwise(module):
        return "depthwise"
    if isinstance(module, nn.Linear):
        return "linear"
    return "transposed" if module.transposed else "conv"


class WeightSpace:
    """Every Conv/Linear weight of a model, pruned by zeroing its smallest-magnitude entries.

    One unit per layer, the classifier included (zeroing weights never
    changes an output shape, and QLP prunes every layer); pass
    ``ignored_layers`` to leave layers dense. ``example_inputs`` (a tensor, a
    tuple or a dict of tensors) or ``example_input_shape`` (one float input)
    is what the model is called with. A policy's keep ratio is the
    layer's weight density: "unstructured" keeps ``round(max(keep, min_keep)
    * numel)`` largest-|w| weights per layer; "2:4" keeps a layer dense for
    keep >= 0.75 and 2:4-sparse (density 0.5) below, and only layers whose
    input channels (per group) are a multiple of 4 are units.

    Example::

        space = WeightSpace(model, example_input_shape=(1, 3, 32, 32), pattern="2:4")
        sparse = space.apply(Policy.uniform(space, 0.5))
    """

    granularity = "weight"
    # Zeroing weights never changes an output shape: no layer is kept dense for the model's
    # outputs (ChannelSpace names the layers whose output channels it never prunes).
    output_layers: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        *,
        example_inputs: Any = None,
        example_input_shape: Sequence[int] = (1, 3, 32, 32),
        pattern: str = "unstructured",
        min_keep: float = 0.02,
        ignored_layers: Iterable[str | nn.Module] | None = None,
    ) -> None:
        if pattern not in PATTERNS:
            raise ConfigError(
                f"weight pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}"
            )
        if not 0.0 <= float(min_keep) <= 1.0:
            raise ConfigError(f"min_keep must lie in [0, 1], got {min_keep!r}")
        inputs = _resolve_inputs(example_inputs, example_input_shape, model=model)
        self.model = model
        self.pattern = pattern
        self.min_keep = float(min_keep)
        self.example_inputs = inputs.to(_layers.model_device(model))
        self.example_input_shape = inputs.first_shape
        self.skipped: list[Skipped] = []

        prof = _profile(model, self.example_inputs)
        self.dense_params = prof.total_params
        self.dense_macs = prof.total_macs
        ignored = _expand(model, _layers.resolve_names(model, ignored_layers))
        followers = self._resolve_ties()
        self._sorted: list[torch.Tensor] = []  # |w| ascending, per layer (unstructured)
        self._masks: list[torch.Tensor] = []  # 2:4 masks
        with torch.no_grad():
            self.units = self._build_units(prof, ignored=ignored, followers=followers)
        if not self.units:
            raise ConfigError(
                f"the model has no Conv/Linear weight to prune with pattern {pattern!r}"
            )
        self._signature = hashlib.sha256(
            json.dumps(
                [
                    pattern,
                    [list(s) for s in self.example_inputs.shapes.values()],
                    [(u.id, u.numel) for u in self.units],
                ]
            ).encode()
        ).hexdigest()[:16]

    def _resolve_ties(self) -> set[str]:
        """Layers that share one weight Parameter (a tie) are one unit: the first holder's,
        masked once and set on every holder, so the pruned model keeps one tensor. A weight
        also held elsewhere (an embedding tied to a Linear head) stays dense. Returns the
        layers that are no unit of their own (later holders and dense ones)."""
        model = self.model
        self._ties = _layers.tied_parameters(model)
        self._tied: dict[str, tuple[str, ...]] = {}
        followers: set[str] = set()
        layers = {n for n, m in model.named_modules() if isinstance(m, _LAYERS)}
        for holders in self._ties:
            owners = [h.rpartition(".")[0] for h in holders]
            if all(h.endswith(".weight") for h in holders) and all(o in layers for o in owners):
                self._tied[owners[0]] = tuple(owners[1:])
                followers.update(owners[1:])
            else:
                dense = [
                    o
                    for o, h in zip(owners, holders, strict=True)
                    if o in layers and h.endswith(".weight")
                ]
                if dense:
                    log.info("weights of %s left dense: tied to %s", dense, holders)
                followers.update(dense)
        return followers

    def _build_units(
        self, prof: _layers.LayerProfile, *, ignored: set[str], followers: set[str]
    ) -> list[Unit]:
        """One unit per prunable layer, with its sorted magnitudes or its 2:4 mask recorded."""
        units: list[Unit] = []
        for name, module in self.model.named_modules():
            if not isinstance(module, _LAYERS) or name in ignored or name in followers:
                continue
            if module.weight is None:
                continue
            if self.pattern == "2:4" and not _two_four_ok(module):
                log.debug("2:4: leaving %s dense (input channels not a multiple of 4)", name)
                continue
            tied = self._tied.get(name, ())
            if any(n in ignored for n in tied):
                log.info("weights of %s left dense: tied to the ignored %s", name, tied)
                continue
            w = module.weight.detach()
            layers = (name, *tied)
            units.append(
                Unit(
                    id=name,
                    index=len(units),
                    layers=layers,
                    channels=int(w.shape[0]),
                    kind=_kind(module),
                    **_layers.geometry(module),
                    flops_share=sum(prof.macs.get(n, 0) for n in layers) / max(1, prof.total_macs),
                    params_share=w.numel() / max(1, prof.total_params),
                    numel=int(w.numel()),
                )
            )
            if self.pattern == "2:4":
                self._masks.append(two_four_mask(w).cpu())
            else:
                self._sorted.append(w.abs().flatten().cpu().sort().values)
        return units

    def __len__(self) -> int:
        return len(self.units)

    # ------------------------------------------------------------- policies
    def _check(self, policy: Policy) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"expected a Policy, got {type(policy).__name__}")
        if policy.granularity != "weight" or policy.pattern != self.pattern:
            raise ConfigError(
                f"this weight space takes policies of granularity 'weight' and pattern "
                f"{self.pattern!r}, got {policy.granularity!r} / {policy.pattern!r}"
            )
        if len(policy.keep) != len(self.units):
            raise ConfigError(
                f"the policy has {len(policy.keep)} keep ratios but the space has "
                f"{len(self.units)} units"
            )

    def weights_for(self, keep: float, numel: int) -> int:
        """Non-zero weights kept of ``numel`` at density ``keep`` (min_keep and the pattern applied)."""
        if self.pattern == "2:4":
            return numel if keep >= 0.75 else numel // 2
        n = math.floor(max(float(keep), self.min_keep) * numel + 0.5 + 1e-9)
        return int(min(numel, max(1, n)))

    def _kept(self, policy: Policy) -> list[int]:
        self._check(policy)
        keep = policy.aligned(self).keep
        return [self.weights_for(k, u.numel) for k, u in zip(keep, self.units, strict=True)]

    def kept_weights(self, policy: Policy) -> dict[str, int]:
        """Non-zero weights each layer keeps under ``policy``, by unit id."""
        return {u.id: k for u, k in zip(self.units, self._kept(policy), strict=True)}

    def densities(self, policy: Policy) -> dict[str, float]:
        """The density each layer actually gets (after min_keep, rounding and the pattern)."""
        return {u.id: k / u.numel for u, k in zip(self.units, self._kept(policy), strict=True)}

    def nonzero_params(self, policy: Policy) -> int:
        """Parameters of the pruned model that are not zeroed by the policy."""
        kept = self._kept(policy)
        return self.dense_params - sum(u.numel - k for u, k in zip(self.units, kept, strict=True))

    def shape_key(self, policy: Policy) -> str:
        """A key of the pruned model: the pattern and every layer's kept weight count."""
        blob = json.dumps([self._signature, self.granularity, self._kept(policy)]).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def describe(self) -> list[dict[str, Any]]:
        """Per-layer features (index, kind, geometry, MAC and parameter shares)."""
        return [u.features() for u in self.units]

    # --------------------------------------------------------------- apply
    def apply(self, policy: Policy) -> nn.Module:
        """A copy of the dense model with the policy's weights zeroed (masks folded in)."""
        kept = self._kept(policy)
        pruned = _layers.copy_sharing_tensors(self.model)
        modules = dict(pruned.named_modules())
        with torch.no_grad():
            for i, (unit, k) in enumerate(zip(self.units, kept, strict=True)):
                if k >= unit.numel:
                    continue
                module = modules[unit.id]
                w = module.weight.detach().clone(memory_format=torch.contiguous_format)
                if self.pattern == "2:4":
                    w.mul_(self._masks[i].to(w.device))
                else:
                    _zero_smallest(w, n_drop=unit.numel - k, sorted_abs=self._sorted[i])
                module.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
                for name in self._tied.get(unit.id, ()):
                    modules[name].weight = module.weight
        _layers.unshare_tensors(pruned, self.model)
        _layers.check_ties(pruned, self._ties)
        return pruned

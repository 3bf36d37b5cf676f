"""A pruning policy: one keep ratio per unit of a prune space."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hwprune.config import GRANULARITIES
from hwprune.errors import ConfigError

__all__ = ["PATTERNS", "Policy"]

PATTERNS = ("unstructured", "2:4")
# What a policy's keep ratios count: channels, or weight density. The run's "2:4" granularity
# is a weight policy with the "2:4" pattern.
_POLICY_GRANULARITIES = tuple(g for g in GRANULARITIES if g not in PATTERNS)


def _require_same_units(ids: Sequence[str], names: Sequence[str] | Mapping[str, Any]) -> None:
    """ConfigError unless ``names`` are exactly the space's unit ``ids`` (in any order)."""
    missing = [i for i in ids if i not in set(names)]
    unknown = [k for k in names if k not in set(ids)]
    if missing or unknown or len(names) != len(ids):
        parts = []
        if missing:
            parts.append(f"missing units {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unknown:
            parts.append(f"unknown units {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        raise ConfigError(
            f"the policy does not match the model's {len(ids)} prunable units: "
            + ("; ".join(parts) or "a unit is named twice")
        )


def _fmt(values: Sequence[float]) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}]"


@dataclass(frozen=True)
class Policy:
    """What to keep of each unit of a prune space, in the space's unit order.

    ``keep[i]`` is the fraction of unit ``i`` to keep: channels for a
    ``ChannelSpace`` (granularity "channel"), weight density for a
    ``WeightSpace`` (granularity "weight", with ``pattern`` "unstructured" or
    "2:4"). A policy does not know its space; ``space.apply(policy)`` checks
    that the lengths match.

    Example::

        policy = Policy.uniform(space, 0.5)
        small = space.apply(policy)
    """

    keep: tuple[float, ...]
    granularity: str = "channel"
    pattern: str | None = None
    # Unit ids in order, when known: lets a policy read back from policy.json
    # without its space keep the mapping (not part of equality or hashing).
    unit_ids: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            keep = tuple(float(k) for k in self.keep)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"policy keep ratios must be numbers, got {self.keep!r}") from exc
        bad = [k for k in keep if not (math.isfinite(k) and 0.0 <= k <= 1.0)]
        if bad:
            # Tolerate float noise from arithmetic such as min_keep + s * (k - min_keep).
            if all(math.isfinite(k) and -1e-9 <= k <= 1.0 + 1e-9 for k in bad):
                keep = tuple(min(1.0, max(0.0, k)) for k in keep)
            else:
                raise ConfigError(
                    f"policy keep ratios must lie in [0, 1], got {_fmt(bad)} "
                    f"(among {len(keep)} values)"
                )
        object.__setattr__(self, "keep", keep)
        if self.granularity not in _POLICY_GRANULARITIES:
            raise ConfigError(
                f"policy granularity must be one of {', '.join(_POLICY_GRANULARITIES)}, "
                f"got {self.granularity!r}"
            )
        if self.granularity == "weight":
            pattern = self.pattern or "unstructured"
            if pattern not in PATTERNS:
                raise ConfigError(
                    f"weight pattern must be one of {', '.join(PATTERNS)}, got {self.pattern!r}"
                )
            object.__setattr__(self, "pattern", pattern)
        elif self.pattern is not None:
            raise ConfigError(
                f"a pattern ({self.pattern!r}) is only accepted with granularity 'weight', "
                f"got granularity {self.granularity!r}"
            )
        if self.unit_ids is not None:
            ids = tuple(str(u) for u in self.unit_ids)
            if len(ids) != len(keep):
                raise ConfigError(f"policy has {len(keep)} keep ratios but {len(ids)} unit ids")
            object.__setattr__(self, "unit_ids", ids)

    def __len__(self) -> int:
        return len(self.keep)

    # ----------------------------------------------------------- constructors
    @classmethod
    def uniform(cls, space: Any, keep: float) -> Policy:
        """The same keep ratio for every unit of ``space``."""
        return cls(
            keep=(float(keep),) * len(space.units),
            granularity=space.granularity,
            pattern=space.pattern,
            unit_ids=tuple(u.id for u in space.units),
        )

    @classmethod
    def dense(cls, space: Any) -> Policy:
        """The policy that keeps everything (the dense model)."""
        return cls.uniform(space, 1.0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, space: Any = None) -> Policy:
        """Read a policy written by ``to_dict`` (policy.json).

        ``data["keep"]`` maps unit id to keep ratio. With ``space`` the ids
        must be exactly the space's unit ids (in any order); without it the
        mapping's order is the unit order.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("keep"), Mapping):
            raise ConfigError(
                "a policy must be a mapping with a 'keep' mapping of unit id to keep ratio, "
                f"got {type(data).__name__}"
            )
        keep_map = {str(k): v for k, v in data["keep"].items()}
        granularity = data.get("granularity", "channel")
        pattern = data.get("pattern")
        if space is None:
            return cls(
                keep=tuple(keep_map.values()),
                granularity=granularity,
                pattern=pattern,
                unit_ids=tuple(keep_map),
            )
        ids = [u.id for u in space.units]
        _require_same_units(ids, keep_map)
        return cls(
            keep=tuple(keep_map[i] for i in ids),
            granularity=granularity,
            pattern=pattern,
            unit_ids=tuple(ids),
        )

    def aligned(self, space: Any) -> Policy:
        """This policy with its keep ratios in ``space``'s unit order.

        A policy that names its units (``unit_ids``) is matched to the space by
        name: a policy read back from JSON lists its units in the file's key
        order, which need not be the space's (``features.10`` sorts before
        ``features.3``). One without names, or named by position ("0", "1", ...),
        is taken in order. Names that do not match the space raise ConfigError.
        """
        ids = tuple(u.id for u in space.units)
        mine = self.unit_ids
        if mine is None or mine == ids or mine == tuple(str(i) for i in range(len(self.keep))):
            return self
        _require_same_units(ids, mine)
        by_id = dict(zip(mine, self.keep, strict=True))
        return Policy(
            keep=tuple(by_id[i] for i in ids),
            granularity=self.granularity,
            pattern=self.pattern,
            unit_ids=ids,
        )

    def to_dict(self, space: Any = None) -> dict[str, Any]:
        """A JSON-ready form, keyed by unit id (by position when no ids are known)."""
        keep = self.keep
        if space is not None:
            ids: Sequence[str] = [u.id for u in space.units]
            if len(ids) != len(self.keep):
                raise ConfigError(
                    f"policy has {len(self.keep)} keep ratios but the space has {len(ids)} units"
                )
            keep = self.aligned(space).keep
        elif self.unit_ids is not None:
            ids = self.unit_ids
        else:
            ids = [str(i) for i in range(len(self.keep))]
        out: dict[str, Any] = {"granularity": self.granularity}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        out["keep"] = {i: k for i, k in zip(ids, keep, strict=True)}
        return out

    # ------------------------------------------------------------- helpers
    def clip(self, min_keep: float, max_keep: float = 1.0) -> Policy:
        """The same policy with every keep ratio clipped to [min_keep, max_keep]."""
        if not 0.0 <= min_keep <= max_keep <= 1.0:
            raise ConfigError(
                f"clip bounds must satisfy 0 <= min_keep <= max_keep <= 1, "
                f"got min_keep={min_keep}, max_keep={max_keep}"
            )
        return Policy(
            keep=tuple(min(max_keep, max(min_keep, k)) for k in self.keep),
            granularity=self.granularity,
            pattern=self.pattern,
            unit_ids=self.unit_ids,
        )

    def with_keep(self, keep: Sequence[float]) -> Policy:
        """The same kind of policy with new keep ratios."""
        return Policy(
            keep=tuple(keep),
            granularity=self.granularity,
            pattern=self.pattern,
            unit_ids=self.unit_ids if self.unit_ids and len(self.unit_ids) == len(keep) else None,
        )

"""Budgets: parsed once from text into ``Budget`` objects, then bound to the oracle that judges each.

Text (``latency<=2.5ms``, ``params<=50%``, ``--oracle latency=SPEC``) is parsed
where it enters: ``PruneConfig`` (the CLI, config files, config.json, the API's
``budgets=``) holds ``Budget`` objects and a checked {quantity: spec} map, and
``bind_constraints`` builds each budget's oracle once into a ``Constraint``
(``Constraint.judge``) that the run passes on.

Example::

    (c,) = bind_constraints(parse_budgets(["latency<=50%"]))
    c.judge.spec                     # 'onnxruntime:cpu?threads=1'
    c.resolve(2.0).bound             # 1.0 (ms): half of the dense model's 2 ms
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from hwprune.errors import BudgetError

if TYPE_CHECKING:
    from oracles import Oracle

__all__ = [
    "QUANTITIES",
    "Budget",
    "Constraint",
    "parse_budget",
    "parse_budgets",
    "parse_oracle_overrides",
    "bind_constraints",
    "format_value",
]


@dataclass(frozen=True)
class Quantity:
    """A constrainable quantity: its default oracle, base unit and accepted unit suffixes."""

    name: str
    oracle: str
    unit: str
    units: Mapping[str, float]


_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTE_UNITS = {
    "": 1.0,
    "b": 1.0,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 2.0**10,
    "mib": 2.0**20,
    "gib": 2.0**30,
}

QUANTITIES: dict[str, Quantity] = {
    "latency": Quantity(
        "latency", "onnxruntime:cpu?threads=1", "ms", {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
    ),
    "params": Quantity("params", "params", "params", _COUNT_UNITS),
    "flops": Quantity("flops", "flops", "MAC", _COUNT_UNITS),
    "memory": Quantity("memory", "peak-memory", "bytes", _BYTE_UNITS),
    "weight-memory": Quantity("weight-memory", "weight-memory", "bytes", _BYTE_UNITS),
}
_ALIASES = {"peak-memory": "memory", "macs": "flops", "mac": "flops", "parameters": "params"}

# re.ASCII: \d and \s must not match Arabic-Indic or full-width digits, nor exotic spaces.
_BUDGET_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_\-]*)\s*<=\s*(.+?)\s*$", re.ASCII)
_VALUE_RE = re.compile(
    r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-zµ%]*)$", re.ASCII
)
_EXAMPLE = (
    "expected a budget like 'latency<=2.5ms', 'latency<=50%', 'params<=1.2M' or 'memory<=64MiB'"
)


@dataclass(frozen=True)
class Budget:
    """An upper bound on one quantity: absolute in the quantity's unit, or a fraction of dense."""

    quantity: str
    limit: float
    relative: bool
    text: str

    def __str__(self) -> str:
        return self.text

    def bound(self, dense_value: float | None) -> float:
        """The absolute bound, given the dense model's value for relative budgets."""
        if not self.relative:
            return self.limit
        if dense_value is None:
            raise ValueError(f"budget {self.text!r} is relative and needs the dense model's value")
        return self.limit * dense_value


def _quantity(name: str, text: str, *, option: bool = False) -> Quantity:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in QUANTITIES:
        known = sorted(QUANTITIES)
        close = difflib.get_close_matches(key, known + list(_ALIASES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if option:
            raise BudgetError(
                f"unknown quantity {name!r} for --oracle {text!r}.{hint} "
                f"Accepted quantities: {', '.join(known)} (as in --oracle latency=SPEC)"
            )
        raise BudgetError(
            f"budget {text!r} names {name!r}, which no oracle measures.{hint} "
            f"Measurable quantities: {', '.join(known)}"
        )
    return QUANTITIES[key]


def parse_budget(text: str) -> Budget:
    """Parse ``quantity<=value[unit|%]``.

    >>> parse_budget("latency<=2.5ms")
    Budget(quantity='latency', limit=2.5, relative=False, text='latency<=2.5ms')
    >>> parse_budget("params<=1.2M").limit
    1200000.0
    """
    if not isinstance(text, str):
        raise BudgetError(f"{_EXAMPLE}, got {text!r}")
    odd = next((c for c in text if not c.isascii() and c != "µ"), None)
    if odd is not None:
        # float() reads '٥' and '１' as digits; a budget that looks like another should not parse.
        raise BudgetError(
            f"budget {text!r} contains the non-ASCII character {odd!r} (U+{ord(odd):04X}); "
            f"write it in ASCII as quantity<=number[unit|%], e.g. 'latency<=2.5ms', "
            "'params<=1.2M', 'memory<=64MiB' or 'latency<=50%'"
        )
    m = _BUDGET_RE.match(text)
    if not m:
        raise BudgetError(f"{_EXAMPLE}, got {text!r} (only '<=' bounds are accepted)")
    quantity = _quantity(m.group(1), text)
    vm = _VALUE_RE.match(m.group(2))
    if not vm:
        raise BudgetError(f"{_EXAMPLE}, got {text!r}: {m.group(2)!r} is not a number with a unit")
    number = float(vm.group(1))
    suffix = vm.group(2)
    if not math.isfinite(number):
        raise BudgetError(f"budget {text!r} must be a finite number, got {vm.group(1)!r}")
    if number <= 0:
        raise BudgetError(f"budget {text!r} must be a positive number, got {number:g}")
    if suffix == "%":
        if number > 100:
            raise BudgetError(
                f"budget {text!r}: a relative budget must be at most 100%, got {number:g}%"
            )
        return Budget(quantity.name, number / 100.0, True, text.strip())
    if quantity.name == "latency" and suffix == "":
        raise BudgetError(f"budget {text!r} needs a unit: ms, us or s, or a percentage of dense")
    scale = quantity.units.get(suffix.lower() if suffix != "µs" else suffix)
    if scale is None:
        accepted = ", ".join(repr(u) for u in quantity.units if u) + ", '%'"
        raise BudgetError(
            f"budget {text!r}: unit {suffix!r} does not fit {quantity.name}; accepted: {accepted}"
        )
    limit = number * scale
    if not math.isfinite(limit):
        raise BudgetError(f"budget {text!r} is too large to be a finite number of {quantity.unit}")
    return Budget(quantity.name, limit, False, text.strip())


def parse_budgets(items: Iterable[str | Budget]) -> tuple[Budget, ...]:
    """Budgets from text (``Budget`` objects pass as they are), at most one per quantity.

    >>> [b.quantity for b in parse_budgets(["latency<=50%", "params<=1M"])]
    ['latency', 'params']
    """
    out = tuple(b if isinstance(b, Budget) else parse_budget(b) for b in items)
    seen: set[str] = set()
    for b in out:
        if b.quantity in seen:
            raise BudgetError(f"two budgets on {b.quantity}; give one bound per quantity")
        seen.add(b.quantity)
    return out


def parse_oracle_overrides(
    items: str | Iterable[str] | Mapping[str, str] | None,
) -> dict[str, str]:
    """``--oracle quantity=SPEC`` options (or a {quantity: spec} table) as {quantity: spec}.

    Quantity names are canonical afterwards (``peak-memory`` is ``memory``);
    the specs are checked when ``bind_constraints`` builds their oracles.

    >>> parse_oracle_overrides(["peak-memory = peak-memory"])
    {'memory': 'peak-memory'}
    """
    if items is None:
        return {}
    if isinstance(items, str):
        items = [items]
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            name, eq, spec = str(item).partition("=")
            if not eq:
                raise BudgetError(
                    f"expected --oracle QUANTITY=SPEC such as 'latency=onnxruntime:cpu?threads=1', "
                    f"got {item!r}"
                )
            pairs.append((name, spec))
    out: dict[str, str] = {}
    for name, spec in pairs:
        if not isinstance(name, str) or not isinstance(spec, str):
            raise BudgetError(
                f"expected --oracle QUANTITY=SPEC with text on both sides, got {name!r}={spec!r}"
            )
        if not name.strip() or not spec.strip():
            raise BudgetError(
                f"expected --oracle QUANTITY=SPEC such as 'latency=onnxruntime:cpu?threads=1', "
                f"got {f'{name}={spec}'!r}"
            )
        name, spec = name.strip(), spec.strip()
        out[_quantity(name, f"{name}={spec}", option=True).name] = spec
    return out


@dataclass(frozen=True)
class Constraint:
    """A budget bound to the oracle that judges it; ``bound`` is absolute once dense is measured.

    ``oracle`` is the oracle's canonical spec; ``judge`` the oracle object
    ``bind_constraints`` built from it (None for a constraint written by hand),
    passed on so that no later stage builds it again.
    """

    budget: Budget
    oracle: str
    bound: float | None = None
    dense_value: float | None = None
    judge: Oracle | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.budget.quantity

    @property
    def unit(self) -> str:
        return QUANTITIES[self.budget.quantity].unit

    def resolve(self, dense_value: float) -> Constraint:
        """Fix the absolute bound from the dense model's value (measured by this same oracle)."""
        return replace(self, bound=self.budget.bound(dense_value), dense_value=dense_value)

    def cost(self, value: float) -> float:
        """Measured value relative to the bound: <= 1 means the budget is met."""
        if self.bound is None:
            raise ValueError(f"constraint {self.budget.text!r} has no absolute bound yet")
        return value / self.bound

    def met(self, value: float) -> bool:
        return self.cost(value) <= 1.0

    def describe(self) -> str:
        text = self.budget.text
        if self.bound is not None and self.budget.relative:
            text += f" (= {format_value(self.bound, self.unit)})"
        return f"{text} on {self.oracle}"


def bind_constraints(
    budgets: Iterable[str | Budget], *, oracles: Mapping[str, str] | Iterable[str] | None = None
) -> list[Constraint]:
    """Budgets bound to oracles: the quantity's default oracle unless ``oracles`` names another.

    ``budgets`` are ``Budget`` objects (text is parsed here, for callers that
    hold text). Each oracle is built once, from its spec, and checked now
    (unknown names, malformed settings, a backend that is not installed), so a
    search never starts on a bad one; the constraint carries it (``judge``).
    """
    import oracles as _oracles

    overrides = parse_oracle_overrides(oracles)
    parsed = parse_budgets(budgets)
    if not parsed:
        raise BudgetError("at least one budget is needed, e.g. --budget 'latency<=50%'")
    seen = {b.quantity for b in parsed}
    out = []
    for b in parsed:
        spec = overrides.get(b.quantity, QUANTITIES[b.quantity].oracle)
        oracle = _oracles.get_oracle(spec)
        wanted = "memory" if b.quantity == "weight-memory" else b.quantity
        if oracle.quantity != wanted:
            raise BudgetError(
                f"oracle {spec!r} measures {oracle.quantity}, not {b.quantity}; "
                f"pick an oracle that measures {b.quantity}"
            )
        out.append(Constraint(budget=b, oracle=oracle.spec, judge=oracle))
    unused = set(overrides) - seen
    if unused:
        raise BudgetError(
            f"--oracle {sorted(unused)[0]}=... given, but no budget on {sorted(unused)[0]}"
        )
    return out


def format_value(value: float, unit: str) -> str:
    """Human-readable value: 1.2M params, 3.4 MiB, 2.51 ms."""
    if unit == "bytes":
        for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value:.0f} B"
    if unit in ("params", "MAC"):
        for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{suffix} {unit}"
        return f"{value:.0f} {unit}"
    return f"{value:.4g} {unit}"

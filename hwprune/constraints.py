"""The older import path of ``hwprune.budgets`` (``from hwprune.constraints import bind_constraints``
as docs written before it show): the same objects, nothing of its own."""

from hwprune.budgets import (
    QUANTITIES,
    Budget,
    Constraint,
    bind_constraints,
    format_value,
    parse_budget,
    parse_budgets,
    parse_oracle_overrides,
)

__all__ = [
    "QUANTITIES",
    "Budget",
    "Constraint",
    "bind_constraints",
    "format_value",
    "parse_budget",
    "parse_budgets",
    "parse_oracle_overrides",
]

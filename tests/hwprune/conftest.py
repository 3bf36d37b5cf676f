"""Fixtures shared by the library's tests: the digits data and small, calibrated evaluators."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from hwprune.budgets import bind_constraints
from hwprune.data import DataSplits, get_dataset
from hwprune.evaluate import Evaluator


@pytest.fixture(scope="module")
def data() -> DataSplits:
    """Digits at their own size: small enough for a search to run in seconds."""
    return get_dataset("digits")


@pytest.fixture(scope="module")
def data16() -> DataSplits:
    """Digits scaled to 16x16, room for two 2x2 max-pools."""
    return get_dataset("digits", input_size=16)


def small_evaluator(
    space: Any,
    data: DataSplits,
    budgets: Sequence[str],
    *,
    oracle_overrides: Mapping[str, str] | Sequence[str] | None = None,
    calibrate: bool = True,
    **options: Any,
) -> Evaluator:
    """An evaluator that re-estimates BatchNorm on one batch of 32 and scores 64 images;
    ``options`` replace those settings or add others (``log_path``, ``surrogate``, ...)."""
    settings: dict[str, Any] = {"bn_batches": 1, "bn_batch_size": 32, "max_eval_samples": 64}
    ev = Evaluator(
        space=space,
        data=data,
        constraints=bind_constraints(budgets, oracles=oracle_overrides),
        **{**settings, **options},
    )
    if calibrate:
        ev.calibrate()
    return ev


@pytest.fixture(scope="session")
def make_evaluator() -> Callable[..., Evaluator]:
    """``make_evaluator(space, data, budgets, *, oracle_overrides=None, calibrate=True,
    **options)``: see ``small_evaluator``."""
    return small_evaluator

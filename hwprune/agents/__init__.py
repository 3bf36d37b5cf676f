"""Searchers by name: RL agents (ppo-lagrangian, qlp, amc) and baselines (uniform, global-magnitude, random).

Other packages add searchers through the ``hwprune.searchers`` entry-point group
(``ENTRY_POINT_GROUP``); ``get_searcher`` and ``list_searchers`` find them by name.
"""

from hwprune.agents.base import (
    ENTRY_POINT_GROUP,
    SEARCHERS,
    BudgetedEvaluator,
    Searcher,
    SearchResult,
    check_searcher_class,
    get_searcher,
    list_searchers,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "SEARCHERS",
    "BudgetedEvaluator",
    "Searcher",
    "SearchResult",
    "check_searcher_class",
    "get_searcher",
    "list_searchers",
]

# Importing the modules registers their searchers.
from hwprune.agents import amc as _amc  # noqa: E402,F401
from hwprune.agents import baselines as _baselines  # noqa: E402,F401
from hwprune.agents import latency_knapsack as _latency_knapsack  # noqa: E402,F401
from hwprune.agents import ppo_lagrangian as _ppo_lagrangian  # noqa: E402,F401
from hwprune.agents import qlp as _qlp  # noqa: E402,F401

"""Searchers by name: RL agents (ppo-lagrangian, qlp, amc) and baselines (uniform, global-magnitude, random).

Every searcher implements :class:`Searcher` (``hwprune/agents/base.py``). Other packages add
searchers through the ``hwprune.searchers`` entry-point group (``ENTRY_POINT_GROUP``);
``get_searcher`` and ``list_searchers`` find them by name (``hwprune/agents/registry.py``).
"""

from hwprune.agents.base import (
    BudgetedEvaluator,
    Searcher,
    SearchResult,
)
from hwprune.agents.registry import (
    ENTRY_POINT_GROUP,
    SEARCHERS,
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

"""Searchers by name: RL agents (ppo-lagrangian, qlp, amc) and baselines (uniform, global-magnitude, random)."""

from hwprune.agents.base import (
    SEARCHERS,
    BudgetedEvaluator,
    Searcher,
    SearchResult,
    get_searcher,
    list_searchers,
    repair,
)

__all__ = ["SEARCHERS", "BudgetedEvaluator", "Searcher", "SearchResult", "get_searcher",
           "list_searchers", "repair"]

"""Candidate evaluation: proxy accuracy plus oracle measurements, cached and logged."""

from hwprune.evaluate.evaluator import (
    CONFIRM_TOP,
    Evaluator,
    Outcome,
    accuracy_tolerance,
    chance_floor,
    rank_feasible,
    ranking,
    search_signal,
)
from hwprune.evaluate.log import EpisodeLog, read_jsonl

__all__ = [
    "Evaluator",
    "Outcome",
    "EpisodeLog",
    "read_jsonl",
    "CONFIRM_TOP",
    "accuracy_tolerance",
    "chance_floor",
    "rank_feasible",
    "ranking",
    "search_signal",
]

"""Candidate evaluation: proxy accuracy plus oracle measurements, cached and logged."""

from hwprune.evaluate.evaluator import (
    Evaluator,
    Outcome,
    accuracy_tolerance,
    chance_floor,
    search_signal,
)
from hwprune.evaluate.log import EpisodeLog, read_jsonl

__all__ = [
    "Evaluator",
    "Outcome",
    "EpisodeLog",
    "read_jsonl",
    "accuracy_tolerance",
    "chance_floor",
    "search_signal",
]

"""The task interface under its documented name; it lives in ``hwprune.tasks``."""

from __future__ import annotations

from hwprune.tasks import (
    BoundTask,
    ClassificationTask,
    SupportsEvaluate,
    SupportsFinetune,
    Task,
    TaskError,
    as_task,
    reestimate_bn_on,
    reset_batchnorms,
    same_score,
    score_number,
)

__all__ = [
    "Task",
    "SupportsFinetune",
    "SupportsEvaluate",
    "BoundTask",
    "TaskError",
    "as_task",
    "reestimate_bn_on",
    "reset_batchnorms",
    "same_score",
    "score_number",
    "ClassificationTask",
]

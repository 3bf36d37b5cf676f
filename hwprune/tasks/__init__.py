"""Tasks: what a model computes, and how a candidate is calibrated, scored and fine-tuned.

``base``: the ``Task`` interface and ``as_task``, which binds a task object (or plain
callables) into the ``BoundTask`` the rest of hwprune calls. ``calibration``: BatchNorm
re-estimation helpers a task's ``calibrate`` builds on. ``classification``: the built-in
task of ``hwprune prune --model/--data``, one ``Task`` among the others.
"""

from __future__ import annotations

from hwprune.tasks.base import (
    BoundTask,
    SupportsEvaluate,
    SupportsFinetune,
    Task,
    TaskError,
    as_task,
    same_score,
    score_number,
)
from hwprune.tasks.calibration import reestimate_bn_on, reset_batchnorms
from hwprune.tasks.classification import ClassificationTask

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

"""Tasks: what a model computes, and how a candidate is calibrated, scored and fine-tuned.

``base``: the ``Task`` interface and ``as_task``, which binds a task object (or plain
callables) into the ``BoundTask`` the rest of hwprune calls. ``calibration``: BatchNorm
re-estimation helpers a task's ``calibrate`` builds on. ``classification``: the built-in
task of ``hwprune prune --model/--data``, one ``Task`` among the others.
"""

from __future__ import annotations

from hwprune.tasks import base, calibration, classification
from hwprune.tasks.base import *  # noqa: F403
from hwprune.tasks.calibration import *  # noqa: F403
from hwprune.tasks.classification import *  # noqa: F403

__all__ = [*base.__all__, *calibration.__all__, *classification.__all__]

"""The one progress-event type every stage of a run reports through (only the CLI renders it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProgressEvent", "ProgressFn", "emit"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one stage: ``stage`` is train/load/dense/search/choose/finetune/verify/export/
    report; ``done`` of ``total`` steps (total None: unknown); ``seconds`` since the stage began;
    ``finished`` on the stage's last event; ``info`` the stage's figures (accuracy, values...)."""

    stage: str
    done: int
    total: int | None
    message: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished: bool = False


ProgressFn = Callable[[ProgressEvent], None]


def emit(progress: ProgressFn | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``progress`` when one is listening."""
    if progress is not None:
        progress(event)

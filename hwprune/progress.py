"""The one progress-event type every stage of a run reports through (only the CLI renders it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProgressEvent", "ProgressFn", "clock_text", "emit", "remaining_seconds"]


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


def clock_text(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour), rounded to the second."""
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def remaining_seconds(
    event: ProgressEvent, elapsed: float, base: tuple[int, float]
) -> float | None:
    """Seconds left in ``event``'s stage at ``elapsed``, from the rate measured since ``base``
    (the count and seconds when this process first saw the stage: a resumed search replays
    its log at once); before a step is measured, from the stage's own estimate per step
    (``info["seconds_per_step"]``, the search's cost estimate); None when neither is known."""
    if event.total is None:
        return None
    base_done, base_seconds = base
    done = event.done - base_done
    if done > 0 and elapsed > base_seconds:
        return (event.total - event.done) * (elapsed - base_seconds) / done
    per = (event.info or {}).get("seconds_per_step")
    if per is None:
        return None
    return max(0.0, (event.total - event.done) * float(per) - (elapsed - base_seconds))

"""How the CLI shows a long run: rich bars on a terminal, plain lines in a file or a pipe.

Every long stage reports ``hwprune.progress.ProgressEvent``s: a prune run's (load,
staircase, dense, search, choose, finetune, verify, export, report), training
(``hwprune train`` and the demo's model: ``train_progress``), and the measuring of
``hwprune measure`` and ``hwprune compare-oracles`` (``stage_progress``).
``progress_view`` picks the renderer (``shown_progress`` holds it open). The plain renderer prints one line when a stage starts, one
when it ends, and, while a stage runs, a line at least every ``interval``
seconds (even when no event arrives: one candidate can take longer than that),
so a log file shows where a run is.

SIGTERM stops a run as Ctrl-C does (``sigterm_interrupts``): the stage being run
ends where it is, everything measured is kept and the resume line is printed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from hwprune.progress import ProgressEvent, ProgressFn, clock_text, emit, remaining_seconds

__all__ = [
    "LineProgress",
    "ProgressView",
    "STAGES",
    "Terminated",
    "progress_view",
    "shown_progress",
    "sigterm_interrupts",
    "stage_progress",
    "train_progress",
]

STAGES = {
    "train": "train",
    "measure": "measure",
    "compare": "measure variants",
    "load": "load data and model",
    "staircase": "latency staircase",
    "dense": "measure dense model",
    "search": "search",
    "choose": "confirm best",
    "finetune": "fine-tune",
    "verify": "verify budgets",
    "export": "export",
    "report": "report",
}

#: Events that are one line to show, not a stage with a bar: the search's cost estimate.
NOTES = ("estimate",)

#: Seconds between two plain progress lines while a stage runs.
LINE_INTERVAL = 30.0


def info_text(event: ProgressEvent) -> str:
    """The figures of one event, as both renderers show them."""
    info = event.info or {}
    parts = []
    if event.stage == "search":
        acc = info.get("best_feasible_accuracy")
        parts.append("best feasible: " + ("-" if acc is None else f"{100 * acc:.1f}%"))
        values = info.get("values") or {}
        parts += [f"{k}={v:.4g}" for k, v in values.items()]
    elif event.stage == "train" and "epoch" in info:
        parts.append(f"epoch {info['epoch']}/{info['epochs']}")
        if info.get("loss") is not None:
            parts.append(f"loss {info['loss']:.4f}")
        if info.get("search_accuracy") is not None:
            parts.append(f"search acc {100 * info['search_accuracy']:.2f}%")
    elif event.stage == "finetune" and info.get("search_accuracy") is not None:
        parts.append(f"search acc {100 * info['search_accuracy']:.1f}%")
    elif event.stage == "verify" and "met" in info:
        parts += [f"{k}: {'met' if ok else 'MISSED'}" for k, ok in info["met"].items()]
    elif event.message and not event.finished:
        parts.append(event.message)
    return "  ".join(parts)


class ProgressView:
    """Rich progress bars, one per stage, fed by the run's ProgressEvents (for a terminal)."""

    STAGES = STAGES

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(bar_width=16),  # leaves the clock and figures room at 80 columns
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        # Per stage: the count and seconds when this view first saw it (the rate's base).
        self._base: dict[str, tuple[int, float]] = {}

    def __enter__(self) -> ProgressView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: ProgressEvent) -> None:
        stage = event.stage
        if stage in NOTES:
            self.progress.console.print(event.message, highlight=False, soft_wrap=True)
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(
                self.STAGES.get(stage, stage), total=event.total, info=""
            )
            self._base[stage] = (event.done, event.seconds)
        info = info_text(event)
        # The time left from the rate measured in this stage (rich's own column would count a
        # resumed search's replayed candidates as work done at once).
        left = remaining_seconds(event, event.seconds, self._base[stage])
        if left is not None and not event.finished:
            info = f"~{clock_text(left)} left  {info}".rstrip()
        self.progress.update(self.tasks[stage], completed=event.done, total=event.total, info=info)

    _info = staticmethod(info_text)


_clock = clock_text


class LineProgress:
    """Plain progress lines for a log file or a pipe (no terminal, no bars).

    One line when a stage starts, one when it finishes, and while it runs one at
    least every ``interval`` seconds with its count, its figures (the search's best
    feasible accuracy), the time elapsed and an estimate of the time remaining.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = LINE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The open stage: its last event, its first count and seconds, when it opened here.
        self._last: ProgressEvent | None = None
        self._base: tuple[int, float] = (0, 0.0)
        self._opened_at = 0.0
        self._printed_at = 0.0

    def __enter__(self) -> LineProgress:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="hwprune-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage in NOTES:
            with self._lock:
                self._note(event.message)
            return
        with self._lock:
            now = self.clock()
            opening = self._last is None or self._last.stage != event.stage
            if opening:
                self._base, self._opened_at = (event.done, event.seconds), now
            self._last = None if event.finished else event
            # Elapsed by this clock: not every event of a stage carries its seconds (a
            # task's own fine-tuning events do not).
            elapsed = self._elapsed(now)
            if event.finished:
                self._write(event, max(event.seconds, elapsed), first=opening)
                self._printed_at = now
            elif opening or now - self._printed_at >= self.interval:
                self._write(event, elapsed, first=opening)
                self._printed_at = now

    def _elapsed(self, now: float) -> float:
        return self._base[1] + now - self._opened_at

    def _beat(self) -> None:
        # A stage can go longer than ``interval`` between events (one slow candidate).
        while not self._stop.wait(min(1.0, self.interval / 4)):
            with self._lock:
                now = self.clock()
                if self._last is not None and now - self._printed_at >= self.interval:
                    self._write(self._last, self._elapsed(now))
                    self._printed_at = now

    def line(self, event: ProgressEvent, elapsed: float, *, first: bool = False) -> str:
        """The text of one progress line."""
        label = STAGES.get(event.stage, event.stage)
        count = f"{event.done}/{event.total}" if event.total is not None else f"{event.done}"
        if event.finished:
            head = f"{label}: done {count}" if event.total is not None else f"{label}: done"
        elif first:
            head = f"{label}: started" + (f" (0/{event.total})" if event.total else "")
        else:
            head = f"{label}: {count}"
        parts = [head]
        text = info_text(event)
        if text and not first:
            parts.append(text)
        parts.append(f"elapsed {_clock(elapsed)}")
        remaining = self._remaining(event, elapsed)
        if remaining is not None and not event.finished and not first:
            parts.append(f"remaining ~{_clock(remaining)}")
        return " | ".join(parts)

    def _remaining(self, event: ProgressEvent, elapsed: float) -> float | None:
        # The rate since the stage's first event: a resumed search replays its log at once.
        return remaining_seconds(event, elapsed, self._base)

    def _write(self, event: ProgressEvent, elapsed: float, *, first: bool = False) -> None:
        self._note(self.line(event, elapsed, first=first))

    def _note(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the reader went away: progress is not worth failing the run for


def progress_view(console: Any, *, show: bool) -> ProgressView | LineProgress | None:
    """The renderer for ``console``: rich bars on a terminal, plain lines otherwise, or None."""
    if not show:
        return None
    if console.is_terminal:
        return ProgressView(console)
    return LineProgress(console.file)


@contextlib.contextmanager
def shown_progress(*, show: bool) -> Iterator[ProgressFn | None]:
    """While the block runs, the renderer of every long stage on stderr (``progress_view``:
    bars on a terminal, plain lines in a file or a pipe); None when nothing is to be shown."""
    from hwprune.cli._console import err_console

    view = progress_view(err_console, show=show)
    if view is None:
        yield None
        return
    with view:
        yield view


def stage_progress(view: ProgressFn | None, stage: str, total: int | None) -> Callable[..., None]:
    """The step of one long stage that a command runs outside a prune run (measuring with
    oracles, measuring pruned variants): ``step(done, total=None, *, message="")`` sends
    ``view`` the stage's event; ``step(0)`` opens the stage and the step that reaches its
    total closes it. It also serves as a ``progress(done, total)`` callback."""
    opened: list[float] = []  # when the first step came: the stage's time counts from there

    def step(done: int, total_now: int | None = None, *, message: str = "") -> None:
        nonlocal total
        if total_now is not None:
            total = total_now
        now = time.perf_counter()
        opened[:] = opened or [now]
        finished = total is not None and done >= total
        emit(view, ProgressEvent(stage, done, total, message, seconds=now - opened[0],
                                 finished=finished))  # fmt: skip

    return step


def train_progress(view: ProgressFn | None) -> Callable[[Any], None] | None:
    """A ``hwprune.train`` progress callback that feeds ``view`` the stage ``train`` (its
    last epoch's end closes the stage); None without a view."""
    if view is None:
        return None
    start: list[float] = []
    accuracy: list[float] = []  # the last epoch's search accuracy, shown until the next

    def show(p: Any) -> None:
        if not start:
            start.append(time.perf_counter())
        if p.search_accuracy is not None:
            accuracy[:] = [p.search_accuracy]
        info = {"epoch": p.epoch, "epochs": p.epochs, "loss": p.loss}
        if accuracy:
            info["search_accuracy"] = accuracy[0]
        done = (p.epoch - 1) * p.steps + p.step
        last = bool(p.epoch_done and p.epoch == p.epochs)
        view(ProgressEvent("train", p.epochs * p.steps if last else done, p.epochs * p.steps,
                           info=info, seconds=time.perf_counter() - start[0],
                           finished=last))  # fmt: skip

    return show


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within: SIGTERM raises ``Terminated`` (a KeyboardInterrupt), so a run stopped by a
    scheduler or ``kill`` ends as Ctrl-C ends it (everything kept, the resume line)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""The task interface: what the search and the final stages need from the user's world.

A task knows what the model computes; nothing else in hwprune does. It has
two required methods and a few optional parts::

    class MyTask:
        def calibrate(self, model):          # forward passes that re-estimate BatchNorm
            ...                               # (at least one batch: see reestimate_bn_on)
        def score(self, model) -> float:     # the proxy the search maximises (mAP, -loss...)
            ...
        def finetune(self, model, teacher):  # optional: your training loop; returns the
            ...                               # model trained (None: trained in place)
        def evaluate(self, model) -> dict:   # optional: final metrics for the report
            ...
        def describe_finetune(self) -> str:  # optional: the recipe in words, for the report
            ...

Two optional attributes tell the final choice how far to trust the score:
``score_samples`` (a proportion over that many samples: scores within sampling
noise count as tied) and ``score_chance`` (the score of a model that knows
nothing: candidates scored near it are ranked by size instead, and the searchers
learn from their size, ``hwprune.evaluate.search_signal``). ``score_key`` names
what a score measures (a logged score is reused only under the same key), and
``finetune_epochs`` how many epochs ``finetune`` reports (the fine-tuning stage's
progress total).

The one-line case takes plain callables (``calibrate`` may be a DataLoader)::

    task = hwprune.tasks.as_task(score=my_metric, calibrate=train_loader)

:func:`as_task` reads every optional part of a task object once and returns a
:class:`BoundTask`: the rest of hwprune calls that, never the object itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hwprune.errors import ConfigError, HwpruneError
from hwprune.tasks.calibration import reestimate_bn_on, reset_batchnorms

log = logging.getLogger(__name__)

__all__ = [
    "Task",
    "SupportsFinetune",
    "SupportsEvaluate",
    "BoundTask",
    "TaskError",
    "as_task",
    "same_score",
    "score_number",
]


class TaskError(HwpruneError):
    """The user's task failed (raised, or returned a score that is not a finite number)."""


@runtime_checkable
class Task(Protocol):
    """The two methods every task has. See the module docstring for the optional ones."""

    def calibrate(self, model: Any) -> None:
        """Forward passes that re-estimate BatchNorm statistics of a freshly pruned ``model``."""

    def score(self, model: Any) -> float:
        """The proxy the search maximises; higher is better; must be a finite number."""


@runtime_checkable
class SupportsFinetune(Protocol):
    def finetune(self, model: Any, teacher: Any) -> Any:
        """Train the pruned ``model`` (``teacher``: the dense model); return it trained, or None
        when it is trained in place. Anything else (another module, a module of other
        parameter shapes) is refused with a TaskError."""


@runtime_checkable
class SupportsEvaluate(Protocol):
    def evaluate(self, model: Any) -> Mapping[str, float]:
        """The final metrics for the report, by name."""


@dataclass(frozen=True)
class BoundTask:
    """A task with every part resolved: what the evaluator and the stages call.

    ``finetune``/``evaluate`` are None when the task has none. ``score_samples``
    is how many samples a score is a proportion over (0: unknown, or a
    continuous score), which lets the final choice treat accuracies within
    sampling noise as tied; with 0 scores are ranked as they are. ``score_chance``
    is the score of a model that knows nothing (None: unknown); candidates scored
    near it are ranked by size, not by score (``hwprune.run.choose.rank_feasible``), and
    the searchers learn from their size (``hwprune.evaluate.search_signal``).
    ``score_key`` names what the score measures (proxy, data, seed): the evaluator
    reuses a logged score only under the same key. ``finetune_epochs`` is how many
    epochs ``finetune`` reports (None: it does not say), ``describe_finetune`` the
    task's recipe in words (None: it does not say).
    """

    calibrate: Callable[[Any], Any]
    score: Callable[[Any], float]
    finetune: Callable[[Any, Any], Any] | None = None
    evaluate: Callable[[Any], Mapping[str, float]] | None = None
    score_samples: int = 0
    score_chance: float | None = None
    score_key: str = ""
    finetune_epochs: int | None = None
    describe_finetune: Callable[[], str] | None = None
    name: str = "task"
    source: Any = None
    #: The name of what ``score`` measures, where the task says (the built-in task's ``proxy``:
    #: bn, kd, recover:N), for the report.
    proxy: str | None = None
    #: A proportion score on growing prefixes of its samples, ``(score, prefix size)`` per look,
    #: the last over all ``score_samples`` (the built-in task's ``score_stream``); None: none.
    #: What lets the evaluator race a candidate (``hwprune.evaluate.racing``).
    score_stream: Callable[[Any], Iterator[tuple[float, int]]] | None = None

    def finetune_text(self) -> str | None:
        """The fine-tuning recipe in words, for the report: the task's own description, a line
        saying there is none, or None when the task fine-tunes and does not say how."""
        if self.describe_finetune is not None:
            return str(self.call("describe_finetune", what="the report"))
        return (
            None if self.finetune is not None else "Fine-tuning: none (the task has no finetune)."
        )

    def checked_score(self, model: Any, *, what: str) -> float:
        """``score(model)`` as a float; TaskError naming ``what`` if it raises or returns anything
        but a real finite number (:func:`score_number`)."""
        value = self.call("score", model, what=what)
        number = score_number(value)
        if number is None:
            raise TaskError(
                f"{self.name}.score returned {_shown(value)} for {what}; it must return "
                f"{NUMBER_RULE}"
            )
        return number

    def raced_score(self, model: Any, bar: Any, *, what: str) -> Any:
        """The score of ``model`` raced against ``bar`` (a ``RaceBar``): a ``RaceResult``. The
        task's ``score_stream`` must exist; errors as :meth:`checked_score`'s."""
        from hwprune.evaluate.racing import race

        assert self.score_stream is not None
        stream = self.call("score_stream", model, what=what)
        try:
            result = race(stream, bar, total=self.score_samples)
        except HwpruneError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TaskError(f"{self.name}.score_stream raised {type(exc).__name__}"
                            + (f" ({first})" if first else "") + f" on {what}") from exc  # fmt: skip
        if score_number(result.score) is None or result.samples < 1:
            raise TaskError(
                f"{self.name}.score_stream gave {_shown(result.score)} over {result.samples} "
                f"samples for {what}; each look must be {NUMBER_RULE} and a positive count"
            )
        return result

    def checked_calibrate(self, model: Any, *, what: str) -> None:
        """``calibrate(model)``; TaskError naming ``what`` if it raises or leaves a BatchNorm
        layer reset without a batch to refill it (running mean 0, variance 1, no batch counted),
        which would ship a model whose every BatchNorm normalises with made-up statistics."""
        before = reset_batchnorms(model)
        self.call("calibrate", model, what=what)
        left = [n for n in reset_batchnorms(model) if n not in before]
        if left:
            raise TaskError(
                f"{self.name}.calibrate left BatchNorm {left[0]!r}"
                + (f" and {len(left) - 1} more" if len(left) > 1 else "")
                + f" reset with no batch seen (running mean 0, variance 1) on {what}; calibrate "
                "must run at least one batch through the model in train mode"
            )

    def checked_finetune(self, model: Any, teacher: Any, *, what: str) -> Any:
        """``finetune(model, teacher)``: the trained candidate (``model`` itself when finetune
        returns None: trained in place). TaskError naming what differs when it returns anything
        but a module with the candidate's module names and parameter shapes."""
        layout = _layout(model)
        trained = self.call("finetune", model, teacher, what=what)
        if trained is None:
            return model
        from torch import nn

        if not isinstance(trained, nn.Module):
            raise TaskError(
                f"{self.name}.finetune returned a {type(trained).__name__} for {what}; it must "
                "return the candidate it was given, trained (or None when it trains it in place)"
            )
        problem = _layout_difference(layout, _layout(trained))
        if problem is not None:
            raise TaskError(
                f"{self.name}.finetune returned a module that is not the candidate it was given "
                f"({problem}) for {what}; it must return that candidate, trained (or None when "
                "it trains it in place)"
            )
        return trained

    def call(self, method: str, *args: Any, what: str) -> Any:
        """One of the task's methods; an exception from user code becomes a one-line TaskError."""
        fn = {"calibrate": self.calibrate, "score": self.score, "finetune": self.finetune,
              "evaluate": self.evaluate, "describe_finetune": self.describe_finetune,
              "score_stream": self.score_stream}[method]  # fmt: skip
        try:
            return fn(*args)
        except HwpruneError:
            raise
        except SystemExit as exc:  # user code's exit() must not end hwprune silently
            from hwprune.registry import exit_call

            raise TaskError(f"{self.name}.{method} called {exit_call(exc)} on {what}") from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TaskError(
                f"{self.name}.{method} raised {type(exc).__name__}"
                + (f" ({first})" if first else "")
                + f" on {what}"
            ) from exc


def as_task(
    task: Any = None,
    *,
    score: Callable[[Any], float] | None = None,
    calibrate: Any = None,
    finetune: Callable[[Any, Any], Any] | None = None,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
    calibrate_batches: int = 8,
) -> BoundTask:
    """A BoundTask from a task object, or from plain callables.

    ``calibrate`` may be a function ``fn(model)``, a re-iterable collection of
    batches (a DataLoader or a list: each batch is a tensor, an ``(inputs, target)``
    pair or a dict of named inputs; up to ``calibrate_batches`` of them are run, at
    least one), or None (no BatchNorm re-estimation). An empty one or a one-pass
    iterator (a generator) is refused: the candidates after it would see no batch.
    """
    if isinstance(task, BoundTask):
        return task
    if task is not None:
        if score is not None or calibrate is not None or finetune is not None:
            raise ConfigError("give either a task object or score=/calibrate=/finetune=, not both")
        return _bind(task)
    if score is None or not callable(score):
        raise ConfigError("a task needs score=fn(model) -> float (higher is better)")
    if calibrate is None:
        cal: Callable[[Any], Any] = _no_calibration
    elif callable(calibrate) and not isinstance(calibrate, Iterable):
        cal = calibrate
    elif isinstance(calibrate, Iterator):
        # A generator runs out after the first candidate: every later one would see no batch.
        raise ConfigError(
            f"calibrate is a one-pass iterator ({type(calibrate).__name__}), which runs out "
            "after the first candidate; give a DataLoader or a list of batches, or a function "
            "of the model"
        )
    elif isinstance(calibrate, Iterable):
        if _length(calibrate) == 0:
            raise ConfigError(
                f"calibrate is an empty {type(calibrate).__name__} (no batch); BatchNorm "
                "re-estimation needs at least one batch of inputs"
            )
        loader = calibrate

        def cal(model: Any) -> None:
            reestimate_bn_on(model, loader, batches=calibrate_batches)

    else:
        raise ConfigError(
            f"calibrate must be a function of the model or a DataLoader, got {type(calibrate).__name__}"
        )
    return BoundTask(calibrate=cal, score=score, finetune=finetune, evaluate=evaluate, name="task")


def _part(task: Any, name: str) -> Any:
    """The task object's optional part ``name`` (None when it has none): the one place a
    user's task is probed, so every part is read once, here."""
    return getattr(task, name, None)


def _bind(task: Any) -> BoundTask:
    """A task object's parts, read once (see the module docstring for the optional ones)."""
    score, cal, describe = (_part(task, n) for n in ("score", "calibrate", "describe_finetune"))
    if not callable(score):
        raise ConfigError(
            f"task {type(task).__name__} has no score(model) method; a task needs "
            "score(model) -> float and calibrate(model) (see hwprune.tasks.Task)"
        )
    return BoundTask(
        calibrate=cal if callable(cal) else _no_calibration,
        score=score,
        finetune=task.finetune if isinstance(task, SupportsFinetune) else None,
        evaluate=task.evaluate if isinstance(task, SupportsEvaluate) else None,
        score_samples=int(_part(task, "score_samples") or 0),
        score_chance=_chance(task),
        score_key=str(_part(task, "score_key") or ""),
        finetune_epochs=_epochs(task),
        describe_finetune=describe if callable(describe) else None,
        name=type(task).__name__,
        source=task,
        proxy=proxy if isinstance(proxy := _part(task, "proxy"), str) else None,
        score_stream=stream if callable(stream := _part(task, "score_stream")) else None,
    )


def _epochs(task: Any) -> int | None:
    value = _part(task, "finetune_epochs")
    if value is None or (type(value) is int and value >= 0):  # a bool is no count
        return value
    raise ConfigError(
        f"{type(task).__name__}.finetune_epochs must be a non-negative int or None, got {value!r}"
    )


#: What a score (and ``score_chance``) must be, in the words of every refusal.
NUMBER_KINDS = "an int, a float, a 0-d tensor or a numpy scalar"
NUMBER_RULE = f"a real finite number ({NUMBER_KINDS})"


def score_number(value: Any) -> float | None:
    """``value`` as a float when it is a real finite number, else None: the one rule for scores.

    Accepted: int, float (any ``numbers.Real``), a numpy scalar, a 0-d torch tensor or numpy
    array of an integer or floating dtype. Refused: bool (a pass/fail is not a score), str
    (``float("0.5")`` would hide a metric returned as text), complex, a tensor or array with
    dimensions (which of its numbers is the score?), NaN and infinities.
    """
    import numbers

    import numpy as np
    import torch

    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        if isinstance(value, numbers.Real):
            number = float(value)
        elif isinstance(value, (np.ndarray, np.generic)):
            if value.ndim != 0 or value.dtype.kind not in "iuf":
                return None
            number = float(value)
        elif isinstance(value, torch.Tensor):
            if value.dim() != 0 or value.dtype == torch.bool or value.dtype.is_complex:
                return None
            number = float(value.item())
        else:
            return None
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _shown(value: Any) -> str:
    """How a refused score reads in a message: the value, or what it was."""
    import numpy as np
    import torch

    if isinstance(value, (bool, np.bool_)):
        return f"{value} (a bool)"
    if isinstance(value, str):
        return f"{value if len(value) <= 40 else value[:37] + '...'!r} (a str)"
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        kind = "tensor" if isinstance(value, torch.Tensor) else "numpy value"
        dims = tuple(int(n) for n in value.shape)
        if dims:
            return f"a {kind} of shape {dims}"
        return f"a 0-d {kind} holding {value.item()} ({str(value.dtype).removeprefix('torch.')})"
    if isinstance(value, float):
        return str(value)  # nan, inf
    if isinstance(value, int):
        return "an int too large for a float"
    return "None" if value is None else f"a {type(value).__name__}"


def _chance(task: Any) -> float | None:
    value = _part(task, "score_chance")
    if value is None:
        return None
    number = score_number(value)
    if number is None:
        raise ConfigError(
            f"{type(task).__name__}.score_chance must be a finite number or None "
            f"({NUMBER_KINDS}), got {_shown(value)}"
        )
    return number


def same_score(logged: str | None, current: str) -> bool:
    """Whether a score logged under key ``logged`` means what the task's ``current`` key does.

    Logs written before scores had keys (None) were scored by the built-in task's only proxy
    then, bn on the run's own data (its config.json fixes the data), or by a user's task: they
    match a bn key or an unkeyed task.
    """
    if logged is None:
        return current == "" or current.startswith("bn ")
    return logged == current


def _no_calibration(model: Any) -> None:
    return None


def _length(obj: Any) -> int | None:
    """``len(obj)``, or None for an iterable without a length (an iterable dataset's loader)."""
    try:
        return len(obj)
    except Exception:
        return None


def _layout(model: Any) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """A module's module names and parameter shapes: what a trained candidate keeps."""
    names = [n for n, _ in model.named_modules()]
    return names, {n: tuple(p.shape) for n, p in model.named_parameters()}


def _layout_difference(
    want: tuple[list[str], dict[str, tuple[int, ...]]],
    got: tuple[list[str], dict[str, tuple[int, ...]]],
) -> str | None:
    """The first way layout ``got`` differs from ``want``, in words; None when they match."""
    (want_names, want_shapes), (got_names, got_shapes) = want, got
    have, wanted = set(got_names), set(want_names)
    missing = [n for n in want_names if n not in have]
    if missing:
        return f"it has no module {missing[0]!r}"
    extra = [n for n in got_names if n not in wanted]
    if extra:
        return f"it has a module {extra[0]!r} the candidate has not"
    for name, shape in want_shapes.items():
        if name not in got_shapes:
            return f"it has no parameter {name!r}"
        if got_shapes[name] != shape:
            return (
                f"parameter {name!r} has shape {list(got_shapes[name])}, "
                f"{list(shape)} in the candidate"
            )
    extra = [n for n in got_shapes if n not in want_shapes]
    if extra:
        return f"it has a parameter {extra[0]!r} the candidate has not"
    return None

"""What the search and the final stages need from the user's world: the task.

A task knows what the model computes; nothing else in hwprune does. It has
two required methods and two optional ones::

    class MyTask:
        def calibrate(self, model):          # forward passes that re-estimate BatchNorm
            ...
        def score(self, model) -> float:     # the proxy the search maximises (mAP, -loss...)
            ...
        def finetune(self, model, teacher):  # optional: your training loop; returns the model
            ...
        def evaluate(self, model) -> dict:   # optional: final metrics for the report
            ...

The one-line case takes plain callables (``calibrate`` may be a DataLoader)::

    task = hwprune.task.as_task(score=my_metric, calibrate=train_loader)

``ClassificationTask`` is the built-in task of ``hwprune prune --model/--data``:
BN re-estimation on fixed training images, top-1 accuracy on a fixed subset of
the search split, the fine-tuning recipe (optionally distilled), test accuracy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hwprune.config import default
from hwprune.errors import ConfigError, HwpruneError
from hwprune.progress import ProgressEvent, ProgressFn, emit

log = logging.getLogger(__name__)

__all__ = [
    "Task",
    "SupportsFinetune",
    "SupportsEvaluate",
    "BoundTask",
    "TaskError",
    "as_task",
    "reestimate_bn_on",
    "ClassificationTask",
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
        """Train the pruned ``model`` (``teacher``: the dense model); return the trained model."""


@runtime_checkable
class SupportsEvaluate(Protocol):
    def evaluate(self, model: Any) -> Mapping[str, float]:
        """The final metrics for the report, by name."""


@dataclass(frozen=True)
class BoundTask:
    """A task with every part resolved: what the evaluator and the stages call.

    ``finetune``/``evaluate`` are None when the task has none. ``score_samples``
    is how many samples a score is averaged over (0: unknown), which lets the
    final choice treat scores within sampling noise as tied.
    """

    calibrate: Callable[[Any], Any]
    score: Callable[[Any], float]
    finetune: Callable[[Any, Any], Any] | None = None
    evaluate: Callable[[Any], Mapping[str, float]] | None = None
    score_samples: int = 0
    name: str = "task"
    source: Any = None

    def checked_score(self, model: Any, *, what: str) -> float:
        """``score(model)`` as a finite float; TaskError naming ``what`` if it raises or is not."""
        value = self.call("score", model, what=what)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TaskError(
                f"{self.name}.score returned {value!r} for {what}; it must return a finite number"
            ) from None
        if not math.isfinite(value):
            raise TaskError(
                f"{self.name}.score returned {value} for {what}; it must return a finite number"
            )
        return value

    def call(self, method: str, *args: Any, what: str) -> Any:
        """One of the task's methods; an exception from user code becomes a one-line TaskError."""
        fn = getattr(self, method)
        try:
            return fn(*args)
        except HwpruneError:
            raise
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

    ``calibrate`` may be a function ``fn(model)``, an iterable of batches (a
    DataLoader: each batch is a tensor, an ``(inputs, target)`` pair or a dict
    of named inputs; ``calibrate_batches`` of them are run), or None (no
    BatchNorm re-estimation).
    """
    if isinstance(task, BoundTask):
        return task
    if task is not None:
        if score is not None or calibrate is not None or finetune is not None:
            raise ConfigError("give either a task object or score=/calibrate=/finetune=, not both")
        if not callable(getattr(task, "score", None)):
            raise ConfigError(
                f"task {type(task).__name__} has no score(model) method; a task needs "
                "score(model) -> float and calibrate(model) (see hwprune.task.Task)"
            )
        cal = getattr(task, "calibrate", None)
        return BoundTask(
            calibrate=cal if callable(cal) else _no_calibration,
            score=task.score,
            finetune=getattr(task, "finetune", None)
            if isinstance(task, SupportsFinetune)
            else None,
            evaluate=getattr(task, "evaluate", None)
            if isinstance(task, SupportsEvaluate)
            else None,
            score_samples=int(getattr(task, "score_samples", 0) or 0),
            name=type(task).__name__,
            source=task,
        )
    if score is None or not callable(score):
        raise ConfigError("a task needs score=fn(model) -> float (higher is better)")
    if calibrate is None:
        cal: Callable[[Any], Any] = _no_calibration
    elif callable(calibrate) and not hasattr(calibrate, "__iter__"):
        cal = calibrate
    elif isinstance(calibrate, Iterable):
        loader = calibrate

        def cal(model: Any) -> None:
            reestimate_bn_on(model, loader, batches=calibrate_batches)

    else:
        raise ConfigError(
            f"calibrate must be a function of the model or a DataLoader, got {type(calibrate).__name__}"
        )
    return BoundTask(calibrate=cal, score=score, finetune=finetune, evaluate=evaluate, name="task")


def _no_calibration(model: Any) -> None:
    return None


def _forward(model: Any, batch: Any, device: Any) -> None:
    if isinstance(batch, Mapping):
        model(**{k: v.to(device) for k, v in batch.items()})
    elif isinstance(batch, (tuple, list)):
        x = batch[0]
        if isinstance(x, Mapping):
            model(**{k: v.to(device) for k, v in x.items()})
        elif isinstance(x, (tuple, list)):
            model(*(t.to(device) for t in x))
        else:
            model(x.to(device))
    else:
        model(batch.to(device))


def reestimate_bn_on(model: Any, loader: Iterable[Any], *, batches: int = 8) -> int:
    """Reset and re-estimate every BatchNorm's statistics from ``batches`` batches of ``loader``.

    Cumulative averages (momentum None) in train mode for BN only; the model
    ends in eval mode. Returns the number of batches run.
    """
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not bns:
        return 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    n = 0
    try:
        with torch.no_grad():
            for batch in loader:
                if n >= batches:
                    break
                _forward(model, batch, device)
                n += 1
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return n


# --------------------------------------------------------------------------- built-in


class ClassificationTask:
    """Today's built-in task: image classification on a ``DataSplits``.

    calibrate: BN re-estimation on ``bn_batches`` x ``bn_batch_size`` training
    images fixed by ``seed``; score: top-1 accuracy on a fixed subset (at most
    ``max_eval_samples``) of the search split (``proxy="accuracy"``; other
    proxies plug in here); finetune: SGD with cosine schedule for
    ``finetune_epochs`` (distilled from the teacher when ``distill``; pruned
    weights of a sparse run stay zero); evaluate: test-split accuracy.
    """

    PROXIES = ("accuracy",)

    def __init__(
        self,
        data: Any,
        *,
        device: str = "cpu",
        seed: int = 0,
        bn_batches: int = 4,
        bn_batch_size: int = 64,
        eval_batch_size: int = 256,
        max_eval_samples: int | None = 2000,
        finetune_epochs: int = 0,
        finetune_lr: float = default("finetune_lr"),
        finetune_batch_size: int = default("finetune_batch_size"),
        distill: bool = False,
        keep_zeros: bool = False,
        proxy: str = "accuracy",
        progress: ProgressFn | None = None,
    ) -> None:
        import torch

        if proxy not in self.PROXIES:
            raise ConfigError(f"proxy must be one of {', '.join(self.PROXIES)}, got {proxy!r}")
        self.data = data
        self.device = device
        self.seed = int(seed)
        self.bn_batches = bn_batches
        self.bn_batch_size = bn_batch_size
        self.eval_batch_size = eval_batch_size
        self.finetune_epochs = int(finetune_epochs)
        self.finetune_lr = float(finetune_lr)
        self.finetune_batch_size = int(finetune_batch_size)
        self.distill = bool(distill)
        self.keep_zeros = bool(keep_zeros)
        self.proxy = proxy
        self.progress = progress
        # Fixed calibration and proxy sets: the same images for every candidate.
        g = torch.Generator().manual_seed(self.seed)
        n_train = len(data.train)
        n_bn = min(n_train, bn_batches * bn_batch_size)
        self._bn_indices = torch.randperm(n_train, generator=g)[:n_bn].tolist()
        n_search = len(data.search)
        n_eval = n_search if max_eval_samples is None else min(n_search, max_eval_samples)
        self._eval_indices = torch.randperm(n_search, generator=g)[:n_eval].tolist()

    @property
    def score_samples(self) -> int:
        """How many search-split images each proxy accuracy is computed on."""
        return len(self._eval_indices)

    def calibrate(self, model: Any) -> None:
        import torch

        from hwprune.train import reestimate_bn

        reestimate_bn(
            model.to(self.device),
            torch.utils.data.Subset(self.data.train, self._bn_indices),
            batches=self.bn_batches,
            batch_size=self.bn_batch_size,
            device=self.device,
        )

    def score(self, model: Any) -> float:
        import torch

        from hwprune.train import accuracy

        return float(
            accuracy(
                model.to(self.device),
                torch.utils.data.Subset(self.data.search, self._eval_indices),
                device=self.device,
                batch_size=self.eval_batch_size,
            )
        )

    def evaluate(self, model: Any) -> dict[str, float]:
        from hwprune.train import accuracy

        return {
            "accuracy": float(accuracy(model.to(self.device), self.data.test, device=self.device))
        }

    def finetune(self, model: Any, teacher: Any) -> Any:
        """The fine-tuning recipe, in place; returns ``model``."""
        from hwprune.train import finetune

        if self.finetune_epochs <= 0:
            return model
        epochs = self.finetune_epochs

        def on_step(p: Any) -> None:
            if p.epoch_done:
                info = {"search_accuracy": p.search_accuracy, "loss": p.loss}
                emit(self.progress, ProgressEvent("finetune", p.epoch, epochs, info=info))

        hooks = self._keep_zero_hooks(model) if self.keep_zeros else []
        try:
            finetune(
                model,
                self.data,
                epochs=epochs,
                lr=self.finetune_lr,
                batch_size=self.finetune_batch_size,
                teacher=teacher if self.distill else None,
                device=self.device,
                seed=self.seed,
                progress=on_step if self.progress is not None else None,
            )
        finally:
            for h in hooks:
                h.remove()
        return model

    @staticmethod
    def _keep_zero_hooks(model: Any) -> list[Any]:
        """Sparse runs: pruned weights must stay zero, or fine-tuning refills them. A zero
        gradient keeps them zero under SGD, momentum and weight decay (w * wd = 0)."""
        import torch

        hooks = []
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                keep = (m.weight.detach() != 0).to(m.weight.dtype)
                hooks.append(m.weight.register_hook(lambda g, keep=keep: g * keep.to(g.device)))
        return hooks

    def describe_finetune(self) -> str:
        """The recipe in words, for the report."""
        if self.finetune_epochs <= 0:
            return "Fine-tuning: none (0 epochs)."
        return (
            f"Fine-tuning: {self.finetune_epochs} epoch(s), SGD at peak learning rate "
            f"{self.finetune_lr:g} with a cosine schedule, batch size {self.finetune_batch_size}"
            + (", distilled from the dense model." if self.distill else ".")
        )

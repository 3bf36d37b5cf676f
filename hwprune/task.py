"""What the search and the final stages need from the user's world: the task.

A task knows what the model computes; nothing else in hwprune does. It has
two required methods and two optional ones::

    class MyTask:
        def calibrate(self, model):          # forward passes that re-estimate BatchNorm
            ...                               # (at least one batch: see reestimate_bn_on)
        def score(self, model) -> float:     # the proxy the search maximises (mAP, -loss...)
            ...
        def finetune(self, model, teacher):  # optional: your training loop; returns the
            ...                               # model trained (None: trained in place)
        def evaluate(self, model) -> dict:   # optional: final metrics for the report
            ...

Two optional attributes tell the final choice how far to trust the score:
``score_samples`` (a proportion over that many samples: scores within sampling
noise count as tied) and ``score_chance`` (the score of a model that knows
nothing: candidates scored near it are ranked by size instead, and the searchers
learn from their size, ``hwprune.evaluate.search_signal``).

The one-line case takes plain callables (``calibrate`` may be a DataLoader)::

    task = hwprune.task.as_task(score=my_metric, calibrate=train_loader)

``ClassificationTask`` is the built-in task of ``hwprune prune --model/--data``:
BN re-estimation on fixed training images, top-1 accuracy on a fixed subset of
the search split, the fine-tuning recipe (optionally distilled), test accuracy.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hwprune.config import default
from hwprune.errors import ConfigError, DataError, HwpruneError
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
    "reset_batchnorms",
    "same_score",
    "score_number",
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
    reuses a logged score only under the same key.
    """

    calibrate: Callable[[Any], Any]
    score: Callable[[Any], float]
    finetune: Callable[[Any, Any], Any] | None = None
    evaluate: Callable[[Any], Mapping[str, float]] | None = None
    score_samples: int = 0
    score_chance: float | None = None
    score_key: str = ""
    name: str = "task"
    source: Any = None

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
        fn = getattr(self, method)
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
            score_chance=_chance(task),
            score_key=str(getattr(task, "score_key", "") or ""),
            name=type(task).__name__,
            source=task,
        )
    if score is None or not callable(score):
        raise ConfigError("a task needs score=fn(model) -> float (higher is better)")
    if calibrate is None:
        cal: Callable[[Any], Any] = _no_calibration
    elif callable(calibrate) and not hasattr(calibrate, "__iter__"):
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
    value = getattr(task, "score_chance", None)
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


_EMPTY = object()


def _length(obj: Any) -> int | None:
    """``len(obj)``, or None for an iterable without a length (an iterable dataset's loader)."""
    try:
        return len(obj)
    except Exception:
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


def reset_batchnorms(model: Any) -> list[str]:
    """The BatchNorm layers of ``model`` whose running statistics are at their reset values
    (mean 0, variance 1, no batch counted): reset and never refilled, or never trained."""
    import torch
    from torch import nn

    found = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
            continue
        counted = m.num_batches_tracked
        if counted is not None and int(counted) != 0:
            continue
        with torch.no_grad():
            if bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all()):
                found.append(name)
    return found


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


def reestimate_bn_on(model: Any, loader: Iterable[Any], *, batches: int = 8) -> int:
    """Reset and re-estimate every BatchNorm's statistics from up to ``batches`` batches of
    ``loader``.

    Cumulative averages (momentum None) in train mode for BN only; the model
    ends in eval mode. Returns the number of batches run. A loader that yields
    no batch raises DataError and leaves the statistics as they were: reset
    statistics with nothing to refill them would normalise with mean 0 and variance 1.
    """
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not bns:
        return 0
    if not isinstance(batches, int) or isinstance(batches, bool) or batches < 1:
        raise ConfigError(f"batches must be a positive integer, got {batches!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch_iter = iter(loader)
    first = next(batch_iter, _EMPTY)
    if first is _EMPTY:
        raise DataError(
            f"the calibration data ({type(loader).__name__}) yielded no batch; BatchNorm "
            "re-estimation needs at least one batch of inputs (the statistics were left as they "
            "were)"
        )
    from hwprune.train.loop import cumulative_bn

    n = 0
    with cumulative_bn(model, bns):
        for batch in itertools.chain([first], batch_iter):
            if n >= batches:
                break
            _forward(model, batch, device)
            n += 1
    return n


# --------------------------------------------------------------------------- built-in


class ClassificationTask:
    """Today's built-in task: image classification on a ``DataSplits``.

    calibrate: BN re-estimation on ``bn_batches`` x ``bn_batch_size`` training
    images fixed by ``seed``; score: the search proxy (``proxy``) on a fixed
    subset (at most ``max_eval_samples``) of the search split; finetune: SGD
    with cosine schedule for ``finetune_epochs`` (distilled from the teacher
    when ``distill``; pruned weights of a sparse run stay zero); evaluate:
    test-split accuracy.

    Proxies (``hwprune.train.proxy``), every one higher-is-better in [0, 1]:

    * ``bn``: top-1 accuracy after the BN re-estimation. A proportion over
      ``score_samples`` images, so the final choice ties accuracies within two
      standard errors (``hwprune.run.choose.rank_feasible``).
    * ``kd``: ``exp(-KL)`` of the candidate's and the dense model's (``teacher``)
      outputs softened by ``temperature`` (``agreement``): continuous, so it
      still orders candidates whose accuracy is at chance. ``score_samples`` is
      0: a continuous score is ranked as measured, with no binomial tie band
      (every candidate is scored on the same images, so their differences are
      not sampling noise of the kind a proportion has).
    * ``recover:STEPS``: ``kd`` after STEPS SGD steps on a copy (batch
      ``recover_batch_size``, fixed training batches, 0.5 CE + 0.5 KD).

    The dense model's outputs are computed once, on the first kd/recover score.
    """

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
        proxy: str = default("proxy"),
        teacher: Any = None,
        temperature: float = 4.0,
        recover_batch_size: int = 32,
        progress: ProgressFn | None = None,
    ) -> None:
        import torch

        from hwprune.config import parse_proxy

        self.proxy_spec = parse_proxy(proxy)
        self.proxy = str(self.proxy_spec)
        if self.proxy_spec.kind != "bn" and teacher is None:
            raise ConfigError(
                f"the {self.proxy} proxy compares candidates with the dense model; pass teacher="
            )
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature!r}")
        self.teacher = teacher
        self.temperature = float(temperature)
        self.recover_batch_size = int(recover_batch_size)
        self._fixed: dict[str, Any] = {}
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

    def __getstate__(self) -> dict[str, Any]:
        # A task sent to worker processes (hwprune.evaluate.parallel) leaves its progress
        # callback behind: it reports to the main process's display.
        return {**self.__dict__, "progress": None}

    @property
    def score_samples(self) -> int:
        """How many search-split images the bn accuracy is a proportion over; 0 for the
        continuous kd/recover scores (ranked as measured)."""
        return len(self._eval_indices) if self.proxy_spec.kind == "bn" else 0

    def _labels(self, split: str) -> list[int]:
        """The labels of the proxy's (``search``) or the calibration's (``train``) fixed images,
        read once: a user's image folder decodes an image to give its label."""
        if split not in self._fixed:
            dataset, indices = (
                (self.data.search, self._eval_indices)
                if split == "search"
                else (self.data.train, self._bn_indices)
            )
            self._fixed[split] = [int(dataset[i][1]) for i in indices]
        return self._fixed[split]

    @property
    def score_chance(self) -> float | None:
        """The bn accuracy of a model that knows nothing: the largest class's share of the
        proxy's images (a model that always answers that class). None for kd/recover, whose
        continuous scores still order candidates at chance."""
        if self.proxy_spec.kind != "bn" or not self._eval_indices:
            return None
        from collections import Counter

        labels = Counter(self._labels("search"))  # read once (``_labels``)
        return max(labels.values()) / len(self._eval_indices)

    @property
    def score_key(self) -> str:
        """What a score measures: the proxy, its images, the data and the seed. A logged score
        is reused only under the same key, so runs with other settings never mix.

        The data part is the dataset's name, split sizes, input shape and a digest of the
        proxy's images (their labels, the first image of each fixed set), which tells apart
        splits drawn with another seed or from another subset of the same dataset."""
        if "key" not in self._fixed:
            self._fixed["key"] = self._score_key()
        return self._fixed["key"]

    def _score_key(self) -> str:
        import hashlib

        import torch

        d = self.data
        digest = hashlib.sha256()
        for split, dataset, indices in (("search", d.search, self._eval_indices),
                                        ("train", d.train, self._bn_indices)):  # fmt: skip
            labels = self._labels(split)
            digest.update(torch.tensor(labels, dtype=torch.int64).numpy().tobytes())
            if indices:
                digest.update(dataset[indices[0]][0].float().numpy().tobytes())
        sizes = "/".join(str(n) for n in d.sizes().values())
        shape = "x".join(str(n) for n in d.input_shape)
        proxy = (
            self.proxy if self.proxy_spec.kind == "bn" else f"{self.proxy} T={self.temperature:g}"
        )
        if self.proxy_spec.kind == "recover":
            proxy += f" batch {self.recover_batch_size}"
        return (f"{proxy} on {len(self._eval_indices)} search images; data {d.name} "
                f"{sizes} {shape} {digest.hexdigest()[:16]}; seed {self.seed}")  # fmt: skip

    def calibrate(self, model: Any) -> None:
        import torch

        from hwprune.train import reestimate_bn

        asked = len(self._bn_indices)
        seen = reestimate_bn(
            model.to(self.device),
            torch.utils.data.Subset(self.data.train, self._bn_indices),
            batches=self.bn_batches,
            batch_size=self.bn_batch_size,
            device=self.device,
        )
        if 0 < seen < asked:  # 0: the model has no BatchNorm
            raise DataError(
                f"BatchNorm re-estimation saw {seen} of the {asked} training images it was asked "
                f"to run ({self.bn_batches} batches of {self.bn_batch_size}); the training split "
                f"of {self.data.name} yielded fewer"
            )

    def score(self, model: Any) -> float:
        """The proxy of a calibrated candidate (see the class docstring); higher is better."""
        import torch

        from hwprune.train import accuracy

        if self.proxy_spec.kind == "bn":
            return float(
                accuracy(
                    model.to(self.device),
                    torch.utils.data.Subset(self.data.search, self._eval_indices),
                    device=self.device,
                    batch_size=self.eval_batch_size,
                )
            )
        from hwprune.train.proxy import agreement, kd_proxy, recover_proxy

        common = {"calib": None, "reference": self._reference(), "temperature": self.temperature,
                  "batch_size": self.eval_batch_size, "device": self.device,
                  "seed": self.seed}  # fmt: skip
        if self.proxy_spec.kind == "kd":
            result = kd_proxy(model, **common)
        else:
            result = recover_proxy(model, batches=self._distill_batches(), **common)
        return agreement(float(result.kd_loss), temperature=self.temperature)

    def _reference(self) -> Any:
        """The dense model's outputs on the proxy images (once per task)."""
        if "reference" not in self._fixed:
            import torch

            from hwprune.train.proxy import reference_outputs

            images = torch.utils.data.Subset(self.data.search, self._eval_indices)
            self._fixed["reference"] = reference_outputs(
                self.teacher, images, batch_size=self.eval_batch_size, device=self.device
            )
        return self._fixed["reference"]

    def _distill_batches(self) -> Any:
        """recover's fixed training batches with the dense model's outputs (once per task)."""
        if "batches" not in self._fixed:
            from hwprune.train.proxy import distill_batches

            self._fixed["batches"] = distill_batches(
                self.teacher, self.data.train, steps=self.proxy_spec.steps,
                batch_size=self.recover_batch_size, seed=self.seed, device=self.device,
            )  # fmt: skip
        return self._fixed["batches"]

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

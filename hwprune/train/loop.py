"""The training loop: SGD with Nesterov momentum, linear warm-up then cosine decay, per-epoch evaluation."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hwprune.data import DataSplits, make_loader
from hwprune.errors import ConfigError, DataError, HwpruneError

__all__ = [
    "DivergedError",
    "EpochStats",
    "TrainProgress",
    "TrainResult",
    "accuracy",
    "finetune",
    "reestimate_bn",
    "resolve_device",
    "train",
]

log = logging.getLogger(__name__)


class DivergedError(HwpruneError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainProgress:
    """One progress report: after each batch (``epoch_done`` False) and after each epoch (True)."""

    epoch: int  # 1-based
    epochs: int
    step: int  # batches done in this epoch
    steps: int  # batches per epoch
    loss: float  # running mean training loss of this epoch
    lr: float
    search_accuracy: float | None = None  # set when epoch_done
    epoch_done: bool = False


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did."""

    epoch: int
    loss: float
    train_accuracy: float  # on the (augmented) training batches seen
    search_accuracy: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """A training run's history and the final model's accuracy on the search and test splits."""

    epochs: int
    history: tuple[EpochStats, ...]
    train_loss: float
    search_accuracy: float
    test_accuracy: float
    seconds: float

    def to_dict(self) -> dict:
        """Plain values for JSON and checkpoint meta."""
        return {
            "epochs": self.epochs,
            "train_loss": self.train_loss,
            "search_accuracy": self.search_accuracy,
            "test_accuracy": self.test_accuracy,
            "seconds": self.seconds,
            "history": [vars(h) for h in self.history],
        }


Progress = Callable[[TrainProgress], None]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; ConfigError if it does not parse or CUDA is not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asked for, but no CUDA GPU is available; use 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    return dev


def _as_loader(data: Dataset | DataLoader, batch_size: int) -> Iterable:
    if isinstance(data, DataLoader):
        return data
    return make_loader(data, batch_size=batch_size, shuffle=False)


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool):
    was = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (in eval mode) on a dataset or loader of (image, label)."""
    dev = resolve_device(device)
    correct = total = 0
    with _mode(model, False):
        for x, y in _as_loader(data, batch_size):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    if total == 0:
        raise ConfigError("cannot measure accuracy on an empty dataset")
    return correct / total


@contextlib.contextmanager
def cumulative_bn(model: nn.Module, bns: Sequence[nn.Module]) -> Iterator[None]:
    """Inside: the BatchNorm layers ``bns`` start from reset statistics and average every batch
    run cumulatively (momentum None, train mode for them only, no autograd graph). On exit
    their momentum is restored and ``model`` is in eval mode, whatever happened inside."""
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():  # statistics only: no autograd graph
            yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()


@torch.no_grad()
def reestimate_bn(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    batches: int = 10,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    settle: float | None = None,
    min_batches: int = 2,
) -> int:
    """Recompute every BatchNorm's running mean and variance from a few batches; return images seen.

    After channels are pruned the stored statistics no longer describe the
    activations, so a proxy accuracy without this step is meaningless. Running
    stats are reset and averaged cumulatively (momentum=None) over ``batches``
    batches in train mode (BN only; dropout stays off); the model ends in eval mode.

    ``settle``: stop before ``batches`` once the statistics have settled, after at least
    ``min_batches``: the last batch moved no layer's statistics by more than ``settle``
    (:func:`bn_change`). A large model then pays for the batches its statistics need, not a
    fixed count.
    """
    dev = resolve_device(device)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        model.eval()
        return 0
    if batches < 1:
        raise ConfigError(f"batches must be a positive integer, got {batches!r}")
    if isinstance(data, DataLoader):
        loader: Iterable = data
    else:
        loader = make_loader(data, batch_size=batch_size, shuffle=True, seed=seed)
    # The first batch before any reset: statistics reset with no batch to refill them would
    # normalise every layer with mean 0 and variance 1.
    batch_iter = iter(loader)
    first = next(batch_iter, None)
    if first is None:
        raise DataError(
            "the BatchNorm calibration data yielded no batch (an empty loader, or drop_last with "
            "fewer images than one batch); re-estimation needs at least one batch (the statistics "
            "were left as they were)"
        )
    model.eval()
    seen = 0
    with cumulative_bn(model, bns):
        before = None
        for i, (x, _) in enumerate(itertools.chain([first], batch_iter)):
            if i >= batches:
                break
            model(x.to(dev, non_blocking=True))
            seen += len(x)
            if settle is None:
                continue
            now = _bn_state(bns)
            if before is not None and i + 1 >= min_batches and bn_change(before, now) <= settle:
                break
            before = now
    log.debug("re-estimated %d BatchNorm layers on %d images", len(bns), seen)
    return seen


def _bn_state(bns: Sequence[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in bns
            if m.running_mean is not None and m.running_var is not None]  # fmt: skip


def bn_change(
    before: Sequence[tuple[torch.Tensor, torch.Tensor]],
    after: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> float:
    """How far one batch moved the running statistics: the largest, over layers, of the mean
    over channels of the mean's move in standard deviations and the variance's relative move.

    Scale-free (a mean near zero does not inflate it), and an average over channels so that one
    channel of a wide layer does not decide alone."""
    worst = 0.0
    for (m0, v0), (m1, v1) in zip(before, after, strict=True):
        scale = v1.clamp_min(1e-5)
        mean_move = ((m1 - m0).abs() / scale.sqrt()).mean()
        var_move = ((v1 - v0).abs() / scale).mean()
        worst = max(worst, float(mean_move), float(var_move))
    return worst


def _lr_factor(step: int, *, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _check_args(epochs: int, lr: float, batch_size: int) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def sgd(model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over ``model``'s trainable parameters, with Nesterov momentum where momentum > 0."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=momentum > 0,
    )


@dataclass(frozen=True)
class _Objective:
    """The training loss: cross-entropy, blended with distillation from ``teacher`` if given."""

    label_smoothing: float
    teacher: nn.Module | None
    kd_alpha: float
    kd_temperature: float

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if self.teacher is None:
            return loss
        t = self.kd_temperature
        with torch.no_grad():
            soft = F.softmax(self.teacher(x) / t, dim=1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean")
        return (1.0 - self.kd_alpha) * loss + self.kd_alpha * t**2 * kd


@dataclass
class _Stepper:
    """One run's model, batches, optimizer and schedule: what every epoch steps through."""

    model: nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: _Objective
    device: torch.device
    epochs: int
    lr: float

    @property
    def current_lr(self) -> float:  # a float unless the caller gave a tensor
        return self.optimizer.param_groups[0]["lr"]

    def epoch(self, epoch: int, progress: Progress | None) -> tuple[float, float]:
        """Train one epoch; the mean loss and the accuracy on the batches seen."""
        self.model.train()
        loss_sum = 0.0
        correct = seen = 0
        steps = len(self.loader)
        for step, (x, y) in enumerate(self.loader, start=1):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits = self.model(x)
            loss = self.objective(logits, x, y)
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"training diverged at epoch {epoch}, step {step}: the loss is "
                    f"{float(loss)}; lower the learning rate (lr={self.lr})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if progress is not None:
                progress(
                    TrainProgress(
                        epoch=epoch,
                        epochs=self.epochs,
                        step=step,
                        steps=steps,
                        loss=loss_sum / seen,
                        lr=self.current_lr,
                    )  # fmt: skip
                )
        return loss_sum / seen, correct / seen


def _stepper(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    objective: _Objective,
) -> _Stepper:
    """The shuffled training batches and the optimizer with its warm-up and cosine schedule."""
    loader = make_loader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        augment=data.augment,
        augment_pad=data.augment_pad,
        drop_last=len(data.train) > batch_size,  # no tiny last batch for BatchNorm
        pin_memory=device.type == "cuda",
        seed=seed,
    )
    steps = len(loader)
    total = epochs * steps
    warmup = min(steps, max(1, total // 20))
    optimizer = sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total=total, warmup=warmup)
    )
    log.debug(
        "training %d epochs x %d steps on %s with %d threads",
        epochs, steps, device, torch.get_num_threads(),
    )  # fmt: skip
    return _Stepper(model, loader, optimizer, scheduler, objective, device, epochs, lr)


def _evaluated_epoch(
    stepper: _Stepper,
    epoch: int,
    *,
    search: Dataset,
    batch_size: int,
    progress: Progress | None,
) -> EpochStats:
    """Train one epoch, then score the search split; log and report it."""
    t0 = time.perf_counter()
    loss, train_acc = stepper.epoch(epoch, progress)
    search_acc = accuracy(
        stepper.model, search, device=stepper.device, batch_size=max(256, batch_size)
    )
    stats = EpochStats(
        epoch=epoch,
        loss=loss,
        train_accuracy=train_acc,
        search_accuracy=search_acc,
        lr=stepper.current_lr,
        seconds=time.perf_counter() - t0,
    )
    log.info(
        "epoch %d/%d loss %.4f search acc %.4f (%.1fs)",
        epoch, stepper.epochs, stats.loss, search_acc, stats.seconds,
    )  # fmt: skip
    if progress is not None:
        steps = len(stepper.loader)
        progress(
            TrainProgress(
                epoch=epoch,
                epochs=stepper.epochs,
                step=steps,
                steps=steps,
                loss=stats.loss,
                lr=stats.lr,
                search_accuracy=search_acc,
                epoch_done=True,
            )  # fmt: skip
        )
    return stats


def _fit(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    label_smoothing: float,
    batch_size: int,
    device: str | torch.device,
    seed: int,
    progress: Progress | None,
    teacher: nn.Module | None,
    kd_alpha: float,
    kd_temperature: float,
) -> TrainResult:
    _check_args(epochs, lr, batch_size)
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    dev = resolve_device(device)
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    start = time.perf_counter()
    objective = _Objective(label_smoothing, teacher, kd_alpha, kd_temperature)
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    # Seed the global RNG (augmentation, dropout) without disturbing the caller's RNG state.
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        stepper = _stepper(
            model, data, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
            batch_size=batch_size, device=dev, seed=seed, objective=objective,
        )  # fmt: skip
        history = [
            _evaluated_epoch(
                stepper, epoch, search=data.search, batch_size=batch_size, progress=progress
            )
            for epoch in range(1, epochs + 1)
        ]
    model.eval()
    test_acc = accuracy(model, data.test, device=dev, batch_size=max(256, batch_size))
    return TrainResult(
        epochs=epochs,
        history=tuple(history),
        train_loss=history[-1].loss,
        search_accuracy=history[-1].search_accuracy,
        test_accuracy=test_acc,
        seconds=time.perf_counter() - start,
    )


def train(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train``; report search accuracy per epoch, test at the end.

    SGD with Nesterov momentum; the learning rate warms up linearly over the
    first 5% of steps (at most one epoch), then follows a cosine to zero.
    ``progress`` is called after every batch and every epoch with a TrainProgress.
    Uses torch's current thread count (``torch.set_num_threads`` to change it).
    """
    return _fit(
        model, data, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
        label_smoothing=label_smoothing, batch_size=batch_size, device=device, seed=seed,
        progress=progress, teacher=None, kd_alpha=0.0, kd_temperature=1.0,
    )  # fmt: skip


def finetune(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.5,
    kd_temperature: float = 4.0,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainResult:
    """Fine-tune a pruned ``model`` in place, distilling from ``teacher`` (the dense model) if given.

    The loss is ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL(student/T || teacher/T)``
    with ``T = kd_temperature`` (Hinton et al. 2015); without a teacher, plain CE.
    Same schedule as ``train`` at a lower default learning rate. The search split
    is only evaluated, never trained on.
    """
    if teacher is not None:
        if not 0.0 <= kd_alpha <= 1.0:
            raise ConfigError(f"kd_alpha must be in [0, 1], got {kd_alpha!r}")
        if not kd_temperature > 0:
            raise ConfigError(f"kd_temperature must be positive, got {kd_temperature!r}")
    return _fit(
        model, data, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
        label_smoothing=label_smoothing, batch_size=batch_size, device=device, seed=seed,
        progress=progress, teacher=teacher, kd_alpha=kd_alpha, kd_temperature=kd_temperature,
    )  # fmt: skip

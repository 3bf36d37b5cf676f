"""Search proxies: how good a pruned candidate is likely to be after fine-tuning, cheaply.

Three, chosen by a spec string (``parse_proxy``):

* ``bn``: top-1 accuracy on the search images after BatchNorm re-estimation
  (``reestimate_bn`` then ``accuracy``, the evaluator's score). Cheap, but a
  deep net cut hard sits at chance for every candidate, so it cannot rank them.
* ``kd``: minus the distillation loss ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``
  against the dense model's logits on the same images, after the same BN
  re-estimation. Continuous: it still orders candidates whose accuracy is at chance.
* ``recover:STEPS``: a copy of the candidate trained STEPS SGD steps on fixed
  batches of training images, distilling from the dense model, then scored
  by both (value: minus the KD loss; the accuracy is kept beside it).

Every proxy is a pure function of the candidate and the run's fixed inputs
(the candidate is never modified: each works on a copy) and returns a
``ProxyResult`` with the seconds it cost. The dense model's outputs are
computed once per run (``reference_outputs``, ``distill_batches``), not per
candidate. Example::

    ref = reference_outputs(dense, search_subset)
    batches = distill_batches(dense, data.train, steps=50, seed=0)
    score = recover_proxy(candidate, calib=bn_subset, reference=ref, batches=batches)
    score.value, score.accuracy, score.seconds
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from hwprune.config import PROXIES, ProxySpec, parse_proxy
from hwprune.data import make_loader
from hwprune.errors import ConfigError
from hwprune.train.loop import accuracy, reestimate_bn, resolve_device, sgd

__all__ = [
    "PROXIES",
    "ProxyResult",
    "ProxySpec",
    "Reference",
    "agreement",
    "bn_proxy",
    "distill_batches",
    "kd_loss",
    "kd_proxy",
    "parse_proxy",
    "proxy_scorer",
    "recover_proxy",
    "reference_outputs",
]


@dataclass(frozen=True)
class ProxyResult:
    """One candidate's proxy score: ``value`` (higher is better), the ``seconds`` it cost,
    the accuracy on the search images behind it, and the KD loss where it was computed."""

    proxy: str
    value: float
    seconds: float
    accuracy: float
    kd_loss: float | None = None


@dataclass(frozen=True, eq=False)
class Reference:
    """Fixed images, their labels and the dense model's logits on them (held in memory)."""

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _stack(dataset: Dataset, *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in make_loader(dataset, batch_size=batch_size, shuffle=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, *, batch_size: int, device) -> torch.Tensor:
    dev = resolve_device(device)
    was = model.training
    model.eval()
    try:
        out = [model(images[i : i + batch_size].to(dev)).float().cpu()
               for i in range(0, len(images), batch_size)]  # fmt: skip
    finally:
        model.train(was)
    return torch.cat(out)


def reference_outputs(
    teacher: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: str = "cpu"
) -> Reference:
    """The dense model's logits on every image of ``dataset`` (e.g. the fixed search subset)."""
    images, labels = _stack(dataset, batch_size=batch_size)
    return Reference(images, labels, _logits(teacher.to(device), images, batch_size=batch_size,
                                             device=device))  # fmt: skip


def distill_batches(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[Reference, ...]:
    """``steps`` fixed training batches (a seeded shuffle, cycled) with the dense model's logits.

    The same batches serve every candidate, so ``recover_proxy`` is deterministic
    and the teacher runs once per run. Memory: steps x batch_size images.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=seed,
                         drop_last=len(dataset) > batch_size)  # type: ignore[arg-type]  # fmt: skip
    out: list[Reference] = []
    while len(out) < steps:
        for x, y in loader:
            out.append(Reference(x, y, _logits(teacher.to(device), x, batch_size=len(x),
                                               device=device)))  # fmt: skip
            if len(out) == steps:
                break
    return tuple(out)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float):
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    t = float(temperature)
    return (
        t
        * t
        * F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
    )


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"the distillation temperature must be positive, got {temperature!r}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _calibrated_copy(
    model: nn.Module, calib: Dataset | None, *, bn_batches: int, bn_batch_size: int, device,
    seed: int,
) -> nn.Module:  # fmt: skip
    """A copy of ``model`` with BatchNorm re-estimated on ``calib`` (None: already done)."""
    module = copy.deepcopy(model).to(resolve_device(device))
    if calib is not None:
        reestimate_bn(module, calib, batches=bn_batches, batch_size=bn_batch_size, device=device,
                      seed=seed)  # fmt: skip
    return module


def agreement(kd: float, *, temperature: float) -> float:
    """``exp(-KL)`` of a KD loss ``T^2 * KL``: in (0, 1], 1 when the outputs match the dense
    model's. The same order as minus the loss, on the scale of an accuracy (higher is better),
    which the searchers' rewards and penalties assume."""
    return math.exp(-float(kd) / (float(temperature) ** 2))


def _score(
    module: nn.Module, reference: Reference, *, temperature: float, batch_size: int, device
) -> tuple[float, float]:
    logits = _logits(module, reference.images, batch_size=batch_size, device=device)
    acc = float((logits.argmax(1) == reference.labels).float().mean())
    loss = float(kd_loss(logits, reference.logits, temperature=temperature))
    return acc, loss


def bn_proxy(
    model: nn.Module,
    *,
    calib: Dataset,
    search: Dataset,
    bn_batches: int = 4,
    bn_batch_size: int = 64,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
) -> ProxyResult:
    """Accuracy on ``search`` after BN re-estimation on ``calib`` (today's search score)."""
    t0 = time.perf_counter()
    module = _calibrated_copy(model, calib, bn_batches=bn_batches, bn_batch_size=bn_batch_size,
                              device=device, seed=seed)  # fmt: skip
    acc = float(accuracy(module, search, device=device, batch_size=batch_size))
    return ProxyResult("bn", acc, time.perf_counter() - t0, acc)


def kd_proxy(
    model: nn.Module,
    *,
    calib: Dataset | None,
    reference: Reference,
    temperature: float = 4.0,
    bn_batches: int = 4,
    bn_batch_size: int = 64,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
) -> ProxyResult:
    """Minus the distillation loss against the dense model's logits on ``reference``, after
    BN re-estimation on ``calib`` (None: the model's BatchNorm is already re-estimated); the
    accuracy on the same images comes with it."""
    _check_temperature(temperature)
    t0 = time.perf_counter()
    module = _calibrated_copy(model, calib, bn_batches=bn_batches, bn_batch_size=bn_batch_size,
                              device=device, seed=seed)  # fmt: skip
    acc, loss = _score(module, reference, temperature=temperature, batch_size=batch_size,
                       device=device)  # fmt: skip
    return ProxyResult("kd", -loss, time.perf_counter() - t0, acc, loss)


def recover_proxy(
    model: nn.Module,
    *,
    calib: Dataset | None,
    reference: Reference,
    batches: Sequence[Reference],
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    kd_alpha: float = 0.5,
    temperature: float = 4.0,
    bn_batches: int = 4,
    bn_batch_size: int = 64,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
) -> ProxyResult:
    """Score after a short recovery: one SGD step per batch of ``batches`` on a copy.

    The loss is finetune's, ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL``, at a
    constant learning rate; BN is re-estimated on ``calib`` before the first
    step (None: the model's is already). ``value`` is minus the KD loss on
    ``reference`` afterwards.
    """
    _check_temperature(temperature)
    if not 0.0 <= kd_alpha <= 1.0:
        raise ConfigError(f"kd_alpha must be in [0, 1], got {kd_alpha!r}")
    if not batches:
        raise ConfigError("the recover proxy needs at least one batch")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    module = _calibrated_copy(model, calib, bn_batches=bn_batches, bn_batch_size=bn_batch_size,
                              device=device, seed=seed)  # fmt: skip
    optimizer = sgd(module, lr=lr, momentum=momentum, weight_decay=weight_decay)
    with _seeded(seed):  # dropout, if any
        module.train()
        for batch in batches:
            x, y, teacher = batch.images.to(dev), batch.labels.to(dev), batch.logits.to(dev)
            logits = module(x)
            loss = kd_alpha * kd_loss(logits, teacher, temperature=temperature)
            if kd_alpha < 1.0:
                loss = loss + (1.0 - kd_alpha) * F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    module.eval()
    acc, loss_after = _score(module, reference, temperature=temperature, batch_size=batch_size,
                             device=device)  # fmt: skip
    return ProxyResult(f"recover:{len(batches)}", -loss_after, time.perf_counter() - t0, acc,
                       loss_after)  # fmt: skip


def proxy_scorer(
    spec: str | ProxySpec,
    *,
    dense: nn.Module,
    calib: Dataset,
    search: Dataset,
    train: Dataset,
    temperature: float = 4.0,
    batch_size: int = 64,
    bn_batches: int = 4,
    bn_batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
) -> Callable[[nn.Module], ProxyResult]:
    """A function ``candidate -> ProxyResult`` for one proxy spec and a run's fixed inputs.

    The dense model's outputs (on ``search`` for kd/recover, on ``STEPS`` batches
    of ``train`` for recover) are computed on the first call and reused: the
    search calls it once per candidate. ``calib`` re-estimates BatchNorm.
    Example: ``score = proxy_scorer("kd", dense=model, calib=c, search=s, train=t)``.
    """
    parsed = spec if isinstance(spec, ProxySpec) else parse_proxy(spec)
    _check_temperature(temperature)
    common = {"calib": calib, "bn_batches": bn_batches, "bn_batch_size": bn_batch_size,
              "device": device, "seed": seed}  # fmt: skip
    fixed: dict[str, object] = {}

    def reference() -> Reference:
        if "reference" not in fixed:
            fixed["reference"] = reference_outputs(dense, search, device=device)
        return fixed["reference"]  # type: ignore[return-value]

    def score(candidate: nn.Module) -> ProxyResult:
        if parsed.kind == "bn":
            return bn_proxy(candidate, search=search, **common)
        if parsed.kind == "kd":
            return kd_proxy(candidate, reference=reference(), temperature=temperature, **common)
        if "batches" not in fixed:
            fixed["batches"] = distill_batches(dense, train, steps=parsed.steps,
                                               batch_size=batch_size, seed=seed, device=device)  # fmt: skip
        return recover_proxy(candidate, reference=reference(), batches=fixed["batches"],
                             temperature=temperature, **common)  # type: ignore[arg-type]  # fmt: skip

    return score

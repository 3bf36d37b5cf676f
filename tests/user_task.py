"""A user's own model and task, as ``hwprune prune --task tests.user_task:factory`` imports them.

A small conv net with BatchNorm; the task scores a candidate by how closely it
reproduces the dense model's outputs on fixed inputs (negative MSE), calibrates
BatchNorm from a DataLoader, fine-tunes by distillation and reports the MSE.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

import hwprune.task


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def small_net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


class FidelityTask:
    """score: -MSE to the dense model's outputs on fixed inputs; evaluate: the MSE."""

    def __init__(
        self, dense: nn.Module, *, finetune_steps: int = 3, shape: tuple = (3, 16, 16)
    ) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, *shape, generator=g)
        with torch.no_grad():
            self.target = dense.eval()(self.x)
        self.loader = torch.utils.data.DataLoader(self.x, batch_size=16)
        self.finetune_steps = finetune_steps

    def calibrate(self, model: nn.Module) -> None:
        hwprune.task.reestimate_bn_on(model, self.loader, batches=4)

    def _mse(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float(((model.eval()(self.x) - self.target) ** 2).mean())

    def score(self, model: nn.Module) -> float:
        return -self._mse(model)

    def finetune(self, model: nn.Module, teacher: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        for _ in range(self.finetune_steps):
            opt.zero_grad()
            ((model(self.x) - self.target) ** 2).mean().backward()
            opt.step()
        return model.eval()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"mse": self._mse(model)}


def factory():
    model = small_net()
    return model, torch.randn(1, 3, 16, 16), FidelityTask(model)


class _Broken(FidelityTask):
    def score(self, model: nn.Module) -> float:
        if os.environ.get("HWPRUNE_TEST_FIXED"):
            return super().score(model)
        calls = getattr(self, "calls", 0) + 1
        self.calls = calls
        if calls > 3:  # the dense model and two candidates are scored first
            return self.bad()
        return super().score(model)


class RaisingTask(_Broken):
    def bad(self) -> float:
        raise RuntimeError("the metric crashed")


class NanTask(_Broken):
    def bad(self) -> float:
        return math.nan


def raising_factory():
    model = small_net()
    return model, torch.randn(1, 3, 16, 16), RaisingTask(model)


def nan_factory():
    model = small_net()
    return model, torch.randn(1, 3, 16, 16), NanTask(model)


def score_only_factory():
    """A task of plain callables: a score, no calibrate data, no finetune, no evaluate."""
    model = small_net()
    inner = FidelityTask(model)
    return model, torch.randn(1, 3, 16, 16), hwprune.task.as_task(score=inner.score)


class EmptyCalibrationTask(FidelityTask):
    """Calibrates BatchNorm from a loader that yields no batch."""

    def calibrate(self, model: nn.Module) -> None:
        hwprune.task.reestimate_bn_on(model, torch.utils.data.DataLoader([]), batches=4)


def empty_calibration_factory():
    model = small_net()
    return model, torch.randn(1, 3, 16, 16), EmptyCalibrationTask(model)


class TiedNet(nn.Module):
    """Two convolutions that share one weight Parameter (a weight tie), between untied ones."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2.weight = self.c1.weight
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.c0, self.c1, self.c2, self.c3):
            x = torch.relu(conv(x))
        return self.head(x.mean((2, 3)))


def tied_net() -> TiedNet:
    torch.manual_seed(0)
    return TiedNet().eval()


def tied_factory():
    model = tied_net()
    return model, torch.randn(1, 3, 8, 8), FidelityTask(model, shape=(3, 8, 8))

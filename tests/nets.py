"""Tiny networks shared by the tests (one copy each, imported as ``tests.nets``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TinyNet(nn.Module):
    """Three convolutions (24, 48, 48 channels) with BatchNorm and a 10-way head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.Conv2d(24, 48, 3, padding=1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(48, 48, 3, padding=1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def conv_net(
    *widths: int,
    channels: int = 3,
    classes: int = 10,
    bias: bool = False,
    pooled: int = 0,
    strides: Sequence[int] = (),
    seed: int = 0,
) -> nn.Sequential:
    """Conv-BatchNorm-ReLU blocks of the given widths, global pooling and a linear head.

    The first ``pooled`` blocks end in a 2x2 max-pool; ``strides`` gives each convolution's
    stride (1 where it is shorter). Seeded, so equal arguments give equal weights; left in
    training mode like any new module (call ``.eval()`` where a test needs it).
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        stride = strides[i] if i < len(strides) else 1
        before = widths[i - 1] if i else channels
        layers += [nn.Conv2d(before, width, 3, padding=1, stride=stride, bias=bias),
                   nn.BatchNorm2d(width), nn.ReLU()]  # fmt: skip
        if i < pooled:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], classes)
    )


def tiny_net(channels: int = 3) -> nn.Module:
    """Two 8-channel convolutions and a 10-way head, seeded, in eval mode."""
    return conv_net(8, 8, channels=channels).eval()


def pooled_net(channels: int = 3) -> nn.Module:
    """Three convolutions (16, 24, 24 channels), the first two max-pooled, in eval mode."""
    return conv_net(16, 24, 24, channels=channels, pooled=2).eval()


class Cancelling(nn.Module):
    """Activations of ~1e5 whose difference gates the output: float32 rounding dominates it.

    EfficientNet and MobileNetV3 with BN statistics estimated on data narrower than the
    random check inputs have this shape ("ONNX differs from torch by up to 9", export
    refused): they reach activations of 1e5, and torch's own float32 output is then as far
    from the exact one as ONNX Runtime's. Not seeded: seed before building it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(256, 1024)
        self.b = nn.Linear(256, 1024)
        self.head = nn.Linear(1024, 10)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight * (1 + 1e-6))
            self.b.bias.copy_(self.a.bias)
            # 3e4: past the tolerance in every kind of check draw (normal, small, uniform).
            self.a.weight.mul_(3e4)
            self.b.weight.mul_(3e4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.a(x) - self.b(x)) * self.a(x))

"""CIFAR-style VGG and ResNet networks for 32x32 inputs, as used by the seed papers.

All of them end in a global average pool, so they also accept other input
sizes. Shortcuts in the ResNets are 1x1 convolutions with batch norm, which
Torch-Pruning's DependencyGraph couples with the residual branch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGGCifar", "ResNetCifar", "BasicBlock", "VGG_CONFIGS", "scaled"]

# Channel counts per conv layer; "M" is a 2x2 max pool (Simonyan & Zisserman, configs A/B/D/E).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ),
    "vgg19": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}  # fmt: skip


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class VGGCifar(nn.Module):
    """VGG with batch norm for 32x32 images: conv-BN-ReLU stacks, global pool, one Linear."""

    def __init__(
        self, config: tuple[int | str, ...], *, num_classes: int = 10, width: float = 1.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = scaled(int(item), width)
                layers += [
                    nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 conv + BN projection when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet for 32x32 images: a 3x3 stem (no max pool), stages of basic blocks, global pool."""

    def __init__(
        self,
        *,
        blocks: tuple[int, ...],
        channels: tuple[int, ...],
        num_classes: int = 10,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if len(blocks) != len(channels):
            raise ValueError(f"blocks {blocks} and channels {channels} differ in length")
        widths = [scaled(c, width) for c in channels]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (n, out_ch) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_ch, out_ch, stride=stride if j == 0 else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(torch.flatten(x, 1))

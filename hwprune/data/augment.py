"""Training augmentation applied to whole batches of image tensors (cheap, no PIL round trips)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from hwprune.errors import ConfigError

__all__ = ["AUGMENTATIONS", "BatchAugment", "augment_batch"]

# "crop_flip": random crop from a padded image + horizontal flip (CIFAR, natural images).
# "shift": random translation only (digits are not mirror-symmetric, so no flip).
AUGMENTATIONS = ("none", "crop_flip", "shift")


def augment_batch(
    images: torch.Tensor, *, kind: str, pad: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop each image of an (N, C, H, W) batch from a ``pad``-padded copy; flip for crop_flip.

    Padding replicates the border, so translated digits keep their plain background.
    """
    if kind not in AUGMENTATIONS:
        raise ConfigError(
            f"unknown augmentation {kind!r}; expected one of {', '.join(AUGMENTATIONS)}"
        )
    if kind == "none" or images.ndim != 4:
        return images
    n, _, h, w = images.shape
    dev = images.device
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (N, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # (N, 1, W)
        batch = torch.arange(n, device=dev)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    if kind == "crop_flip":
        flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


class BatchAugment:
    """A DataLoader ``collate_fn`` that stacks samples, then augments the batch (picklable)."""

    def __init__(self, kind: str, *, pad: int) -> None:
        if kind not in AUGMENTATIONS:
            raise ConfigError(
                f"unknown augmentation {kind!r}; expected one of {', '.join(AUGMENTATIONS)}"
            )
        self.kind = kind
        self.pad = int(pad)

    def __call__(self, samples: Sequence[Any]) -> Any:
        images, labels = default_collate(samples)
        return augment_batch(images, kind=self.kind, pad=self.pad), labels

    def __repr__(self) -> str:
        return f"BatchAugment({self.kind!r}, pad={self.pad})"

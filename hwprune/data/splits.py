"""The train / search / test splits of a dataset, and the in-memory datasets behind them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DataSplits", "ImageTensorDataset", "stratified_split"]


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A dataset cut three ways.

    ``train`` trains and fine-tunes; ``search`` is held out for the pruning search's
    proxy accuracy (fine-tuning and the final test never see it); ``test`` gives the
    reported accuracy. ``augment`` names the training augmentation that suits the
    data ("crop_flip", "shift" or "none") and ``augment_pad`` its shift in pixels.
    """

    train: Dataset
    search: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    augment: str = "none"
    augment_pad: int = 0
    classes: tuple[str, ...] = ()

    def sizes(self) -> dict[str, int]:
        """Number of samples in each split."""
        return {k: len(getattr(self, k)) for k in ("train", "search", "test")}  # type: ignore[arg-type]


class ImageTensorDataset(Dataset):
    """Images kept in memory as a uint8 or float (N, C, H, W) tensor, normalised on access.

    Optionally resized to ``size`` x ``size`` (bilinear) on access.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        size: int | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected (N, C, H, W) images and N labels, got {tuple(images.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(
                x[None], size=(self.size, self.size), mode="bilinear", align_corners=False
            )[0]
        return (x - self.mean) / self.std, self.labels[index]


def stratified_split(
    labels: Sequence[int], *, fractions: tuple[float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Indices of (train, search, test): per class, ``fractions`` of it go to search and test.

    Deterministic for a given ``seed``. Each class keeps at least one training sample.
    """
    gen = torch.Generator().manual_seed(int(seed))
    labels_t = torch.as_tensor(list(labels))
    train: list[int] = []
    search: list[int] = []
    test: list[int] = []
    for c in torch.unique(labels_t).tolist():
        idx = torch.nonzero(labels_t == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
        n = len(idx)
        n_search = min(int(round(n * fractions[0])), max(0, n - 1))
        n_test = min(int(round(n * fractions[1])), max(0, n - 1 - n_search))
        search += idx[:n_search]
        test += idx[n_search : n_search + n_test]
        train += idx[n_search + n_test :]
    return sorted(train), sorted(search), sorted(test)

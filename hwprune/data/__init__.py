"""Datasets by name, split three ways (train / search / test), and their loaders.

Names: ``digits`` (built in, offline), ``cifar10``, ``cifar100``, ``imagefolder:PATH``,
``fashion-mnist[:PATH][?train=N]`` (Debian's ``dataset-fashion-mnist``);
a path may follow any name after a colon (``cifar10:/data/cifar``). Example::

    data = get_dataset("digits")
    loader = make_loader(data.train, batch_size=128, shuffle=True, augment=data.augment)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from hwprune.data.augment import AUGMENTATIONS, BatchAugment, augment_batch
from hwprune.data.builtin import (
    default_root,
    load_cifar_splits,
    load_digits_splits,
    load_imagefolder_splits,
)
from hwprune.data.splits import DataSplits, ImageTensorDataset, stratified_split
from hwprune.errors import ConfigError, DataError
from hwprune.registry import Registry

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "BatchAugment",
    "DataSplits",
    "ImageTensorDataset",
    "augment_batch",
    "default_root",
    "get_dataset",
    "list_datasets",
    "make_loader",
    "parse_dataset_name",
    "stratified_split",
]

# A loader takes (path, root, download, seed, input_size) and returns DataSplits.
Loader = Callable[..., DataSplits]
DATASETS: Registry[Loader] = Registry("dataset")


@DATASETS.register("digits")
def _digits(*, path, root, download, seed, input_size) -> DataSplits:
    if path:
        raise ConfigError(
            f"the digits dataset ships with scikit-learn and takes no path, got {path!r}"
        )
    return load_digits_splits(seed=seed, input_size=input_size)


@DATASETS.register("cifar10")
def _cifar10(*, path, root, download, seed, input_size) -> DataSplits:
    return load_cifar_splits("cifar10", root=path or root, download=download, seed=seed,
                             input_size=input_size)  # fmt: skip


@DATASETS.register("cifar100")
def _cifar100(*, path, root, download, seed, input_size) -> DataSplits:
    return load_cifar_splits("cifar100", root=path or root, download=download, seed=seed,
                             input_size=input_size)  # fmt: skip


@DATASETS.register("imagefolder")
def _imagefolder(*, path, root, download, seed, input_size) -> DataSplits:
    return load_imagefolder_splits(path or root, seed=seed, input_size=input_size)


@DATASETS.register("fashion-mnist")
def _fashion_mnist(*, path, root, download, seed, input_size) -> DataSplits:
    from hwprune.data.fashion_mnist import load_fashion_mnist_splits

    return load_fashion_mnist_splits(path, seed=seed, input_size=input_size)


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return DATASETS.names()


def parse_dataset_name(spec: str) -> tuple[str, str | None]:
    """Split ``"name:path"`` into ``("name", "path")``; a bare name gives ``("name", None)``.

    Options after the name without a path (``"fashion-mnist?train=3000"``) go with the path
    (``"?train=3000"``), as they do after a path (``"fashion-mnist:/data?train=3000"``)."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError(
            "expected a dataset name such as 'digits' or 'cifar10:/data/cifar', got ''"
        )
    name, sep, path = spec.partition(":")
    if not sep and "?" in name:
        name, _, query = name.partition("?")
        return name.strip().lower(), f"?{query}"
    return name.strip().lower(), (path if sep and path else None)


def get_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    input_size: int | None = None,
) -> DataSplits:
    """Load a dataset by name and cut it into train / search / test.

    ``root`` is where downloadable datasets live (a path in the name wins;
    default ``$HWPRUNE_DATA``, else ``data`` in ``oracles.home_dir()``). ``seed`` fixes the split:
    the same seed always gives the same split. ``input_size`` resizes images to
    that square side (default: 32 for digits and CIFAR, 224 for image folders).
    """
    key, path = parse_dataset_name(name)
    loader = DATASETS.get(key)
    if input_size is not None and (not isinstance(input_size, int) or input_size < 8):
        raise ConfigError(f"input_size must be an integer >= 8, got {input_size!r}")
    data = loader(path=path, root=root, download=download, seed=int(seed), input_size=input_size)
    if data.num_classes < 2:
        raise DataError(
            f"dataset {name!r} has {data.num_classes} class; a classification dataset needs at "
            "least 2 classes (for imagefolder: one subfolder per class)"
        )
    return data


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    augment: str | None = None,
    augment_pad: int = 4,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset``; ``augment`` ("crop_flip", "shift") is applied per batch.

    ``seed`` fixes the shuffling order. Workers default to 0: the built-in data is
    in memory and the training process already uses torch's intra-op threads.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("cannot make a loader over an empty dataset")
    kind = augment or "none"
    collate = BatchAugment(kind, pad=augment_pad) if kind != "none" else None
    generator = None
    if seed is not None:
        import torch

        generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        generator=generator,
    )

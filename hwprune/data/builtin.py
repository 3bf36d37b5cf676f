"""Dataset builders: scikit-learn digits (offline), CIFAR-10/100, and ImageFolder trees."""

from __future__ import annotations

import functools
import logging
import os
import pickle
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from hwprune.data.splits import DataSplits, ImageTensorDataset, stratified_split
from hwprune.errors import DataError

__all__ = ["load_digits_splits", "load_cifar_splits", "load_imagefolder_splits", "default_root"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_SEARCH_SIZE = 5000


def default_root() -> Path:
    """Where datasets live unless a path is given: $HWPRUNE_DATA, else ``data`` in hwprune's
    home folder (``oracles.home_dir()``: $HWPRUNE_HOME, else ~/.cache/hwprune)."""
    from oracles import home_dir

    if os.environ.get("HWPRUNE_DATA"):
        return Path(os.environ["HWPRUNE_DATA"]).expanduser()
    return home_dir() / "data"


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    return images, torch.tensor(bunch.target, dtype=torch.long)


@functools.lru_cache(maxsize=8)
def load_digits_splits(*, seed: int = 0, input_size: int | None = None) -> DataSplits:
    """scikit-learn's 1797 handwritten 8x8 digits, upscaled (bilinear) to 32x32 RGB.

    A stratified 60/20/20 train/search/test split fixed by ``seed``; normalised by the
    training split's mean and std; held in memory, so loading takes milliseconds.
    """
    import torch.nn.functional as F

    size = int(input_size or 32)
    small, labels = _digits_arrays()
    big = F.interpolate(small[:, None], size=(size, size), mode="bilinear", align_corners=False)
    images = big.expand(-1, 3, -1, -1).contiguous()
    train, search, test = stratified_split(labels.tolist(), fractions=(0.2, 0.2), seed=seed)
    mean = float(images[train].mean())
    std = float(images[train].std())

    def part(idx: list[int]) -> ImageTensorDataset:
        index = torch.tensor(idx, dtype=torch.long)
        return ImageTensorDataset(images[index], labels[index], mean=(mean,) * 3, std=(std,) * 3)

    return DataSplits(
        train=part(train),
        search=part(search),
        test=part(test),
        num_classes=10,
        input_shape=(3, size, size),
        name="digits",
        augment="shift",
        augment_pad=max(1, size // 16),
        classes=tuple(str(i) for i in range(10)),
    )


# The python-format CIFAR files are pickles of numpy arrays. They are read with an
# unpickler that can rebuild arrays and nothing else, so a tampered file cannot run code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names",
                 "fine_labels"),
}  # fmt: skip


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays allowed")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {str(path)!r} as a CIFAR batch file: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{str(path)!r} is not a CIFAR batch file (expected a dict)")
    return obj


def _read_cifar(
    folder: Path, files: list[str], label_key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    images, labels = [], []
    for name in files:
        entry = _read_pickle(folder / name)
        try:
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in entry[label_key])
        except (KeyError, ValueError) as exc:
            raise DataError(f"{str(folder / name)!r} is not a CIFAR batch file ({exc})") from exc
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def load_cifar_splits(
    name: str,
    *,
    root: str | Path | None,
    download: bool,
    seed: int = 0,
    input_size: int | None = None,
) -> DataSplits:
    """CIFAR-10 or CIFAR-100 from ``root`` (torchvision's layout); 5000 training images held out for search."""
    folder, train_files, test_files, meta_file, names_key, label_key = _CIFAR_FILES[name]
    where = Path(root).expanduser() if root is not None else default_root()
    if where.name == folder:  # the user pointed at the extracted folder itself
        where = where.parent
    if download:
        from torchvision import datasets

        cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
        try:
            cls(str(where), train=True, download=True)  # downloads and checks md5 sums
        except (RuntimeError, OSError) as exc:
            raise DataError(f"cannot download {name} into {str(where)!r}: {exc}") from exc
    try:
        train_x, train_y = _read_cifar(where / folder, train_files, label_key)
        test_x, test_y = _read_cifar(where / folder, test_files, label_key)
        meta_path = where / folder / meta_file
        classes = [str(c) for c in _read_pickle(meta_path)[names_key]] if meta_path.exists() else []
    except FileNotFoundError as exc:
        hint = (
            ""
            if download
            else (
                f" Give the folder that holds {folder!r} as '{name}:/path/to/dir', or fetch it "
                f"into {str(where)!r} once with 'hwprune train --data {name} --download ...' "
                "(get_dataset(..., download=True) in Python)."
            )
        )
        raise DataError(
            f"{name} not found in {str(where)!r} (looked for {str(where / folder)!r}).{hint}"
        ) from exc
    num_classes = len(classes) or int(train_y.max()) + 1
    mean, std = CIFAR_STATS[name]
    size = None if input_size in (None, 32) else int(input_size)
    full_train = ImageTensorDataset(train_x, train_y, mean=mean, std=std, size=size)
    test = ImageTensorDataset(test_x, test_y, mean=mean, std=std, size=size)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(full_train), generator=gen).tolist()
    n_search = min(CIFAR_SEARCH_SIZE, len(full_train) // 10)
    search_idx, train_idx = sorted(perm[:n_search]), sorted(perm[n_search:])
    side = int(input_size or 32)
    return DataSplits(
        train=Subset(full_train, train_idx),
        search=Subset(full_train, search_idx),
        test=test,
        num_classes=num_classes,
        input_shape=(3, side, side),
        name=name,
        augment="crop_flip",
        augment_pad=max(1, side // 8),
        classes=tuple(classes) or tuple(str(i) for i in range(num_classes)),
    )


_SHOWN_BAD = 3  # unreadable image files named in the warning


def _readable_image(path: str) -> bool:
    """A cheap check that an image file can be decoded: its header parses, and a JPEG is whole.

    A full decode of every file would take minutes on a large folder; the header and
    JPEG's end-of-image marker catch the corrupt and truncated files seen in practice.
    ``_load_image`` still names any file that fails later.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            fmt = img.format
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64))
                # Some writers pad after the end-of-image marker; it must be in the last bytes.
                if b"\xff\xd9" not in fh.read():
                    return False
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
    return True


def _load_image(path: str):  # -> PIL.Image.Image
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"image file {path!r} cannot be read ({exc}); remove or replace it"
        ) from exc


def _image_folder(path: Path, size: int) -> Dataset:
    from torchvision import datasets, transforms
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    bad: list[str] = []

    def valid(file: str) -> bool:
        if not has_file_allowed_extension(file, IMG_EXTENSIONS):
            return False
        if _readable_image(file):
            return True
        bad.append(file)
        return False

    try:
        return datasets.ImageFolder(
            str(path), transform=tf, loader=_load_image, is_valid_file=valid
        )
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"no images found in {str(path)!r}: expected one subfolder per class holding "
            f"image files (.png, .jpg, ...) ({exc})"
        ) from exc
    finally:
        _warn_skipped(bad, path)


def _warn_skipped(bad: list[str], path: Path) -> None:
    if bad:
        shown = ", ".join(repr(b) for b in bad[:_SHOWN_BAD])
        more = f" and {len(bad) - _SHOWN_BAD} more" if len(bad) > _SHOWN_BAD else ""
        log.warning(
            "skipped %d unreadable image file%s in %s (corrupt or truncated): %s%s",
            len(bad),
            "" if len(bad) == 1 else "s",
            path,
            shown,
            more,
        )


def load_imagefolder_splits(
    path: str | Path | None, *, seed: int = 0, input_size: int | None = None
) -> DataSplits:
    """Images in class subfolders; uses train/ val/ test/ subfolders if present, else a fixed split.

    With train/ and test/: search is val/ if present, else 10% of train/. With
    train/ and val/ only: val/ is the test split and search comes from train/.
    A single folder of class subfolders is split 70/15/15 per class.
    """
    if path is None or str(path) == "":
        raise DataError("imagefolder needs a path: use 'imagefolder:/path/to/images'")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist or is not a directory")
    size = int(input_size or 224)
    subs = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    if "train" in subs:
        train_all = _image_folder(subs["train"], size)
        held = [subs[k] for k in ("val", "test") if k in subs]
        others = [_image_folder(p, size) for p in held]
        for p, ds in zip(held, others, strict=True):
            if ds.classes != train_all.classes:
                raise DataError(
                    f"class folders in {str(p)!r} ({', '.join(ds.classes)}) differ from those in "
                    f"{str(subs['train'])!r} ({', '.join(train_all.classes)})"
                )
        labels = train_all.targets
        if len(others) == 2:
            search, test = others
            train = train_all
        else:
            tr, se, te = stratified_split(
                labels, fractions=(0.1, 0.0 if others else 0.15), seed=seed
            )
            train, search = Subset(train_all, tr), Subset(train_all, se)
            test = others[0] if others else Subset(train_all, te)
        classes = train_all.classes
    else:
        full = _image_folder(root, size)
        tr, se, te = stratified_split(full.targets, fractions=(0.15, 0.15), seed=seed)
        train, search, test = Subset(full, tr), Subset(full, se), Subset(full, te)
        classes = full.classes
    sizes = {"train": len(train), "search": len(search), "test": len(test)}
    if min(sizes.values()) == 0:
        raise DataError(
            f"image folder {str(root)!r} has too few images to split into train/search/test "
            f"({sizes}); add images or give train/, val/ and test/ subfolders"
        )
    log.debug("imagefolder %s: %s, %d classes", root, sizes, len(classes))
    return DataSplits(
        train=train,
        search=search,
        test=test,
        num_classes=len(classes),
        input_shape=(3, size, size),
        name=f"imagefolder:{root}",
        augment="crop_flip",
        augment_pad=max(1, size // 8),
        classes=tuple(classes),
    )

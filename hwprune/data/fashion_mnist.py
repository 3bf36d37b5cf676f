"""Fashion-MNIST from its four idx files (Debian's ``dataset-fashion-mnist``), read with numpy.

``--data fashion-mnist`` reads ``/usr/share/datasets/fashion-mnist``;
``fashion-mnist:/some/dir`` any folder holding the four files, gzipped or not.
A query after the path keeps a fixed subset of the training images, chosen by
the seed, for small machines: ``fashion-mnist:?train=6000`` or
``fashion-mnist:/some/dir?train=6000``.

The 28x28 grey images are delivered as 3 identical channels (the CIFAR-style
models take RGB) at ``input_size`` (default 32: zero-padded by 2 pixels, the
background of these images being black; any other size is resized bilinearly).
5,000 training images are held out as the search split; the test split is the
official 10,000 test images. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from hwprune.data.splits import DataSplits, ImageTensorDataset
from hwprune.errors import ConfigError, DataError

__all__ = [
    "CLASSES",
    "DEFAULT_DIR",
    "FILES",
    "SEARCH_SIZE",
    "load_fashion_mnist_splits",
    "parse_fashion_mnist_path",
    "read_idx",
]

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")  # fmt: skip
SEARCH_SIZE = 5000
# Mean and std of the 60,000 training images' pixels in [0, 1] (zero padding excluded).
MEAN = 0.2860
STD = 0.3530
_INSTALL = "install it with 'apt-get install dataset-fashion-mnist' or pass its folder as 'fashion-mnist:/path/to/dir'"  # noqa: E501


def parse_fashion_mnist_path(path: str | None) -> tuple[Path, int | None]:
    """``"DIR?train=N"`` -> (folder, N); an empty folder means the default one."""
    text = (path or "").strip()
    folder, _, query = text.partition("?")
    subset: int | None = None
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if key.strip() != "train" or not sep:
            raise ConfigError(
                f"unknown fashion-mnist option {item!r}; the one option is 'train=N' "
                "(keep N training images), e.g. 'fashion-mnist:?train=6000'"
            )
        try:
            subset = int(value)
        except ValueError:
            subset = 0
        if subset < 1:
            raise ConfigError(f"fashion-mnist's train=N needs a positive integer, got {value!r}")
    return (Path(folder).expanduser() if folder else DEFAULT_DIR), subset


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    # Some copies use a dot before "idx" (train-images.idx3-ubyte).
    dotted = stem.replace("-idx", ".idx")
    for name in (dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"fashion-mnist: {str(folder / stem)!r} (or .gz) not found; {_INSTALL}")


def read_idx(path: str | Path, *, ndim: int) -> np.ndarray:
    """An idx file (gzipped or not) of unsigned bytes as an array; DataError naming the file if bad.

    The idx format: two zero bytes, type code 0x08 (unsigned byte), the number of
    dimensions, then one big-endian uint32 per dimension, then the data.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {str(path)!r} as an idx file: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(
            f"{str(path)!r} is not an idx file of unsigned bytes with {ndim} dimension(s) "
            f"(expected magic number 0x0000080{ndim}, got 0x{raw[:4].hex() or 'empty'})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r} is truncated: its header needs {header} bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"{str(path)!r} holds {len(raw) - header} bytes of data, but its header "
            f"{'x'.join(map(str, dims))} says {expected - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_pair(folder: Path, images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    x_path, y_path = _find(folder, FILES[images]), _find(folder, FILES[labels])
    x, y = read_idx(x_path, ndim=3), read_idx(y_path, ndim=1)
    if len(x) != len(y):
        raise DataError(
            f"{str(x_path)!r} holds {len(x)} images but {str(y_path)!r} {len(y)} labels"
        )
    if x.shape[1:] != (28, 28):
        raise DataError(
            f"{str(x_path)!r} holds images of {x.shape[1]}x{x.shape[2]} pixels; "
            "Fashion-MNIST's are 28x28"
        )
    if len(y) and int(y.max()) >= len(CLASSES):
        raise DataError(f"{str(y_path)!r} holds label {int(y.max())}; Fashion-MNIST's are 0-9")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


def _as_rgb(images: torch.Tensor, size: int) -> tuple[torch.Tensor, int | None]:
    """(N, 28, 28) uint8 -> (N, 3, S, S) uint8 view (channels share memory) and the size left
    for ImageTensorDataset to resize to on access (None when no resizing is needed)."""
    x = images[:, None]
    if size == 32:
        x = F.pad(x, (2, 2, 2, 2))
    resize = None if size in (28, 32) else size
    return x.expand(-1, 3, -1, -1), resize


@functools.lru_cache(maxsize=4)
def load_fashion_mnist_splits(
    path: str | None = None, *, seed: int = 0, input_size: int | None = None
) -> DataSplits:
    """Fashion-MNIST split into train / search (5,000 held-out training images) / test (10,000).

    ``path`` is a folder, optionally followed by ``?train=N`` (see the module's
    docstring). The split and the training subset are fixed by ``seed``.
    """
    folder, subset = parse_fashion_mnist_path(path)
    if not folder.is_dir():
        raise DataError(f"fashion-mnist folder {str(folder)!r} does not exist; {_INSTALL}")
    train_x, train_y = _read_pair(folder, "train_images", "train_labels")
    test_x, test_y = _read_pair(folder, "test_images", "test_labels")
    n_search = min(SEARCH_SIZE, len(train_y) // 10)
    if len(train_y) - n_search < 1 or len(test_y) < 1:
        raise DataError(
            f"fashion-mnist in {str(folder)!r} has too few images to split "
            f"({len(train_y)} training, {len(test_y)} test)"
        )
    size = int(input_size or 32)
    train_rgb, resize = _as_rgb(train_x, size)
    test_rgb, _ = _as_rgb(test_x, size)
    full_train = ImageTensorDataset(train_rgb, train_y, mean=(MEAN,) * 3, std=(STD,) * 3,
                                    size=resize)  # fmt: skip
    test = ImageTensorDataset(test_rgb, test_y, mean=(MEAN,) * 3, std=(STD,) * 3, size=resize)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(full_train), generator=gen).tolist()
    search_idx, train_idx = perm[:n_search], perm[n_search:]
    if subset is not None:
        if subset > len(train_idx):
            raise ConfigError(
                f"fashion-mnist's train={subset} asks for more than the {len(train_idx)} "
                "training images there are"
            )
        train_idx = train_idx[:subset]  # a prefix of a seeded permutation: fixed by the seed
    log.debug("fashion-mnist from %s: %d train, %d search, %d test", folder, len(train_idx),
              n_search, len(test))  # fmt: skip
    return DataSplits(
        train=Subset(full_train, sorted(train_idx)),
        search=Subset(full_train, sorted(search_idx)),
        test=test,
        num_classes=len(CLASSES),
        input_shape=(3, size, size),
        name="fashion-mnist",
        augment="crop_flip",
        augment_pad=max(1, size // 8),
        classes=CLASSES,
    )

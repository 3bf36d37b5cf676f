"""Fashion-MNIST from idx files the tests write themselves (CI has no dataset package)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from hwprune.data import get_dataset, list_datasets
from hwprune.data.fashion_mnist import FILES, read_idx
from hwprune.errors import ConfigError, DataError


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def _write(folder: Path, *, n_train: int = 100, n_test: int = 30, gz: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        data = _idx(array)
        name = FILES[key] + (".gz" if gz else "")
        (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_gzipped_or_raw_into_three_splits(tmp_path, gz):
    arrays = _write(tmp_path, gz=gz)
    data = get_dataset(f"fashion-mnist:{tmp_path}")
    assert "fashion-mnist" in list_datasets()
    assert data.sizes() == {"train": 90, "search": 10, "test": 30}
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    x, y = data.test[3]
    assert x.shape == (3, 32, 32) and int(y) == 3
    # The official test images in order, padded by 2 black pixels, three equal channels.
    raw = torch.tensor(arrays["test_images"][3], dtype=torch.float32) / 255.0
    mean, std = data.test.mean[0], data.test.std[0]
    assert torch.allclose(x[0, 2:30, 2:30] * std + mean, raw, atol=1e-5)
    assert torch.allclose(x[:, :2] * std + mean, torch.zeros(3, 2, 32), atol=1e-5)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    # Train and search are disjoint parts of the training file.
    assert not set(data.train.indices) & set(data.search.indices)
    assert len(set(data.train.indices) | set(data.search.indices)) == 100


def test_other_input_sizes_are_resized(tmp_path):
    _write(tmp_path, gz=False)
    assert get_dataset(f"fashion-mnist:{tmp_path}", input_size=28).train[0][0].shape == (3, 28, 28)
    assert get_dataset(f"fashion-mnist:{tmp_path}", input_size=64).train[0][0].shape == (3, 64, 64)


def test_training_subset_is_fixed_by_the_seed(tmp_path):
    _write(tmp_path, gz=True)
    a = get_dataset(f"fashion-mnist:{tmp_path}?train=20", seed=0)
    b = get_dataset(f"fashion-mnist:{tmp_path}?train=20", seed=0, input_size=32)
    c = get_dataset(f"fashion-mnist:{tmp_path}?train=20", seed=1)
    full = get_dataset(f"fashion-mnist:{tmp_path}", seed=0)
    assert len(a.train) == 20 and len(a.test) == 30 and len(a.search) == 10
    assert a.train.indices == b.train.indices
    assert a.train.indices != c.train.indices
    # The subset is drawn from the seed's training part; the search split does not change.
    assert set(a.train.indices) < set(full.train.indices)
    assert a.search.indices == full.search.indices
    with pytest.raises(ConfigError, match="train=500 asks for more than the 90"):
        get_dataset(f"fashion-mnist:{tmp_path}?train=500")
    with pytest.raises(ConfigError, match="positive integer"):
        get_dataset(f"fashion-mnist:{tmp_path}?train=many")
    with pytest.raises(ConfigError, match="the one option is 'train=N'"):
        get_dataset(f"fashion-mnist:{tmp_path}?test=5")


def test_missing_folder_or_file_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        get_dataset(f"fashion-mnist:{tmp_path / 'nowhere'}")
    assert "\n" not in str(err.value)
    _write(tmp_path, gz=True)
    (tmp_path / (FILES["test_labels"] + ".gz")).unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*apt-get install"):
        get_dataset(f"fashion-mnist:{tmp_path}")


def test_bad_files_are_named(tmp_path):
    _write(tmp_path, gz=False)
    images = tmp_path / FILES["train_images"]
    good = images.read_bytes()
    images.write_bytes(b"\x00\x00\x08\x01" + good[4:])  # says 1 dimension
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte'.*magic number 0x00000803"):
        read_idx(images, ndim=3)
    images.write_bytes(good[:-5])  # truncated data
    with pytest.raises(DataError, match="train-images-idx3-ubyte' holds 78395 bytes"):
        get_dataset(f"fashion-mnist:{tmp_path}")
    images.write_bytes(gzip.compress(good)[:40])  # a broken gzip stream
    with pytest.raises(DataError, match="cannot read .*train-images-idx3-ubyte'"):
        read_idx(images, ndim=3)
    images.write_bytes(good)
    labels = tmp_path / FILES["train_labels"]
    labels.write_bytes(_idx(np.arange(99) % 10))
    with pytest.raises(DataError, match="100 images but .*99 labels"):
        get_dataset(f"fashion-mnist:{tmp_path}")


def test_options_after_the_bare_name_go_with_the_default_folder() -> None:
    from hwprune.data import parse_dataset_name

    assert parse_dataset_name("fashion-mnist?train=20") == ("fashion-mnist", "?train=20")
    assert parse_dataset_name("fashion-mnist:/d?train=20") == ("fashion-mnist", "/d?train=20")
    assert parse_dataset_name("fashion-mnist") == ("fashion-mnist", None)

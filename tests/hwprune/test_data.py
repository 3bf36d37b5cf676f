"""Datasets by name: the built-in digits, CIFAR lookup errors, image folders, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hwprune.data import (
    augment_batch,
    get_dataset,
    make_loader,
    parse_dataset_name,
    stratified_split,
)
from hwprune.errors import ConfigError, DataError, UnknownNameError


def _labels(ds) -> list[int]:
    return [int(ds[i][1]) for i in range(len(ds))]


def _keys(ds) -> set[bytes]:
    return {ds[i][0].numpy().tobytes() for i in range(len(ds))}


def test_digits_shapes_classes_and_disjoint_splits():
    data = get_dataset("digits")
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    sizes = data.sizes()
    assert sum(sizes.values()) == 1797
    assert 1000 < sizes["train"] < 1150 and 330 < sizes["test"] < 390
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y) < 10
    # Every split holds every class (stratified).
    for split in (data.train, data.search, data.test):
        assert set(_labels(split)) == set(range(10))
    # The split indices are disjoint and cover the data set.
    from sklearn.datasets import load_digits

    labels = load_digits().target.tolist()
    tr, se, te = stratified_split(labels, fractions=(0.2, 0.2), seed=0)
    assert not set(tr) & set(se) and not set(se) & set(te) and not set(tr) & set(te)
    assert sorted(tr + se + te) == list(range(1797))
    assert (len(tr), len(se), len(te)) == (sizes["train"], sizes["search"], sizes["test"])


def test_digits_split_is_fixed_across_calls_and_seeded():
    from hwprune.data.builtin import load_digits_splits

    a = get_dataset("digits")
    load_digits_splits.cache_clear()
    b = get_dataset("digits")
    assert a is not b
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)
    c = get_dataset("digits", seed=1)
    assert not torch.equal(a.test.images, c.test.images)


def test_digits_splits_do_not_share_images():
    data = get_dataset("digits")
    train, search, test = _keys(data.train), _keys(data.search), _keys(data.test)
    # scikit-learn's digits hold a handful of exact duplicate images; allow those, nothing more.
    assert len(train & test) <= 3 and len(search & test) <= 3 and len(train & search) <= 3


def test_digits_normalised_and_resizable():
    data = get_dataset("digits")
    x = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    big = get_dataset("digits", input_size=64)
    assert big.input_shape == (3, 64, 64) and big.train[0][0].shape == (3, 64, 64)


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar10'"):
        get_dataset("cifar1O")
    with pytest.raises(UnknownNameError, match="Did you mean 'digits'"):
        get_dataset("digit")


def test_parse_names():
    assert parse_dataset_name("cifar10:/data/cifar") == ("cifar10", "/data/cifar")
    assert parse_dataset_name("Digits") == ("digits", None)
    with pytest.raises(ConfigError, match="takes no path"):
        get_dataset("digits:/tmp")


def test_cifar_missing_folder_says_where_and_how(tmp_path):
    where = tmp_path / "nothing_here"
    with pytest.raises(DataError, match=r"cifar10 not found in .*nothing_here.*--download"):
        get_dataset(f"cifar10:{where}")
    with pytest.raises(DataError, match="cifar-100-python"):
        get_dataset("cifar100", root=where)


def _write_cifar10(folder, *, n_train: int, n_test: int, protocol: int = 2) -> None:
    import pickle

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": [int(i % 10) for i in range(n)]}  # fmt: skip

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f, protocol=protocol)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_from_local_files(tmp_path, protocol):
    """A tiny CIFAR-10 in torchvision's on-disk format loads; a tenth of train is held out for search."""
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder, n_train=500, n_test=100, protocol=protocol)
    data = get_dataset(f"cifar10:{folder}")
    assert data.sizes() == {"train": 450, "search": 50, "test": 100}
    assert data.num_classes == 10 and data.augment == "crop_flip"
    assert data.classes[:2] == ("c0", "c1")
    x, _ = data.search[0]
    assert x.shape == (3, 32, 32)
    # Same folder given as root= (its parent), same split.
    again = get_dataset("cifar10", root=tmp_path)
    assert data.search.indices == again.search.indices


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_file_with_objects_is_refused(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder, n_train=50, n_test=10)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": _Boom(), "labels": []}, f)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        get_dataset("cifar10", root=tmp_path)


def _write_pngs(folder, classes: dict[str, int], size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def test_imagefolder_single_tree(tmp_path):
    _write_pngs(tmp_path / "imgs", {"cat": 10, "dog": 10, "fox": 7})
    data = get_dataset(f"imagefolder:{tmp_path / 'imgs'}", input_size=24)
    assert data.num_classes == 3 and data.classes == ("cat", "dog", "fox")
    assert sum(data.sizes().values()) == 27 and min(data.sizes().values()) >= 3
    x, y = data.test[0]
    assert x.shape == (3, 24, 24) and int(y) in (0, 1, 2)
    loader = make_loader(data.train, batch_size=4, shuffle=True, augment="crop_flip", augment_pad=3)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 24, 24) and yb.shape == (4,)


def test_imagefolder_with_train_val_test(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _write_pngs(tmp_path / split, {"a": n, "b": n})
    data = get_dataset("imagefolder", root=tmp_path, input_size=16)
    assert data.sizes() == {"train": 12, "search": 4, "test": 6}


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        get_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in"):
        get_dataset(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "no_files" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found in"):
        get_dataset(f"imagefolder:{tmp_path / 'no_files'}")
    with pytest.raises(DataError, match="needs a path"):
        get_dataset("imagefolder")


def test_shift_is_a_translation_and_crop_flip_flips():
    torch.manual_seed(0)
    images = torch.randn(16, 3, 12, 12)
    pad = 2
    out = augment_batch(images, kind="shift", pad=pad)
    padded = torch.nn.functional.pad(images, (pad,) * 4, mode="replicate")
    moved = 0
    for i in range(len(images)):
        crops = [padded[i, :, dy : dy + 12, dx : dx + 12] for dy in range(5) for dx in range(5)]
        hits = [j for j, c in enumerate(crops) if torch.equal(c, out[i])]
        assert hits, f"image {i} is not a shifted crop"
        moved += hits[0] != 2 * 5 + 2
    assert moved > 8  # most images actually moved
    flipped = augment_batch(images, kind="crop_flip", pad=0)
    n_flip = sum(torch.equal(flipped[i], images[i].flip(2)) for i in range(16))
    n_same = sum(torch.equal(flipped[i], images[i]) for i in range(16))
    assert n_flip + n_same == 16 and 2 <= n_flip <= 14
    with pytest.raises(ConfigError, match="unknown augmentation 'rotate'"):
        augment_batch(images, kind="rotate", pad=2)


def test_make_loader_is_seeded():
    data = get_dataset("digits")
    a = next(iter(make_loader(data.train, batch_size=32, shuffle=True, seed=3)))[1]
    b = next(iter(make_loader(data.train, batch_size=32, shuffle=True, seed=3)))[1]
    c = next(iter(make_loader(data.train, batch_size=32, shuffle=True, seed=4)))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        make_loader(data.train, batch_size=0, shuffle=False)

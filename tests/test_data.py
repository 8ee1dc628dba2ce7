"""Data loading: shapes and ranges, reproducible disjoint splits, and the on-disk formats.

CIFAR-10 and SVHN are tested on tiny files written in their real formats, which works only
because the loaders read those formats themselves instead of going through torchvision's
checksummed classes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader

from s2ap.config import ConfigError, DataConfig
from s2ap.data import DATASETS, CropFlip, DataInfo, Splits, augments, load_splits


def _indices(subset: torch.utils.data.Dataset) -> list[int]:
    subset = subset.base if isinstance(subset, CropFlip) else subset
    return [int(i) for i in subset.indices]


def test_registered_names() -> None:
    assert {"digits", "synthetic", "cifar10", "svhn", "imagenet"} <= set(DATASETS.names())


def test_digits_shapes_range_and_classes() -> None:
    splits = load_splits(DataConfig(name="digits"), seed=0)
    assert isinstance(splits, Splits)
    assert splits.info.num_classes == 10 and splits.info.in_channels == 1
    assert splits.info.image_size == 8
    assert len(splits.info.mean) == len(splits.info.std) == 1
    x, y = splits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    xs, ys = next(iter(DataLoader(splits.train, batch_size=len(splits.train))))
    assert float(xs.min()) == 0.0 and float(xs.max()) == 1.0
    assert set(ys.tolist()) == set(range(10))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == 360


def test_digits_resize() -> None:
    splits = load_splits(DataConfig(name="digits", image_size=16), seed=0)
    assert splits.info.image_size == 16 and splits.info.in_channels == 1
    x, _ = splits.val[3]
    assert x.shape == (1, 16, 16)
    batch, _ = next(iter(DataLoader(splits.test, batch_size=32)))
    assert batch.shape == (32, 1, 16, 16)
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
    # The batched and the per-item paths must agree.
    assert torch.allclose(batch[5], splits.test[5][0], atol=1e-6)


def test_split_is_deterministic_disjoint_and_sized() -> None:
    cfg = DataConfig(name="digits", val_fraction=0.25)
    a, b = load_splits(cfg, seed=3), load_splits(cfg, seed=3)
    assert _indices(a.train) == _indices(b.train) and _indices(a.val) == _indices(b.val)
    train, val = set(_indices(a.train)), set(_indices(a.val))
    assert not train & val
    n = len(train) + len(val)
    assert len(val) == round(0.25 * n)
    assert train | val == set(range(n))
    assert torch.equal(a.val[0][0], b.val[0][0])


def test_different_seeds_give_different_splits() -> None:
    cfg = DataConfig(name="digits")
    a, b = load_splits(cfg, seed=0), load_splits(cfg, seed=1)
    assert set(_indices(a.val)) != set(_indices(b.val))
    assert _indices(a.test) == _indices(b.test)  # the test set never follows the seed


def test_limits_are_deterministic_and_keep_validation() -> None:
    full = load_splits(DataConfig(name="digits"), seed=0)
    small = load_splits(DataConfig(name="digits", train_limit=50, test_limit=20), seed=0)
    assert len(small.train) == 50 and len(small.test) == 20
    assert _indices(small.train) == _indices(full.train)[:50]
    assert _indices(small.val) == _indices(full.val)
    assert _indices(small.test) == list(range(20))


def test_synthetic_is_deterministic_and_well_formed() -> None:
    a = load_splits(DataConfig(name="synthetic"), seed=0)
    b = load_splits(DataConfig(name="synthetic"), seed=0)
    assert a.info == b.info
    assert a.info.num_classes == 10 and a.info.in_channels == 3 and a.info.image_size == 16
    assert len(a.train) + len(a.val) == 1000 and len(a.test) == 200
    xa, ya = next(iter(DataLoader(a.train, batch_size=64)))
    xb, yb = next(iter(DataLoader(b.train, batch_size=64)))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (64, 3, 16, 16) and xa.dtype == torch.float32
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0


def test_synthetic_is_learnable() -> None:
    """Class means alone (a nearest-centroid rule) should separate the classes well."""
    splits = load_splits(DataConfig(name="synthetic"), seed=0)
    xs, ys = next(iter(DataLoader(splits.train, batch_size=2000)))
    xt, yt = next(iter(DataLoader(splits.test, batch_size=2000)))
    centroids = torch.stack([xs[ys == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(xt.flatten(1), centroids).argmin(1)
    assert (pred == yt).float().mean() > 0.8


def test_items_are_copies() -> None:
    splits = load_splits(DataConfig(name="synthetic"), seed=0)
    x, _ = splits.train[0]
    x.fill_(0.5)
    assert not torch.equal(splits.train[0][0], x)


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Five train batches and a test batch in the real pickle format; returns all images/labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=6 * per_batch).tolist()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        batch = {
            b"batch_label": name.encode(),
            b"data": images[sl].reshape(per_batch, 3072),
            b"labels": labels[sl],
            b"filenames": [b"x.png"] * per_batch,
        }
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh)
    return images, np.asarray(labels)


def test_cifar10_round_trip(tmp_path: Path) -> None:
    images, labels = _write_cifar(tmp_path)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.25, augment=False)
    splits = load_splits(cfg, seed=0)
    assert splits.info == DataInfo(10, 3, 32, splits.info.mean, splits.info.std)
    assert len(splits.train) == 15 and len(splits.val) == 5 and len(splits.test) == 4
    for subset in (splits.train, splits.val):
        for pos, idx in enumerate(_indices(subset)):
            x, y = subset[pos]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(images[idx]))
            assert y == labels[idx]
    x, y = splits.test[2]
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(images[22]))
    assert y == labels[22]
    # A single pixel: channel 1, row 7, column 3 of the first test image.
    assert x.shape[0] == 3 and abs(float(splits.test[0][0][1, 7, 3]) - images[20, 1, 7, 3] / 255) < 1e-6


def test_cifar10_batched_loading_matches_items(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    splits = load_splits(DataConfig(name="cifar10", root=str(tmp_path), image_size=16), seed=1)
    xs, ys = next(iter(DataLoader(splits.train, batch_size=8)))
    assert xs.shape == (8, 3, 16, 16) and splits.info.image_size == 16
    for i in range(8):
        x, y = splits.train[i]
        assert torch.allclose(xs[i], x, atol=1e-6) and int(ys[i]) == y


# --------------------------------------------------------------------------- SVHN


def _write_svhn(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/test .mat files in the real layout: X is 32x32x3xN, y is Nx1 with 10 for digit 0."""
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", 10), ("test", 4)):
        nchw = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).reshape(n, 1).astype(np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": nchw.transpose(2, 3, 1, 0), "y": y})
        out[split] = (nchw, digits)
    return out


def test_svhn_round_trip(tmp_path: Path) -> None:
    data = _write_svhn(tmp_path)
    splits = load_splits(DataConfig(name="svhn", root=str(tmp_path), val_fraction=0.2, augment=False), seed=0)
    assert splits.info.num_classes == 10 and splits.info.in_channels == 3
    assert len(splits.train) == 8 and len(splits.val) == 2 and len(splits.test) == 4
    train_x, train_y = data["train"]
    for subset in (splits.train, splits.val):
        for pos, idx in enumerate(_indices(subset)):
            x, y = subset[pos]
            assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(train_x[idx]))
            assert y == train_y[idx]
    test_x, test_y = data["test"]
    assert [splits.test[i][1] for i in range(4)] == [0, 1, 2, 3]  # label 10 became 0
    x, _ = splits.test[0]
    assert abs(float(x[2, 5, 30]) - test_x[0, 2, 5, 30] / 255) < 1e-6


# --------------------------------------------------------------------------- ImageFolder


def _write_image_folder(root: Path) -> None:
    colors = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
    for split, per_class in (("train", 3), ("val", 1)):
        for cls, color in colors.items():
            if split == "val" and cls == "dog":
                continue  # a validation folder may lack classes; labels must still agree
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 30), color).save(folder / f"{i}.png")


def test_imagenet_folder(tmp_path: Path) -> None:
    _write_image_folder(tmp_path)
    splits = load_splits(
        DataConfig(name="imagenet", root=str(tmp_path), image_size=16, val_fraction=0.34), seed=0
    )
    assert splits.info.num_classes == 3 and splits.info.in_channels == 3
    assert splits.info.image_size == 16
    assert len(splits.train) + len(splits.val) == 9 and len(splits.test) == 2
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert int(x.mean(dim=(1, 2)).argmax()) == y  # cat red, dog green, emu blue
    assert [splits.test[i][1] for i in range(2)] == [0, 2]


# --------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    ("name", "expected", "downloadable"),
    [
        ("cifar10", "data_batch_1..5", True),
        ("svhn", "train_32x32.mat", True),
        ("imagenet", "train/ and val/", False),
    ],
)
def test_missing_data_is_one_clear_error(
    tmp_path: Path, name: str, expected: str, downloadable: bool
) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as info:
        load_splits(DataConfig(name=name, root=str(root)), seed=0)
    err = info.value
    assert err.field == "data.root"
    assert str(root) in err.message and expected in err.message
    assert ("data.download: true" in err.message) == downloadable
    # No torchvision (or other) traceback chained onto it.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_corrupt_cifar_batch_is_a_config_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="data_batch_3"):
        load_splits(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)


def test_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="allowed: .*digits"):
        load_splits(DataConfig(name="mnist"), seed=0)


# --------------------------------------------------------------------------- augmentation


def test_augmentation_is_on_by_default_for_cifar10_and_svhn_only(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    assert isinstance(load_splits(DataConfig(name="cifar10", root=str(tmp_path)), seed=0).train, CropFlip)
    assert augments(DataConfig(name="svhn")) and not augments(DataConfig(name="digits"))
    assert not augments(DataConfig(name="synthetic")) and augments(DataConfig(name="digits", augment=True))
    assert not isinstance(load_splits(DataConfig(name="digits"), seed=0).train, CropFlip)


def test_augmentation_changes_training_batches_but_not_validation_or_test(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    plain = load_splits(DataConfig(name="cifar10", root=str(tmp_path), augment=False), seed=0)
    aug = load_splits(DataConfig(name="cifar10", root=str(tmp_path), augment=True), seed=0)
    n = len(aug.train)
    first = torch.stack([aug.train[i][0] for i in range(n)])
    raw = torch.stack([plain.train[i][0] for i in range(n)])
    assert not torch.equal(first, raw)
    # Each image is a flipped or unflipped window of its zero-padded original.
    for i in range(n):
        padded = torch.nn.functional.pad(raw[i], (4, 4, 4, 4))
        dy, dx = (int(v) for v in aug.train.offsets[i])
        window = padded[:, dy : dy + 32, dx : dx + 32]
        assert torch.equal(first[i], window.flip(-1) if bool(aug.train.flips[i]) else window)
    # Batched loading gives the per-item draws; the same epoch seed gives the same batch.
    xs, _ = next(iter(DataLoader(aug.train, batch_size=n)))
    assert torch.equal(xs, first)
    aug.seed_training(7)
    second = torch.stack([aug.train[i][0] for i in range(n)])
    aug.seed_training(7)
    assert torch.equal(torch.stack([aug.train[i][0] for i in range(n)]), second)
    assert not torch.equal(second, first)  # another epoch, other crops and flips
    for name in ("val", "test"):
        a, b = getattr(aug, name), getattr(plain, name)
        assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))

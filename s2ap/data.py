"""Data sets, their seeded train/validation/test splits and the facts a model needs about them.

Every loader in :data:`DATASETS` turns a :class:`~s2ap.config.DataConfig` into ``(full train
set, test set)``; :func:`load_splits` then carves the validation set out of the training set
with a permutation drawn from the experiment seed, applies the size limits and the resize, and
describes the result in a :class:`DataInfo`. Items are ``(x, y)`` with ``x`` a float32
``C x H x W`` tensor in ``[0, 1]`` and ``y`` an ``int``; normalisation is left to the model
(via ``DataInfo.mean`` / ``std``) so that attack budgets such as ``eps = 8/255`` stay in pixel
units.

CIFAR-10 and SVHN come from their real on-disk formats (:mod:`s2ap.data_files`) and live in
memory as one ``uint8`` tensor (:mod:`s2ap.tensor_data`), converted to float per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from s2ap import data_files as files
from s2ap.config import ConfigError, DataConfig
from s2ap.imports import import_callable, named_arguments, one_line
from s2ap.registry import Registry
from s2ap.tensor_data import CropFlip, Resized, TensorImageDataset, gray_as_rgb

log = logging.getLogger(__name__)

Loader = Callable[[DataConfig], tuple[Dataset, Dataset]]

DATASETS: Registry[Loader] = Registry("data set")

# Published per-channel statistics of the full training sets, so that the normalisation a
# model bakes in does not depend on which subset (or which test fixture) was loaded.
_PUBLISHED_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Sets trained with random crop + flip unless data.augment says otherwise (HYDRA's and
# HARP's code augment CIFAR-10 and SVHN this way).
AUGMENTED_BY_DEFAULT = ("cifar10", "svhn")


def augments(cfg: DataConfig) -> bool:
    """Whether the training set of ``cfg`` is augmented (``data.augment``, null: by set)."""
    return cfg.augment if cfg.augment is not None else cfg.name in AUGMENTED_BY_DEFAULT


@dataclass(frozen=True)
class DataInfo:
    """What a model builder needs to know about the inputs, independent of the split."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Splits:
    """The three disjoint sets of one experiment; ``val`` is what search-time metrics use."""

    train: Dataset
    val: Dataset
    test: Dataset
    info: DataInfo

    def seed_training(self, seed: int) -> None:
        """Draw this epoch's augmentation of the training set (a no-op without augmentation)."""
        if isinstance(self.train, CropFlip):
            self.train.reseed(seed)


# --------------------------------------------------------------------------- loaders


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """scikit-learn's 1797 handwritten 8x8 digits, a real (if tiny) set that needs no download.

    The train/test split is fixed (seed 0, stratified, 20 % test) so that the test set never
    moves between experiments; only the validation split follows the experiment seed.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=bunch.target
    )
    classes = [str(d) for d in range(10)]
    train_t, test_t = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return (
        TensorImageDataset(images[train_t], labels[train_t], classes, scale=16.0),
        TensorImageDataset(images[test_t], labels[test_t], classes, scale=16.0),
    )


def make_synthetic(
    n: int, seed: int, num_classes: int = 10, size: int = 16, noise: float = 0.15
) -> TensorImageDataset:
    """``n`` colour images whose class is a smooth oriented wave plus per-image noise.

    Each class has its own spatial frequency, orientation and colour phase, so even a linear model
    separates them, while random amplitude, phase shift and pixel noise keep the task from being
    a lookup and leave adversarial examples room to exist. Everything comes from a private generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    coords = torch.arange(size, dtype=torch.float32) / size
    hh, ww = torch.meshgrid(coords, coords, indexing="ij")
    k = torch.arange(num_classes, dtype=torch.float32)
    angle = k * (torch.pi / num_classes)
    freq = 1.0 + (k % 3)
    color_phase = torch.stack([k * 0.7, k * 0.7 + 2.1, k * 0.7 + 4.2], dim=1)  # num_classes x 3

    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    shift = (torch.rand(n, generator=gen) - 0.5) * 1.5  # radians; small enough to keep classes apart
    amp = 0.25 + 0.15 * torch.rand(n, generator=gen)
    a, f = angle[labels].view(n, 1, 1, 1), freq[labels].view(n, 1, 1, 1)
    proj = torch.cos(a) * ww + torch.sin(a) * hh  # n x 1 x H x W
    phase = 2 * torch.pi * f * proj + shift.view(n, 1, 1, 1) + color_phase[labels].view(n, 3, 1, 1)
    images = 0.5 + amp.view(n, 1, 1, 1) * torch.sin(phase)
    images = images + noise * torch.randn(images.shape, generator=gen)
    classes = [f"pattern_{i}" for i in range(num_classes)]
    return TensorImageDataset(images.clamp_(0.0, 1.0), labels, classes, scale=1.0)


@DATASETS.register("synthetic")
def load_synthetic(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """1000 train / 200 test images of :func:`make_synthetic`, for fast end-to-end tests.

    The generator seeds are constants: the data set is the same in every run, and the
    experiment seed only moves the validation split.
    """
    return make_synthetic(1000, seed=1234), make_synthetic(200, seed=5678)


@DATASETS.register("cifar10")
def load_cifar10(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """CIFAR-10 from the python pickle batches, kept in memory as uint8."""
    root = Path(cfg.root).expanduser()
    folder = files.cifar_folder(root)
    if folder is None and cfg.download:
        files.download(lambda: files.fetch_cifar10(root), "CIFAR-10", root)
        folder = files.cifar_folder(root)
    if folder is None:
        expected = f"{files.CIFAR10_FOLDER}/data_batch_1..5 and {files.CIFAR10_FOLDER}/test_batch"
        raise files.missing(root, expected, downloadable=True)
    parts = [files.read_cifar_batch(folder / name) for name in files.CIFAR10_TRAIN]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_x, test_y = files.read_cifar_batch(folder / files.CIFAR10_TEST)
    classes = list(files.CIFAR10_CLASSES)
    return (
        TensorImageDataset(train_x, train_y, classes, scale=255.0),
        TensorImageDataset(test_x, test_y, classes, scale=255.0),
    )


@DATASETS.register("svhn")
def load_svhn(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """SVHN (train and test, not extra) from the cropped-digit ``.mat`` files, in memory as uint8."""
    root = Path(cfg.root).expanduser()
    paths = {split: root / name for split, name in files.SVHN_FILES.items()}
    if cfg.download:
        for split, path in paths.items():
            if not path.is_file():
                files.download(lambda s=split: files.fetch_svhn(root, s), f"SVHN {split}", root)
    if not all(p.is_file() for p in paths.values()):
        raise files.missing(root, " and ".join(files.SVHN_FILES.values()), downloadable=True)
    classes = [str(d) for d in range(10)]
    (train_x, train_y), (test_x, test_y) = files.read_svhn(paths["train"]), files.read_svhn(paths["test"])
    return (
        TensorImageDataset(train_x, train_y, classes, scale=255.0),
        TensorImageDataset(test_x, test_y, classes, scale=255.0),
    )


@DATASETS.register("imagenet")
def load_imagenet(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """An ImageNet-style tree: ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Images are decoded by PIL anyway, so the resize (shorter side to size / 0.875, the usual
    256-for-224 ratio) and the centre crop happen there too; the validation folder is indexed
    with the training folder's classes so that labels agree even if it lacks some classes.
    """
    from torchvision import transforms  # only here: slow to import

    root = Path(cfg.root).expanduser()
    size = cfg.image_size or 224
    transform = transforms.Compose(
        [
            transforms.Resize(round(size / 0.875), antialias=True),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )
    expected = "train/ and val/ class folders (train/<class>/*.JPEG, val/<class>/*.JPEG)"
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise files.missing(root, expected, downloadable=False)
    try:
        train = files.image_folder(root / "train", transform)
        test = files.image_folder(root / "val", transform, classes=train.classes)
    except FileNotFoundError as exc:
        raise ConfigError("data.root", f"no usable images under {root}: {exc}; expected {expected}") from None
    if len(test) == 0:
        raise ConfigError("data.root", f"no images under {root / 'val'}; expected {expected}")
    return train, test


# --------------------------------------------------------------------------- import paths

# What an import-path data callable may ask for by naming it in its signature.
DATA_ARGUMENTS = ("seed", "image_size", "root", "download")
Sets = tuple[Dataset, Dataset | None, Dataset]  # full train, a given validation set or None, test


def is_import_path(name: str) -> bool:
    return ":" in name


def resolve_data(name: str) -> Callable[..., Any]:
    """The callable behind an import-path ``data.name`` (ConfigError naming it otherwise)."""
    return import_callable(name, "data.name", "a registered data set or package.module:callable")


def _imported_sets(cfg: DataConfig, seed: int) -> Sets:
    fn = resolve_data(cfg.name)
    facts = {"seed": seed, "image_size": cfg.image_size, "root": cfg.root, "download": cfg.download}
    args = {arg: facts[arg] for arg in named_arguments(fn, DATA_ARGUMENTS)}
    shown = f"{cfg.name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    try:
        out = fn(**args)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError("data.name", f"{shown} raised {one_line(exc)}") from None
    if not isinstance(out, tuple | list) or len(out) not in (2, 3) or not all(_is_dataset(d) for d in out):
        got = f"{len(out)} items" if isinstance(out, tuple | list) else f"a {type(out).__name__}"
        raise ConfigError(
            "data.name", f"{shown} must return (train, val, test) or (train, test) datasets, got {got}"
        )
    return (out[0], None, out[1]) if len(out) == 2 else (out[0], out[1], out[2])


def _is_dataset(data: Any) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


def load_sets(cfg: DataConfig, seed: int) -> Sets:
    """``cfg.name``'s training and test sets (and validation set, when an import path gives one)."""
    if is_import_path(cfg.name):
        return _imported_sets(cfg, seed)
    if cfg.name not in DATASETS:
        raise ConfigError("data.name", f"unknown {cfg.name!r}; allowed: {', '.join(DATASETS.names())}")
    train, test = DATASETS.get(cfg.name)(cfg)
    return train, None, test


# --------------------------------------------------------------------------- splits


def _classes(dataset: Dataset) -> int | None:
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    targets = getattr(dataset, "targets", None)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        targets = dataset.tensors[1]
    if targets is not None and len(targets):
        return int(max(int(t) for t in targets)) + 1
    if isinstance(dataset, Subset):
        return _classes(dataset.dataset)
    return None


def _channel_stats(dataset: Dataset, limit: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over (up to ``limit`` images of) a set, for unpublished sets."""
    if isinstance(dataset, TensorImageDataset):
        x = dataset.images.to(torch.float64) / dataset.scale
    else:
        n = min(len(dataset), limit)  # type: ignore[arg-type]
        x = torch.stack([dataset[i][0] for i in range(n)]).to(torch.float64)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)  # a constant channel must not divide by zero
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _val_size(n: int, val_fraction: float) -> int:
    if n < 2:
        raise ConfigError("data.name", f"the training set has {n} points; need at least 2 to split")
    return min(max(1, round(val_fraction * n)), n - 1)


def _image_shape(dataset: Dataset, field: str) -> tuple[int, int, int]:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ConfigError(field, "the training set is empty")
    item = dataset[0]
    x = item[0] if isinstance(item, tuple | list) and len(item) == 2 else None
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        raise ConfigError(field, "items must be (image, label), the image a float C x H x W tensor in [0, 1]")
    return int(x.shape[0]), int(x.shape[1]), int(x.shape[2])


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load ``cfg.name`` and split it into train / validation / test, reproducibly (see
    :func:`split`)."""
    return split(*load_sets(cfg, seed), cfg, seed)


def split(
    full_train: Dataset,
    given_val: Dataset | None,
    test: Dataset,
    cfg: DataConfig,
    seed: int,
    num_classes: int | None = None,
    field: str = "data.name",
) -> Splits:
    """Train / validation / test from the sets, reproducibly.

    Without a given validation set it is the first ``round(val_fraction * N)`` points of a
    permutation of the full training set drawn from ``seed`` (same seed, same split);
    ``train_limit`` keeps the first points of the rest (of that permutation), so limiting
    training never changes the validation set. ``test_limit`` keeps the first test points,
    which keeps the test set nested across limits. Classes: ``data.num_classes``, else the
    data's ``classes`` / ``targets`` / labels, else ``num_classes``.
    """
    if cfg.gray_to_rgb and _image_shape(full_train, field)[0] == 1:
        full_train, test = gray_as_rgb(full_train), gray_as_rgb(test)
        given_val = None if given_val is None else gray_as_rgb(given_val)
    channels, height, width = _image_shape(full_train, field)
    n = len(full_train)  # type: ignore[arg-type]
    n_val = _val_size(n, cfg.val_fraction) if given_val is None else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    test_idx = list(range(min(len(test), cfg.test_limit or len(test))))  # type: ignore[arg-type]

    if cfg.mean is not None and cfg.std is not None:
        mean, std = cfg.mean, cfg.std
    else:
        mean, std = _PUBLISHED_STATS.get(cfg.name) or _channel_stats(full_train)
    if len(mean) != channels:
        raise ConfigError("data.mean", f"has {len(mean)} entries but the images have {channels} channels")
    classes = cfg.num_classes or _classes(full_train) or num_classes
    if classes is None:
        raise ConfigError("data.num_classes", "the data does not tell its class count; set it")
    size = cfg.image_size or height
    info = DataInfo(
        num_classes=classes, in_channels=channels, image_size=size, mean=tuple(mean), std=tuple(std)
    )
    val = given_val if given_val is not None else Subset(full_train, val_idx)
    if (height, width) != (size, size):
        full_train, val, test = Resized(full_train, size), Resized(val, size), Resized(test, size)
        if given_val is None:
            val = Subset(full_train, val_idx)
    train: Dataset = Subset(full_train, train_idx)
    splits = Splits(
        train=CropFlip(train) if augments(cfg) else train, val=val, test=Subset(test, test_idx), info=info
    )
    log.info(
        "data %s: %d train%s, %d val, %d test, %s",
        cfg.name,
        len(train_idx),
        " (crop + flip)" if augments(cfg) else "",
        len(val),
        len(test_idx),
        info,  # type: ignore[arg-type]
    )
    return splits


__all__ = [
    "AUGMENTED_BY_DEFAULT",
    "DATASETS",
    "CropFlip",
    "DataInfo",
    "Loader",
    "Resized",
    "Splits",
    "TensorImageDataset",
    "augments",
    "is_import_path",
    "load_sets",
    "load_splits",
    "resolve_data",
    "split",
    "make_synthetic",
]

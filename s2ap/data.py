"""Data sets, their seeded train/validation/test splits and the facts a model needs about them.

Every loader in :data:`DATASETS` turns a :class:`~s2ap.config.DataConfig` into ``(full train
set, test set)``; :func:`load_splits` then carves the validation set out of the training set
with a permutation drawn from the experiment seed, applies the size limits and the resize, and
describes the result in a :class:`DataInfo`. Items are ``(x, y)`` with ``x`` a float32
``C x H x W`` tensor in ``[0, 1]`` and ``y`` an ``int``; normalisation is left to the model
(via ``DataInfo.mean`` / ``std``) so that attack budgets such as ``eps = 8/255`` stay in pixel
units.

CIFAR-10 and SVHN are read from their on-disk formats by this module rather than through the
torchvision classes: torchvision checks the md5 of every file it knows, which forbids testing
the real code path on small files written in the same format. torchvision is used only to
download (``data.download: true``), where its checksums are exactly what is wanted. Both sets
are small enough to live in memory as one ``uint8`` tensor, converted to float per batch.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import CIFAR10, SVHN, ImageFolder
from torchvision.datasets.utils import download_and_extract_archive, download_url

from s2ap.config import ConfigError, DataConfig
from s2ap.registry import Registry

log = logging.getLogger(__name__)

Item = tuple[Tensor, int]
Loader = Callable[[DataConfig], tuple[Dataset, Dataset]]

DATASETS: Registry[Loader] = Registry("data set")

# Published per-channel statistics of the full training sets, so that the normalisation a
# model bakes in does not depend on which subset (or which test fixture) was loaded.
_PUBLISHED_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = "test_batch"
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


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


# --------------------------------------------------------------------------- datasets


class TensorImageDataset(Dataset):
    """Images held as one ``N x C x H x W`` tensor (usually ``uint8``), scaled to [0, 1] on access.

    Keeping the raw integers costs a quarter of the memory of float32 and avoids PIL entirely;
    ``__getitems__`` lets a :class:`~torch.utils.data.DataLoader` convert a whole batch with
    one indexing operation instead of one Python call per image.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], scale: float) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected N x C x H x W images and N labels, got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        self.images = images
        self.targets = labels.to(torch.int64)
        self.classes = list(classes)
        self.scale = float(scale)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _convert(self, images: Tensor) -> Tensor:
        # Always a copy: a caller perturbing x in place must not edit the stored data set.
        out = images.to(torch.float32, copy=True)
        return out.div_(self.scale) if self.scale != 1.0 else out

    def __getitem__(self, index: int) -> Item:
        return self._convert(self.images[index]), int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        batch = self._convert(self.images[idx])
        return list(zip(batch.unbind(0), self.targets[idx].tolist(), strict=True))


class Resized(Dataset):
    """Bilinear, antialiased resize of another data set's images to ``size x size``.

    Done per item (or per batch) rather than once up front, because resizing a 50k-image set
    to a large side ahead of time would multiply its memory by the area ratio and by four
    (uint8 -> float32).
    """

    def __init__(self, base: Dataset, size: int) -> None:
        self.base = base
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _resize(self, batch: Tensor) -> Tensor:
        out = F.interpolate(
            batch, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        return out.clamp_(0.0, 1.0)  # guard against float round-off past the [0, 1] contract

    def __getitem__(self, index: int) -> Item:
        x, y = self.base[index]
        return self._resize(x.unsqueeze(0))[0], y

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        getitems = getattr(self.base, "__getitems__", None)
        items = getitems(list(indices)) if callable(getitems) else [self.base[i] for i in indices]
        xs = self._resize(torch.stack([x for x, _ in items]))
        return list(zip(xs.unbind(0), [y for _, y in items], strict=True))

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.base, "classes", []))


# --------------------------------------------------------------------------- loaders


def _missing(path: Path, expected: str, downloadable: bool) -> ConfigError:
    hint = (
        "set data.download: true to fetch it, or point data.root at a folder that has them"
        if downloadable
        else "point data.root at a folder that has them"
    )
    return ConfigError("data.root", f"no data set found at {path}: expected {expected}; {hint}")


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


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 python batch: a pickled dict with ``data`` (N x 3072 uint8) and ``labels``."""
    try:
        with path.open("rb") as fh:
            batch: dict[Any, Any] = pickle.load(fh, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        images = torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
        targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            "data.root",
            f"{path} is not a readable CIFAR-10 batch ({exc}); "
            "delete it and set data.download: true to fetch it again",
        ) from None
    if images.shape[0] != targets.shape[0]:
        raise ConfigError("data.root", f"{path} has {images.shape[0]} images but {targets.shape[0]} labels")
    return images, targets


def _cifar_folder(root: Path) -> Path | None:
    """The folder holding the batches: ``root/cifar-10-batches-py`` (torchvision's layout) or root."""
    for folder in (root / _CIFAR10_FOLDER, root):
        if all((folder / name).is_file() for name in (*_CIFAR10_TRAIN, _CIFAR10_TEST)):
            return folder
    return None


@DATASETS.register("cifar10")
def load_cifar10(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """CIFAR-10 from the python pickle batches, kept in memory as uint8."""
    root = Path(cfg.root).expanduser()
    folder = _cifar_folder(root)
    if folder is None and cfg.download:
        _download(lambda: _fetch_cifar10(root), "CIFAR-10", root)
        folder = _cifar_folder(root)
    if folder is None:
        expected = f"{_CIFAR10_FOLDER}/data_batch_1..5 and {_CIFAR10_FOLDER}/test_batch"
        raise _missing(root, expected, downloadable=True)
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR10_TRAIN]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(folder / _CIFAR10_TEST)
    classes = list(_CIFAR10_CLASSES)
    return (
        TensorImageDataset(train_x, train_y, classes, scale=255.0),
        TensorImageDataset(test_x, test_y, classes, scale=255.0),
    )


def _fetch_cifar10(root: Path) -> None:
    download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def _read_svhn(path: Path) -> tuple[Tensor, Tensor]:
    """One SVHN ``.mat``: ``X`` is 32 x 32 x 3 x N uint8, ``y`` is N x 1 with 10 meaning digit 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise ConfigError(
            "data.root",
            f"{path} is not a readable SVHN .mat file ({exc}); "
            "delete it and set data.download: true to fetch it again",
        ) from None
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise ConfigError(
            "data.root",
            f"{path}: expected X of shape 32 x 32 x 3 x N and N labels, got {x.shape} and {y.shape[0]}",
        )
    images = torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8).transpose(3, 2, 0, 1)))
    y = np.where(y == 10, 0, y)
    return images, torch.from_numpy(y)


@DATASETS.register("svhn")
def load_svhn(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """SVHN (train and test, not extra) from the cropped-digit ``.mat`` files, in memory as uint8."""
    root = Path(cfg.root).expanduser()
    paths = {split: root / name for split, name in _SVHN_FILES.items()}
    if cfg.download:
        for split, path in paths.items():
            if not path.is_file():
                _download(lambda s=split: _fetch_svhn(root, s), f"SVHN {split}", root)
    if not all(p.is_file() for p in paths.values()):
        raise _missing(root, " and ".join(_SVHN_FILES.values()), downloadable=True)
    classes = [str(d) for d in range(10)]
    (train_x, train_y), (test_x, test_y) = _read_svhn(paths["train"]), _read_svhn(paths["test"])
    return (
        TensorImageDataset(train_x, train_y, classes, scale=255.0),
        TensorImageDataset(test_x, test_y, classes, scale=255.0),
    )


def _fetch_svhn(root: Path, split: str) -> None:
    url, filename, md5 = SVHN.split_list[split]
    download_url(url, str(root), filename, md5)


def _download(fetch: Callable[[], None], what: str, root: Path) -> None:
    """Run a torchvision download, turning network and checksum failures into one clear error."""
    log.info("downloading %s to %s", what, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError("data.download", f"downloading {what} to {root} failed: {exc}") from None


@DATASETS.register("imagenet")
def load_imagenet(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """An ImageNet-style tree: ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Images are decoded by PIL anyway, so the resize (shorter side to size / 0.875, the usual
    256-for-224 ratio) and the centre crop happen there too; the validation folder is indexed
    with the training folder's classes so that labels agree even if it lacks some classes.
    """
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
        raise _missing(root, expected, downloadable=False)
    try:
        train = _ImageFolder(root / "train", transform=transform)
        test = _ImageFolder(root / "val", transform=transform, classes=train.classes)
    except FileNotFoundError as exc:
        raise ConfigError("data.root", f"no usable images under {root}: {exc}; expected {expected}") from None
    if len(test) == 0:
        raise ConfigError("data.root", f"no images under {root / 'val'}; expected {expected}")
    return train, test


class _ImageFolder(ImageFolder):
    """``ImageFolder`` that can reuse another folder's class list instead of finding its own."""

    def __init__(self, root: Path, transform: Any, classes: Sequence[str] | None = None) -> None:
        self._fixed_classes = list(classes) if classes is not None else None
        super().__init__(str(root), transform=transform, allow_empty=classes is not None)

    def find_classes(self, directory: Any) -> tuple[list[str], dict[str, int]]:
        if self._fixed_classes is None:
            return super().find_classes(directory)
        present = {p.name for p in Path(directory).iterdir() if p.is_dir()}
        unknown = sorted(present - set(self._fixed_classes))
        if unknown:
            raise FileNotFoundError(f"{directory} has classes missing from train/: {unknown[:5]}")
        return self._fixed_classes, {c: i for i, c in enumerate(self._fixed_classes)}


# --------------------------------------------------------------------------- splits


def _classes(dataset: Dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets):
        return int(max(int(t) for t in targets)) + 1
    raise ValueError(f"cannot tell the number of classes of {type(dataset).__name__}")


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


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load ``cfg.name`` and split it into train / validation / test, reproducibly.

    The validation set is the first ``round(val_fraction * N)`` points of a permutation of the
    full training set drawn from ``seed`` (same seed, same split); ``train_limit`` keeps the
    first points of the rest, so limiting training never changes the validation set.
    ``test_limit`` keeps the first test points, which keeps the test set nested across limits.
    """
    if cfg.name not in DATASETS:
        raise ConfigError("data.name", f"unknown {cfg.name!r}; allowed: {', '.join(DATASETS.names())}")
    full_train, test = DATASETS.get(cfg.name)(cfg)
    n = len(full_train)  # type: ignore[arg-type]
    n_val = _val_size(n, cfg.val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    test_idx = list(range(min(len(test), cfg.test_limit or len(test))))  # type: ignore[arg-type]

    x0, _ = full_train[0]
    channels, height, width = (int(s) for s in x0.shape)
    mean, std = _PUBLISHED_STATS.get(cfg.name) or _channel_stats(full_train)
    size = cfg.image_size or height
    info = DataInfo(
        num_classes=_classes(full_train),
        in_channels=channels,
        image_size=size,
        mean=tuple(mean),
        std=tuple(std),
    )
    if (height, width) != (size, size):
        full_train, test = Resized(full_train, size), Resized(test, size)
    splits = Splits(
        train=Subset(full_train, train_idx),
        val=Subset(full_train, val_idx),
        test=Subset(test, test_idx),
        info=info,
    )
    log.info(
        "data %s: %d train, %d val, %d test, %s", cfg.name, len(train_idx), len(val_idx), len(test_idx), info
    )
    return splits


__all__ = [
    "DATASETS",
    "DataInfo",
    "Loader",
    "Resized",
    "Splits",
    "TensorImageDataset",
    "load_splits",
    "make_synthetic",
]

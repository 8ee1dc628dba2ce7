"""CIFAR-10, SVHN and ImageNet read from their real on-disk formats, and their downloads.

CIFAR-10 and SVHN are read by this module rather than through the torchvision classes:
torchvision checks the md5 of every file it knows, which forbids testing the real code path
on small files written in the same format. torchvision is used only to download
(``data.download: true``), where its checksums are exactly what is wanted. Every problem
with the files is a :class:`~s2ap.errors.ConfigError` on ``data.root`` or ``data.download``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from s2ap.errors import ConfigError

log = logging.getLogger(__name__)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def missing(path: Path, expected: str, downloadable: bool) -> ConfigError:
    hint = (
        "set data.download: true to fetch it, or point data.root at a folder that has them"
        if downloadable
        else "point data.root at a folder that has them"
    )
    return ConfigError("data.root", f"no data set found at {path}: expected {expected}; {hint}")


def read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
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


def cifar_folder(root: Path) -> Path | None:
    """The folder holding the batches: ``root/cifar-10-batches-py`` (torchvision's layout) or root."""
    for folder in (root / CIFAR10_FOLDER, root):
        if all((folder / name).is_file() for name in (*CIFAR10_TRAIN, CIFAR10_TEST)):
            return folder
    return None


# torchvision is imported only where a download or an image folder needs it: it takes
# seconds to import, and every trial of a search would pay that for nothing.


def fetch_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def read_svhn(path: Path) -> tuple[Tensor, Tensor]:
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


def fetch_svhn(root: Path, split: str) -> None:
    from torchvision.datasets import SVHN
    from torchvision.datasets.utils import download_url

    url, filename, md5 = SVHN.split_list[split]
    download_url(url, str(root), filename, md5)


def download(fetch: Callable[[], None], what: str, root: Path) -> None:
    """Run a torchvision download, turning network and checksum failures into one clear error."""
    log.info("downloading %s to %s", what, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError("data.download", f"downloading {what} to {root} failed: {exc}") from None


def image_folder(root: Path, transform: Any, classes: Sequence[str] | None = None) -> Any:
    """A torchvision ``ImageFolder`` that can reuse another folder's class list (``classes``)
    instead of finding its own."""
    from torchvision.datasets import ImageFolder

    class FixedClassImageFolder(ImageFolder):
        def __init__(self) -> None:
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

    return FixedClassImageFolder()

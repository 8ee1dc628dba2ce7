"""Image data sets held in memory as one tensor, and their resized views.

Items are ``(x, y)`` with ``x`` a float32 ``C x H x W`` tensor in ``[0, 1]`` and ``y`` an
``int``. ``__getitems__`` lets a :class:`~torch.utils.data.DataLoader` convert or resize a
whole batch with one tensor operation instead of one Python call per image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

log = logging.getLogger(__name__)

Item = tuple[Tensor, int]


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


class GrayAsRGB(Dataset):
    """A one-channel data set whose images come with their channel repeated three times, for
    models that take RGB input (``data.gray_to_rgb``); an in-memory set is converted once by
    :func:`gray_as_rgb` instead."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Item:
        x, y = self.base[index]
        return x.expand(3, -1, -1).contiguous(), y

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.base, "classes", []))


def gray_as_rgb(dataset: Dataset) -> Dataset:
    """``dataset`` with each one-channel image repeated into three identical channels."""
    if isinstance(dataset, TensorImageDataset):  # stays a tensor set: batched access, device loader
        rgb = dataset.images.expand(-1, 3, -1, -1).contiguous()
        return TensorImageDataset(rgb, dataset.targets, dataset.classes, dataset.scale)
    return GrayAsRGB(dataset)


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


class CropFlip(Dataset):
    """Random crop after zero padding (``padding`` pixels per side) and a random horizontal
    flip of another data set's images: the CIFAR-10 / SVHN training transform of HYDRA's
    and HARP's code (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``).

    The draws of an epoch are one table per epoch, made by :meth:`reseed` from that epoch's
    seed: item ``i`` gets row ``i`` whatever batch, worker or rank reads it, so a resumed run
    and a run split over ranks see the same augmented images.
    """

    def __init__(self, base: Dataset, padding: int = 4) -> None:
        self.base = base
        self.padding = int(padding)
        self.offsets = torch.zeros(len(self), 2, dtype=torch.long)
        self.flips = torch.zeros(len(self), dtype=torch.bool)
        self.reseed(0)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def reseed(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        self.offsets = torch.randint(0, 2 * self.padding + 1, (len(self), 2), generator=gen)
        self.flips = torch.rand(len(self), generator=gen) < 0.5

    def _apply(self, index: int, x: Tensor) -> Tensor:
        p = self.padding
        height, width = x.shape[-2:]
        dy, dx = (int(v) for v in self.offsets[index])
        out = F.pad(x, (p, p, p, p))[..., dy : dy + height, dx : dx + width]
        return out.flip(-1) if bool(self.flips[index]) else out.contiguous()

    def __getitem__(self, index: int) -> Item:
        x, y = self.base[index]
        return self._apply(index, x), y

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        getitems = getattr(self.base, "__getitems__", None)
        items = getitems(list(indices)) if callable(getitems) else [self.base[i] for i in indices]
        return [(self._apply(i, x), y) for i, (x, y) in zip(indices, items, strict=True)]

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.base, "classes", []))


# --------------------------------------------------------------------------- on the device


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """:class:`CropFlip`'s transform of a whole batch in one gather, on the batch's device:
    image ``b`` is cropped at ``offsets[b] = (dy, dx)`` from its zero-padded self and
    mirrored when ``flips[b]``. Works on ``uint8`` as well as float images."""
    n, c, height, width = images.shape
    dev = images.device
    p = int(padding)
    padded = F.pad(images, (p, p, p, p))
    rows = offsets[:, :1] + torch.arange(height, device=dev)  # n x H
    cols = offsets[:, 1:] + torch.arange(width, device=dev)  # n x W
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    b = torch.arange(n, device=dev)[:, None, None, None]
    ch = torch.arange(c, device=dev)[None, :, None, None]
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """A training set held on ``device`` as its raw (``uint8``) images, batched, augmented
    (the :class:`CropFlip` table of the epoch, read when iteration starts) and converted to
    float there: no worker processes, no host-to-device copy of images per step. Yields the
    same ``(x, y)`` batches as a DataLoader over the data set with ``batches`` as sampler."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        scale: float,
        batches: Iterable[list[int]],
        device: torch.device,
        augment: CropFlip | None = None,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.scale = float(scale)
        self.batches = batches
        self.device = device
        self.augment = augment

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        aug = self.augment
        if aug is not None:
            offsets, flips = aug.offsets.to(self.device), aug.flips.to(self.device)
        for batch in self.batches:
            idx = torch.as_tensor(batch, dtype=torch.long).to(self.device, non_blocking=True)
            x = self.images[idx]
            if aug is not None:
                x = crop_flip(x, offsets[idx], flips[idx], aug.padding)
            x = x.to(torch.float32)
            yield (x.div_(self.scale) if self.scale != 1.0 else x), self.labels[idx]


def in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset`` (under subsets and this module's wrappers) is an in-memory image set."""
    while True:
        if isinstance(dataset, TensorImageDataset):
            return True
        if isinstance(dataset, Subset):
            dataset = dataset.dataset
        elif isinstance(getattr(dataset, "base", None), Dataset):
            dataset = dataset.base  # type: ignore[attr-defined]
        else:
            return False


def loader_workers(dataset: Dataset, cpus: int) -> int:
    """DataLoader workers for training on ``dataset`` with ``cpus`` CPUs: none for an
    in-memory set (indexing a tensor costs less than a worker's transfer), else every CPU but
    the one the training loop runs on (an image folder decodes its files there)."""
    return 0 if in_memory(dataset) else max(0, cpus - 1)


def device_loader(
    dataset: Dataset, batches: Iterable[list[int]], device: torch.device, max_fraction: float = 0.25
) -> DeviceLoader | None:
    """A :class:`DeviceLoader` for ``dataset`` when it is an in-memory image set (optionally a
    subset of one, optionally under :class:`CropFlip`) whose images take at most
    ``max_fraction`` of the CUDA device's free memory; None otherwise."""
    augment = dataset if isinstance(dataset, CropFlip) else None
    inner = augment.base if augment is not None else dataset
    rows = None
    if isinstance(inner, Subset):
        rows, inner = torch.as_tensor(list(inner.indices), dtype=torch.long), inner.dataset
    if not isinstance(inner, TensorImageDataset):
        return None
    images = inner.images if rows is None else inner.images[rows]
    labels = inner.targets if rows is None else inner.targets[rows]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() * images.element_size() > max_fraction * free:
            log.info("training set does not fit on %s: batches come through a DataLoader", device)
            return None
    log.info("training set kept on %s as %s (%d images)", device, images.dtype, len(images))
    return DeviceLoader(images, labels, inner.scale, batches, device, augment)

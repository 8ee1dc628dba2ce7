"""Image data sets held in memory as one tensor, and their resized views.

Items are ``(x, y)`` with ``x`` a float32 ``C x H x W`` tensor in ``[0, 1]`` and ``y`` an
``int``. ``__getitems__`` lets a :class:`~torch.utils.data.DataLoader` convert or resize a
whole batch with one tensor operation instead of one Python call per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

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

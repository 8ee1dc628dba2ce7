"""The device-resident training set: the same augmented batches as the CPU data path."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from s2ap.distributed import DistInfo, ShardedBatches
from s2ap.tensor_data import CropFlip, DeviceLoader, Resized, TensorImageDataset, crop_flip, device_loader


def image_set(n: int = 40, side: int = 8) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen)
    return TensorImageDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)], scale=255.0)


def test_batch_crop_flip_equals_cropflip_per_image() -> None:
    base = image_set()
    aug = CropFlip(base)
    aug.reseed(7)
    assert aug.flips.any() and not aug.flips.all() and (aug.offsets != 4).any()
    idx = torch.arange(len(base))
    raw = crop_flip(base.images[idx], aug.offsets[idx], aug.flips[idx], aug.padding)
    assert raw.dtype == torch.uint8  # augmented before conversion, as on the GPU
    expected = torch.stack([aug[i][0] for i in range(len(base))])
    assert torch.equal(raw.float() / 255.0, expected)


def test_device_loader_yields_the_dataloaders_batches_for_each_epoch_seed() -> None:
    base = image_set()
    train = CropFlip(Subset(base, list(range(3, 37))))
    batches = ShardedBatches(len(train), 8, shuffle=True, dist_info=DistInfo())
    loader = device_loader(train, batches, torch.device("cpu"))
    assert isinstance(loader, DeviceLoader) and len(loader) == len(batches) == 5
    reference = DataLoader(train, batch_sampler=batches)  # type: ignore[arg-type]
    firsts = []
    for seed in (0, 1):  # a new epoch: new order and new crops, read when iteration starts
        batches.set_seed(seed)
        train.reseed(100 + seed)
        pairs = list(zip(loader, reference, strict=True))
        for (x, y), (x_ref, y_ref) in pairs:
            assert x.dtype == torch.float32 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
        firsts.append(pairs[0][0][0])
    assert not torch.equal(firsts[0], firsts[1])


def test_device_loader_only_takes_in_memory_image_sets() -> None:
    base = image_set()
    batches = ShardedBatches(len(base), 8, shuffle=False, dist_info=DistInfo())
    plain = device_loader(base, batches, torch.device("cpu"))
    assert plain is not None and plain.augment is None
    x, _ = next(iter(plain))
    assert torch.equal(x, torch.stack([base[i][0] for i in range(8)]))
    assert device_loader(Resized(base, 16), batches, torch.device("cpu")) is None

"""Where a process sits in a ``torch.distributed`` group, and the plumbing a run needs there.

Under DDP every rank runs the same pipeline. Batches are split so that a run on N ranks sees
per step exactly the data one process sees with the same global batch
(:class:`ShardedBatches`); metrics are sums reduced across ranks, then divided once
(:meth:`DistInfo.weighted_means`). Without a process group everything here is the
identity, so the single-process path is the same code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset


def resolve_device(
    name: str, local_rank: int | None = None, assigned: torch.device | None = None
) -> torch.device:
    """``auto`` is CUDA when present. The GPU is ``assigned`` when the launcher chose one (Ray
    Train's ``get_device()``, handed down by the search); else each local rank
    (``LOCAL_RANK``, else the process group rank) gets its own."""
    if assigned is not None and assigned.type == "cuda" and name in ("auto", "cuda"):
        return assigned
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", DistInfo.current().rank))
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class DistInfo:
    """This process's rank and the world size (0 and 1 without a process group)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> DistInfo:
        if is_distributed():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def weighted_means(
        self, values: Mapping[str, tuple[float | None, float]], device: torch.device
    ) -> dict[str, float | None]:
        """``{name: (this rank's mean, the points it was measured on)}`` -> the mean over
        every rank's points. A name no rank measured (None everywhere) stays None."""
        names = list(values)
        flat: list[float] = []
        for name in names:
            mean, n = values[name]
            flat += [0.0 if mean is None else float(mean) * n, 0.0 if mean is None else float(n)]
        summed = self.all_reduce_sum(flat, device)
        out: dict[str, float | None] = {}
        for i, name in enumerate(names):
            total, n = summed[2 * i], summed[2 * i + 1]
            out[name] = total / n if n > 0 else (None if values[name][0] is None else 0.0)
        return out

    def gather_columns(self, columns: dict[str, list[Any] | None]) -> dict[str, list[Any] | None]:
        """Every rank's columns of per-point values, joined in rank order and sorted by the
        ``index`` column (a column None on every rank stays None)."""
        if self.world == 1:
            return columns
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, columns)
        out: dict[str, list[Any] | None] = {}
        for name in columns:
            joined = [part[name] for part in parts if part[name] is not None]
            out[name] = [v for values in joined for v in values] if joined else None
        order = sorted(range(len(out["index"] or [])), key=lambda i: (out["index"] or [])[i])
        return {k: None if v is None else [v[i] for i in order] for k, v in out.items()}

    def any(self, flag: bool, device: torch.device) -> bool:
        return self.all_reduce_sum([float(flag)], device)[0] > 0

    def shard(self, dataset: Dataset, limit: int | None = None) -> Subset:
        """Every ``world``-th point from ``rank``, of the first ``limit`` (evaluation)."""
        n = len(dataset)  # type: ignore[arg-type]
        if limit is not None:
            n = min(n, limit)
        return Subset(dataset, list(range(self.rank, n, self.world)))

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around ``model`` in a process group, ``model`` itself otherwise.

        The masks (``mask`` buffers) are derived from scores that DDP keeps equal on every rank,
        so they are not broadcast before each forward; the other buffers (batch-norm
        statistics) still are."""
        if self.world == 1:
            return model
        masks = [name for name, _ in model.named_buffers() if name.rpartition(".")[2] in ("mask", "topk")]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, masks)
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def sync_batch_norm(model: nn.Module, on: bool, device: torch.device) -> nn.Module:
    """``model`` with SyncBatchNorm layers when ``on`` under DDP on CUDA (torch's SyncBatchNorm
    runs on GPUs only); ``model`` as it is otherwise."""
    if not (on and is_distributed() and device.type == "cuda"):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


class ShardedBatches:
    """Seeded global batches, each split into contiguous per-rank chunks.

    The union of the ranks' chunks is exactly the single-process batch, so a DDP run with
    global batch B sees the same data per step as one process with batch B.
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, dist_info: DistInfo, drop_last: bool = False
    ) -> None:
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.dist = dist_info
        self.drop_last = drop_last
        self.seed = 0

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def global_batches(self) -> list[np.ndarray]:
        order = np.random.default_rng(self.seed).permutation(self.n) if self.shuffle else np.arange(self.n)
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        # A batch smaller than the world would leave a rank without data.
        short = self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size
        if batches and (len(batches[-1]) < self.dist.world or short):
            batches.pop()
        return batches

    def chunk(self, batch_len: int) -> tuple[int, int]:
        bounds = np.linspace(0, batch_len, self.dist.world + 1).round().astype(int)
        return int(bounds[self.dist.rank]), int(bounds[self.dist.rank + 1])

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            lo, hi = self.chunk(len(batch))
            yield batch[lo:hi].tolist()

    def __len__(self) -> int:
        return len(self.global_batches())

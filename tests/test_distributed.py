"""Distributed plumbing that a single process can check: batches split across ranks add up
to the single-process batch, and metric reduction is the identity without a group."""

from __future__ import annotations

import pytest
import torch

from s2ap.distributed import DistInfo, ShardedBatches, resolve_device


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_chunks_are_exactly_the_global_batch(world: int) -> None:
    per_rank = []
    for rank in range(world):
        batches = ShardedBatches(103, 16, shuffle=True, dist_info=DistInfo(rank, world))
        batches.set_seed(7)
        per_rank.append(list(batches))
    reference = ShardedBatches(103, 16, shuffle=True, dist_info=DistInfo(0, world))
    reference.set_seed(7)
    for step, whole in enumerate(reference.global_batches()):
        joined = [i for rank in range(world) for i in per_rank[rank][step]]
        assert joined == whole.tolist()
    assert all(len(chunks) == len(reference) for chunks in per_rank)


def test_a_final_batch_smaller_than_the_world_is_dropped() -> None:
    batches = ShardedBatches(33, 16, shuffle=False, dist_info=DistInfo(0, 2))
    assert [len(b) for b in batches.global_batches()] == [16, 16]
    assert [len(b) for b in ShardedBatches(33, 16, False, DistInfo()).global_batches()] == [16, 16, 1]


def test_reductions_without_a_process_group() -> None:
    info = DistInfo.current()
    assert (info.rank, info.world, info.is_main) == (0, 1, True)
    cpu = torch.device("cpu")
    means = info.weighted_means({"a": (0.25, 8), "b": (None, 8), "c": (0.5, 0)}, cpu)
    assert means == {"a": 0.25, "b": None, "c": 0.0}
    assert info.any(True, cpu) and not info.any(False, cpu)
    assert len(info.shard(list(range(10)), limit=4)) == 4
    assert resolve_device("cpu").type == "cpu"

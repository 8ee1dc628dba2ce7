"""DDP does not broadcast the masks (they follow from scores that are equal on every rank), yet
the ranks' masks are equal (issue 32, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from s2ap import layers as L
from s2ap.distributed import DistInfo
from s2ap.experiment import from_dict
from s2ap.models import build_model
from s2ap.pruning import build_method
from tests.helpers.net import free_port


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same network on every rank
        model = build_model("resnet18", 10, 3, 8, [0.5] * 3, [0.25] * 3)
        build_method(from_dict({"prune": {"method": "hydra", "sparsity": 0.8}})).prepare(model)
        L.set_mode(model, "scores")
        scores = L.score_parameters(model)
        for p in model.parameters():
            p.requires_grad_(any(p is s for s in scores))
        first = next(layer for _, layer in L.scored_layers(model))
        with torch.no_grad():
            first.mask.fill_(float(rank))  # unused while searching: a broadcast would overwrite it
        ddp = DistInfo(rank, world).wrap(model, torch.device("cpu"))
        optimizer = torch.optim.SGD(scores, lr=0.1)
        torch.manual_seed(1 + rank)  # each rank's own data
        for _ in range(2):
            x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            optimizer.step()
        kept_own_mask = bool((first.mask == float(rank)).all())
        L.freeze_masks(model)  # masks from the (all-reduced) scores
        torch.save({"kept_own_mask": kept_own_mask, "masks": L.masks(model)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_masks_are_not_broadcast_yet_equal_on_every_rank(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["kept_own_mask"] and r1["kept_own_mask"]  # rank 1's mask was not overwritten by rank 0's
    assert r0["masks"].keys() == r1["masks"].keys()
    for name, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][name]), name
    assert 0 < sum(float(m.mean()) for m in r0["masks"].values()) / len(r0["masks"]) < 1

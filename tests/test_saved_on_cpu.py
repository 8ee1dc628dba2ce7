"""Everything a run writes (masks, exports, run state, the pretraining cache) holds CPU tensors,
so ``torch.load(path)`` with its defaults reads a file written on a GPU machine anywhere
(issue 32, item 2). The CUDA case runs where a GPU is (``gpu`` mark; ``bench_gpu_epoch.py --check``)."""

from __future__ import annotations

import shutil
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import pytest
import torch

from s2ap.experiment import from_dict
from s2ap.io import iter_tensors, on_cpu
from s2ap.pipeline import Pipeline
from tests.helpers.configs import tiny_run


@pytest.mark.slow  # trains every phase
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_every_saved_tensor_is_on_the_cpu(device: str, tmp_path: Path) -> None:
    cfg = tiny_run(
        {
            "device": device,
            "pretrain.epochs": 1,
            "prune.epochs": 2,
            "s2ap.enabled": True,
            "s2ap.projection": "algorithm1",  # a carried z in the run state
            "finetune.epochs": 1,
        }
    )
    snapshots = tmp_path / "snapshots"  # the run state at each epoch end (optimizer state in it)
    snapshots.mkdir()

    def keep(row: dict[str, Any], path: Path | None) -> None:
        assert path is not None
        shutil.copy(path, snapshots / f"state-{row['global_epoch']}.pt")

    pipe = Pipeline(from_dict(cfg), tmp_path / "run", keep, pretrain_cache=str(tmp_path / "cache"))
    assert pipe.device.type == device
    pipe.run()
    files = [p for where in ("run", "cache", "snapshots") for p in sorted((tmp_path / where).glob("*.pt"))]
    names = {f.name for f in files}
    assert {"masks.pt", "pruned_dense.pt", "state.pt"} <= names
    assert any(n.startswith("pretrain-") for n in names)
    for path in files:
        found = list(iter_tensors(torch.load(path)))  # torch's defaults: weights_only, no map_location
        assert found, path.name
        assert all(t.device.type == "cpu" for t in found), path.name
    state = torch.load(snapshots / "state-4.pt")  # the finetuning epoch's end
    assert any(z is not None for z in state["sharpness"]["finetune"]["z"])
    assert state["optimizer"]["state"] and state["model"] and state["first_mask"]
    assert state["best"] is not None and len(state["best"]["scores"]) == len(pipe.layers)


def test_on_cpu_keeps_the_structure_and_the_values() -> None:
    Pair = namedtuple("Pair", "a b")
    t = torch.arange(4.0, requires_grad=True)
    obj = {"x": [t, (t, 1)], "o": OrderedDict(w=t), "p": Pair(t, "s"), "n": None, "f": 0.5}
    out = on_cpu(obj)
    assert isinstance(out["o"], OrderedDict) and isinstance(out["p"], Pair) and isinstance(out["x"][1], tuple)
    assert (out["n"], out["f"], out["p"].b, out["x"][1][1]) == (None, 0.5, "s", 1)
    assert all(torch.equal(v, t.detach()) and not v.requires_grad for v in iter_tensors(out))


def test_iter_tensors_finds_every_nested_tensor_in_order() -> None:
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    Pair = namedtuple("Pair", "x y")
    obj = {"l": [a, {"t": (b, "s", None)}], "o": OrderedDict(p=Pair(c, 1)), "n": 3, "d": d}
    found = list(iter_tensors(obj))
    assert len(found) == 4 and all(f is t for f, t in zip(found, (a, b, c, d), strict=True))
    assert list(iter_tensors(a)) == [a] and list(iter_tensors({"x": [1, "t"], "y": ()})) == []

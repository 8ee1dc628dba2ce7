"""The GPU path's checks, run by ``bench_gpu_epoch.py --check`` before it times anything.

Each check prints one line (``ok`` or ``FAILED``) and returns its figures:

* ``device_reads``: host syncs per S2AP iteration (bf16 + channels_last on CUDA), counted with
  ``torch.cuda.set_sync_debug_mode`` on a GPU and by patching the tensor reads on the CPU; at
  most 3;
* ``recompiles``: graphs compiled by ``torch.compile`` (inductor on CUDA, dynamo's eager
  backend on the CPU) over S2AP search steps: none after the first steps, no graph break;
* ``ddp_step``: one S2AP step of a DDP model in a one-process group (NCCL on CUDA, gloo on the
  CPU) on the device, the attack through the compiled inner module;
* ``saved_on_cpu``: a tiny digits run on the device writes only CPU tensors;
* ``gpu_tests``: ``pytest -m gpu`` (CUDA only).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from s2ap import layers as L
from s2ap.experiment import from_dict
from s2ap.io import iter_tensors
from s2ap.objectives import build_objective
from s2ap.sharpness import score_perturbation
from s2ap.train import Trainer, compiled

MAX_READS = 3
READERS = ("item", "tolist", "__float__", "__int__", "__bool__")


@contextmanager
def counted_reads(device: torch.device) -> Iterator[list[int]]:
    """``[n]``: the device reads inside the block (syncs on CUDA, value reads on the CPU)."""
    count = [0]
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield count
            finally:
                torch.cuda.set_sync_debug_mode("default")
        count[0] = sum("synchroniz" in str(w.message) for w in seen)
        return
    originals = {name: getattr(torch.Tensor, name) for name in READERS}

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return original(*args, **kwargs)

        return counted

    equal = torch.equal
    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(original))
        torch.equal = wrap(equal)  # type: ignore[assignment]
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.equal = equal  # type: ignore[assignment]


def _searching(base: nn.Module, device: torch.device, fast: bool) -> tuple[nn.Module, list[nn.Parameter]]:
    fmt = torch.channels_last if fast else torch.preserve_format
    model = copy.deepcopy(base).to(device, memory_format=fmt)
    scores = L.score_parameters(model)
    for p in model.parameters():
        p.requires_grad_(any(p is s for s in scores))
    return model, scores


def _trainer(
    model: nn.Module, scores: list[nn.Parameter], device: torch.device, fast: bool, **kw: Any
) -> Trainer:
    cfg = from_dict({})
    objective = build_objective(cfg.objective, cfg.attack)
    return Trainer(model, objective, torch.optim.SGD(scores, lr=0.1, momentum=0.9), device, amp=fast, **kw)


def _perturbation(model: nn.Module) -> Any:
    layers = [layer for _, layer in L.scored_layers(model)]
    cfg = from_dict({})
    return score_perturbation(layers, 0.5, cfg.s2ap.projection, eta=cfg.prune.lr)  # flips mask entries


def check_reads(base: nn.Module, batches: list[Any], device: torch.device, fast: bool) -> dict[str, Any]:
    model, scores = _searching(base, device, fast)
    trainer, pert = _trainer(model, scores, device, fast), _perturbation(model)
    trainer.step(*batches[0], perturbation=pert)  # warm-up (the carried z starts here)
    per_iter = []
    for x, y in batches[1:]:
        with counted_reads(device) as n:
            trainer.step(x, y, perturbation=pert, before_update=lambda loss, k: None)
        per_iter.append(n[0])
    return {"ok": max(per_iter) <= MAX_READS, "reads_per_iteration": per_iter, "limit": MAX_READS}


def check_recompiles(base: nn.Module, batches: list[Any], device: torch.device, fast: bool) -> dict[str, Any]:
    graphs = [0]
    inner = "inductor" if device.type == "cuda" else "eager"

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        graphs[0] += 1
        if inner == "eager":
            return gm.forward
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    torch._dynamo.reset()
    breaks = torch._dynamo.utils.counters["graph_break"]
    breaks.clear()
    model, scores = _searching(base, device, fast)
    trainer = _trainer(compiled(model, True, backend=backend), scores, device, fast)  # type: ignore[arg-type]
    pert = _perturbation(model)
    warm = 2
    for x, y in batches[:warm]:
        trainer.step(x, y, perturbation=pert)
    first = graphs[0]
    for x, y in batches[warm:]:
        trainer.step(x, y, perturbation=pert)
    later = graphs[0] - first
    return {
        "ok": later == 0 and not breaks,
        "graphs_first_steps": first,
        "graphs_later": later,
        "graph_breaks": len(breaks),
        "backend": inner,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_ddp_step(base: nn.Module, batches: list[Any], device: torch.device, fast: bool) -> dict[str, Any]:
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        model, scores = _searching(base, device, fast)
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None
        )
        attack = compiled(model, device.type == "cuda")
        trainer = _trainer(compiled(ddp, device.type == "cuda"), scores, device, fast, attack_model=attack)
        before = [s.detach().clone() for s in scores]
        loss, _, _ = trainer.step(*batches[0], perturbation=_perturbation(model))
        moved = any(not torch.equal(a, s.detach()) for a, s in zip(before, scores, strict=True))
        value = float(loss)
    finally:
        dist.destroy_process_group()
    return {"ok": moved and value == value, "backend": backend, "loss": value}


def check_saved_on_cpu(device: torch.device) -> dict[str, Any]:
    from s2ap.pipeline import Pipeline

    cfg = {
        "data": {"name": "digits", "image_size": 8, "batch_size": 64, "train_limit": 128, "test_limit": 64},
        "device": device.type,
        "attack": {"steps": 1},
        "pretrain": {"epochs": 1},
        "eval": {"autoattack": False, "pgd_steps": 1, "val_limit": 32},
        "prune": {"epochs": 2},
        "finetune": {"epochs": 1},
        "s2ap": {"enabled": True, "warmup_epochs": 1},
    }
    with tempfile.TemporaryDirectory() as tmp:
        Pipeline(from_dict(cfg), Path(tmp) / "run", pretrain_cache=str(Path(tmp) / "cache")).run()
        files = sorted(Path(tmp).rglob("*.pt"))
        bad = [f.name for f in files if not all(t.device.type == "cpu" for t in iter_tensors(torch.load(f)))]
    return {"ok": len(files) >= 4 and not bad, "files": len(files), "not_on_cpu": bad}


def check_gpu_tests() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=root, capture_output=True, text=True
    )
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"ok": proc.returncode == 0, "summary": last}


def run_checks(base: nn.Module, batches: list[Any], device: torch.device, fast: bool) -> dict[str, Any]:
    """Every check, one line each; ``["ok"]`` is whether all passed."""
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "device_reads": lambda: check_reads(base, batches, device, fast),
        "recompiles": lambda: check_recompiles(base, batches, device, fast),
        "ddp_step": lambda: check_ddp_step(base, batches, device, fast),
        "saved_on_cpu": lambda: check_saved_on_cpu(device),
    }
    if device.type == "cuda":
        checks["gpu_tests"] = check_gpu_tests
    out: dict[str, Any] = {}
    for name, check in checks.items():
        try:
            result = check()
        except Exception as exc:  # a check that crashes has failed; the others still run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        out[name] = result
        details = ", ".join(f"{k} {v}" for k, v in result.items() if k != "ok")
        print(f"check {name:14s} {'ok' if result['ok'] else 'FAILED'}: {details}")
    out["ok"] = all(r["ok"] for r in out.values())
    return out

"""One TRADES PGD-10 pruning epoch (HYDRA, 90% sparsity) of ResNet-18 on CIFAR-10-shaped data,
timed for each step of the GPU fast path, and S2AP's per-iteration cost against the original,
all from one run.

    python benchmarks/bench_gpu_epoch.py [--cifar10 ROOT] [--out figures.json] [--tiny] [--check]

Data: the pipeline's CIFAR-10 training split (45,000 images: 50,000 less the validation
points, ``data.val_fraction``) of real CIFAR-10 when ``--cifar10 ROOT`` (or ``data/``) holds
it, else a synthetic uint8 set of the same shape (the cost of an epoch does not depend on the
pixels; a note says so when ``--cifar10 ROOT`` holds no CIFAR-10). Either way the set is kept
on the device and augmented there (:class:`s2ap.tensor_data.DeviceLoader`), as the pipeline
does on CUDA. A timed epoch has no last partial batch (it would compile another graph).

``--check`` first verifies the GPU path (``gpu_check.py``: device reads per S2AP iteration,
recompiles, a one-GPU NCCL DDP step, CPU-only run files, the ``gpu`` tests), then times.

Variants, each one epoch from the same pruned model and scores, batch 128:
``eager_fp32``, ``bf16`` (autocast), ``bf16_channels_last`` and ``bf16_channels_last_compile``
(``torch.compile``; the graphs compiled during the timed epoch, after a warm-up of a few
steps, are counted: 0 means the score mask's top-k causes no recompile per step). Then
``s2ap / orig`` per iteration at the fastest eager setting: the same batches, alternating
orig, S2AP (second pass skipped when provably without effect) and S2AP with the second pass
always run (the paper's cost). Goals on one H100/H200-class GPU: <= 30 s per epoch at bf16
and s2ap / orig <= 1.12x.

On CPU, or with ``--tiny``, it runs a tiny version (a small CNN, 64 images of 16 x 16,
batch 16, compile with the ``eager`` backend: dynamo's tracing without code generation)
so that the script itself is tested; its times mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s2ap import layers as L
from s2ap.config import DataConfig
from s2ap.data import DATASETS, _val_size
from s2ap.data_files import cifar_folder
from s2ap.distributed import DistInfo, ShardedBatches
from s2ap.experiment import from_dict
from s2ap.models import build_model
from s2ap.objectives import build_objective
from s2ap.pruning import build_method
from s2ap.sharpness import score_perturbation
from s2ap.tensor_data import CropFlip, DeviceLoader, TensorImageDataset
from s2ap.train import Epoch, Trainer, compiled

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
VARIANTS = {  # name: (amp, channels_last, compile)
    "eager_fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16_channels_last": (True, True, False),
    "bf16_channels_last_compile": (True, True, True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_set(args: argparse.Namespace) -> tuple[TensorImageDataset, str]:
    """The pipeline's CIFAR-10 training split when present, else a synthetic set of its shape."""
    root = Path(args.cifar10 or "data")
    val = DataConfig().val_fraction
    if not args.tiny and cifar_folder(root) is not None:
        train, _ = DATASETS.get("cifar10")(DataConfig(name="cifar10", root=str(root)))
        assert isinstance(train, TensorImageDataset)
        keep = len(train) - _val_size(len(train), val)  # the cost depends on the count, not on which
        part = TensorImageDataset(train.images[:keep], train.targets[:keep], train.classes, scale=train.scale)
        return part, f"cifar10 ({root}), the training split"
    if args.cifar10 and not args.tiny:
        print(f"note: no CIFAR-10 at {root}: timing a synthetic set of the same shape")
    n, side = (64, 16) if args.tiny else (50_000 - _val_size(50_000, val), 32)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return TensorImageDataset(images, labels, [str(i) for i in range(10)], scale=255.0), "synthetic"


class FirstBatches(ShardedBatches):
    """A seeded single-process epoch order, cut to its first ``limit`` batches."""

    def __init__(self, n: int, batch: int, seed: int, limit: int | None = None) -> None:
        super().__init__(n, batch, shuffle=True, dist_info=DistInfo(), drop_last=True)
        self.set_seed(seed)
        self.limit = limit

    def global_batches(self) -> list[Any]:
        return super().global_batches()[: self.limit]


class GraphCounter:
    """A torch.compile backend that counts the graphs it is handed (a recompile is one more)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        self.graphs += 1
        if self.backend == "eager":
            return gm.forward
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)


def time_epoch(
    base: nn.Module,
    data: TensorImageDataset,
    args: argparse.Namespace,
    device: torch.device,
    amp: bool,
    channels_last: bool,
    compile_backend: GraphCounter | None,
) -> dict[str, Any]:
    """Warm-up steps, then one timed epoch of HYDRA's score search from ``base``."""
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model = copy.deepcopy(base).to(device, memory_format=fmt)
    scores = L.score_parameters(model)
    for p in model.parameters():
        p.requires_grad_(any(p is s for s in scores))
    optimizer = torch.optim.SGD(scores, lr=0.1, momentum=0.9, weight_decay=1e-4)
    run = compiled(model, compile_backend is not None, backend=compile_backend)  # type: ignore[arg-type]
    objective = build_objective(from_dict({}).objective, from_dict({}).attack)  # TRADES, PGD-10
    augment = CropFlip(data)
    out: dict[str, Any] = {}
    for stage, seed in (("warmup", 1), ("epoch", 2)):
        batches = FirstBatches(
            len(data), args.batch, seed, args.warmup if stage == "warmup" else args.max_batches
        )
        augment.reseed(seed)
        loader = DeviceLoader(data.images, data.targets, data.scale, batches, device, augment)
        graphs_before = compile_backend.graphs if compile_backend is not None else 0
        torch.manual_seed(seed)
        sync(device)
        start = time.perf_counter()
        res = Trainer(run, objective, optimizer, device, amp=amp).epoch(loader, batches, Epoch())
        sync(device)
        out[f"{stage}_s"] = time.perf_counter() - start
        out[f"{stage}_steps"] = len(batches)
        out[f"{stage}_graphs_compiled"] = (
            (compile_backend.graphs - graphs_before) if compile_backend else None
        )
    full_steps = len(FirstBatches(len(data), args.batch, seed=0))
    out["steps_per_epoch"] = full_steps
    out["epoch_s"] = out["epoch_s"] * full_steps / out["epoch_steps"]
    out["extrapolated"] = out["epoch_steps"] < full_steps
    out["train_loss"] = res.loss_sum / max(res.n, 1)
    return out


def s2ap_ratio(
    base: nn.Module,
    data: TensorImageDataset,
    args: argparse.Namespace,
    device: torch.device,
    amp: bool,
    channels_last: bool,
) -> dict[str, Any]:
    """Per-iteration times (mean of the fastest 75%) of orig and S2AP on the same batches."""
    fmt = torch.channels_last if channels_last else torch.preserve_format
    cfg = from_dict({})
    objective = build_objective(cfg.objective, cfg.attack)
    runs: dict[str, Any] = {}
    for name in ("orig", "s2ap", "s2ap_always"):
        model = copy.deepcopy(base).to(device, memory_format=fmt)
        scores = L.score_parameters(model)
        for p in model.parameters():
            p.requires_grad_(any(p is s for s in scores))
        layers = [layer for _, layer in L.scored_layers(model)]
        pert = None
        if name != "orig":
            pert = score_perturbation(layers, cfg.s2ap.gamma, cfg.s2ap.projection, eta=cfg.prune.lr)
            if name == "s2ap_always":
                pert.fingerprint = None  # never skip the second pass
        runs[name] = (model, torch.optim.SGD(scores, lr=cfg.prune.lr, momentum=0.9), pert, [])
    batches = FirstBatches(len(data), args.batch, seed=3, limit=args.ratio_iters + 2)
    loader = DeviceLoader(data.images, data.targets, data.scale, batches, device, CropFlip(data))
    for it, (x, y) in enumerate(loader):
        for model, opt, pert, times in runs.values():
            torch.manual_seed(it)
            sync(device)
            start = time.perf_counter()
            Trainer(model, objective, opt, device, amp=amp).step(x, y, perturbation=pert)
            sync(device)
            if it >= 2:  # warm-up iterations
                times.append(time.perf_counter() - start)
    mean = {n: statistics.mean(sorted(r[3])[: max(1, len(r[3]) * 3 // 4)]) for n, r in runs.items()}
    return {
        "iterations": args.ratio_iters,
        "ms_per_iter": {n: 1000 * v for n, v in mean.items()},
        "s2ap_over_orig": mean["s2ap"] / mean["orig"],
        "s2ap_always_over_orig": mean["s2ap_always"] / mean["orig"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10", default=None, help="CIFAR-10 root (default: data/ when present)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--tiny", action="store_true", help="the tiny version (automatic without CUDA)")
    parser.add_argument("--model", default=None, help="default: resnet18 (tiny: cnn)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3, help="steps before each timed epoch")
    parser.add_argument("--max-batches", type=int, default=None, help="time this many steps, then scale")
    parser.add_argument("--ratio-iters", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="verify the GPU path first (gpu_check.py)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-timing", action="store_true", help="with --check: the checks alone")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    if device.type != "cuda" and not args.tiny:
        print("no CUDA device: running the tiny version")
        args.tiny = True
    if args.tiny:
        args.batch, args.ratio_iters, args.warmup = min(args.batch, 16), min(args.ratio_iters, 3), 1
    torch.set_num_threads(args.threads)
    data, source = training_set(args)
    side = int(data.images.shape[-1])
    model_name = args.model or ("cnn" if args.tiny else "resnet18")
    base = build_model(model_name, 10, 3, side, CIFAR_MEAN, CIFAR_STD)
    build_method(from_dict({"prune": {"method": "hydra", "sparsity": 0.9}})).prepare(base)
    L.set_mode(base, "scores")
    backend = "inductor" if device.type == "cuda" else "eager"
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "model": model_name,
        "data": source,
        "images": len(data),
        "image_size": side,
        "batch": args.batch,
        "objective": "trades, PGD-10 (KL), beta 6",
        "method": "hydra, sparsity 0.9",
        "compile_backend": backend,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,  # as the pipeline leaves it (torch's default)
        "variants": {},
    }
    print(
        f"{figures['device']}, torch {torch.__version__}, {model_name}, {source} {len(data)} images, batch {args.batch}"
    )
    if args.check:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_check import run_checks

        gen = torch.Generator().manual_seed(5)
        picks = [torch.randint(0, len(data), (args.batch,), generator=gen) for _ in range(5)]
        batches = [
            ((data.images[i].float() / data.scale).to(device), data.targets[i].to(device)) for i in picks
        ]
        figures["check"] = run_checks(base, batches, device, fast=device.type == "cuda")
        if args.no_timing:
            return _written(figures, args.out)
    breaks = torch._dynamo.utils.counters["graph_break"]
    for name, (amp, channels_last, use_compile) in VARIANTS.items():
        counter = GraphCounter(backend) if use_compile else None
        if use_compile:
            torch._dynamo.reset()
            breaks.clear()
        row = time_epoch(base, data, args, device, amp, channels_last, counter)
        figures["variants"][name] = row
        extra = f", graphs compiled in the timed epoch: {row['epoch_graphs_compiled']}" if use_compile else ""
        scaled = f" (scaled from {row['epoch_steps']} steps)" if row["extrapolated"] else ""
        print(f"{name:28s} {row['epoch_s']:8.1f} s/epoch{scaled}{extra}")
    if any(use for _, _, use in VARIANTS.values()):
        reasons: dict[str, int] = {}
        for reason, count in breaks.items():
            first = str(reason).strip().splitlines()[0]
            reasons[first] = reasons.get(first, 0) + int(count)
        figures["graph_breaks"] = reasons
        print(f"graph breaks: {sum(reasons.values())} {reasons if reasons else ''}")
    fast = device.type == "cuda"
    ratio = s2ap_ratio(base, data, args, device, amp=fast, channels_last=fast)
    figures["s2ap_ratio"] = {"amp": fast, "channels_last": fast, **ratio}
    ms = ratio["ms_per_iter"]
    print(
        f"per iteration ({'bf16 + channels_last' if fast else 'fp32'}, {ratio['iterations']} iterations): "
        f"orig {ms['orig']:.1f} ms, s2ap {ms['s2ap']:.1f} ms ({ratio['s2ap_over_orig']:.3f}x), "
        f"s2ap with the second pass always {ms['s2ap_always']:.1f} ms ({ratio['s2ap_always_over_orig']:.3f}x)"
    )
    print("goals on one H100/H200-class GPU: <= 30 s/epoch at bf16, s2ap / orig <= 1.12x")
    return _written(figures, args.out)


def _written(figures: dict[str, Any], out: str | None) -> dict[str, Any]:
    if out:
        Path(out).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    sys.exit(0 if main().get("check", {"ok": True})["ok"] else 1)

"""End-to-end runs of the pipeline: files, S2AP-off equivalence, resume, DDP, NaN handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from s2ap import layers as L
from s2ap.data import load_splits
from s2ap.experiment import from_dict, with_overrides
from s2ap.models import build_model
from s2ap.pipeline import Pipeline, run_experiment
from tests.helpers.configs import tiny_run
from tests.helpers.net import free_port

TINY = tiny_run()


def tiny(**overrides) -> object:
    return with_overrides(from_dict(TINY), overrides)


@pytest.mark.slow  # multi-epoch training
def test_end_to_end_digits_writes_run_folder(tmp_path: Path) -> None:
    cfg = tiny(
        **{
            "s2ap.enabled": True,
            "eval.loss_diff_rhos": [0.01],
            "eval.loss_diff_steps": 2,
            "eval.lambda_max_every": 2,
            "eval.lambda_max_iters": 2,
        }
    )
    seen: list[dict] = []
    final = run_experiment(cfg, tmp_path, reporter=lambda m, p: seen.append(dict(m, path=p)))
    for name in ("config.yaml", "state.pt", "masks.pt", "pruned_dense.pt", "epochs.parquet", "final.parquet"):
        assert (tmp_path / name).is_file(), name
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    assert list(epochs.phase) == ["pretrain"] * 2 + ["prune"] * 3 + ["finetune"]
    assert list(epochs.s2ap_active) == [False, False, False, True, True, True]
    # How often algorithm1's carried z needed the extra pass: measured wherever S2AP ran.
    assert epochs.ascent_pass_frac.notna().tolist() == list(epochs.s2ap_active)
    assert epochs.ascent_pass_frac.dropna().between(0, 1).all()
    prune = epochs[epochs.phase == "prune"]
    assert prune.hamming.notna().all() and (prune.hamming >= 0).all()
    assert prune.lambda_max.notna().all()
    assert [m["global_epoch"] for m in seen] == list(range(1, 7))
    assert all(m["path"] == tmp_path / "state.pt" for m in seen)

    row = pd.read_parquet(tmp_path / "final.parquet").iloc[0]
    assert row.density == pytest.approx(0.2, abs=0.001) and final["density"] == row.density
    assert 0 <= row.clean_acc <= 1 and 0 <= row.robust_acc <= row.clean_acc + 1e-9
    assert list(row.hamming) == pytest.approx(list(prune.hamming))
    assert len(row.loss_diff) == 1 and row.loss_diff[0] >= 0
    assert row.robust_acc == row.pgd_acc and pd.isna(row.aa_acc)
    # A single run measures Table 5's mask accuracy by default (eval.mask_test null).
    assert row.mask_robust_attack == "pgd" and row.mask_robust_acc_n == row.mask_clean_acc_n > 0
    # The fast-path settings the run used: on CPU neither bf16 autocast nor channels_last.
    assert (row.amp, row.channels_last, row["compile"]) == (False, False, False)

    # The saved masks have the target density, and the dense export loads into the plain model.
    masks = torch.load(tmp_path / "masks.pt")
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.2, abs=0.001)
    splits = load_splits(cfg.data, cfg.seed)
    i = splits.info
    plain = build_model("cnn", i.num_classes, i.in_channels, 8, i.mean, i.std, masked=False)
    plain.load_state_dict(torch.load(tmp_path / "pruned_dense.pt"), strict=True)
    conv = plain.net.modules().__next__()
    assert conv is not None
    zero_frac = sum(
        int((m.weight == 0).sum())
        for m in plain.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    )
    assert zero_frac >= 0.8 * sum(m.numel() for m in masks.values()) - 1


@pytest.mark.slow  # multi-epoch training, twice
def test_s2ap_off_matches_original_and_warmup_epochs_are_identical(tmp_path: Path) -> None:
    last = {"prune.best_mask": "last"}
    off_a = Pipeline(tiny(**last), tmp_path / "a")
    off_a.run()
    off_b = Pipeline(tiny(**last), tmp_path / "b")
    off_b.run()
    on = Pipeline(tiny(**last, **{"s2ap.enabled": True, "s2ap.warmup_epochs": 2}), tmp_path / "c")
    on.run()
    # Same seed, S2AP off: bit-for-bit the same run.
    for (_, la), (_, lb) in zip(L.scored_layers(off_a.model), L.scored_layers(off_b.model), strict=True):
        assert torch.equal(la.scores, lb.scores) and torch.equal(la.mask, lb.mask)
    rows_a, rows_on = off_a.state.rows, on.state.rows
    keys = ["train_loss", "train_acc", "val_clean_acc", "val_pgd_acc", "hamming"]
    # Before S2AP starts (pretrain + 2 warm-up epochs) the S2AP run IS the original method.
    for ra, ro in zip(rows_a[:4], rows_on[:4], strict=True):
        assert [ra[k] for k in keys] == [ro[k] for k in keys]
    assert rows_on[4]["s2ap_active"] and not rows_a[4]["s2ap_active"]
    # The forward pass depends on the mask only, so the losses may agree; the scores may not.
    changed = [
        not torch.equal(a.scores, b.scores)
        for (_, a), (_, b) in zip(L.scored_layers(off_a.model), L.scored_layers(on.model), strict=True)
    ]
    assert all(changed)


class Stop(Exception):
    pass


@pytest.mark.slow  # multi-epoch training, twice
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"data.augment": True},
        {"s2ap.ascent": "previous", "eval.mask_test": False},
        # the control's generator state is in the run state (a gamma that flips masks)
        {"s2ap.direction": "random", "s2ap.gamma": 0.5, "s2ap.projection": "surface"},
    ],
    ids=["plain", "augment", "previous", "random-direction"],
)
def test_resume_after_interruption_gives_the_same_result(extra: dict, tmp_path: Path) -> None:
    """Also with the carried-over perturbation (the default projection) and augmentation."""
    cfg = tiny(**{"s2ap.enabled": True, **extra})
    full = Pipeline(cfg, tmp_path / "full")
    full_final = full.run()

    def stop_after(n: int):
        def reporter(metrics, path):
            if metrics["global_epoch"] == n:
                raise Stop

        return reporter

    # Interrupt mid-pruning (global epoch 4 = prune epoch 2), then resume from the state.
    with pytest.raises(Stop):
        Pipeline(cfg, tmp_path / "cut", reporter=stop_after(4)).run()
    resumed = Pipeline(cfg, tmp_path / "cut", resume_from=tmp_path / "cut" / "state.pt")
    resumed_final = resumed.run()
    for (_, a), (_, b) in zip(L.scored_layers(full.model), L.scored_layers(resumed.model), strict=True):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
    for key in ("clean_acc", "pgd_acc", "mask_robust_acc", "best_mask_epoch", "hamming"):
        assert full_final[key] == resumed_final[key], key
    if extra.get("eval.mask_test") is False:  # no Table-5 evaluation asked for: no mask columns
        assert full_final.get("mask_robust_acc") is None and full_final.get("mask_robust_attack") is None
    ea = pd.read_parquet(tmp_path / "full" / "epochs.parquet").drop(columns="time_s")
    eb = pd.read_parquet(tmp_path / "cut" / "epochs.parquet").drop(columns="time_s")
    pd.testing.assert_frame_equal(ea, eb)


def test_resume_refuses_state_of_another_config(tmp_path: Path) -> None:
    cfg = tiny(**{"prune.epochs": 1, "pretrain.epochs": 1, "finetune.epochs": 0})
    run_experiment(cfg, tmp_path)
    with pytest.raises(ValueError, match="different config"):
        Pipeline(with_overrides(cfg, {"prune.sparsity": 0.5}), tmp_path, resume_from=tmp_path / "state.pt")


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        pipe = Pipeline(from_dict(cfg_dict), Path(out) if rank == 0 else None)
        final = pipe.run()
        torch.save({"masks": L.masks(pipe.model), "final": final, "rank": rank}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_gives_same_masks_as_single_process(tmp_path: Path) -> None:
    cfg_dict = tiny_run({"s2ap.enabled": True})
    single = Pipeline(from_dict(cfg_dict), tmp_path / "single")
    single.run()
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_ddp_worker, args=(2, free_port(), cfg_dict, str(out)), nprocs=2, join=True)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    ref = L.masks(single.model)
    for name, mask in ref.items():
        assert torch.equal(r0["masks"][name], r1["masks"][name]), f"ranks differ at {name}"
        assert torch.equal(r0["masks"][name], mask), f"DDP differs from single process at {name}"
    assert r0["final"]["best_mask_epoch"] == single.state.best.epoch


@pytest.mark.slow  # multi-epoch training
def test_nan_loss_stops_with_phase_and_epoch_and_keeps_earlier_epochs(tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.yaml"
    import yaml

    d = dict(TINY, out_dir=str(tmp_path / "run"))
    d["finetune"] = {"epochs": 2, "lr": 1e12, "momentum": 0.0}
    cfg_path.write_text(yaml.safe_dump(d))
    proc = subprocess.run(
        [sys.executable, "-m", "s2ap.run", str(cfg_path), "-q", "--threads", "1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert "phase finetune, epoch" in proc.stderr and "Traceback" not in proc.stderr
    epochs = pd.read_parquet(tmp_path / "run" / "epochs.parquet")
    assert list(epochs.phase[:5]) == ["pretrain"] * 2 + ["prune"] * 3


def test_train_loss_iter_returns_the_scores_before_the_update_of_the_lowest_loss_iteration() -> None:
    """Algorithm 1, lines 13-15, on a constructed loss sequence: a copy only on improvement."""
    p = Pipeline(tiny())
    p.method.prepare(p.model)
    assert p.cfg.prune.best_mask == "train_loss_iter"  # the paper's rule is the default
    before_update = p.best.per_iteration(2)
    assert before_update is not None
    copies = []
    for i, loss in enumerate([3.0, 2.0, 2.5, 1.0, 1.5]):
        with torch.no_grad():
            for layer in p.layers:
                layer.scores.fill_(float(i))  # the scores "before the update" of iteration i
        before_update(torch.tensor(loss), 64)
        copies.append(p.state.best)
    best = p.state.best
    assert (best.score, best.epoch, best.iteration) == (1.0, 2, 3)
    assert all(torch.equal(s, torch.full_like(s, 3.0)) for s in best.scores)
    assert len({id(c) for c in copies}) == 3  # iterations 0, 1 and 3 improved; 2 and 4 did not
    # HARP: nothing is a candidate before an epoch has ended within budget.
    h = Pipeline(tiny(**{"prune.method": "harp"}))
    h.method.prepare(h.model)
    hook = h.best.per_iteration(0)
    assert hook is not None
    hook(torch.tensor(0.5), 64)
    assert h.state.best is None
    h.method.reached = 0
    hook(torch.tensor(0.7), 64)
    assert h.state.best is not None and h.state.best.iteration == 1


def test_epoch_rules_keep_no_per_iteration_copies(tmp_path: Path) -> None:
    p = Pipeline(tiny(**{"prune.best_mask": "val_robust", "pretrain.epochs": 0, "finetune.epochs": 0}))
    assert p.best.per_iteration(0) is None
    p.run()
    assert p.state.best is not None and p.state.best.iteration is None

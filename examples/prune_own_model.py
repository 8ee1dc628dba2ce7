"""Adversarially prune a model object of your own, on data of your own, from Python.

    python examples/prune_own_model.py [--out runs/own_model] [--epochs 3]

The network is a plain ``nn.Module`` written here; the data are scikit-learn's 8x8 digits as
``TensorDataset``s of (image in [0, 1], label). ``s2ap.prune`` returns the same object with
90% of its prunable weights zeroed, the masks, and the test metrics with their intervals.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

import s2ap


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(32 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def digits() -> tuple[TensorDataset, TensorDataset]:
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # in [0, 1]
    labels = torch.tensor(bunch.target)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.2, random_state=0)
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/own_model", help="run folder")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each phase")
    args = parser.parse_args()

    train, test = digits()
    model = SmallNet()
    result = s2ap.prune(
        model,
        train,  # the validation set is split off it (data.val_fraction)
        test=test,
        run_dir=args.out,
        config={
            "data": {"batch_size": 64},
            "attack": {"eps": 0.1, "step_size": 0.025, "steps": 3},
            "pretrain": {"epochs": args.epochs, "lr": 0.05},
            "prune": {"method": "hydra", "sparsity": 0.9, "epochs": args.epochs},
            "finetune": {"epochs": args.epochs, "lr": 0.01},
            "eval": {"autoattack": False, "pgd_steps": 10},
        },
    )
    m = result.metrics
    for name in ("clean_acc", "pgd_acc"):
        print(
            f"{name}: {m[name]:.3f} [{m[name + '_lo']:.3f}, {m[name + '_hi']:.3f}] on {m[name + '_n']} points"
        )
    kept = sum(int(mask.sum()) for mask in result.masks.values())
    total = sum(mask.numel() for mask in result.masks.values())
    print(
        f"density of the pruned layers: {kept / total:.3f}; {type(result.model).__name__} in {result.run_dir}"
    )
    # The pruned weights are the model's own: the mask is already applied.
    weight = result.model.features[0].weight
    assert torch.equal(weight, weight * result.masks["features.0.weight"])


if __name__ == "__main__":
    main()

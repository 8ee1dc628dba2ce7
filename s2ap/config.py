"""Frozen experiment configuration: one dataclass per concept, each field with its rules.

Types, ranges (``bounded``) and rules between fields (``check``) live on the classes, so
a config that exists is a valid one (:mod:`s2ap.coerce` builds them from YAML, rejecting
unknown keys, with one-line errors naming the dotted field). What needs the registries
(does ``model.name`` exist, does the method accept these settings, which phases run) is
checked one floor up, in :mod:`s2ap.experiment`, which every entry point calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from s2ap.coerce import (
    Checked,
    bounded,
    build,
    build_with,
    parse_override,
    stable_hash,
    to_dict,
    with_changes,
)
from s2ap.errors import ConfigError
from s2ap.io import read_yaml_mapping

# Settings that measure a copy of the run, never the run: left out of its hash.
PROBE_KEYS = ("probe_after", "probe_epochs")

Phase = Literal["pretrain", "prune", "finetune"]


@dataclass(frozen=True)
class DataConfig(Checked):
    # A registered set, or package.module:callable (your own code, called with those of seed /
    # image_size / root / download its signature names, returning (train, val, test) or
    # (train, test) datasets of (image, label); val is then split off train).
    name: str = "digits"
    root: str = "data"  # folder of the sets read from disk (cifar10, svhn, folders of images); ~ expanded
    download: bool = False  # fetch CIFAR-10 / SVHN into data.root when they are not there
    # Fraction of the training set held out for validation (a seeded permutation; the first
    # points), for sets without a validation split of their own.
    val_fraction: float = bounded(0.1, gt=0, lt=1)
    batch_size: int = bounded(128, ge=1)  # training batch; with DDP the global batch, split over ranks
    eval_batch_size: int = bounded(256, ge=1)  # batch of the validation and test evaluations
    image_size: int | None = bounded(None, ge=1)  # resize to this side; None keeps the native size
    train_limit: int | None = bounded(None, ge=1)  # use only the first N training points (after shuffling)
    # use only the first N test points (so smaller limits are nested in larger); None = all
    test_limit: int | None = bounded(None, ge=1)
    # DataLoader worker processes for training; 0 = the main process; null = auto: 0 for sets held
    # in memory, else this process's CPUs less one (Ray: cpus_per_worker); pinned memory on CUDA
    num_workers: int | None = bounded(None, ge=0)
    # Training-set augmentation: random crop (zero padding 4) and horizontal flip, drawn per
    # epoch from the seed (HYDRA's and HARP's CIFAR-10 / SVHN setting). null: on for cifar10
    # and svhn, off for every other set. Validation and test data are never augmented.
    augment: bool | None = None
    # Gray images as RGB: a one-channel set's channel is repeated into three identical ones
    # (and its normalisation with it), for models that take three input channels, such as
    # torchvision's. No effect on a set that already has three channels.
    gray_to_rgb: bool = False
    # The data's facts where the data cannot tell them (an import-path set, s2ap.prune's
    # datasets): the class count, and the per-channel normalisation (null: measured on the
    # training set; model.mean/std still override it for the model).
    num_classes: int | None = bounded(None, ge=2)
    mean: tuple[float, ...] | None = None  # per-channel mean, inputs in [0, 1]; null: measured
    std: tuple[float, ...] | None = bounded(None, gt=0)  # per-channel std, with data.mean; null: measured

    def check(self) -> None:
        if (self.mean is None) != (self.std is None) or (
            self.mean is not None and self.std is not None and not 0 < len(self.mean) == len(self.std)
        ):
            raise ConfigError("mean", "data.mean and data.std go together, with one entry per channel each")


@dataclass(frozen=True)
class ModelConfig(Checked):
    # A registered name, torchvision:NAME, timm:NAME or package.module:callable (your own code,
    # called with those of num_classes / in_channels / image_size its signature names, plus kwargs).
    name: str = "cnn"
    # Which layers get scores: "default" lets the model decide (ViT: every linear but the
    # head; any non-registered model: every conv/linear but the final classifier), "all"
    # prunes every conv and linear layer, "all_but_last" keeps the head.
    prune_layers: Literal["default", "all", "all_but_last"] = "default"
    # Module-name patterns (fnmatch: "fc", "head*") of conv/linear layers that stay dense,
    # instead of prune_layers' choice; each must match a layer.
    dense_layers: tuple[str, ...] | None = None
    # Extra keyword arguments of a non-registered model (left out of the hash: a dict has none).
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    checkpoint: str | None = None  # the network's own plain state dict, loaded before pruning
    # Input normalisation in front of the network (inputs stay in [0, 1]); null: the data set's.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = bounded(None, gt=0)  # per channel, with model.mean; null: the data set's

    def check(self) -> None:
        if (self.mean is None) != (self.std is None) or (
            self.mean is not None and self.std is not None and not 0 < len(self.mean) == len(self.std)
        ):
            raise ConfigError("mean", "model.mean and model.std go together, with one entry per channel each")
        if self.dense_layers is not None and self.prune_layers != "default":
            raise ConfigError(
                "dense_layers",
                f"decides which layers stay dense; leave prune_layers at default, got {self.prune_layers!r}",
            )
        if self.dense_layers is not None and not all(p.strip() for p in self.dense_layers):
            raise ConfigError("dense_layers", "patterns must be non-empty module names such as fc or head*")


@dataclass(frozen=True)
class AttackConfig(Checked):
    """L-inf PGD used for training and for per-epoch validation."""

    # L-inf radius on inputs in [0, 1] (8/255, step 2/255, PGD-10: the paper's, Sect. 4.1); also the
    # radius of the final PGD and AutoAttack evaluation
    eps: float = bounded(8 / 255, ge=0)
    step_size: float = bounded(2 / 255, ge=0)  # per PGD step, in the same units as eps
    # PGD steps of the training attack (TRADES' too); validation and test have their own
    # (eval.val_pgd_steps, eval.pgd_steps)
    steps: int = bounded(10, ge=0)
    # start from a random point in the eps-ball (TRADES: a small Gaussian around x); false: from x
    random_start: bool = True


@dataclass(frozen=True)
class ObjectiveConfig(Checked):
    # The training loss: TRADES (Zhang et al., 2019: clean cross-entropy + beta * KL to the
    # attacked point), PGD adversarial training (Madry et al., 2018: cross-entropy on the
    # attacked point), or clean cross-entropy with no attack. The paper trains with TRADES (Sect. 4.1).
    name: Literal["trades", "pgd", "clean"] = "trades"
    beta: float = bounded(6.0, ge=0)  # TRADES trade-off


@dataclass(frozen=True)
class PhaseConfig(Checked):
    epochs: int = bounded(0, ge=0, le=10_000)  # passes over the training set; 0 skips the phase
    lr: float = bounded(0.1, gt=0)  # the learning rate the schedule starts from
    optimizer: Literal["sgd", "adam"] = "sgd"  # SGD with momentum, or Adam (which ignores momentum)
    momentum: float = bounded(0.9, ge=0, lt=1)  # SGD's momentum
    weight_decay: float = bounded(5e-4, ge=0)  # L2 penalty on what the phase trains, in the optimizer
    # Learning rate per epoch: cosine annealing to 0 over the phase's epochs, constant, or
    # step (x0.1 after 50% and again after 75% of the epochs).
    schedule: Literal["cosine", "constant", "step"] = "cosine"


@dataclass(frozen=True)
class PretrainConfig(PhaseConfig):
    epochs: int = bounded(100, ge=0, le=10_000)  # adversarial training of the dense network; 0 skips it
    checkpoint: str | None = None  # a dense state dict to start from instead of training


@dataclass(frozen=True)
class PruneConfig(PhaseConfig):
    epochs: int = bounded(20, ge=0, le=10_000)  # epochs of the mask search (Algorithm 1's loop)
    lr: float = bounded(0.1, gt=0)  # learning rate of the importance scores (and S2AP's step eta)
    weight_decay: float = bounded(1e-4, ge=0)  # on the scores
    method: str = "hydra"  # a registered pruning method: hydra, harp, lwm, rlth or adasap
    sparsity: float = bounded(0.9, gt=0, lt=1)  # fraction of prunable weights removed
    # The scores' start: scaled (HYDRA: sqrt(6 / fan_in) * w / max|w| per layer, so the first
    # mask is layer-wise magnitude pruning), magnitude (|w|) or kaiming (random); lwm and rlth
    # fix their own (magnitude, kaiming).
    score_init: Literal["scaled", "magnitude", "kaiming"] = "scaled"
    # Which scores the search returns: those of the iteration with the lowest training robust
    # loss, taken before that iteration's update (Algorithm 1, lines 13-15), the epoch with the
    # highest validation robust accuracy, or the last epoch.
    best_mask: Literal["train_loss_iter", "val_robust", "last"] = "train_loss_iter"
    mask: str | None = None  # a saved mask to use instead of pruning
    # What a mask entry covers: single weights, or whole output channels (structured). null
    # takes the method's own default (weight for hydra/harp/lwm/rlth, channel for adasap).
    granularity: Literal["weight", "channel"] | None = None
    # Channel pruning only: the target as a FLOPs reduction factor of the compact network
    # (the paper's 4x and 15x, Table 9) instead of prune.sparsity.
    flops_reduction: float | None = bounded(None, gt=1, note="a reduction factor")
    # The probe, an early rung value for a search's scheduler: after each of these pruning
    # epochs (1 = the first) the best mask so far is frozen on a copy of the model, finetuned
    # for probe_epochs with the finetuning optimizer and learning-rate schedule (without AWP)
    # and scored by PGD on every validation point (epochs.parquet: probe_val_pgd_acc). The
    # run itself is unchanged (same scores, weights and random streams); () runs no probe.
    probe_after: tuple[int, ...] = bounded((), ge=1, note="a pruning epoch")
    probe_epochs: int = bounded(1, ge=1, le=1000)  # finetuning epochs of each probe

    def check(self) -> None:
        if len(set(self.probe_after)) != len(self.probe_after) or list(self.probe_after) != sorted(
            self.probe_after
        ):
            raise ConfigError(
                "probe_after", f"expected increasing pruning epochs, got {list(self.probe_after)}"
            )


@dataclass(frozen=True)
class HarpConfig(Checked):
    """HARP (Zhao & Wressnegger, 2023): learned per-layer keep-rates."""

    # each layer's keep-rate stays >= this fraction of the target
    min_rate_fraction: float = bounded(0.1, gt=0, lt=1)
    # per pruned layer, in definition order; () = uniform
    init_rates: tuple[float, ...] = bounded((), gt=0, le=1, note="a keep-rate")
    # HARP's gamma: the penalty weight is (epoch + 1) * penalty_init until an epoch ends within
    # budget, then stays frozen (HARP's code, default 1.0).
    penalty_init: float = bounded(1.0, gt=0)
    # After the search, shift all rates down together until the budget holds (the soft
    # penalty alone may leave the returned mask slightly over the target).
    enforce_budget: bool = True


@dataclass(frozen=True)
class RlthConfig(Checked):
    """Robust lottery tickets (Fu et al., 2021): scores searched in frozen random weights."""

    # The frozen random weights: Kaiming-normal (fan-in), or its signed constant
    # sign(w) * sqrt(2 / fan_in) (Ramanujan et al., 2020); drawn from the run's seed.
    weight_init: Literal["kaiming_normal", "signed_constant"] = "kaiming_normal"


@dataclass(frozen=True)
class AdaSAPConfig(Checked):
    """AdaSAP (Bair et al.): defaults from its Sect. 4.1 (ASAM, rho in [0.01, 2], 10 warm-up
    epochs, rho 2 for the uniform finetuning)."""

    rho_min: float = bounded(0.01, ge=0)  # perturbation radius of the most important neuron
    rho_max: float = bounded(2.0, ge=0)  # perturbation radius of the least important neuron
    finetune_rho: float = bounded(2.0, ge=0)  # uniform radius during finetuning (robustness encouragement)
    adaptive: bool = True  # ASAM's scale-invariant ball (T_w = |w| + eta); false = plain SAM
    eta: float = bounded(0.01, ge=0)  # ASAM's offset in T_w
    criterion: Literal["l2", "l1"] = "l2"  # neuron importance (and pruning saliency)
    warmup_epochs: int = bounded(
        10, ge=1, note="the warm-up primes the network"
    )  # prune epochs before pruning
    prune_every: int = bounded(30, ge=1)  # iterations between pruning steps after the warm-up (Sect. 4.1)

    def check(self) -> None:
        if self.rho_max < self.rho_min:
            raise ConfigError("rho_max", f"must be >= adasap.rho_min ({self.rho_min}), got {self.rho_max}")


@dataclass(frozen=True)
class FinetuneConfig(PhaseConfig):
    # adversarial training of the kept weights, the mask fixed (Algorithm 2); 0 skips it
    epochs: int = bounded(100, ge=0, le=10_000)
    lr: float = bounded(0.01, gt=0)  # the learning rate the schedule starts from
    # AWP on the kept weights (Algorithm 2) within s2ap.gamma * ||w_l||, placed by
    # s2ap.projection / s2ap.ascent, with or without S2AP pruning (true with s2ap.enabled: false
    # is the Orig. + AWP finetuning control). null: on exactly when s2ap.enabled.
    awp: bool | None = None


@dataclass(frozen=True)
class S2APConfig(Checked):
    # S2AP on: after warmup_epochs of the plain method, the mask search minimises the robust
    # loss at perturbed scores (Algorithm 1), and finetuning uses AWP (finetune.awp, on by
    # default with S2AP); false: the plain method
    enabled: bool = False
    gamma: float = bounded(0.001, ge=0)  # layer-wise bound ||z_l|| <= gamma * ||s_l||
    warmup_epochs: int = bounded(5, ge=0)  # pruning epochs of the plain method before S2AP starts
    RENAMED: ClassVar[dict[str, str]] = {"finetune_awp": "finetune.awp"}
    # What the mask search perturbs: the scores (S2AP) or the frozen weights within
    # gamma * ||w_l|| (AWP during pruning, the paper's Table 13 ablation).
    perturb: Literal["scores", "weights"] = "scores"
    # How z is formed (s2ap/sharpness/perturbation.py): "algorithm1" as printed (z kept across
    # iterations, z <- z + eta g / ||g|| with g over all layers, a layer projected only when
    # ||z_l|| > gamma ||s_l||; eta = the phase's lr), "algorithm1_reset" (the same step from
    # z = 0 every iteration), or "surface" (every layer on its ball: gamma ||s_l|| g_l / ||g_l||).
    projection: Literal["algorithm1", "algorithm1_reset", "surface"] = "algorithm1"
    # Where line 6's ascent gradient comes from: "fresh" (Algorithm 1 as printed: the gradient
    # at s, or at s + z_prev) or "previous" (the gradient the previous iteration's update used,
    # at s + z one step earlier: no pass spent on the ascent). Also for AWP in finetuning.
    ascent: Literal["fresh", "previous"] = "fresh"
    # The mask search's direction: "sharpness" (the ascent gradient, S2AP) or "random" (the
    # control: each layer's z turned to a seeded Gaussian direction, its norm kept, so the
    # same budget is spent with no gradient information). Finetuning's AWP always ascends.
    direction: Literal["sharpness", "random"] = "sharpness"

    @property
    def active(self) -> bool:
        """Whether S2AP changes anything at all: enabled, with a positive bound."""
        return self.enabled and self.gamma > 0


@dataclass(frozen=True)
class EvalConfig(Checked):
    RENAMED: ClassVar[dict[str, str]] = {"autoattack_n": "test_points"}
    pgd_steps: int = bounded(50, ge=1)  # PGD steps of the final test evaluation (pgd_acc), at attack.eps
    pgd_restarts: int = bounded(1, ge=1)  # random restarts of that PGD; a point falls at its first success
    # Standard AutoAttack (Croce & Hein, 2020) on the headline points; robust_acc is then
    # AutoAttack's accuracy, else PGD's.
    autoattack: bool = True
    # Test points of the headline: clean, PGD and AutoAttack (when run) all on the first N;
    # None = all. The rest of the test split only feeds the *_full figures.
    test_points: int | None = bounded(None, ge=1)
    val_pgd_steps: int = bounded(10, ge=1)  # PGD steps for the per-epoch validation robust accuracy
    val_limit: int | None = bounded(None, ge=1)  # validation points used per epoch; None = all
    lambda_max_every: int = bounded(0, ge=0)  # power iteration every N pruning iterations; 0 = off
    lambda_max_iters: int = bounded(10, ge=1)  # power-iteration steps per estimate (Eq. 10-11)
    lambda_max_batch: int = bounded(64, ge=1)  # the first N validation points, the same batch each time
    loss_diff_rhos: tuple[float, ...] = bounded((), gt=0)  # e.g. (0.001, 0.0025, 0.005, 0.0075, 0.01)
    loss_diff_steps: int = bounded(20, ge=1)  # APGD steps of the loss-difference ascent (Eq. 12), per rho
    corruption_root: str | None = None  # CIFAR-10-C folder
    corruption_severity: int = bounded(3, ge=1, le=5)  # the CIFAR-10-C severity evaluated
    # Table 5: the pruned model's test accuracy before finetuning (mask_* columns). It ranks no
    # trial: null = on for a single run, off inside a search (set true to measure it there).
    mask_test: bool | None = None


@dataclass(frozen=True)
class ExperimentConfig(Checked):
    # The run's seed: the validation split, initialisation, batch order and attack starts
    seed: int = bounded(0, ge=0, le=2**32 - 1, note="a 32-bit seed, as NumPy takes")
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    # The GPU fast path (s2ap/experiment.py: fast_settings). null = auto: on with CUDA, off on CPU.
    amp: bool | None = None  # bf16 autocast for the attack steps and training (CUDA only)
    channels_last: bool | None = None  # NHWC weights and activations (CUDA only)
    compile: bool = False  # torch.compile of the training model (opt-in until measured to help)
    # Under DDP on CUDA: batch norm with statistics over every rank's batch (SyncBatchNorm), so
    # a DDP run normalises like one process with the global batch; off = each rank's own chunk.
    sync_batchnorm: bool = False
    out_dir: str = "runs/experiment"  # the run folder when s2ap.run gets no --out; not in the config hash
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    s2ap: S2APConfig = field(default_factory=S2APConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    harp: HarpConfig = field(default_factory=HarpConfig)
    rlth: RlthConfig = field(default_factory=RlthConfig)
    adasap: AdaSAPConfig = field(default_factory=AdaSAPConfig)

    def check(self) -> None:
        s, p = self.s2ap, self.prune
        if s.enabled and p.mask is None and s.warmup_epochs >= p.epochs:
            raise ConfigError(
                "s2ap.warmup_epochs",
                f"must be smaller than prune.epochs ({p.epochs}) so S2AP runs at least one epoch, "
                f"got {s.warmup_epochs}",
            )
        if p.probe_after and p.probe_after[-1] > p.epochs:
            raise ConfigError(
                "prune.probe_after",
                f"pruning epochs 1 to prune.epochs ({p.epochs}), got {list(p.probe_after)}",
            )

    @property
    def finetune_awp(self) -> bool:
        """Whether finetuning uses AWP: ``finetune.awp``, or (null) ``s2ap.enabled``."""
        return self.s2ap.enabled if self.finetune.awp is None else self.finetune.awp

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def hash(self) -> str:
        """Content hash of everything that changes the result (not where it is written)."""
        d = self.to_dict()
        d.pop("out_dir", None)
        for key in PROBE_KEYS:  # the probe measures a copy: the run's result is the same
            d["prune"].pop(key, None)
        return stable_hash(d)


def changed(cfg: ExperimentConfig, overrides: Mapping[str, Any] | Iterable[str]) -> ExperimentConfig:
    """Dotted keys replaced; shape and ranges checked. Entry points use
    :func:`s2ap.experiment.with_overrides`, which also checks the registries."""
    return with_changes(cfg, overrides)


def read(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """A config YAML plus ``key=value`` overrides; shape and ranges checked."""
    return build_with(ExperimentConfig, read_yaml_mapping(path, "config"), overrides)


__all__ = [
    "AdaSAPConfig",
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "HarpConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "Phase",
    "PhaseConfig",
    "PretrainConfig",
    "PruneConfig",
    "RlthConfig",
    "S2APConfig",
    "build",
    "changed",
    "parse_override",
    "read",
    "replace",
    "stable_hash",
    "to_dict",
]

"""Typed result tables: explicit pyarrow schemas, numbers stored as numbers.

Two tables describe runs. ``RUN_SCHEMA`` has one row per run (a search calls these
trials): its identity, the config values that define the grid cell, and the final
metrics. ``EPOCH_SCHEMA`` has one row per run per phase epoch with every per-epoch metric.
Every row carries its config hash, seed and the code version. Accuracies are fractions in
[0, 1]; the report shows them as percentages. Every accuracy ``X`` of a run comes with ``X_n``
(the points it was measured on) and ``X_lo`` / ``X_hi`` (its 95% Wilson interval,
:func:`s2ap.stats.wilson`), generated from :data:`ACCURACIES`.

The headline triple ``clean_acc`` / ``pgd_acc`` / ``aa_acc`` (and ``robust_acc``, with
``robust_attack`` naming the attack) is measured on one set of test points; figures on the
whole test set, when AutoAttack ran on fewer points, are the ``*_full`` columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from s2ap import __version__
from s2ap.io import atomic_write
from s2ap.stats import accuracy_interval, describe

# The tables' file names, spelled here only: a run folder holds FINAL_FILE and EPOCHS_FILE,
# a search's folder TRIALS_FILE (one row per trial) and EPOCHS_FILE (every trial's epochs).
FINAL_FILE = "final.parquet"
EPOCHS_FILE = "epochs.parquet"
TRIALS_FILE = "trials.parquet"

# A trials row holds the whole flattened config, one snake_case column per dotted key
# (``s2ap_gamma``, :func:`column_name`; null where the setting does not apply, as ``gamma``).
IDENTITY = [
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
]

# Every accuracy of a run row, each with its points and 95% interval (see the module doc).
ACCURACIES = {
    "clean_acc": "headline: clean, on the headline test points",
    "pgd_acc": "headline: PGD (eval.pgd_steps), on the same points",
    "aa_acc": "headline: AutoAttack on the same points; null when not run",
    "robust_acc": "headline: AutoAttack when run, else PGD (robust_attack says which)",
    "clean_acc_full": "clean on every test point (test_limit)",
    "pgd_acc_full": "PGD on every test point",
    "mask_clean_acc": "pruned model before finetuning, every test point",
    "mask_robust_acc": "the same, under PGD (mask_robust_attack)",
    "corruption_acc": "CIFAR-10-C mean over corruptions; n = images per corruption",
    "final_val_clean_acc": "validation split at the end of the run: what selection reads",
    "final_val_pgd_acc": "validation PGD (eval.val_pgd_steps) at the end of the run",
}


def _accuracy_fields(name: str) -> list[pa.Field]:
    return [
        pa.field(name, pa.float64()),
        pa.field(f"{name}_n", pa.int64()),  # points measured
        pa.field(f"{name}_lo", pa.float64()),  # 95% Wilson interval
        pa.field(f"{name}_hi", pa.float64()),
    ]


RUN_SCHEMA = pa.schema(
    IDENTITY
    + [
        pa.field("model", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("method", pa.string()),
        pa.field("granularity", pa.string()),  # weight | channel
        pa.field("perturb", pa.string()),  # what S2AP's mask search perturbs: scores | weights
        pa.field("flops_reduction_target", pa.float64()),  # channel pruning's FLOPs target
        pa.field("objective", pa.string()),
        pa.field("sparsity", pa.float64()),
        pa.field("s2ap", pa.bool_()),
        pa.field("gamma", pa.float64()),
        pa.field("warmup_epochs", pa.int64()),
        pa.field("prune_epochs", pa.int64()),
        # s2ap.projection (null when neither S2AP nor AWP finetuning is on)
        pa.field("projection", pa.string()),
        # s2ap.ascent: fresh | previous (null when neither S2AP nor AWP finetuning is on)
        pa.field("ascent", pa.string()),
        # s2ap.direction: sharpness | random (the control; null when S2AP is off)
        pa.field("direction", pa.string()),
        pa.field("finetune_awp", pa.bool_()),  # AWP finetuning on (finetune.awp, null resolved)
        pa.field("best_mask", pa.string()),  # prune.best_mask (null when no mask search chooses)
        pa.field("augment", pa.bool_()),  # training-set crop + flip
        pa.field("adasap_prune_every", pa.int64()),  # AdaSAP's pruning interval in iterations
        pa.field("amp", pa.bool_()),  # bf16 autocast used (null: auto, in a trial that never ran)
        pa.field("channels_last", pa.bool_()),  # NHWC memory format used
        pa.field("compile", pa.bool_()),  # torch.compile of the training model
        # Where the numbers came from (s2ap.experiment.provenance): the same seed moves between
        # machines, so a row says which kernels produced it.
        pa.field("torch_version", pa.string()),
        pa.field("device_name", pa.string()),  # the GPU's name, or "cpu AVX2" (torch's CPU capability)
        pa.field("threads", pa.int64()),  # torch.get_num_threads()
        pa.field("deterministic", pa.bool_()),  # torch.are_deterministic_algorithms_enabled()
        pa.field("status", pa.string()),  # ok | error
        pa.field("error", pa.string()),
        pa.field("density", pa.float64()),
        pa.field("compact_params", pa.int64()),  # channel pruning: the compact network's size
        pa.field("compact_flops", pa.int64()),
        pa.field("flops_reduction", pa.float64()),  # dense FLOPs / compact FLOPs, as measured
        pa.field("robust_attack", pa.string()),  # what robust_acc is: autoattack | pgd
        pa.field("mask_robust_attack", pa.string()),  # what mask_robust_acc is: pgd
        pa.field("pgd_steps", pa.int64()),  # PGD steps of pgd_acc and mask_robust_acc (eval.pgd_steps)
    ]
    + [f for name in ACCURACIES for f in _accuracy_fields(name)]
    + [
        pa.field("best_mask_epoch", pa.int64()),  # pruning epoch the returned mask comes from
        pa.field("best_mask_before_s2ap", pa.bool_()),  # S2AP on, but the mask predates it
        pa.field("hamming", pa.list_(pa.float64())),  # per pruning epoch, vs the first mask
        pa.field("lambda_max", pa.list_(pa.float64())),  # per pruning epoch (mean), may be empty
        pa.field("loss_diff_rho", pa.list_(pa.float64())),
        pa.field("loss_diff", pa.list_(pa.float64())),
        pa.field("gradient_masking", pa.bool_()),
        pa.field("wall_time_s", pa.float64()),
    ]
)

EPOCH_SCHEMA = pa.schema(
    IDENTITY
    + [
        pa.field("phase", pa.string(), nullable=False),  # pretrain | prune | finetune
        pa.field("epoch", pa.int64(), nullable=False),  # 0-based within the phase
        pa.field("train_loss", pa.float64()),
        pa.field("train_acc", pa.float64()),
        pa.field("val_clean_acc", pa.float64()),
        pa.field("val_clean_acc_n", pa.int64()),  # validation points measured
        pa.field("val_pgd_acc", pa.float64()),
        pa.field("val_pgd_acc_n", pa.int64()),
        pa.field("hamming", pa.float64()),  # prune phase: distance to the first mask
        pa.field("lambda_max", pa.float64()),  # prune phase, when measured
        pa.field("s2ap_active", pa.bool_()),
        # Share of iterations where the perturbation changed the update; S2AP with a gamma
        # too small to flip any mask entry or score sign changes nothing.
        pa.field("perturbed_frac", pa.float64()),
        # Share of iterations that took Algorithm 1's ascent gradient at s + z_prev (the carried
        # z moved a mask entry or a score sign; their pass at s was forward only), else at s.
        pa.field("ascent_pass_frac", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("time_s", pa.float64()),
        # prune.probe_after: the best mask so far finetuned on a copy (s2ap.rung_probe)
        pa.field("probe_val_pgd_acc", pa.float64()),
        pa.field("probe_val_pgd_acc_n", pa.int64()),
        pa.field("probe_time_s", pa.float64()),
    ]
)


# One row per headline test point of a run (``predictions.parquet`` beside ``final.parquet``;
# a search's ``predictions.parquet`` beside ``trials.parquet`` adds the trial's id): what the
# paired differences of the report are computed from.
PREDICTIONS_FILE = "predictions.parquet"
PREDICTIONS = "predictions"  # the key of those outcomes in s2ap.evaluate.evaluate's result
PREDICTION_SCHEMA = pa.schema(
    IDENTITY
    + [
        pa.field("index", pa.int64(), nullable=False),  # position in the test split (after test_limit)
        pa.field("label", pa.int64(), nullable=False),
        pa.field("clean", pa.bool_(), nullable=False),  # classified correctly
        pa.field("pgd", pa.bool_(), nullable=False),  # still correct under PGD (pgd_acc's attack)
        pa.field("aa", pa.bool_()),  # still correct under AutoAttack; null when not run
    ]
)


def prediction_rows(identity: Mapping[str, Any], columns: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The rows of ``predictions.parquet`` from :func:`s2ap.evaluate.evaluate`'s ``predictions``."""
    if not columns:
        return []
    head = {f.name: identity.get(f.name) for f in IDENTITY}
    aa = columns.get("aa")
    return [
        {**head, "index": i, "label": y, "clean": c, "pgd": p, "aa": None if aa is None else aa[k]}
        for k, (i, y, c, p) in enumerate(
            zip(columns["index"], columns["label"], columns["clean"], columns["pgd"], strict=True)
        )
    ]


def write_run(folder: Path, final: Mapping[str, Any], predictions: Mapping[str, Any] | None) -> Path:
    """A finished run's ``final.parquet`` row and its ``predictions.parquet`` beside it."""
    write_rows(prediction_rows(final, predictions), PREDICTION_SCHEMA, folder / PREDICTIONS_FILE)
    return write_rows([final], RUN_SCHEMA, folder / "final.parquet")


class Columns:
    """A schema's column names as attributes: ``RUN.robust_acc == "robust_acc"``.

    Code that reads a table names its columns through this instead of string literals, so a
    name the schema lacks is an AttributeError where it is written (at import, for a name
    bound at module level) rather than a KeyError deep inside a report.
    """

    def __init__(self, schema: pa.Schema) -> None:
        for name in schema.names:
            object.__setattr__(self, name, name)

    def __getattr__(self, name: str) -> str:
        # Only reached for a name that is not a column; dunder probes (copy, pickle) get a
        # plain AttributeError.
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"no column {name!r} in the schema (columns: {', '.join(self)})")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Columns is read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(vars(self))

    def __contains__(self, name: object) -> bool:
        return name in vars(self)

    def __repr__(self) -> str:
        return f"Columns({', '.join(self)})"


RUN = Columns(RUN_SCHEMA)
EPOCH = Columns(EPOCH_SCHEMA)
PREDICTION = Columns(PREDICTION_SCHEMA)


def column_name(key: str) -> str:
    """The table column of a dotted config key: ``column_name("s2ap.gamma") == "s2ap_gamma"``."""
    return key.replace(".", "_")


def with_column_names(table: pa.Table) -> pa.Table:
    """A table written when config columns were dotted (``s2ap.gamma``), under today's names;
    a table with both spellings of one column is refused with one line."""
    names = [column_name(n) for n in table.column_names]
    if names == table.column_names:
        return table
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"table has dotted and snake_case copies of the columns {', '.join(twice)}")
    return table.rename_columns(names)


def with_intervals(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with ``X_lo`` / ``X_hi`` filled for every accuracy that has a value and an ``X_n``."""
    out = dict(row)
    for name in ACCURACIES:
        value, n = out.get(name), out.get(f"{name}_n")
        if value is None or not n:
            out[f"{name}_lo"] = out[f"{name}_hi"] = None
            continue
        interval = accuracy_interval(float(value), int(n))
        out[f"{name}_lo"], out[f"{name}_hi"] = interval.lo, interval.hi
    return out


def describe_accuracy(row: Mapping[str, Any], name: str, label: str) -> str:
    """A row's accuracy ``name`` as the CLIs print it: ``AutoAttack 0.81 [0.57, 0.93] n=16``."""
    return describe(label, row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi"), row.get(f"{name}_n"))


def format_gamma(gamma: float) -> str:
    """S2AP's gamma as every table and page shows it: 4 significant digits (``0.0125``)."""
    return f"{gamma:.4g}"


def gamma_choice(gamma: float, tried: int) -> str:
    """The note beside a selected S2AP result: which gamma, chosen among how many."""
    return f" [γ={format_gamma(gamma)} of {tried}]"


def describe_measured(label: str, value: Any, n: Any) -> str:
    """An accuracy known only by its value and points (a live report, an epoch's validation),
    printed like :func:`describe_accuracy`, its Wilson interval computed here."""
    if value is None or value != value or not n:
        return describe(label, value, None, None, None)
    interval = accuracy_interval(float(value), int(n))
    return describe(label, float(value), interval.lo, interval.hi, int(n))


def describe_validation(row: Mapping[str, Any]) -> str:
    """An epoch row's validation figures: ``val clean 0.96 [0.86, 0.99] n=48, val PGD ...``."""
    clean = describe_measured("val clean", row.get("val_clean_acc"), row.get("val_clean_acc_n"))
    return f"{clean}, {describe_measured('val PGD', row.get('val_pgd_acc'), row.get('val_pgd_acc_n'))}"


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref:"):
            ref_file = head.parent / ref.split(" ", 1)[1]
            sha = ref_file.read_text().strip() if ref_file.exists() else ""
        else:
            sha = ref
        return f"{__version__}+{sha[:10]}" if sha else __version__
    except OSError:
        return __version__


def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table with exactly ``schema``'s columns (missing values are null)."""
    rows = list(rows)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_rows(rows: Iterable[Mapping[str, Any]], schema: pa.Schema, path: str | Path) -> Path:
    return write_table(to_table(rows, schema), path)

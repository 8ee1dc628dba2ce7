"""Typed result tables: explicit pyarrow schemas, numbers stored as numbers.

Two tables describe runs. ``RUN_SCHEMA`` has one row per run (a search calls these
trials): its identity, the config values that define the grid cell, and the final
metrics. ``EPOCH_SCHEMA`` has one row per run per phase epoch with every per-epoch metric.
Every row carries its config hash, seed and the code version. Accuracies are fractions in
[0, 1]; the report shows them as percentages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from s2ap import __version__
from s2ap.io import atomic_write

IDENTITY = [
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
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
        pa.field("projection", pa.string()),  # s2ap.projection (null when S2AP is off)
        pa.field("best_mask", pa.string()),  # prune.best_mask (null when no mask search chooses)
        pa.field("augment", pa.bool_()),  # training-set crop + flip
        pa.field("adasap_prune_every", pa.int64()),  # AdaSAP's pruning interval in iterations
        pa.field("status", pa.string()),  # ok | error
        pa.field("error", pa.string()),
        pa.field("density", pa.float64()),
        pa.field("compact_params", pa.int64()),  # channel pruning: the compact network's size
        pa.field("compact_flops", pa.int64()),
        pa.field("flops_reduction", pa.float64()),  # dense FLOPs / compact FLOPs, as measured
        pa.field("clean_acc", pa.float64()),
        pa.field("pgd_acc", pa.float64()),
        pa.field("aa_acc", pa.float64()),  # null when AutoAttack was not run
        pa.field("robust_acc", pa.float64()),  # AutoAttack when run, else PGD
        pa.field("mask_clean_acc", pa.float64()),  # pruned model before finetuning
        pa.field("mask_robust_acc", pa.float64()),
        pa.field("corruption_acc", pa.float64()),
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
        pa.field("val_pgd_acc", pa.float64()),
        pa.field("hamming", pa.float64()),  # prune phase: distance to the first mask
        pa.field("lambda_max", pa.float64()),  # prune phase, when measured
        pa.field("s2ap_active", pa.bool_()),
        # Share of iterations where the perturbation changed the update; S2AP with a gamma
        # too small to flip any mask entry or score sign changes nothing.
        pa.field("perturbed_frac", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("time_s", pa.float64()),
    ]
)


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

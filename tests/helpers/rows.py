"""One finished run's result row, as the tables hold it, for tests that build tables by hand.

Every field a report, a study script or the web page needs is set to a plain value (HYDRA on
the small CNN, digits, 90% sparsity, status ok, clean 90%, robust with PGD); a test states only
what it is about: ``result_row(s2ap=True, seed=2, robust_acc=0.55)``.
"""

from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = {
    "code_version": "test",
    "model": "cnn",
    "dataset": "digits",
    "method": "hydra",
    "sparsity": 0.9,
    "status": "ok",
    "clean_acc": 0.9,
    "robust_attack": "pgd",
}


def result_row(**fields: Any) -> dict[str, Any]:
    """:data:`BASE` with ``fields`` set (they win)."""
    return {**BASE, **fields}

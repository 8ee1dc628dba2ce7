"""s2ap: score-space sharpness-aware adversarial pruning (S2AP) and its baselines.

The core package is pure PyTorch: it never imports Ray or FastAPI. ``s2ap.prune``,
``s2ap.PruneResult`` and ``s2ap.load_compact`` (:mod:`s2ap.api`) are loaded on first use,
so ``import s2ap`` stays light and the package root imports nothing above it.
"""

import importlib
import logging
from typing import Any

__version__ = "0.1.0"
__all__ = ["PruneResult", "load_compact", "prune"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("s2ap.api"), name)
    raise AttributeError(f"module 's2ap' has no attribute {name!r}")

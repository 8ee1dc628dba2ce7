"""Pruning methods. Importing this package fills :data:`METHODS` with every method: each
method module registers its class, and this package imports them all."""

from s2ap.pruning import adasap, harp, methods  # noqa: F401 - each registers its method
from s2ap.pruning.base import METHODS, PruningMethod, build_method

__all__ = ["METHODS", "PruningMethod", "build_method"]

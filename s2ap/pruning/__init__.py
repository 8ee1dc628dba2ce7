"""Pruning methods: the registry filled with every method (import this package for it)."""

from s2ap.pruning.methods import METHODS, PruningMethod, build_method

__all__ = ["METHODS", "PruningMethod", "build_method"]

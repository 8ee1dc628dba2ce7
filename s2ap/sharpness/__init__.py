"""Sharpness-aware perturbations: S2AP in score space, AWP and AdaSAP in weight space, all
one SAM-shaped :class:`Perturbation`, and the schedule that says which wraps each epoch."""

from s2ap.sharpness.perturbation import LayerwisePerturbation, Perturbation
from s2ap.sharpness.schedule import SharpnessSchedule
from s2ap.sharpness.scores import score_perturbation
from s2ap.sharpness.weights import (
    AdaptiveWeightPerturbation,
    SearchWeightPerturbation,
    adaptive_radii,
    neuron_importance,
    search_weight_perturbation,
    weight_perturbation,
)

__all__ = [
    "AdaptiveWeightPerturbation",
    "LayerwisePerturbation",
    "Perturbation",
    "SearchWeightPerturbation",
    "SharpnessSchedule",
    "adaptive_radii",
    "neuron_importance",
    "score_perturbation",
    "search_weight_perturbation",
    "weight_perturbation",
]

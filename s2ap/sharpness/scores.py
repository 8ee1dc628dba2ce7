"""S2AP: the sharpness-aware perturbation in score space (Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from s2ap.layers import ScoredLayer
from s2ap.sharpness.perturbation import LayerwisePerturbation
from s2ap.sharpness.projection import DEFAULT_PROJECTION


def score_perturbation(
    layers: Sequence[ScoredLayer],
    gamma: float,
    projection: str = DEFAULT_PROJECTION,
    eta: float = 0.0,
    ascent: str = "fresh",
) -> LayerwisePerturbation:
    """S2AP: perturb each layer's scores within ``gamma * ||s_l||`` (``projection``, the
    ascent step ``eta`` and where the ascent gradient comes from, ``ascent``:
    :class:`~s2ap.sharpness.perturbation.LayerwisePerturbation`).

    Under the straight-through estimator the network sees the scores only through the
    binary mask, and the score gradient is ``dL/dW * w * sign(s)``. When ``s + z`` keeps
    every layer's mask and every score's sign, the gradient at ``s + z`` is exactly the
    gradient at ``s``: the perturbation changes nothing and the second forward/backward is
    skipped. How often that happens is reported per epoch (``perturbed_frac``), which says
    whether gamma is large enough to matter at all.
    """
    scores = [layer.scores for layer in layers]

    def fingerprint() -> list[Tensor]:
        with torch.no_grad():
            out = [layer.current_mask().detach().clone() for layer in layers]
            return out + [torch.signbit(s) for s in scores]

    return LayerwisePerturbation(
        scores,
        gamma,
        reference=lambda i: scores[i].detach(),
        fingerprint=fingerprint,
        projection=projection,
        eta=eta,
        ascent=ascent,
    )

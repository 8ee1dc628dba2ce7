"""Scoring any network by module swap: each ``nn.Conv2d`` / ``nn.Linear`` becomes its scored
twin in place, so the module tree, the parameter names and the weight tensors themselves stay
the user's.

The twin is the same module object with its class changed to
:class:`~s2ap.layers.MaskedConv2d` / :class:`~s2ap.layers.MaskedLinear` and a ``scores``
parameter and ``mask`` buffer added: hooks, shared modules and every reference the user's
code holds keep working, and ``state_dict()`` is the user's plus ``*.scores`` / ``*.mask``.
Only layers whose class is exactly ``nn.Conv2d`` / ``nn.Linear``, or a subclass that keeps
their forward, are swapped; a subclass with its own forward (weight standardisation, "same"
padding) would bypass the mask, so it stays dense and is named in a warning.

Which layers stay dense is decided by module-name patterns (``fnmatch``: ``fc``, ``head*``,
``layer4.*.conv2``); by default the final classifier (the last conv/linear layer in
definition order) stays dense.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from s2ap.errors import ConfigError
from s2ap.layers import Granularity, MaskedConv2d, MaskedLinear, ScoredLayer

log = logging.getLogger(__name__)

# plain class -> (scored twin, the methods a subclass must not override to be swapped)
_TWINS: dict[type[nn.Module], tuple[type[nn.Module], tuple[str, ...]]] = {
    nn.Conv2d: (MaskedConv2d, ("forward", "_conv_forward")),
    nn.Linear: (MaskedLinear, ("forward",)),
}


def _plain_base(module: nn.Module) -> type[nn.Module] | None:
    """``nn.Conv2d`` / ``nn.Linear`` when ``module`` is one whose forward is theirs."""
    if isinstance(module, ScoredLayer):
        return None
    for base, (_, methods) in _TWINS.items():
        if isinstance(module, base) and all(getattr(type(module), m) is getattr(base, m) for m in methods):
            return base
    return None


def prunable_layers(net: nn.Module) -> list[str]:
    """Names of the conv/linear layers a swap can score, in definition order."""
    return [name for name, m in net.named_modules() if name and _plain_base(m) is not None]


def dense_matches(names: Sequence[str], patterns: Sequence[str]) -> set[str]:
    """The layer names that ``patterns`` keep dense; a pattern matching none is an error."""
    kept: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatchcase(n, pattern)}
        if not hits:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ConfigError(
                "model.dense_layers",
                f"pattern {pattern!r} matches no conv or linear layer of the model; its layers: {shown}",
            )
        kept |= hits
    return kept


def score_modules(
    net: nn.Module,
    granularity: Granularity = "weight",
    dense_layers: Sequence[str] | None = None,
    keep_head_dense: bool = True,
) -> list[str]:
    """Swap every conv/linear layer of ``net`` for its scored twin, in place; returns the
    names of the scored layers.

    ``dense_layers``: patterns of layers that stay dense (None: only the final classifier
    when ``keep_head_dense``). Raises :class:`ConfigError` when the model has no conv/linear
    layer, a pattern matches nothing, or nothing would be left to prune.
    """
    names = prunable_layers(net)
    skipped = [
        f"{n} ({type(m).__name__})"
        for n, m in net.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and not isinstance(m, ScoredLayer) and n not in names
    ]
    if skipped:
        log.warning(
            "layers with their own forward stay dense (a mask would be bypassed): %s", ", ".join(skipped)
        )
    if not names:
        raise ConfigError(
            "model.name",
            f"{type(net).__name__} has no nn.Conv2d or nn.Linear layer to prune",
        )
    if dense_layers is not None:
        dense = dense_matches(names, dense_layers)
    else:
        dense = {names[-1]} if keep_head_dense else set()
    scored = [n for n in names if n not in dense]
    if not scored:
        raise ConfigError(
            "model.dense_layers",
            f"every conv and linear layer stays dense ({', '.join(sorted(dense))}): nothing is left to prune",
        )
    for name in scored:
        module = net.get_submodule(name)
        twin, _ = _TWINS[_plain_base(module)]  # type: ignore[index]
        module._plain_class = type(module)  # for unscore_modules
        module.__class__ = twin
        module._init_scoring(granularity)  # type: ignore[operator]
    log.info("scored %d layers; dense: %s", len(scored), ", ".join(sorted(dense)) or "none")
    return scored


# What _init_scoring adds to a layer besides the ``scores`` parameter and ``mask`` buffer.
_SCORING_ATTRIBUTES = ("granularity", "keep", "mode", "mask_fn", "_cache", "channel_gate", "gate_followers")


def unscore_modules(net: nn.Module) -> list[str]:
    """Undo :func:`score_modules` in place: every scored layer gets its own class back and
    loses its scores and mask, and the forward hooks a method added on them (marked
    ``scoring_hook``) go (load the pruned weights afterwards, e.g. from
    :func:`s2ap.models.export_state_dict`); returns the names of the layers restored."""
    restored = []
    for name, module in net.named_modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "scoring_hook", False):  # a method's hook on the scores (channel gates)
                del module._forward_hooks[key]
        if not isinstance(module, ScoredLayer):
            continue
        plain = module.__dict__.pop("_plain_class", None)
        if plain is None:
            plain = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
        module._parameters.pop("scores", None)
        module._buffers.pop("mask", None)
        for attribute in _SCORING_ATTRIBUTES:
            module.__dict__.pop(attribute, None)
        module.__class__ = plain
        restored.append(name)
    return restored

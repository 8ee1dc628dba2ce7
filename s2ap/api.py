"""Pruning a model object from Python: ``s2ap.prune(model, train, val=..., test=...)``.

The same run as ``python -m s2ap.run`` (:class:`~s2ap.pipeline.Pipeline`: pretrain, prune,
finetune, evaluate; the same run folder, progress bars and resume), on a network and data
sets the caller already has in hand instead of ones the config names:

- ``model`` is scored by module swap (:mod:`s2ap.models.swap`): the same object, its own class
  and module tree; afterwards its layers are plain again and hold the pruned weights.
- ``train`` / ``val`` / ``test`` are datasets (or DataLoaders) of ``(image, label)``, the image
  a float ``C x H x W`` tensor in [0, 1]; without ``val`` it is split off ``train`` as the
  CLI does (``data.val_fraction``, drawn from the seed). The class count is the data's
  (``classes``, ``targets``, a TensorDataset's labels), ``data.num_classes`` or the model's
  output width; the normalisation ``data.mean``/``std`` or measured on ``train``.
- ``config`` is the CLI's schema (a mapping, dotted keys allowed, or a YAML path), checked
  field by field with the same one-line errors, less ``model.name`` and ``data.name``: those
  are the objects'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from s2ap.coerce import build_with
from s2ap.config import ExperimentConfig
from s2ap.data import Splits, split
from s2ap.errors import ConfigError
from s2ap.experiment import check_checkpoint, check_method
from s2ap.io import read_yaml_mapping
from s2ap.models import export_masks, export_state_dict
from s2ap.models.swap import unscore_modules
from s2ap.pipeline import Pipeline

log = logging.getLogger(__name__)

Data = Dataset | DataLoader


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` returns; everything in it is also in ``run_dir``.

    ``model``: the caller's object, plain layers, pruned weights (zeros where the mask is 0).
    ``masks``: one 0/1 tensor per pruned layer, keyed like ``model.state_dict()``
    (``"conv1.weight"``), as ``masks.pt``. ``metrics``: the ``final.parquet`` row (every
    accuracy with its ``_n`` points and 95% interval ``_lo``/``_hi``). ``epochs``: the
    ``epochs.parquet`` table, one row per trained epoch.
    """

    model: nn.Module
    masks: dict[str, Tensor]
    metrics: dict[str, Any]
    epochs: pd.DataFrame
    run_dir: Path


def prune(
    model: nn.Module,
    train: Data,
    *,
    val: Data | None = None,
    test: Data | None = None,
    config: Mapping[str, Any] | str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> PruneResult:
    """Prune ``model`` adversarially on ``train``, report on ``test``; see the module docstring.

    ``run_dir``: the run folder (default: the config's ``out_dir``). ``resume``: continue the
    run saved there (same config, same model class). ``on_epoch``: called with each epoch's
    row of ``epochs.parquet``. If the run fails, ``model`` gets its own layer classes back
    with the weights training had reached.
    """
    if test is None:
        raise ConfigError("test", "give a test set: the reported accuracies are measured on it")
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"must be a torch nn.Module, got a {type(model).__name__}")
    unscore_modules(model)  # a model left scored by an interrupted call starts plain again
    cfg = _config(config, model, train)
    folder = Path(run_dir if run_dir is not None else cfg.out_dir)
    state = folder / "state.pt"
    if resume and not state.is_file():
        raise ConfigError("resume", f"no saved state at {state}")
    splits = _splits(model, train, val, test, cfg)
    reporter = None if on_epoch is None else (lambda row, _path: on_epoch(row))
    try:
        resume_from = state if resume else None
        pipeline = Pipeline(cfg, folder, reporter, resume_from, progress, splits=splits, net=model)
        pipeline.run()
        pruned, masks = export_state_dict(pipeline.model), export_masks(pipeline.model)
    finally:
        unscore_modules(model)
    model.load_state_dict(pruned, strict=True)
    model.eval()
    epochs = folder / "epochs.parquet"
    return PruneResult(
        model=model,
        masks=masks,
        metrics=pq.read_table(folder / "final.parquet").to_pylist()[0],
        epochs=pd.read_parquet(epochs) if epochs.is_file() else pd.DataFrame(),
        run_dir=folder,
    )


def _config(config: Mapping[str, Any] | str | Path | None, model: nn.Module, train: Data) -> ExperimentConfig:
    """The CLI's schema, with the model's and the data's names from the objects."""
    if isinstance(config, str | Path):
        raw = read_yaml_mapping(config, "config")
    elif isinstance(config, Mapping) or config is None:
        raw = dict(config or {})
    else:
        raise ConfigError("config", f"a mapping or the path of a YAML file, got a {type(config).__name__}")
    for section, key in (("model", "name"), ("data", "name"), ("model", "kwargs")):
        if _sets(raw, section, key):
            raise ConfigError(f"{section}.{key}", "comes from the objects given to s2ap.prune; leave it out")
    nested = {k: v for k, v in raw.items() if "." not in str(k)}
    cfg = build_with(ExperimentConfig, nested, {k: v for k, v in raw.items() if "." in str(k)})
    cls = type(model)
    data = replace(cfg.data, name=type(_dataset(train, "train")).__name__)
    if isinstance(train, DataLoader) and train.batch_size and not _sets(raw, "data", "batch_size"):
        data = replace(data, batch_size=train.batch_size)
    cfg = replace(cfg, model=replace(cfg.model, name=f"{cls.__module__}:{cls.__qualname__}"), data=data)
    check_checkpoint(cfg)
    return check_method(cfg)


def _sets(raw: Mapping[str, Any], section: str, key: str) -> bool:
    nested = raw.get(section)
    return f"{section}.{key}" in raw or (isinstance(nested, Mapping) and key in nested)


def _dataset(data: Data, field: str) -> Dataset:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ConfigError(
            field, f"must be a Dataset or DataLoader of (image, label), got a {type(data).__name__}"
        )
    return dataset


def _splits(model: nn.Module, train: Data, val: Data | None, test: Data, cfg: ExperimentConfig) -> Splits:
    full_train = _dataset(train, "train")
    given_val = None if val is None else _dataset(val, "val")
    width = _output_width(model, full_train)
    return split(full_train, given_val, _dataset(test, "test"), cfg.data, cfg.seed, width, field="train")


def _output_width(model: nn.Module, dataset: Dataset) -> int | None:
    """The model's logits per input (its class count), from one training image; None if the
    model does not run on it (the data's own count, or data.num_classes, may still do)."""
    try:
        x = dataset[0][0]
    except Exception:  # the split names what is wrong with the items
        return None
    if not isinstance(x, Tensor):
        return None
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.unsqueeze(0).to(next(model.parameters()).device))
    except Exception:  # the build reports it on the data's shape, in one line
        return None
    finally:
        model.train(training)
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.dim() == 2 else None


def load_compact(path: str | Path) -> nn.Module:
    """The compact network of a channel-pruned run (``pruned_compact.pt``) on the CPU, in eval mode.

    The file is a pickled module (the smaller network has its own layer shapes, so no plain
    class rebuilds it from a state dict): loading runs the unpickler with
    ``weights_only=False``, which can execute code. Load only files you trust, in an
    environment that imports the model's own classes (and s2ap's). Inputs are in [0, 1]: the
    normalisation is part of the network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compact network at {path}")
    net = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(net, nn.Module):
        raise ValueError(f"{path} holds a {type(net).__name__}, not a network")
    return net.eval()

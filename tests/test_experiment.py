"""What follows from a config alone: registry checks, which phases train, the pretraining
key, and the identity columns every result row carries."""

from __future__ import annotations

import pytest

from s2ap.config import ConfigError
from s2ap.experiment import fast_settings, from_dict, identity, phases, pretrain_key, with_overrides


def test_which_phases_train_follows_the_method_and_the_inputs_given() -> None:
    cfg = from_dict({"pretrain": {"epochs": 3}, "prune": {"epochs": 4}, "finetune": {"epochs": 5}})
    p = phases(cfg)
    assert (p.pretrain, p.prune, p.finetune) == (3, 4, 5)
    assert phases(with_overrides(cfg, {"pretrain.checkpoint": "dense.pt"})).pretrain == 0
    assert phases(with_overrides(cfg, {"prune.mask": "m.pt"})).prune == 0
    lwm = phases(with_overrides(cfg, {"prune.method": "lwm"}))
    assert (lwm.pretrain, lwm.prune, lwm.finetune) == (3, 0, 5)
    rlth = phases(with_overrides(cfg, {"prune.method": "rlth"}))
    assert (rlth.pretrain, rlth.prune, rlth.finetune) == (0, 4, 0) and rlth.after_pretraining == 4


def test_pretrain_key_ignores_everything_after_pretraining() -> None:
    cfg = from_dict({})
    same = with_overrides(
        cfg, {"s2ap.enabled": True, "s2ap.gamma": 0.1, "prune.sparsity": 0.5, "finetune.lr": 0.1}
    )
    assert pretrain_key(cfg) == pretrain_key(same)
    assert pretrain_key(cfg) != pretrain_key(with_overrides(cfg, {"pretrain.epochs": 7}))
    assert pretrain_key(cfg) != pretrain_key(with_overrides(cfg, {"seed": 1}))


def test_identity_nulls_s2aps_knobs_when_it_is_off() -> None:
    off = identity(from_dict({"s2ap": {"gamma": 0.5}}))
    assert (
        off["s2ap"] is False
        and off["gamma"] is None
        and off["warmup_epochs"] is None
        and off["perturb"] is None
    )
    on = identity(from_dict({"s2ap": {"enabled": True, "gamma": 0.5}}))
    assert on["gamma"] == 0.5 and on["warmup_epochs"] == 5 and on["perturb"] == "scores"
    assert identity(from_dict({"prune": {"method": "adasap"}}))["granularity"] == "channel"
    assert on["config_hash"] == from_dict({"s2ap": {"enabled": True, "gamma": 0.5}}).hash()


def test_the_fast_path_is_on_with_cuda_off_on_cpu_and_the_row_records_what_ran() -> None:
    auto = from_dict({})
    assert fast_settings(auto, "cuda") == {"amp": True, "channels_last": True, "compile": False}
    forced = from_dict({"amp": True, "channels_last": True, "compile": True})
    assert fast_settings(forced, "cpu") == {"amp": False, "channels_last": False, "compile": True}
    assert fast_settings(from_dict({"amp": False}), "cuda")["amp"] is False
    row = identity(auto, "cuda")
    assert (row["amp"], row["channels_last"], row["compile"]) == (True, True, False)
    configured = identity(auto)  # a trial that never ran: what was asked for, null = auto
    assert (configured["amp"], configured["channels_last"], configured["compile"]) == (None, None, False)
    assert auto.hash() != forced.hash()


def test_registry_checks_happen_on_every_derived_config() -> None:
    cfg = from_dict({})
    with pytest.raises(ConfigError) as info:
        with_overrides(cfg, {"prune.method": "lwm", "s2ap.enabled": True})
    assert info.value.field == "s2ap.enabled"
    with pytest.raises(ConfigError) as info:
        with_overrides(cfg, {"data.name": "mnist"})
    assert info.value.field == "data.name" and "digits" in info.value.message

"""Typed configuration: defaults written once, traced hyperparameters, validation before compiling."""

import dataclasses
import importlib.util

import numpy as np
import pytest

from fedmix_jax.config import (HParams, RoundConfig, build_round_config, check_can_learn,
                               validate_hparams)
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL
from fedmix_jax.errors import ConfigError
from fedmix_jax.pseudo_labels import SelectionConfig
from fedmix_jax.strategies import get_strategy


def load(name):
    spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_config_files_give_the_typed_defaults():
    cfg = load("synthetic")
    rc = build_round_config(cfg)
    defaults = RoundConfig()
    for f in dataclasses.fields(RoundConfig):
        if f.name in ("strategy", "batch_size", "executor"):
            continue
        assert getattr(rc, f.name) == getattr(defaults, f.name), f.name
    assert rc.strategy.selection == SelectionConfig()
    assert rc.batch_size == cfg.train.batch_size and rc.executor == "map"


def test_traced_hyperparameters_take_no_part_in_the_compiled_identity():
    a = RoundConfig(lam=10.0, beta=3.0, learning_rate=1e-3)
    b = RoundConfig(lam=0.5, beta=1.5, learning_rate=3e-3)
    assert a == b and hash(a) == hash(b)
    assert a != RoundConfig(batch_size=3)
    h = b.hparams()
    assert isinstance(h, HParams)
    assert (float(h.lam), float(h.beta), float(h.learning_rate)) == pytest.approx((0.5, 1.5, 3e-3))


@pytest.mark.parametrize("field,value", [
    ("lam", -1.0), ("lam", float("nan")), ("beta", float("nan")), ("beta", -2.0),
    ("learning_rate", 0.0), ("learning_rate", float("inf")), ("weight_decay", -1e-4),
    ("b1", 1.0), ("adam_eps", float("nan")), ("batch_size", 0), ("inference_chunk", 0),
    ("crop", (0, 4)),
])
def test_bad_round_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        RoundConfig(**{field: value})


@pytest.mark.parametrize("override", [
    dict(lam=float("nan")), dict(beta=float("nan")), dict(lam=-3.0), dict(batch_size=0),
])
def test_bad_values_in_a_config_file_become_config_errors(override):
    cfg = load("synthetic")
    cfg.train.update(override)
    with pytest.raises(ConfigError, match="invalid config"):
        build_round_config(cfg)


@pytest.mark.parametrize("name", ["agreement", "threshold", "box_fit"])
def test_selection_thresholds_are_validated(name):
    cfg = load("synthetic")
    cfg.selection[name] = float("nan")
    with pytest.raises(ConfigError, match=name):
        build_round_config(cfg)


def test_validate_hparams_accepts_the_edges():
    validate_hparams(0.0, 0.0, 1e-6)


def _levels(*per_client):
    levels = np.array([[lv] * 4 for lv in per_client], np.int32)
    return levels, np.ones(levels.shape, bool)


def test_no_pixel_sample_is_refused_for_pixel_only_strategies():
    levels, valid = _levels(BOX, BOX, IMAGE)
    for name in ("fedavg_pixel", "local", "fedst", "fedrgd"):
        with pytest.raises(ConfigError, match="no sample can ever train"):
            check_can_learn(get_strategy(name), levels, valid)
    assert check_can_learn(get_strategy("fedavg_full"), levels, valid) == []
    warnings = check_can_learn(get_strategy("fedmix"), levels, valid)
    assert len(warnings) == 1 and "no client has pixel masks" in warnings[0]


def test_a_pixel_client_makes_every_strategy_trainable():
    levels, valid = _levels(BOX, PIXEL, IMAGE)
    for name in ("fedmix", "fedavg_pixel", "local", "fedst", "fedavg_full"):
        assert check_can_learn(get_strategy(name), levels, valid) == []


def test_an_empty_training_split_is_refused():
    levels, valid = _levels(PIXEL, BOX)
    with pytest.raises(ConfigError, match="no sample"):
        check_can_learn(get_strategy("fedmix"), levels, np.zeros_like(valid))


@pytest.mark.parametrize("field,value", [("width", 0), ("depth", 0), ("width", -4),
                                         ("depth", 12)])
def test_model_size_out_of_range_is_a_config_error(field, value):
    from fedmix_jax.config import build_model

    cfg = load("synthetic")
    cfg.model[field] = value
    with pytest.raises(ConfigError, match=f"model.{field}"):
        build_model(cfg, 1)

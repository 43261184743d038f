"""FedST / FedRGD: warm-up on the pixel clients, confident-pixel BCE, fixed weights."""

import dataclasses

import jax
import numpy as np
import pytest

import fedmix_jax as fm
from fedmix_jax.data.federation import BOX, PIXEL, stack_clients
from fedmix_jax.errors import ConfigMismatchError
from fedmix_jax.rundir import CONFIG_FILE
from fedmix_jax.self_training import (confident_bce_batch, confident_bce_per_sample,
                                      intensity_shift, self_training_loss)
from test_round import MODEL, SIZE, make_client


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def _numpy_reference_bce(shifted, plain, tau=0.9):
    """The reference's ``CE_LOSS(pred[mask], target[mask])`` (torch BCELoss on probabilities):
    one mean over every confident pixel of the batch; 0 where the reference gives NaN."""
    p = _sigmoid(plain)
    mask = (p > tau) | (p < 1 - tau)
    pred, target = _sigmoid(shifted)[mask], (p > 0.5)[mask].astype(np.float64)
    if not mask.any():
        return 0.0
    return float(np.mean(-(target * np.log(pred) + (1 - target) * np.log(1 - pred))))


def _numpy_confident_bce(shifted, plain, tau=0.9):
    p = 1 / (1 + np.exp(-plain))
    conf = ((p > tau) | (p < 1 - tau)).astype(np.float64)
    t = (p > 0.5).astype(np.float64)
    q = 1 / (1 + np.exp(-shifted.astype(np.float64)))
    bce = -(t * np.log(q) + (1 - t) * np.log(1 - q))
    return (conf * bce).sum(axis=(1, 2, 3)) / np.maximum(conf.sum(axis=(1, 2, 3)), 1e-12)


def test_confident_bce_matches_numpy_and_stops_the_gradient_through_the_target():
    rng = np.random.default_rng(0)
    plain = (3 * rng.normal(size=(3, 6, 6, 1))).astype(np.float32)
    shifted = rng.normal(size=(3, 6, 6, 1)).astype(np.float32)
    got = np.asarray(confident_bce_per_sample(shifted, plain))
    np.testing.assert_allclose(got, _numpy_confident_bce(shifted, plain), rtol=1e-4)
    g = jax.grad(lambda x: confident_bce_per_sample(shifted, x).sum())(plain)
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def _two_samples_that_disagree():
    """Sample 0: many confident pixels, well predicted; sample 1: few, badly predicted."""
    plain = np.zeros((2, 8, 8, 1), np.float32)
    plain[0] = 4.0                          # every pixel confident (p = 0.98), target 1
    plain[1, :2, :2] = -4.0                 # 4 confident pixels (p = 0.02), target 0
    shifted = np.where(plain > 0, 3.0, 2.0).astype(np.float32)   # sample 1 wrong, sample 0 right
    return shifted, plain


def test_batch_bce_is_one_mean_over_every_confident_pixel_of_the_batch():
    rng = np.random.default_rng(1)
    plain = (3 * rng.normal(size=(4, 6, 6, 2))).astype(np.float32)
    shifted = rng.normal(size=(4, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(float(confident_bce_batch(shifted, plain)),
                               _numpy_reference_bce(shifted, plain), rtol=1e-5)
    # sample weights pick the samples whose pixels count
    w = np.array([1, 0, 1, 0], np.float32)
    np.testing.assert_allclose(float(confident_bce_batch(shifted, plain, w)),
                               _numpy_reference_bce(shifted[[0, 2]], plain[[0, 2]]), rtol=1e-5)
    g = jax.grad(lambda x: confident_bce_batch(shifted, x))(plain)
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_batch_wide_and_per_sample_means_differ_and_each_matches_its_oracle():
    shifted, plain = _two_samples_that_disagree()
    batch = float(confident_bce_batch(shifted, plain))
    per_sample = np.asarray(confident_bce_per_sample(shifted, plain))
    np.testing.assert_allclose(batch, _numpy_reference_bce(shifted, plain), rtol=1e-5)
    np.testing.assert_allclose(per_sample, [_numpy_reference_bce(shifted[i:i + 1], plain[i:i + 1])
                                            for i in range(2)], rtol=1e-5)
    # 64 + 4 confident pixels: the batch mean is dominated by sample 0, the sample mean is not
    assert abs(batch - per_sample.mean()) > 0.5
    w, st, dice = np.ones(2, np.float32), np.ones(2, bool), np.zeros(2, np.float32)
    np.testing.assert_allclose(float(self_training_loss(shifted, plain, dice, w, st)), batch,
                               rtol=1e-6)
    np.testing.assert_allclose(float(self_training_loss(shifted, plain, dice, w, st, "samples")),
                               per_sample.mean(), rtol=1e-6)


def test_a_batch_without_confident_pixel_contributes_zero_with_zero_gradient():
    plain = np.zeros((3, 4, 4, 1), np.float32)       # p = 0.5 everywhere: nothing confident
    shifted = np.ones((3, 4, 4, 1), np.float32)
    assert float(confident_bce_batch(shifted, plain)) == 0.0
    g = jax.grad(lambda s: confident_bce_batch(s, plain))(shifted)
    assert np.all(np.isfinite(g)) and not np.any(g)


def test_pixel_samples_keep_their_dice_in_a_mixed_batch():
    shifted, plain = _two_samples_that_disagree()
    shifted = np.concatenate([shifted, shifted[:1]])
    plain = np.concatenate([plain, plain[:1]])
    dice = np.array([0.9, 0.8, 0.3], np.float32)
    w = np.array([1, 1, 1], np.float32)
    st = np.array([True, True, False])
    got = float(self_training_loss(shifted, plain, dice, w, st))
    want = (0.3 + 2 * _numpy_reference_bce(shifted[:2], plain[:2])) / 3
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # only pixel samples: the weighted Dice mean; no usable sample: 0
    assert float(self_training_loss(shifted, plain, dice, w, np.zeros(3, bool))) == \
        pytest.approx(dice.mean(), rel=1e-6)
    assert float(self_training_loss(shifted, plain, dice, 0 * w, st)) == 0.0


def test_bad_self_training_mean_is_refused():
    from fedmix_jax.config import RoundConfig

    with pytest.raises(ValueError, match="self_training_mean"):
        RoundConfig(self_training_mean="voxels")


def _capture_gradients():
    """An "optimizer" that applies nothing and keeps the last gradient as its state."""
    import optax

    return optax.GradientTransformation(
        lambda params: jax.tree.map(np.zeros_like, params),
        lambda g, state, params=None: (jax.tree.map(np.zeros_like, g), g))


def test_a_fedst_step_after_warm_up_is_the_reference_formula():
    """One local step of a weak client after the warm-up: the gradient the site takes equals
    the gradient of the reference's loss written out by hand (plain view -> confident mask and
    target, gamma-shifted view -> BCE over ``pred[mask]``)."""
    import jax.numpy as jnp

    from fedmix_jax.site import make_train_batch

    rng = np.random.default_rng(0)
    images = rng.random((4, SIZE, SIZE, 1)).astype(np.float32)
    cfg = fm.RoundConfig(strategy=dataclasses.replace(fm.get_strategy("fedst"), warmup_rounds=1),
                        batch_size=4, crop=None, hflip=False, vflip=False,
                        self_training_mean="pixels")
    params = MODEL.init(jax.random.PRNGKey(3), images[:1])["params"]
    # sharpen the initial model so that some pixels are confident and some are not
    params = jax.tree.map(lambda x: 2 * x, params)
    k_aug, step = jax.random.PRNGKey(7), 0
    tx = _capture_gradients()
    train_batch = make_train_batch(MODEL, cfg, tx, k_aug)
    w = np.ones(4, np.float32)
    (_, (grads,)), _ = train_batch(((params,), (tx.init(params),)), step, w, images,
                                   (np.zeros_like(images),), np.ones(4, bool))

    # the reference, by hand: the same gamma (the step's key), one mean over pred[mask]
    key = jax.random.fold_in(jax.random.fold_in(k_aug, step), 1)
    shifted_x = np.asarray(intensity_shift(key, images))
    p = _sigmoid(MODEL.apply({"params": params}, images))
    mask = (p > 0.9) | (p < 0.1)
    target = (p > 0.5)[mask].astype(np.float32)
    assert 0 < mask.mean() < 1

    def reference_loss(prm):    # BCE(sigmoid(z), t) = -(t log q + (1 - t) log(1 - q)), stably
        z = MODEL.apply({"params": prm}, shifted_x)[mask]
        return -jnp.mean(target * jax.nn.log_sigmoid(z) + (1 - target) * jax.nn.log_sigmoid(-z))

    want = jax.grad(reference_loss)(params)
    diff = optax_global_norm(jax.tree.map(lambda a, b: a - b, grads, want))
    assert diff <= 1e-5 * optax_global_norm(want)


def optax_global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                             for x in jax.tree.leaves(tree))))


def test_intensity_shift_is_a_power_of_the_image():
    x = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4, 1)
    y = np.asarray(intensity_shift(jax.random.PRNGKey(3), x))
    gamma = np.log(y[0, 1, 1, 0]) / np.log(x[0, 1, 1, 0])
    assert 0 <= gamma <= 2
    np.testing.assert_allclose(y[x > 0], x[x > 0] ** gamma, rtol=1e-4)


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return jax.device_put(stack_clients([make_client(rng, 6, PIXEL), make_client(rng, 8, BOX),
                                         make_client(rng, 7, BOX)]))


@pytest.mark.parametrize("name,share", [("fedst", 0.9), ("fedrgd", 0.5)])
def test_warm_up_then_fixed_weights(split, name, share):
    strategy = dataclasses.replace(fm.get_strategy(name), warmup_rounds=1)
    cfg = fm.RoundConfig(strategy=strategy, batch_size=4, crop=(12, 12))
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    model2 = jax.device_get(state.global_params[1])
    round_fn = fm.make_round_fn(MODEL, cfg)
    state, warm = round_fn(state, split)
    state, after = round_fn(state, split)
    warm, after = jax.device_get((warm, after))
    # warm-up: only the pixel client trains and it carries all the weight
    assert warm.reports.steps.tolist() == [2, 0, 0]
    assert warm.reports.num_usable.tolist() == [6, 0, 0]
    np.testing.assert_allclose(warm.weights, [1, 0, 0])
    # after: every client trains on all its samples; fixed weights
    assert after.reports.num_usable.tolist() == [6, 8, 7] and all(after.reports.steps > 0)
    np.testing.assert_allclose(after.weights, [share, (1 - share) / 2, (1 - share) / 2],
                               rtol=1e-6)
    # one model: model 2 never moves
    for a, b in zip(jax.tree.leaves(jax.device_get(state.global_params[1])),
                    jax.tree.leaves(model2)):
        np.testing.assert_array_equal(a, b)


def test_warmup_rounds_come_from_the_config():
    from fedmix_jax.config import build_round_config
    import ml_collections
    from fedmix_jax.config_defaults import selection_config, train_config

    cfg = ml_collections.ConfigDict(dict(strategy="fedst", num_rounds=30))
    cfg.train = train_config(4, None, 10.0, 3.0)
    cfg.selection = selection_config()
    assert build_round_config(cfg).strategy.warmup_rounds == 15
    cfg.train.warmup_rounds = 4
    assert build_round_config(cfg).strategy.warmup_rounds == 4
    cfg.strategy = "fedmix"
    assert build_round_config(cfg).strategy.warmup_rounds == 0


def test_the_warm_up_is_resolved_once():
    from fedmix_jax.config import resolve_warmup_rounds
    from test_main import tiny_config

    cfg = tiny_config(strategy="fedst", num_rounds=8)
    assert resolve_warmup_rounds(cfg).train.warmup_rounds == 4          # half, no record
    assert cfg.train.warmup_rounds is None                               # a copy was changed
    stored = {"strategy": "fedst", "num_rounds": 4, "train": {"warmup_rounds": 2}}
    assert resolve_warmup_rounds(cfg, stored).train.warmup_rounds == 2   # the recorded one
    cfg.train.warmup_rounds = 3
    assert resolve_warmup_rounds(cfg, stored).train.warmup_rounds == 3   # explicit: kept
    other = tiny_config(strategy="fedmix", num_rounds=8)
    assert resolve_warmup_rounds(other, stored) is other                 # only FedST / FedRGD


def test_a_resumed_fedst_run_keeps_its_stored_warm_up(tmp_path, monkeypatch):
    """4 rounds, then resumed to 8: the warm-up stays the 2 rounds recorded in config.json (it
    was recomputed from num_rounds, 4, before); a different explicit warm-up is refused."""
    import json

    from fedmix_jax import train
    from test_main import tiny_config

    used = []
    build = train.build_round_config
    monkeypatch.setattr(train, "build_round_config",
                        lambda c: used.append(build(c).strategy.warmup_rounds) or build(c))
    workdir = tmp_path / "run"

    def stored():
        return json.loads((workdir / CONFIG_FILE).read_text())["train"]["warmup_rounds"]

    train.train_and_evaluate(tiny_config(strategy="fedst", num_rounds=4), str(workdir),
                             quiet=True, write_plots=False)
    assert stored() == 2 and used == [2]
    summary = train.train_and_evaluate(tiny_config(strategy="fedst", num_rounds=8),
                                       str(workdir), quiet=True, write_plots=False)
    assert stored() == 2 and used == [2, 2] and summary["rounds_completed"] == 8
    changed = tiny_config(strategy="fedst", num_rounds=8)
    changed.train.warmup_rounds = 4
    with pytest.raises(ConfigMismatchError, match="train.warmup_rounds: 2 -> 4"):
        train.train_and_evaluate(changed, str(workdir), quiet=True, write_plots=False)


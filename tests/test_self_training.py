"""FedST / FedRGD: warm-up on the pixel clients, confident-pixel BCE, fixed weights."""

import dataclasses

import jax
import numpy as np
import pytest

from fedmix_jax import federated as F
from fedmix_jax.data.federation import BOX, PIXEL, stack_clients
from fedmix_jax.self_training import confident_bce_per_sample, intensity_shift
from test_round import MODEL, SIZE, make_client


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
    strategy = dataclasses.replace(F.get_strategy(name), warmup_rounds=1)
    cfg = F.RoundConfig(strategy=strategy, batch_size=4, crop=(12, 12))
    state = F.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    model2 = jax.device_get(state.global_params[1])
    round_fn = F.make_round_fn(MODEL, cfg)
    state, warm = round_fn(state, split)
    state, after = round_fn(state, split)
    warm, after = jax.device_get((warm, after))
    # warm-up: only the pixel client trains and it carries all the weight
    assert warm.steps.tolist() == [2, 0, 0] and warm.counts.tolist() == [6, 0, 0]
    np.testing.assert_allclose(warm.weights, [1, 0, 0])
    # after: every client trains on all its samples; fixed weights
    assert after.counts.tolist() == [6, 8, 7] and all(after.steps > 0)
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

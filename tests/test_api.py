"""The public API: exports, the pure round_step, typed keys, traced hyperparameters, registry."""

import dataclasses

import jax
import numpy as np
import pytest

import fedmix_jax as fm
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, stack_clients
from test_round import LENIENT, MODEL, SIZE, assert_trees, make_client


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return jax.device_put(stack_clients([make_client(rng, 9, BOX), make_client(rng, 6, PIXEL),
                                         make_client(rng, 11, IMAGE)]))


def config(**kw):
    return fm.RoundConfig(strategy=fm.get_strategy("fedmix", LENIENT), batch_size=4,
                          crop=(12, 12), **kw)


def test_public_names_are_exported():
    for name in fm.__all__:
        assert hasattr(fm, name), name


def test_round_step_under_a_users_jit_equals_make_round_fn(split):
    cfg = config()
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    step = jax.jit(lambda s, d, h: fm.round_step(s, d, h, model=MODEL, config=cfg,
                                                 backend=fm.map_clients))
    mine, m1 = step(state, split, cfg.hparams())
    theirs, m2 = fm.make_round_fn(MODEL, cfg)(jax.tree.map(lambda x: x.copy(), state), split)
    assert_trees(mine.global_params, theirs.global_params)
    np.testing.assert_array_equal(m1.weights, m2.weights)


def test_typed_keys_give_the_same_round_as_raw_keys(split):
    cfg = config()
    out = []
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        state = fm.init_state(MODEL, key, (SIZE, SIZE, 1), 3, cfg)
        state, _ = fm.make_round_fn(MODEL, cfg)(state, split)
        out.append(jax.device_get(state.global_params))
    assert_trees(out[0], out[1])


def test_learning_rate_is_traced_not_compiled(split):
    cfg = config(executor="map")
    round_fn = fm.make_round_fn(MODEL, cfg)
    finals = []
    for lr in (1e-3, 3e-3):
        state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
        hp = fm.HParams.create(lam=10.0, beta=3.0, learning_rate=lr)
        state, _ = round_fn(state, split, hp)
        finals.append(jax.device_get(state.global_params))
        if lr == 1e-3:
            sizes = [j._cache_size() for j in round_fn.jitted]
    assert [j._cache_size() for j in round_fn.jitted] == sizes       # no recompilation
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(f)]) for f in finals)
    assert not np.allclose(a, b)


def test_a_registered_strategy_is_used_everywhere(split):
    def factory(selection):
        return dataclasses.replace(fm.get_strategy("fedavg_pixel", selection), name="mine")

    fm.register_strategy("mine", factory)
    assert "mine" in fm.strategies.STRATEGY_NAMES
    cfg = fm.RoundConfig(strategy=fm.get_strategy("mine"), batch_size=4)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    _, m = fm.make_round_fn(MODEL, cfg)(state, split)
    assert np.asarray(m.reports.num_usable).tolist() == [0, 6, 0]

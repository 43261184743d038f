"""Aggregation weights and the weighted average against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmix_jax import aggregation


def np_fedmix(n, loss, lam, beta):
    n = np.asarray(n, np.float64)
    loss = np.asarray(loss, np.float64)
    d = n / n.sum()
    s = loss ** beta / (loss ** beta).sum()
    raw = d + lam * s
    return raw / raw.sum()


@pytest.mark.parametrize("lam,beta", [(10, 3), (10, 1.5), (2, 3), (0.5, 1)])
def test_fedmix_weights_match_formula(lam, beta):
    rng = np.random.default_rng(int(lam * 10 + beta))
    for _ in range(5):
        n = rng.integers(1, 100, size=5)
        loss = rng.random(5)
        np.testing.assert_allclose(aggregation.fedmix_weights(n, loss, lam, beta),
                                   np_fedmix(n, loss, lam, beta), rtol=1e-5)


def test_higher_loss_gets_larger_weight():
    w = np.asarray(aggregation.fedmix_weights(np.array([10, 10]), np.array([0.2, 0.6]), 10, 3))
    assert w[1] > w[0]


def test_lambda_zero_equals_fedavg():
    n = np.array([3, 10, 0, 7])
    loss = np.array([0.3, 0.1, 0.9, 0.5])
    np.testing.assert_allclose(aggregation.fedmix_weights(n, loss, 0.0, 3.0),
                               aggregation.fedavg_weights(n), rtol=1e-6)
    np.testing.assert_allclose(aggregation.fedavg_weights(n), n / n.sum(), rtol=1e-6)


def test_edge_cases_are_finite_and_sum_to_one():
    cases = [
        (np.array([0, 5, 3]), np.array([0.7, 0.2, 0.4])),   # a client with n_i = 0
        (np.array([4, 5, 3]), np.array([0.0, 0.0, 0.0])),   # all losses 0
        (np.array([0, 0, 0]), np.array([0.5, 0.2, 0.4])),   # all counts 0
        (np.array([0, 0, 0]), np.array([0.0, 0.0, 0.0])),
    ]
    for n, loss in cases:
        for beta in (3.0, 1.5):
            w = np.asarray(aggregation.fedmix_weights(n, loss, 10.0, beta))
            assert np.all(np.isfinite(w)) and np.all(w >= 0)
            assert w.sum() == pytest.approx(1.0, abs=1e-6)
            if n.sum() > 0:
                assert np.all(w[n == 0] == 0)
    # all losses 0 -> count-proportional; all counts 0 -> uniform
    np.testing.assert_allclose(aggregation.fedmix_weights([4, 5, 3], [0, 0, 0], 10, 3),
                               np.array([4, 5, 3]) / 12, rtol=1e-6)
    np.testing.assert_allclose(aggregation.fedmix_weights([0, 0, 0], [1, 1, 1], 10, 3),
                               np.full(3, 1 / 3), rtol=1e-6)


def test_mask_excludes_clients():
    w = np.asarray(aggregation.fedavg_weights(np.array([2, 2, 4]), np.array([True, False, True])))
    np.testing.assert_allclose(w, [1 / 3, 0, 2 / 3], rtol=1e-6)
    w = np.asarray(aggregation.fedavg_weights(np.zeros(3), np.array([True, False, True])))
    np.testing.assert_allclose(w, [0.5, 0, 0.5])


def test_weighted_average_matches_numpy_and_equal_weights_give_mean():
    rng = np.random.default_rng(1)
    tree = {"a": rng.normal(size=(4, 3, 2)).astype(np.float32),
            "b": [rng.normal(size=(4,)).astype(np.float32)]}
    w = rng.random(4).astype(np.float32)
    w /= w.sum()
    out = aggregation.weighted_average(tree, w)
    np.testing.assert_allclose(out["a"], np.tensordot(w, tree["a"], 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["b"][0], (w * tree["b"][0]).sum(), rtol=1e-5)
    mean = jax.jit(aggregation.weighted_average)(tree, jnp.full((4,), 0.25))
    np.testing.assert_allclose(mean["a"], tree["a"].mean(0), rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(mean) == jax.tree.structure(jax.tree.map(lambda x: x[0], tree))

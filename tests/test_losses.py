"""Losses against NumPy references written from the spec."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedmix_jax import losses
from fedmix_jax.data.federation import BOX, IMAGE, NONE, PIXEL

EPS = 1e-4


def np_dice(a, b):
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return (2 * (a * b).sum(1) + EPS) / (a.sum(1) + b.sum(1) + EPS)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_dice_coefficient_matches_numpy(rng):
    a = rng.random((5, 8, 9, 3)).astype(np.float32)
    b = (rng.random((5, 8, 9, 3)) > 0.5).astype(np.float32)
    np.testing.assert_allclose(losses.dice_coefficient(a, b), np_dice(a, b), rtol=1e-5)


def test_dice_of_two_empty_maps_is_one_and_disjoint_is_near_zero():
    z = np.zeros((1, 4, 4, 1), np.float32)
    o = np.ones((1, 4, 4, 1), np.float32)
    assert float(losses.dice_coefficient(z, z)[0]) == pytest.approx(1.0)
    half = o.copy()
    half[:, :2] = 0
    assert float(losses.dice_coefficient(half, o - half)[0]) < 1e-4


def test_weighted_dice_loss_matches_numpy(rng):
    logits = rng.normal(size=(6, 7, 7, 2)).astype(np.float32)
    t = (rng.random((6, 7, 7, 2)) > 0.6).astype(np.float32)
    w = np.array([1, 0, 1, 1, 0, 1], np.float32)
    per = 1 - np_dice(np_sigmoid(logits), t)
    expected = (w * per).sum() / w.sum()
    assert float(losses.dice_loss(logits, t, w)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.dice_loss(logits, t)) == pytest.approx(per.mean(), rel=1e-5)


def test_all_zero_weights_give_zero_loss_and_zero_grads(rng):
    logits = jnp.asarray(rng.normal(size=(3, 5, 5, 1)), jnp.float32)
    t = jnp.asarray(rng.random((3, 5, 5, 1)) > 0.5, jnp.float32)
    w = jnp.zeros((3,))
    loss, g = jax.value_and_grad(lambda l: losses.dice_loss(l, t, w))(logits)
    assert float(loss) == 0.0
    assert np.all(np.asarray(g) == 0) and np.all(np.isfinite(np.asarray(g)))


def test_bce_matches_numpy(rng):
    logits = rng.normal(size=(4, 6, 6, 1)).astype(np.float32) * 3
    t = (rng.random((4, 6, 6, 1)) > 0.5).astype(np.float32)
    p = np_sigmoid(logits.astype(np.float64))
    per = -(t * np.log(p) + (1 - t) * np.log(1 - p)).reshape(4, -1).mean(1)
    np.testing.assert_allclose(losses.bce_loss_per_sample(logits, t), per, rtol=1e-4)
    w = np.array([0, 1, 1, 0], np.float32)
    assert float(losses.bce_loss(logits, t, w)) == pytest.approx(per[[1, 2]].mean(), rel=1e-4)


def test_mixed_supervision_loss_cross_pseudo_supervision(rng):
    b = 8
    shape = (b, 6, 6, 1)
    l1, l2 = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
    gt, q1, q2 = ((rng.random(shape) > 0.5).astype(np.float32) for _ in range(3))
    levels = np.array([PIXEL, BOX, IMAGE, NONE, PIXEL, BOX, IMAGE, NONE], np.int32)
    selected = np.array([0, 1, 0, 1, 1, 0, 1, 1], bool)
    valid = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
    got1, got2 = losses.mixed_supervision_loss(l1, l2, gt, q1, q2, levels, selected, valid)
    # NumPy reference: pixel -> ground truth for both; weak -> the peer's pseudo-label.
    is_pix = levels == PIXEL
    t1 = np.where(is_pix[:, None, None, None], gt, q2)
    t2 = np.where(is_pix[:, None, None, None], gt, q1)
    w = (valid & (is_pix | selected)).astype(np.float64)
    e1 = (w * (1 - np_dice(np_sigmoid(l1), t1))).sum() / w.sum()
    e2 = (w * (1 - np_dice(np_sigmoid(l2), t2))).sum() / w.sum()
    assert float(got1) == pytest.approx(e1, rel=1e-5)
    assert float(got2) == pytest.approx(e2, rel=1e-5)


def test_losses_vmap_and_jit():
    logits = jnp.zeros((3, 2, 4, 4, 1))
    t = jnp.ones((3, 2, 4, 4, 1))
    out = jax.jit(jax.vmap(losses.dice_loss))(logits, t)
    assert out.shape == (3,)


def test_bce_is_optax_and_equals_the_former_formula(rng):
    """bce_loss_per_sample goes through optax.sigmoid_binary_cross_entropy; values and gradients
    equal the hand-written stable formula it replaced, also at extreme logits and soft targets,
    with and without pixel weights."""
    logits = np.concatenate([rng.normal(size=(3, 4, 4, 1)) * 4,
                             np.full((1, 4, 4, 1), 80.0), np.full((1, 4, 4, 1), -80.0)]
                            ).astype(np.float32)
    t = rng.random((5, 4, 4, 1)).astype(np.float32)
    t[3:] = (t[3:] > 0.5)
    pw = (rng.random((5, 4, 4, 1)) > 0.3).astype(np.float32)

    def former(l, y, w=None):
        pp = jnp.maximum(l, 0) - l * y + jnp.log1p(jnp.exp(-jnp.abs(l)))
        if w is None:
            return jnp.mean(pp, axis=(1, 2, 3))
        return jnp.sum(w * pp, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(w, axis=(1, 2, 3)), 1e-12)

    for w in (None, pw):
        np.testing.assert_allclose(losses.bce_loss_per_sample(logits, t, w), former(logits, t, w),
                                   rtol=1e-5, atol=1e-6)
        g_new = jax.grad(lambda l: losses.bce_loss_per_sample(l, t, w).sum())(logits)
        g_old = jax.grad(lambda l: former(l, t, w).sum())(logits)
        np.testing.assert_allclose(g_new, g_old, rtol=1e-5, atol=1e-7)
    per_pixel = optax.sigmoid_binary_cross_entropy(jnp.asarray(logits), jnp.asarray(t))
    np.testing.assert_allclose(losses.bce_loss_per_sample(logits, t),
                               per_pixel.mean(axis=(1, 2, 3)), rtol=1e-6)

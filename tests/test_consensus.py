"""``fedmix_jax.consensus``: a site's global and local models agree before the local mask counts,
against a NumPy oracle written from the definition."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmix_jax.consensus import (ConsensusModel, choose_mask_thresholds, consensus_logits,
                                  marks_any)
from fedmix_jax.evaluation import evaluate
from fedmix_jax.round import broadcast
from test_evaluation import Echo, _split


def _np_consensus(g, loc, threshold, mask=None):
    """Per image and class: the local logits (``mask``'s, if given) where every model has a pixel
    with sigmoid > threshold, else the pixelwise minimum of them all."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    models = (g, loc) if mask is None else (g, loc, mask)
    out = np.empty_like(loc)
    for b in range(g.shape[0]):
        for k in range(g.shape[-1]):
            agree = all((sig(m[b, ..., k]) > threshold).any() for m in models)
            out[b, ..., k] = (models[-1][b, ..., k] if agree else
                              np.min([m[b, ..., k] for m in models], axis=0))
    return out


@pytest.mark.parametrize("k,threshold", [(1, 0.5), (3, 0.5), (2, 0.3)])
def test_consensus_logits_match_the_numpy_oracle(k, threshold):
    rng = np.random.default_rng(k)
    g = rng.normal(-3.0, 2.0, (8, 10, 12, k)).astype(np.float32)
    loc = rng.normal(-3.0, 2.0, (8, 10, 12, k)).astype(np.float32)
    g[:3] -= 20.0           # the global model marks nothing on images 0-2
    loc[2:5, ..., 0] -= 20.0     # the local model marks nothing of class 0 on images 2-4
    got = np.asarray(jax.jit(consensus_logits, static_argnums=2)(g, loc, threshold))
    np.testing.assert_allclose(got, _np_consensus(g, loc, threshold), rtol=0, atol=0)
    # the binary prediction: the local mask on agreed images and classes, empty elsewhere
    sig = 1.0 / (1.0 + np.exp(-got))
    agree = np.asarray(marks_any(jnp.asarray(g), threshold)
                       & marks_any(jnp.asarray(loc), threshold))
    assert agree.shape == (8, k) and not agree[:3].any() and agree[3:].any()
    pred_local = 1.0 / (1.0 + np.exp(-loc)) > threshold
    np.testing.assert_array_equal(sig > threshold, pred_local & agree[:, None, None, :])


@pytest.mark.parametrize("k", [1, 3])
def test_a_third_model_gives_the_mask_and_must_mark_too(k):
    """``mask_logits``: the oracle's three-model consensus; the images and classes it marks are a
    subset of the two-model consensus's, and a third model equal to the local one changes
    nothing."""
    rng = np.random.default_rng(10 + k)
    g, loc, third = (rng.normal(-3.0, 2.0, (8, 10, 12, k)).astype(np.float32) for _ in range(3))
    g[:2] -= 20.0
    third[5:7] -= 20.0      # the third model marks nothing on images 5-6
    got = np.asarray(jax.jit(consensus_logits, static_argnums=2)(g, loc, 0.5, None, third))
    np.testing.assert_allclose(got, _np_consensus(g, loc, 0.5, third), rtol=0, atol=0)
    marked3 = np.asarray(marks_any(jnp.asarray(got)))
    marked2 = np.asarray(marks_any(consensus_logits(g, loc)))
    assert not (marked3 & ~marked2).any() and not marked3[5:7].any() and marked2[5:7].any()
    np.testing.assert_array_equal(np.asarray(consensus_logits(g, loc, 0.5, 0.3, loc)),
                                  np.asarray(consensus_logits(g, loc, 0.5, 0.3)))


def test_consensus_of_a_model_with_itself_is_the_model():
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype(np.float32)
    x[0] -= 10.0    # an image that marks nothing
    np.testing.assert_array_equal(np.asarray(consensus_logits(x, x)), x)
    half = consensus_logits(jnp.asarray(x, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16))
    assert half.dtype == jnp.float32


class Affine(nn.Module):
    """logits = a x + b with scalar parameters (a stand-in for a segmentation network)."""

    @nn.compact
    def __call__(self, x):
        a = self.param("a", nn.initializers.constant(20.0), ())
        b = self.param("b", nn.initializers.constant(-10.0), ())
        return a * x + b


def test_consensus_model_scores_each_site_like_its_consensus_masks():
    """``evaluate`` of each site's ConsensusModel (per-client params) equals the scores of the
    oracle's binary consensus masks; a lesion-free image marked by one model only is no false
    positive, one marked by both is."""
    c, m, s = 3, 4, 12
    rng = np.random.default_rng(3)
    masks = np.zeros((c, m, s, s, 1), np.float32)
    masks[:, :2, 3:8, 4:9] = 1.0        # images 0-1 of every site hold a lesion, 2-3 are free
    images = np.clip(masks + rng.normal(0.0, 0.2, masks.shape), 0.0, 1.0).astype(np.float32)
    images[:, 2, 5, 5] = 0.9            # a bright speck on lesion-free image 2 of every site
    images[:, 3] = np.minimum(images[:, 3], 0.3)
    split = _split(images, masks, np.ones((c, m), bool))
    g = {"a": jnp.float32(20.0), "b": jnp.float32(-10.0)}      # marks the speck
    loc = {"a": jnp.asarray([20.0, 20.0, 20.0]), "b": jnp.asarray([-10.0, -19.0, -4.0])}
    # site 1's local model needs x > 0.95 (no speck), site 2's x > 0.2 (marks every image)
    model = Affine()
    ev = evaluate(ConsensusModel(model), (broadcast(g, c), loc), split, per_client_params=True,
                  hd95=False)
    oracle_masks = np.empty_like(masks)
    for i in range(c):
        lg, ll = 20.0 * images[i] - 10.0, float(loc["a"][i]) * images[i] + float(loc["b"][i])
        oracle_masks[i] = _np_consensus(lg, ll, 0.5) > 0.0
    oracle = evaluate(Echo(), {}, _split(oracle_masks, masks, np.ones((c, m), bool)), hd95=False)
    for key in ("dice", "dice_present", "false_positive_rate"):
        np.testing.assert_allclose(ev[key], oracle[key], rtol=1e-6, err_msg=key)
    # site 0: both models are the echo, the speck is a false positive; site 1: its local model
    # does not mark the speck, so no false positive; site 2: the local model marks image 3, the
    # global one does not, so no false positive there, but both mark the speck
    np.testing.assert_allclose(ev["false_positive_rate"], [0.5, 0.0, 0.5])
    alone = evaluate(model, loc, split, per_client_params=True, hd95=False)
    np.testing.assert_allclose(alone["false_positive_rate"], [0.5, 0.0, 1.0])


def test_a_mask_threshold_moves_the_masks_extent_not_the_lesion_decision():
    """On agreed images the mask is the local model's ``sigmoid > mask_threshold``; which images
    are agreed stays decided at ``threshold``, so no lesion-free image gains a false positive."""
    rng = np.random.default_rng(7)
    g = rng.normal(-2.0, 2.0, (6, 8, 8, 2)).astype(np.float32)
    loc = rng.normal(-2.0, 2.0, (6, 8, 8, 2)).astype(np.float32)
    g[:2] -= 20.0
    for mt in (0.5, 0.2, 0.8):
        out = np.asarray(jax.jit(consensus_logits)(g, loc, 0.5, jnp.float32(mt)))
        agree = np.asarray(marks_any(jnp.asarray(g)) & marks_any(jnp.asarray(loc)))
        want = (1.0 / (1.0 + np.exp(-loc)) > mt) & agree[:, None, None, :]
        got = 1.0 / (1.0 + np.exp(-out)) > 0.5
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.asarray(consensus_logits(g, loc, 0.5, 0.5)),
                               np.asarray(consensus_logits(g, loc)), atol=1e-6)


def test_each_site_chooses_the_mask_threshold_of_its_best_validation_dice():
    """A site whose local model under-segments (its logits of the lesion's rim are just below
    0); ``choose_mask_thresholds`` picks a lower threshold there and 0.5 where the masks are
    right; a site without a lesion image keeps the first candidate."""
    c, m, s = 3, 3, 12
    masks = np.zeros((c, m, s, s, 1), np.float32)
    masks[:2, :2, 2:10, 2:10] = 1.0           # sites 0, 1: two lesion images; site 2: none
    core = np.zeros_like(masks)
    core[:2, :2, 4:8, 4:8] = 1.0
    # the "image" is what the Affine model turns into logits: 20 x - 10
    images = 0.5 * core + 0.3 * masks         # core 0.8 (logit 6), rim 0.3 (logit -4)
    images[1] = np.where(masks[1] > 0, 0.8, 0.0)      # site 1 predicts the whole lesion
    split = _split(images.astype(np.float32), masks, np.ones((c, m), bool))
    params = {"a": jnp.full((c,), 20.0), "b": jnp.full((c,), -10.0)}
    chosen = choose_mask_thresholds(Affine(), params, params, split,
                                    candidates=(0.5, 0.2, 0.01))
    assert chosen.dtype == np.float32
    np.testing.assert_allclose(chosen, [0.01, 0.5, 0.5])   # sigmoid(-4) = 0.018 > 0.01
    ev = evaluate(ConsensusModel(Affine()), (params, params, jnp.asarray(chosen)), split,
                  per_client_params=True, hd95=False)
    np.testing.assert_allclose(ev["dice_present"][:2], 1.0, rtol=1e-5)

"""Evaluation: per-class Dice / IoU (binary unchanged), pooled extra, HD95 against an oracle."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmix_jax.data.federation import FederatedSplit
from fedmix_jax.evaluation import evaluate, segmentation_scores
from fedmix_jax.hd95 import hd95, hd95_per_class, mask_edges
from fedmix_jax.models import UNet


class Echo(nn.Module):
    """A parameter-free "model" whose prediction is its input: logits = 20 x - 10."""

    @nn.compact
    def __call__(self, x):
        return 20.0 * x - 10.0


def _split(images, masks, valid):
    c, m = valid.shape
    k = masks.shape[-1]
    return FederatedSplit(images=images.astype(np.float32), masks=masks.astype(np.float32),
                          boxes=np.zeros_like(masks, np.float32),
                          image_labels=np.zeros((c, m, k), np.float32),
                          levels=np.zeros((c, m), np.int32), valid=valid)


def _np_dice(p, g, eps=1e-4):
    return (2 * (p * g).sum() + eps) / (p.sum() + g.sum() + eps)


def test_binary_numbers_unchanged():
    """K = 1: dice/iou/mean are the old pooled per-image figures, averaged over valid images."""
    rng = np.random.default_rng(0)
    c, m, s = 2, 5, 16
    images = rng.random((c, m, s, s, 1)).astype(np.float32)
    masks = (rng.random((c, m, s, s, 1)) > 0.6).astype(np.float32)
    masks[0, 1] = 0  # an empty ground truth
    valid = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
    model = UNet(width=4, depth=2, num_classes=1)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 1)))["params"]
    ev = evaluate(model, params, _split(images, masks, valid), chunk_size=4)
    logits = model.apply({"params": params}, images.reshape(c * m, s, s, 1))
    d, i = (np.asarray(v).reshape(c, m) for v in segmentation_scores(logits, masks.reshape(
        c * m, s, s, 1)))
    old_dice = np.array([d[cc][valid[cc]].mean() for cc in range(c)])
    old_iou = np.array([i[cc][valid[cc]].mean() for cc in range(c)])
    np.testing.assert_allclose(ev["dice"], old_dice, rtol=1e-6)
    np.testing.assert_allclose(ev["iou"], old_iou, rtol=1e-6)
    np.testing.assert_allclose(ev["pooled_dice"], old_dice, rtol=1e-6)
    np.testing.assert_allclose(ev["mean_dice"], old_dice.mean(), rtol=1e-6)
    np.testing.assert_allclose(ev["dice_per_class"][:, 0], old_dice, rtol=1e-6)
    assert np.isnan(ev["per_image_dice"][~valid]).all()
    assert ev["hd95"].shape == (c,) and ev["hd95_per_class"].shape == (c, 1)


def test_multiclass_dice_is_the_mean_of_per_class_dice():
    """K = 3 with known predictions: per class per image, averaged over images, then classes."""
    s = 16
    gt = np.zeros((1, 2, s, s, 3))
    pred = np.zeros_like(gt)
    # image 0: class 0 perfect (big), class 1 missed (small), class 2 absent in both
    gt[0, 0, 2:12, 2:12, 0] = pred[0, 0, 2:12, 2:12, 0] = 1
    gt[0, 0, 13:15, 13:15, 1] = 1
    # image 1: class 2 half right, class 0 a false positive, class 1 absent in both
    gt[0, 1, 0:8, 0:8, 2] = 1
    pred[0, 1, 0:8, 0:4, 2] = 1
    pred[0, 1, 10:12, 10:12, 0] = 1
    valid = np.ones((1, 2), bool)
    ev = evaluate(Echo(), {}, _split(pred, gt, valid))
    want = np.array([[_np_dice(pred[0, i, ..., k], gt[0, i, ..., k]) for k in range(3)]
                     for i in range(2)])  # [M, K]
    np.testing.assert_allclose(ev["per_image_dice_per_class"][0], want, rtol=1e-5)
    np.testing.assert_allclose(ev["dice_per_class"][0], want.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ev["dice"][0], want.mean(), rtol=1e-5)
    np.testing.assert_allclose(ev["mean_dice_per_class"], want.mean(0), rtol=1e-5)
    pooled = np.mean([_np_dice(pred[0, i], gt[0, i]) for i in range(2)])
    np.testing.assert_allclose(ev["pooled_dice"][0], pooled, rtol=1e-5)
    assert abs(ev["dice"][0] - ev["pooled_dice"][0]) > 0.05  # the two figures really differ
    # Dice over the images that contain the class: class 0 only image 0 (1), class 1 only image 0
    # (missed: ~0), class 2 only image 1
    np.testing.assert_allclose(ev["dice_present_per_class"][0], [want[0, 0], want[0, 1],
                                                                 want[1, 2]], rtol=1e-5)
    np.testing.assert_allclose(ev["dice_present"][0], np.mean([want[0, 0], want[0, 1],
                                                               want[1, 2]]), rtol=1e-5)
    assert ev["dice_present"][0] < ev["dice"][0]
    # HD95: image 0 class 0 identical -> 0; class 1 missed -> diagonal; class 2 both empty -> NaN
    diag = math.hypot(s, s)
    np.testing.assert_allclose(ev["per_image_hd95"][0, 0], [0.0, diag, np.nan])
    assert np.isnan(ev["per_image_hd95"][0, 1, 1])
    np.testing.assert_allclose(ev["per_image_hd95"][0, 1, 0], diag)  # false positive
    np.testing.assert_allclose(ev["hd95_per_class"][0, 1], diag)  # NaN of image 1 skipped


def test_local_params_path_and_no_hd95():
    s = 16
    rng = np.random.default_rng(1)
    masks = (rng.random((2, 3, s, s, 2)) > 0.5).astype(np.float32)
    split = _split(masks, masks, np.ones((2, 3), bool))
    split.masks[1, :, ..., 1] = 0   # class 1 absent from every image of client 1
    split.images[1, :, ..., 1] = 0
    ev = evaluate(Echo(), {}, split, hd95=False)
    np.testing.assert_allclose(ev["dice"], 1.0, rtol=1e-6)
    assert "hd95" not in ev
    assert np.isnan(ev["dice_present_per_class"][1, 1])   # no image contains it: NaN, skipped
    np.testing.assert_allclose(ev["dice_present"], 1.0, rtol=1e-6)
    ev = evaluate(Echo(), {}, split, per_client_params=True)
    np.testing.assert_allclose(ev["dice"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(ev["hd95"], 0.0)


# ------------------------------------------------------------------------------------------------
# HD95


def _oracle_hd95(pred, gt, q=95.0):
    """Brute force from the definition: edge pixel sets, all pairwise distances."""
    ep = np.argwhere(mask_edges(pred)).astype(float)
    eg = np.argwhere(mask_edges(gt)).astype(float)
    d = np.sqrt(((ep[:, None, :] - eg[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), q), np.percentile(d.min(0), q))


def _blobs(rng, s):
    yy, xx = np.mgrid[:s, :s]
    m = np.zeros((s, s), bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(1, s / 3)
        m |= (yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.5, 2)) ** 2 < r ** 2
    return m


def test_hd95_matches_brute_force_oracle():
    rng = np.random.default_rng(0)
    for _ in range(40):
        s = int(rng.integers(8, 40))
        p, g = _blobs(rng, s), _blobs(rng, s)
        if rng.random() < 0.3:
            p = rng.random((s, s)) > 0.7  # speckled masks: many small components
        if not p.any() or not g.any():
            continue
        np.testing.assert_allclose(hd95(p, g), _oracle_hd95(p, g), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(hd95(p, g, percentile=100), _oracle_hd95(p, g, 100),
                                   rtol=1e-9)


def test_hd95_known_values_and_empty_conventions():
    s = 20
    a = np.zeros((s, s), bool)
    a[4:8, 4:8] = True
    b = np.roll(a, 2, axis=1)
    assert hd95(a, a) == 0.0
    assert hd95(a, b) == pytest.approx(2.0)
    empty = np.zeros((s, s), bool)
    assert math.isnan(hd95(empty, empty))
    assert hd95(a, empty) == pytest.approx(math.hypot(s, s))
    assert hd95(empty, a) == pytest.approx(math.hypot(s, s))
    assert hd95(a, empty, one_empty="inf") == math.inf
    assert math.isnan(hd95(a, empty, one_empty="nan"))
    with pytest.raises(ValueError, match="one_empty"):
        hd95(a, b, one_empty="zero")
    batch = np.stack([np.stack([a, empty], -1), np.stack([b, empty], -1)])
    out = hd95_per_class(batch, np.stack([np.stack([b, empty], -1)] * 2))
    np.testing.assert_allclose(out, [[2.0, np.nan], [0.0, np.nan]])


def test_hd95_matches_monai():
    """Dev-only: the field's implementation, when installed (it needs torch)."""
    monai_hd = pytest.importorskip("monai.metrics").compute_hausdorff_distance
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for _ in range(20):
        p, g = _blobs(rng, 32), _blobs(rng, 32)
        if not p.any() or not g.any():
            continue
        want = float(monai_hd(torch.tensor(p[None, None].astype(np.float32)),
                              torch.tensor(g[None, None].astype(np.float32)),
                              include_background=True, percentile=95)[0, 0])
        np.testing.assert_allclose(hd95(p, g), want, rtol=1e-5)
    # the empty-mask conventions documented in fedmix_jax/hd95.py
    empty = torch.zeros((1, 1, 32, 32))
    full = torch.tensor(p[None, None].astype(np.float32))
    assert np.isnan(float(monai_hd(empty, empty, include_background=True, percentile=95)[0, 0]))
    # one empty: infinite distances, whose 95th percentile comes out NaN (inf - inf in the
    # interpolation); without a percentile (the plain Hausdorff distance) they give inf
    for a, b in ((full, empty), (empty, full)):
        assert np.isnan(float(monai_hd(a, b, include_background=True, percentile=95)[0, 0]))
        assert np.isinf(float(monai_hd(a, b, include_background=True)[0, 0]))

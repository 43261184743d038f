"""Lesion-free images: empty boxes are certain negatives, and empty targets get a gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax.data.federation import BOX, IMAGE, PIXEL
from fedmix_jax.losses import dice_loss_per_sample, empty_aware_loss_per_sample
from fedmix_jax.pseudo_labels import SelectionConfig, select_pseudo_labels


def _batch(rng, b=6, h=8, k=1):
    p1 = (rng.random((b, h, h, k)) > 0.6).astype(np.float32)
    p2 = p1.copy()
    boxes = np.zeros((b, h, h, k), np.float32)
    boxes[:3, 2:6, 2:6] = 1.0                   # samples 0-2 have a box, 3-5 an empty box
    labels = boxes.max(axis=(1, 2))
    return p1, p2, boxes, labels


def test_empty_box_samples_are_selected_with_an_empty_target():
    rng = np.random.default_rng(0)
    p1, p2, boxes, labels = _batch(rng)
    levels = np.full(6, BOX, np.int32)
    valid = np.ones(6, bool)
    p1[3:] = p2[3:] = 0.0    # models predict nothing on lesion-free images: reject_empty's case
    p1[5, 0, 0] = 1.0        # ... or something outside the (empty) box, with refine off
    on = select_pseudo_labels(p1, p2, boxes, labels, levels, valid, SelectionConfig(refine=False))
    off = select_pseudo_labels(p1, p2, boxes, labels, levels, valid,
                               SelectionConfig(refine=False, empty_boxes_negative=False))
    assert np.asarray(on.selected)[3:].all()
    assert not np.asarray(off.selected)[3:5].any()
    np.testing.assert_array_equal(np.asarray(on.pseudo1)[3:], 0.0)
    np.testing.assert_array_equal(np.asarray(on.pseudo2)[3:], 0.0)
    # samples with a box follow the usual rules either way
    np.testing.assert_array_equal(np.asarray(on.selected)[:3], np.asarray(off.selected)[:3])


def test_reference_selection_is_unchanged():
    ref = SelectionConfig.reference()
    assert not ref.reject_empty and not ref.use_image_labels and not ref.empty_boxes_negative


def test_empty_box_rule_touches_only_box_samples():
    rng = np.random.default_rng(1)
    p1, p2, boxes, labels = _batch(rng)
    p1[:] = p2[:] = 0.0
    for level in (PIXEL, IMAGE):
        levels = np.full(6, level, np.int32)
        a = select_pseudo_labels(p1, p2, boxes, labels, levels, np.ones(6, bool))
        b = select_pseudo_labels(p1, p2, boxes, labels, levels, np.ones(6, bool),
                                 SelectionConfig(empty_boxes_negative=False))
        np.testing.assert_array_equal(np.asarray(a.selected), np.asarray(b.selected))


def _numpy_bce(logits, targets):
    p = 1 / (1 + np.exp(-logits))
    return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(axis=(1, 2, 3))


def test_empty_aware_loss_matches_numpy_and_has_a_gradient_toward_background():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    targets = np.zeros((4, 8, 8, 1), np.float32)
    targets[:2, 2:5, 2:5] = 1.0                                  # 2 lesion, 2 lesion-free
    got = np.asarray(empty_aware_loss_per_sample(logits, targets))
    dice = np.asarray(dice_loss_per_sample(logits, targets))
    np.testing.assert_allclose(got[:2], dice[:2], rtol=1e-6)
    np.testing.assert_allclose(got[2:], _numpy_bce(logits[2:], targets[2:]), rtol=1e-5)
    # soft Dice on an empty target: (almost) no gradient; the BCE term: sigmoid(logit) / pixels
    g_dice = jax.grad(lambda x: dice_loss_per_sample(x, targets[2:]).sum())(logits[2:])
    g_new = jax.grad(lambda x: empty_aware_loss_per_sample(x, targets[2:]).sum())(logits[2:])
    expected = 1 / (1 + np.exp(-logits[2:])) / (8 * 8)
    np.testing.assert_allclose(np.asarray(g_new), expected, rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(g_new)).mean() > 100 * np.abs(np.asarray(g_dice)).mean()
    assert np.all(np.asarray(g_new) > 0)          # every logit is pushed toward background


def test_bce_mode_round_reports_dice_of_lesion_samples_only():
    """With empty_target_loss='bce', l_i measures the Dice loss of samples with foreground."""
    import fedmix_jax as fm
    from fedmix_jax.data.federation import stack_clients
    from fedmix_jax.models import UNet

    rng = np.random.default_rng(3)
    n, size = 8, 16
    masks = np.zeros((n, size, size, 1), np.float32)
    masks[:4, 4:10, 4:10] = 1.0                              # 4 lesion, 4 lesion-free
    images = (0.2 + 0.6 * masks + 0.1 * rng.random(masks.shape)).astype(np.float32)
    client = dict(images=images, masks=masks, boxes=masks.copy(),
                  image_labels=masks.max(axis=(1, 2)), levels=np.full(n, PIXEL, np.int32))
    lesion_free = dict(client, images=client["images"][4:], masks=masks[4:], boxes=masks[4:],
                       image_labels=client["image_labels"][4:], levels=client["levels"][4:])
    split = jax.device_put(stack_clients([client, lesion_free]))
    model = UNet(width=4, depth=2)
    out = {}
    for mode in ("dice", "bce"):
        cfg = fm.RoundConfig(strategy=fm.get_strategy("fedavg_pixel"), batch_size=8, hflip=False,
                            vflip=False, empty_target_loss=mode)
        state = fm.init_state(model, jax.random.PRNGKey(0), (size, size, 1), 2, cfg)
        _, m = fm.make_round_fn(model, cfg)(state, split)
        out[mode] = jax.device_get(m)
    # "dice": the lesion-free client's loss is ~1 (soft Dice of empty targets)
    assert out["dice"].reports.loss1[1] > 0.99
    # "bce": it has no lesion sample, so nothing enters its l_i; it still trained (1 step)
    assert out["bce"].reports.loss1[1] == 0.0 and out["bce"].reports.steps[1] == 1
    assert 0.0 < out["bce"].reports.loss1[0] < 1.0




def test_false_positive_rate_counts_lesion_free_images_with_any_foreground():
    import flax.linen as nn

    from fedmix_jax.data.federation import stack_clients
    from fedmix_jax.evaluation import evaluate

    class Echo(nn.Module):          # predicts foreground where the image is > 0.5
        @nn.compact
        def __call__(self, x):
            self.param("unused", nn.initializers.zeros, ())
            return (x - 0.5) * 100.0

    size = 8
    masks = np.zeros((5, size, size, 1), np.float32)
    masks[:2, 2:5, 2:5] = 1.0                           # 2 lesion images, 3 lesion-free
    images = masks.copy()
    images[2, 0, 0] = 1.0                               # one lesion-free image gets a false pixel
    client = dict(images=images, masks=masks, boxes=masks, image_labels=masks.max(axis=(1, 2)),
                  levels=np.zeros(5, np.int32))
    split = stack_clients([client, dict(client, images=masks.copy())])
    model = Echo()
    params = model.init(jax.random.PRNGKey(0), images[:1])["params"]
    res = evaluate(model, params, split, hd95=False)
    np.testing.assert_allclose(res["false_positive_rate"], [1 / 3, 0.0])
    assert res["num_lesion_free"].tolist() == [3, 3]
    np.testing.assert_allclose(res["mean_false_positive_rate"], 1 / 6)
    np.testing.assert_allclose(res["dice_present"], [1.0, 1.0], atol=1e-4)


def test_multiclass_box_sample_needs_every_boxed_class_found():
    h = 8
    boxes = np.zeros((2, h, h, 2), np.float32)
    boxes[:, 1:4, 1:4, 0] = 1.0
    boxes[:, 4:7, 4:7, 1] = 1.0                        # both samples have a box of each class
    p = np.zeros_like(boxes)
    p[:, 1:4, 1:4, 0] = 1.0                            # class 0 found in both samples
    p[1, 4:7, 4:7, 1] = 1.0                            # class 1 found only in sample 1
    levels = np.full(2, BOX, np.int32)
    out = select_pseudo_labels(p, p.copy(), boxes, boxes.max(axis=(1, 2)), levels,
                               np.ones(2, bool), SelectionConfig(agreement=0.0, box_fit=0.0))
    assert np.asarray(out.selected).tolist() == [False, True]

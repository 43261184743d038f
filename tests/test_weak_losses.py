"""The direct weak-label losses (fedmix_jax.losses, "Weak supervision used directly") against NumPy
oracles written from their definitions, and fedmix_plus's invariants on tiny shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmix_jax import losses as L
from fedmix_jax import weak_objective as W
from fedmix_jax.data.federation import BOX, IMAGE, NONE, PIXEL


def _softplus(x):
    return np.logaddexp(0.0, x)


def _bce(logit, target):
    return _softplus(logit) - target * logit


def _random_case(seed, b=5, h=12, w=10, k=2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (b, h, w, k)).astype(np.float32)
    boxes = np.zeros((b, h, w, k), np.float32)
    for i in range(b):
        for c in range(k):
            for _ in range(rng.integers(0, 3)):          # 0-2 boxes per class
                y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
                boxes[i, y0:y0 + rng.integers(2, h - y0), x0:x0 + rng.integers(2, w - x0), c] = 1
    labels = rng.integers(0, 2, (b, k)).astype(np.float32)
    levels = np.array([BOX, IMAGE, PIXEL, NONE, BOX][:b])
    valid = np.ones(b, bool)
    return logits, boxes, labels, levels, valid


def _oracle_regions(boxes, labels, levels, valid):
    b, h, w, k = boxes.shape
    region = np.zeros_like(boxes)
    present = np.zeros((b, k), np.float32)
    known = np.zeros((b, k), np.float32)
    for i in range(b):
        if not valid[i]:
            pass
        if levels[i] == BOX:
            region[i] = boxes[i]
            present[i] = boxes[i].reshape(-1, k).max(0)
            known[i] = valid[i]
        elif levels[i] == IMAGE:
            region[i] = np.broadcast_to(labels[i], (h, w, k))
            present[i] = labels[i]
            known[i] = valid[i]
        else:
            present[i] = labels[i]
            region[i] = np.broadcast_to(labels[i], (h, w, k))
    return region, present, known


def _oracle_emptiness(logits, region, known):
    out = []
    for i in range(logits.shape[0]):
        terms = [_bce(logits[i, y, x, c], 0.0)
                 for y in range(logits.shape[1]) for x in range(logits.shape[2])
                 for c in range(logits.shape[3]) if known[i, c] and region[i, y, x, c] == 0]
        out.append(np.mean(terms) if terms else 0.0)
    return np.array(out)


def _near(mask, margin):
    """Pixels within `margin` px (Chebyshev distance) of a [H, W] bool mask."""
    near = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask)):
        near[max(y - margin, 0):y + margin + 1, max(x - margin, 0):x + margin + 1] = True
    return near


def _oracle_mil(logits, region, present, known, margin=0, spare=False):
    # positive bag: the region of a present class; negative bag: every pixel farther than
    # `margin` px (Chebyshev distance) from the region (with `spare`: and from every present
    # class's region)
    out = []
    for i in range(logits.shape[0]):
        lesions = (region[i] * present[i]).max(-1) > 0
        terms = []
        for c in range(logits.shape[3]):
            if not known[i, c]:
                continue
            inside = region[i, :, :, c] > 0
            near = _near(lesions, margin) if spare else np.zeros_like(inside)
            for y, x in zip(*np.nonzero(inside)):
                near[max(y - margin, 0):y + margin + 1, max(x - margin, 0):x + margin + 1] = True
            t = 0.0
            if present[i, c]:
                m = logits[i, :, :, c][inside].max() if inside.any() else -1e4
                t += _bce(m, 1.0)
            if (~near).any():
                t += _bce(logits[i, :, :, c][~near].max(), 0.0)
            terms.append(t)
        out.append(np.mean(terms) if terms else 0.0)
    return np.array(out)


def _oracle_tightness(logits, boxes, known, inset):
    out = []
    b, h, w, k = logits.shape
    for i in range(b):
        terms = []
        for c in range(k):
            if not known[i, c]:
                continue
            box = boxes[i, :, :, c] > 0
            for y in range(h):                      # rows: bag = the row's box pixels
                ok = [box[y, x] and all(0 <= y + d < h and box[y + d, x]
                                        for d in (-inset, inset)) for x in range(w)]
                if any(ok):
                    terms.append(_softplus(-logits[i, y, :, c][box[y]].max()))
            for x in range(w):                      # columns
                ok = [box[y, x] and all(0 <= x + d < w and box[y, x + d]
                                        for d in (-inset, inset)) for y in range(h)]
                if any(ok):
                    terms.append(_softplus(-logits[i, :, x, c][box[:, x]].max()))
        out.append(np.mean(terms) if terms else 0.0)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weak_label_regions_match_oracle(seed):
    logits, boxes, labels, levels, valid = _random_case(seed)
    valid[4] = False
    region, present, known = jax.jit(L.weak_label_regions)(boxes, labels, levels, valid)
    r, p, k = _oracle_regions(boxes, labels, levels, valid)
    weak = np.isin(levels, [BOX, IMAGE])
    np.testing.assert_array_equal(np.asarray(known), k * valid[:, None])
    # region / present matter only where the label is known
    np.testing.assert_array_equal(np.asarray(region)[weak], r[weak])
    np.testing.assert_array_equal(np.asarray(present)[weak], p[weak])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emptiness_and_mil_match_oracles(seed):
    logits, boxes, labels, levels, valid = _random_case(seed)
    region, present, known = L.weak_label_regions(boxes, labels, levels, valid)
    region, present, known = map(np.asarray, (region, present, known))
    np.testing.assert_allclose(
        jax.jit(L.outside_region_bce_per_sample)(logits, region, known),
        _oracle_emptiness(logits, region, known), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        jax.jit(L.mil_image_loss_per_sample)(logits, region, present, known),
        _oracle_mil(logits, region, present, known), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed,margin", [(0, 1), (1, 2), (2, 4)])
def test_mil_negative_bag_leaves_a_margin_around_the_region(seed, margin):
    logits, boxes, labels, levels, valid = _random_case(seed)
    region, present, known = map(np.asarray, L.weak_label_regions(boxes, labels, levels, valid))
    got = jax.jit(L.mil_image_loss_per_sample, static_argnums=4)(logits, region, present, known,
                                                                  margin)
    np.testing.assert_allclose(got, _oracle_mil(logits, region, present, known, margin),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed,inset", [(0, 0), (1, 1), (2, 2)])
def test_tightness_matches_oracle(seed, inset):
    logits, boxes, labels, levels, valid = _random_case(seed)
    known = np.ones((logits.shape[0], logits.shape[3]), np.float32)
    known[2] = 0
    got = jax.jit(L.box_tightness_loss_per_sample, static_argnums=3)(logits, boxes, known, inset)
    np.testing.assert_allclose(got, _oracle_tightness(logits, boxes, known, inset),
                               rtol=1e-5, atol=1e-6)


def test_tightness_inset_drops_the_margin_lines():
    # A 9-row box whose lesion fills only its middle row: with inset 4 only the middle row (and
    # the columns) count, so a prediction of exactly the lesion has a lower loss than with inset 0.
    logits = np.full((1, 16, 16, 1), -8.0, np.float32)
    boxes = np.zeros_like(logits)
    boxes[0, 3:12, 4:9] = 1
    logits[0, 7, 4:9] = 8.0
    known = np.ones((1, 1), np.float32)
    loose = float(L.box_tightness_loss_per_sample(logits, boxes, known, 0)[0])
    tight = float(L.box_tightness_loss_per_sample(logits, boxes, known, 4)[0])
    assert tight < 1e-3 < loose


def test_absent_class_pushes_the_maximum_down():
    # An absent class (image label 0, or an empty box): the MIL term is BCE of the image's max
    # toward 0, so its gradient is on the maximum pixel only; emptiness covers every pixel.
    logits = np.zeros((2, 8, 8, 1), np.float32)
    logits[:, 2, 3] = 3.0
    boxes = np.zeros_like(logits)
    labels = np.zeros((2, 1), np.float32)
    levels = np.array([IMAGE, BOX])
    valid = np.ones(2, bool)
    region, present, known = L.weak_label_regions(boxes, labels, levels, valid)
    g = jax.grad(lambda x: L.mil_image_loss_per_sample(x, region, present, known).sum())(logits)
    g = np.asarray(g)
    assert (g[:, 2, 3] > 0).all() and np.count_nonzero(g) == 2
    np.testing.assert_allclose(L.mil_image_loss_per_sample(logits, region, present, known),
                               _softplus(3.0), rtol=1e-6)
    emp = L.outside_region_bce_per_sample(logits, region, known)
    np.testing.assert_allclose(emp, (63 * _softplus(0.0) + _softplus(3.0)) / 64, rtol=1e-6)


def test_weak_loss_is_zero_without_weak_labels_and_finite_grads():
    logits, boxes, labels, levels, valid = _random_case(3)
    levels = np.array([PIXEL, NONE, PIXEL, NONE, PIXEL])
    weights = W.WeakSupervision(tightness_inset=1)
    f = lambda x: W.weak_supervision_loss_per_sample(x, boxes, labels, levels, valid,  # noqa
                                                     weights)
    np.testing.assert_array_equal(f(logits), 0.0)
    g = jax.grad(lambda x: f(x).sum())(logits)
    assert np.isfinite(np.asarray(g)).all() and not np.asarray(g).any()


def test_weak_loss_combines_the_terms_by_their_weights():
    logits, boxes, labels, levels, valid = _random_case(4)
    region, present, known = L.weak_label_regions(boxes, labels, levels, valid)
    box_known = np.asarray(known) * (levels == BOX)[:, None]
    w = W.WeakSupervision(emptiness=0.5, tightness=2.0, image_mil=0.25, tightness_inset=1,
                          outside_margin=2, absent_emptiness=0.3)
    known, present = np.asarray(known), np.asarray(present)
    want = (0.5 * L.outside_region_bce_per_sample(logits, region, known * present)
            + 0.5 * 0.3 * L.outside_region_bce_per_sample(logits, region, known * (1 - present))
            + 0.25 * L.mil_image_loss_per_sample(logits, region, present, known, 2, 1.0, True)
            + 2.0 * L.box_tightness_loss_per_sample(logits, boxes, box_known, 1))
    np.testing.assert_allclose(
        W.weak_supervision_loss_per_sample(logits, boxes, labels, levels, valid, w), want,
        rtol=1e-6)
    off = W.WeakSupervision(emptiness=0.0, tightness=0.0, image_mil=0.0)
    np.testing.assert_array_equal(
        W.weak_supervision_loss_per_sample(logits, boxes, labels, levels, valid, off), 0.0)
    # One class: each sample's class is either present or absent, so with absent_emptiness 1
    # the two parts are the single emptiness term over every known class.
    one = tuple(np.asarray(x)[..., :1] for x in (logits, boxes, labels))
    r1, p1, k1 = L.weak_label_regions(one[1], one[2], levels, valid)
    emptiness_only = W.WeakSupervision(tightness=0.0, image_mil=0.0)
    np.testing.assert_allclose(
        W.weak_supervision_loss_per_sample(*one, levels, valid, emptiness_only),
        L.outside_region_bce_per_sample(one[0], r1, k1), rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(emptiness=-1.0), dict(tightness=float("nan")),
                                 dict(image_mil=float("inf")), dict(tightness_inset=-1),
                                 dict(outside_margin=-2)])
def test_weak_supervision_refuses_bad_weights(bad):
    with pytest.raises(ValueError):
        W.WeakSupervision(**bad)


def test_weak_losses_are_jittable_under_vmap():
    logits, boxes, labels, levels, valid = _random_case(5)
    f = jax.jit(jax.vmap(lambda *a: W.weak_supervision_loss_per_sample(
        *(x[None] for x in a), W.WeakSupervision())[0]))
    out = f(jnp.asarray(logits), boxes, labels, levels, valid)
    np.testing.assert_allclose(out, W.weak_supervision_loss_per_sample(
        logits, boxes, labels, levels, valid, W.WeakSupervision()), rtol=1e-6)


def test_negative_max_matches_oracle():
    logits, boxes, *_ = _random_case(6)
    targets = boxes.copy()
    targets[1] = 0                                   # an empty target in every class
    want = np.array([np.mean([_softplus(logits[i, :, :, c].max())
                              if not targets[i, :, :, c].any() else 0.0
                              for c in range(logits.shape[3])]) for i in range(len(logits))])
    np.testing.assert_allclose(jax.jit(L.negative_max_loss_per_sample)(logits, targets), want,
                               rtol=1e-6)


@pytest.mark.parametrize("seed,margin", [(0, 0), (1, 2), (2, 3)])
def test_spared_negatives_match_oracles(seed, margin):
    # spare_lesions: the negative bags and the negative maxima leave out the pixels near any
    # present class's region (box / image label) or any class's target foreground.
    logits, boxes, labels, levels, valid = _random_case(seed, k=3)
    region, present, known = map(np.asarray, L.weak_label_regions(boxes, labels, levels, valid))
    got = jax.jit(L.mil_image_loss_per_sample, static_argnums=(4, 6))(
        logits, region, present, known, margin, 1.0, True)
    np.testing.assert_allclose(got, _oracle_mil(logits, region, present, known, margin, True),
                               rtol=1e-5, atol=1e-6)
    targets = boxes.copy()
    targets[1, ..., 1:] = 0                          # a sample with one class only
    want = []
    for i in range(len(logits)):
        spared = _near(targets[i].max(-1) > 0, margin)
        want.append(np.mean([_softplus(logits[i, :, :, c][~spared].max())
                             if not targets[i, :, :, c].any() and (~spared).any() else 0.0
                             for c in range(logits.shape[3])]))
    np.testing.assert_allclose(
        jax.jit(L.negative_max_loss_per_sample, static_argnums=2)(logits, targets, margin),
        want, rtol=1e-5, atol=1e-6)


def test_sparing_changes_nothing_with_one_class():
    logits, boxes, labels, levels, valid = (x[..., :1] if x.ndim > 1 else x
                                            for x in _random_case(7))
    region, present, known = L.weak_label_regions(boxes, labels, levels, valid)
    for margin in (0, 4):
        np.testing.assert_array_equal(
            L.mil_image_loss_per_sample(logits, region, present, known, margin, 1.0, True),
            L.mil_image_loss_per_sample(logits, region, present, known, margin, 1.0, False))
        np.testing.assert_array_equal(L.negative_max_loss_per_sample(logits, boxes, margin),
                                      L.negative_max_loss_per_sample(logits, boxes))


def test_sparing_keeps_a_multi_class_lesion_out_of_the_other_classes_negatives():
    # A class-0 lesion that the model also predicts (weakly) as class 1: without sparing, the
    # absent class 1's negative maximum sits on the lesion; with it, the lesion is left alone.
    logits = np.full((1, 16, 16, 2), -6.0, np.float32)
    logits[0, 5:9, 5:9, :] = 2.0
    targets = np.zeros_like(logits)
    targets[0, 5:9, 5:9, 0] = 1
    g_all = np.asarray(jax.grad(lambda x: L.negative_max_loss_per_sample(x, targets).sum())(
        logits))
    g_spared = np.asarray(jax.grad(lambda x: L.negative_max_loss_per_sample(
        x, targets, 2).sum())(logits))
    assert g_all[0, 5:9, 5:9, 1].sum() > 0.4 and not g_spared[0, 5:9, 5:9].any()



@pytest.mark.parametrize("seed,fill", [(0, (0.3, 0.5)), (1, (0.2, 0.2)), (2, (0.05, 0.9))])
def test_box_size_bounds_match_oracle(seed, fill):
    logits, boxes, labels, levels, valid = _random_case(seed, k=3)
    known = np.ones((len(logits), 3), np.float32)
    known[1] = 0
    got = jax.jit(L.box_size_loss_per_sample, static_argnums=(3, 4))(logits, boxes, known, *fill)
    want = []
    for i in range(len(logits)):
        terms = []
        for c in range(3):
            box = boxes[i, :, :, c] > 0
            if known[i, c] and box.any():
                r = (1 / (1 + np.exp(-logits[i, :, :, c][box]))).sum() / box.sum()
                terms.append(max(0.0, 1 - r / fill[0]) + max(0.0, r / fill[1] - 1))
        want.append(np.mean(terms) if terms else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_box_size_bounds_push_a_shrunken_prediction_outward():
    # A prediction covering a tenth of its box is below the lower bound: the gradient raises
    # the probability of every box pixel, and nothing outside the box.
    logits = np.full((1, 16, 16, 1), -4.0, np.float32)
    boxes = np.zeros_like(logits)
    boxes[0, 4:12, 4:12] = 1
    logits[0, 7:9, 7:9] = 4.0
    g = np.asarray(jax.grad(lambda x: L.box_size_loss_per_sample(
        x, boxes, np.ones((1, 1), np.float32), 0.3, 0.5).sum())(logits))
    assert (g[0, 4:12, 4:12] < 0).all() and not g[boxes == 0].any()
    with pytest.raises(ValueError):
        W.WeakSupervision(box_fill_min=0.6, box_fill_max=0.5)


def _oracle_appearance(images, boxes, smooth, ring, iterations):
    """Box appearance masks from their definition, one sample and class at a time."""
    b, h, w, k = boxes.shape
    gray = images.mean(-1)
    masks, contrast = np.zeros_like(boxes), np.zeros((b, k))
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    for i in range(b):
        g = np.array([[gray[i, max(y - smooth, 0):y + smooth + 1,
                            max(x - smooth, 0):x + smooth + 1].mean() for x in range(w)]
                      for y in range(h)])
        for c in range(k):
            box = boxes[i, :, :, c] > 0
            if not box.any():
                continue
            border = _near(box, ring) & _near(~box, ring)       # within `ring` px of the edge
            a = np.stack([np.ones(border.sum()), yy[border], xx[border]], 1)
            coef = np.linalg.solve(a.T @ a + 1e-4 * np.eye(3), a.T @ g[border])
            r = g - (coef[0] + coef[1] * yy + coef[2] * xx)
            t = r[box].mean()
            for _ in range(iterations):
                lo, hi = r[box][r[box] < t], r[box][r[box] >= t]
                low = lo.mean() if lo.size else 0.0
                high = hi.mean() if hi.size else 0.0
                t = 0.5 * (low + high)
            ref = r[border].mean() if border.any() else 0.0
            dark = abs(low - ref) > abs(high - ref)
            masks[i, :, :, c] = box & ((r < t) if dark else (r >= t))
            sd = r[border].std() if border.any() else 0.0
            contrast[i, c] = max(abs(low - ref), abs(high - ref)) / max(sd, 1e-6)
    return masks, contrast


@pytest.mark.parametrize("seed, smooth, ring", [(0, 0, 1), (1, 1, 2), (2, 2, 1)])
def test_box_appearance_masks_match_oracle(seed, smooth, ring):
    logits, boxes, *_ = _random_case(seed, h=14, w=12)
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, boxes.shape[:3] + (3,)).astype(np.float32)
    images -= 0.4 * boxes[..., :1] * rng.uniform(0.5, 1.0, boxes.shape[:3] + (1,))
    masks, contrast = L.box_appearance_masks(images, boxes, smooth, ring, iterations=4)
    want_masks, want_contrast = _oracle_appearance(images, boxes, smooth, ring, 4)
    # a pixel at the threshold may round either way in float32: allow a few
    assert np.mean(np.asarray(masks) != want_masks) < 0.01
    np.testing.assert_allclose(contrast, want_contrast, rtol=2e-3, atol=2e-3)


def test_box_appearance_finds_a_soft_lesion_under_a_vignette():
    """A dark disc with a soft rim on a brightness gradient: the mask is the disc (the gradient
    alone would split the box along it), and the contrast tells a lesion from an empty box."""
    h = w = 32
    yy, xx = np.mgrid[:h, :w]
    disc = np.hypot(yy - 15.5, xx - 14.5) < 6
    alpha = 1 / (1 + np.exp(-(6 - np.hypot(yy - 15.5, xx - 14.5)) / 1.2))
    image = 0.8 - 0.4 * xx / w - 0.15 * alpha + np.random.default_rng(0).normal(0, 0.01, (h, w))
    boxes = np.zeros((2, h, w, 1), np.float32)
    boxes[:, 5:27, 4:26] = 1
    images = np.stack([image, 0.8 - 0.4 * xx / w])[..., None].astype(np.float32)
    masks, contrast = L.box_appearance_masks(images, boxes)
    dice = 2 * (np.asarray(masks[0, ..., 0]) * disc).sum() / (np.asarray(masks[0]).sum() + disc.sum())
    assert dice > 0.85
    assert contrast[0, 0] > 3.0 > contrast[1, 0]


def test_box_appearance_loss_matches_oracle():
    logits, boxes, *_ = _random_case(7)
    rng = np.random.default_rng(7)
    masks = (rng.uniform(size=boxes.shape) < 0.5).astype(np.float32) * boxes
    confident = rng.integers(0, 2, boxes.shape[::3]).astype(np.float32)
    want = []
    for i in range(boxes.shape[0]):
        terms = [_bce(logits[i, ..., c], masks[i, ..., c])[boxes[i, ..., c] > 0].mean()
                 for c in range(boxes.shape[3]) if confident[i, c] and boxes[i, ..., c].any()]
        want.append(np.mean(terms) if terms else 0.0)
    np.testing.assert_allclose(L.box_appearance_loss_per_sample(logits, masks, boxes, confident),
                               want, rtol=1e-5, atol=1e-6)


def test_weak_loss_adds_box_appearance_on_confident_box_samples():
    logits, boxes, labels, levels, valid = _random_case(8)
    rng = np.random.default_rng(8)
    images = rng.uniform(0, 1, boxes.shape[:3] + (1,)).astype(np.float32) - 0.5 * boxes[..., :1]
    base = W.WeakSupervision()
    plus = W.WeakSupervision(box_appearance=2.0, appearance_min_contrast=0.0)
    masks, contrast = L.box_appearance_masks(images, boxes, 2, 2)
    box_known = (levels == BOX)[:, None] * np.ones(boxes.shape[::3])
    want = (W.weak_supervision_loss_per_sample(logits, boxes, labels, levels, valid, base)
            + 2.0 * L.box_appearance_loss_per_sample(logits, masks, boxes, box_known))
    np.testing.assert_allclose(W.weak_supervision_loss_per_sample(
        logits, boxes, labels, levels, valid, plus, images), want, rtol=1e-5)
    with pytest.raises(ValueError, match="images"):
        W.weak_supervision_loss_per_sample(logits, boxes, labels, levels, valid, plus)

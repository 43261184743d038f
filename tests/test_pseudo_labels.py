"""Pseudo-label refinement and selection against a per-sample NumPy reference of the spec."""

import itertools

import numpy as np
import pytest

from fedmix_jax.data.federation import BOX, IMAGE, NONE, PIXEL
from fedmix_jax.pseudo_labels import (SelectionConfig, binarize, pseudo_labels_from_logits,
                                      select_pseudo_labels)

EPS = 1e-4


def dice(a, b):
    return (2 * (a * b).sum() + EPS) / (a.sum() + b.sum() + EPS)


def reference_one(p1, p2, box, label, level, valid, cfg):
    """One sample, written directly from fedmix-spec.md (pseudo-labels + deliberate difference 2)."""
    k = p1.shape[-1]
    p1, p2 = p1.copy(), p2.copy()
    if cfg.refine and level == BOX:
        p1, p2 = p1 * box, p2 * box
    if level == IMAGE and ((cfg.refine and k > 1) or cfg.use_image_labels):
        p1, p2 = p1 * label, p2 * label
    if not valid:
        return p1, p2, False
    if level == PIXEL:
        return p1, p2, True
    agree = dice(p1, p2) >= cfg.agreement
    if level == IMAGE and cfg.use_image_labels:
        if label.sum() == 0:
            return p1, p2, True
        ok = all(p1[..., c].sum() > 0 and p2[..., c].sum() > 0 for c in range(k) if label[c])
        return p1, p2, bool(agree and ok)
    sel = agree
    if level == BOX:
        sel = sel and dice(p1 * box, box) >= cfg.box_fit
    if cfg.reject_empty:
        sel = sel and (p1.sum() + p2.sum() > 0)
    return p1, p2, bool(sel)


def random_batch(rng, b, k, size=10):
    """Predictions that often agree, sometimes are empty, boxes around a random square."""
    base = (rng.random((b, size, size, k)) > 0.55).astype(np.float32)
    p1 = base.copy()
    p2 = base.copy()
    flip = rng.random((b, size, size, k)) < rng.choice([0.0, 0.02, 0.3], size=(b, 1, 1, 1))
    p2[flip] = 1 - p2[flip]
    empty = rng.random(b) < 0.2
    p1[empty] = 0
    p2[empty] = 0
    boxes = np.zeros((b, size, size, k), np.float32)
    for i in range(b):
        y0, x0 = rng.integers(0, size // 2, 2)
        h, w = rng.integers(2, size // 2 + 1, 2)
        boxes[i, y0:y0 + h, x0:x0 + w] = 1
        if rng.random() < 0.3:
            boxes[i] = 1            # a box that covers the image: the prediction fills it poorly
    labels = (rng.random((b, k)) > 0.4).astype(np.float32)
    levels = rng.choice([PIXEL, BOX, IMAGE, NONE], size=b).astype(np.int32)
    valid = rng.random(b) > 0.1
    return p1, p2, boxes, labels, levels, valid


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("refine,reject_empty,use_image_labels",
                         list(itertools.product([True, False], repeat=3)))
def test_selection_matches_reference(k, refine, reject_empty, use_image_labels):
    rng = np.random.default_rng(k * 8 + refine * 4 + reject_empty * 2 + use_image_labels)
    cfg = SelectionConfig(refine=refine, reject_empty=reject_empty,
                          use_image_labels=use_image_labels)
    p1, p2, boxes, labels, levels, valid = random_batch(rng, 64, k)
    out = select_pseudo_labels(p1, p2, boxes, labels, levels, valid, cfg)
    for i in range(64):
        r1, r2, sel = reference_one(p1[i], p2[i], boxes[i], labels[i], levels[i], valid[i], cfg)
        np.testing.assert_array_equal(np.asarray(out.pseudo1[i]), r1)
        np.testing.assert_array_equal(np.asarray(out.pseudo2[i]), r2)
        assert bool(out.selected[i]) == sel, (i, levels[i])
    # the test exercises both outcomes
    assert 0 < int(np.asarray(out.selected).sum()) < 64


def test_reference_behaviour_accepts_empty_agreement_and_fix_rejects_it():
    z = np.zeros((2, 8, 8, 1), np.float32)
    labels = np.ones((2, 1), np.float32)
    levels = np.array([NONE, IMAGE], np.int32)
    valid = np.ones(2, bool)
    ref = select_pseudo_labels(z, z, z, labels, levels, valid, SelectionConfig.reference())
    fixed = select_pseudo_labels(z, z, z, labels, levels, valid, SelectionConfig())
    assert np.asarray(ref.selected).tolist() == [True, True]
    assert np.asarray(fixed.selected).tolist() == [False, False]


def test_binary_absent_image_label_gives_empty_selected_pseudo_label():
    p = np.ones((1, 8, 8, 1), np.float32)
    out = select_pseudo_labels(p, p, p, np.zeros((1, 1), np.float32),
                               np.array([IMAGE], np.int32), np.ones(1, bool))
    assert bool(out.selected[0]) and float(np.asarray(out.pseudo1).sum()) == 0.0


def test_box_refinement_and_fit():
    p = np.zeros((2, 10, 10, 1), np.float32)
    p[:, 2:8, 2:8] = 1
    box = np.zeros_like(p)
    box[0, 3:7, 3:7] = 1        # prediction fills this box: kept, clipped to it
    box[1] = 1                  # prediction covers 36 % of the box: dice ~ 0.53 -> kept at 0.5
    box[1, :, :] = 0
    box[1, 0:10, 0:9] = 1       # 90 px box, 36 px prediction: dice = 72 / 126 = 0.571
    out = select_pseudo_labels(p, p, box, np.ones((2, 1), np.float32),
                               np.array([BOX, BOX], np.int32), np.ones(2, bool))
    assert float(np.asarray(out.pseudo1[0]).sum()) == 16
    assert np.asarray(out.selected).tolist() == [True, True]
    strict = select_pseudo_labels(p, p, box, np.ones((2, 1), np.float32),
                                  np.array([BOX, BOX], np.int32), np.ones(2, bool),
                                  SelectionConfig(box_fit=0.6))
    assert np.asarray(strict.selected).tolist() == [True, False]


def test_binarize_threshold():
    logits = np.array([-1.0, -1e-3, 1e-3, 2.0], np.float32)
    np.testing.assert_array_equal(binarize(logits), [0, 0, 1, 1])
    out = pseudo_labels_from_logits(np.ones((1, 4, 4, 1)), -np.ones((1, 4, 4, 1)),
                                    np.ones((1, 4, 4, 1)), np.ones((1, 1)),
                                    np.array([NONE]), np.array([True]))
    assert not bool(out.selected[0])

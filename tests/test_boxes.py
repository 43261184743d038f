"""Tests for fedmix_jax.data.boxes: connected components, noisy boxes, box masks, scaling."""

from collections import deque

import numpy as np
import pytest

from fedmix_jax.data.boxes import (box_mask, box_masks_from_masks, boxes_from_mask,
                                   connected_components, sample_rng, scale_boxes)


def _bfs_label(mask, connectivity):
    """Reference labelling: BFS from each unlabelled pixel in raster order."""
    h, w = mask.shape
    labels = np.zeros((h, w), int)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not labels[y, x]:
                n += 1
                labels[y, x] = n
                queue = deque([(y, x)])
                while queue:
                    a, b = queue.popleft()
                    for dy, dx in steps:
                        c, d = a + dy, b + dx
                        if 0 <= c < h and 0 <= d < w and mask[c, d] and not labels[c, d]:
                            labels[c, d] = n
                            queue.append((c, d))
    return labels, n


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_matches_bfs(connectivity):
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(1, 28, size=2)
        mask = rng.random((h, w)) < rng.random()
        labels, count = connected_components(mask, connectivity)
        ref, ref_count = _bfs_label(mask, connectivity)
        assert count == ref_count
        np.testing.assert_array_equal(labels, ref)
        assert labels.dtype == np.int32


def test_connected_components_connectivity_and_edge_cases():
    diag = np.eye(5, dtype=bool)
    assert connected_components(diag, 8)[1] == 1
    assert connected_components(diag, 4)[1] == 5
    labels, count = connected_components(np.zeros((4, 6)))
    assert count == 0 and labels.shape == (4, 6) and not labels.any()
    # numeric masks are thresholded at 0.5
    assert connected_components(np.full((3, 3), 0.4))[1] == 0
    assert connected_components(np.full((3, 3), 0.6))[1] == 1
    # a long snake is one component
    snake = np.zeros((41, 40), bool)
    snake[::2] = True
    for i in range(1, 41, 2):
        snake[i, 39 if (i // 2) % 2 == 0 else 0] = True
    assert connected_components(snake, 4)[1] == 1
    with pytest.raises(ValueError):
        connected_components(diag, 6)


def test_boxes_contain_components_with_margins():
    h, w = 80, 90
    mask = _disk(h, w, 25, 25, 8) | _disk(h, w, 55, 60, 10)
    for i in range(20):
        boxes = boxes_from_mask(mask, sample_rng(1, i))
        assert boxes.shape == (2, 4) and boxes.dtype == np.int64
        bm = box_mask(boxes, h, w)
        assert bm[mask].min() == 1.0  # every lesion pixel lies inside a box
        # margins relative to the tight boxes (no clipping here)
        tight = np.array([[17, 17, 33, 33], [50, 45, 70, 65]])
        lo = tight[:, :2] - boxes[:, :2]
        hi = boxes[:, 2:] - tight[:, 2:]
        margins = np.concatenate([lo, hi], axis=1)
        assert margins.min() >= 1 and margins.max() <= 9
    # margins vary between samples but are a fixed function of the sample's generator
    a = boxes_from_mask(mask, sample_rng(3, 0, 1))
    b = boxes_from_mask(mask, sample_rng(3, 0, 1))
    np.testing.assert_array_equal(a, b)
    all_boxes = np.stack([boxes_from_mask(mask, sample_rng(5, i)) for i in range(50)])
    assert len(np.unique(all_boxes[:, 0, 0])) > 3


def test_margin_distribution_covers_range_and_clipping():
    mask = np.zeros((50, 50), bool)
    mask[20:30, 20:30] = True
    rng = np.random.default_rng(0)
    m = np.concatenate([(np.array([20, 20]) - boxes_from_mask(mask, rng)[0, :2]) for _ in range(300)])
    assert set(np.unique(m)) == set(range(1, 10))
    # a lesion touching the border is clipped to the image
    corner = np.zeros((30, 40), bool)
    corner[0:5, 35:40] = True
    b = boxes_from_mask(corner, rng)[0]
    assert b[1] == 0 and b[2] == 39 and 1 <= 35 - b[0] <= 9 and 1 <= b[3] - 4 <= 9
    # fixed margin needs no rng
    np.testing.assert_array_equal(boxes_from_mask(mask, None, margin=2), [[18, 18, 31, 31]])


def test_per_component_false_min_area_and_empty():
    h, w = 60, 60
    mask = _disk(h, w, 15, 15, 5) | _disk(h, w, 45, 40, 6)
    mask[2, 58] = True  # a one-pixel speck
    rng = np.random.default_rng(0)
    assert boxes_from_mask(mask, rng).shape == (3, 4)
    assert boxes_from_mask(mask, rng, min_area=2).shape == (2, 4)
    one = boxes_from_mask(mask, rng, per_component=False)
    assert one.shape == (1, 4)
    assert box_mask(one, h, w)[mask].min() == 1.0
    state = rng.bit_generator.state
    empty = boxes_from_mask(np.zeros((h, w)), rng)
    assert empty.shape == (0, 4)
    assert rng.bit_generator.state == state  # nothing drawn for an empty mask
    assert boxes_from_mask(np.zeros((h, w)), rng, per_component=False).shape == (0, 4)
    assert not box_mask(empty, h, w).any()


def test_box_mask_matches_loop_reference():
    rng = np.random.default_rng(1)
    for _ in range(30):
        h, w = rng.integers(1, 40, size=2)
        nb = rng.integers(0, 5)
        boxes = rng.integers(-5, 45, size=(nb, 4))
        ref = np.zeros((h, w), np.float32)
        for x0, y0, x1, y1 in boxes:
            for y in range(h):
                for x in range(w):
                    if x0 <= x <= x1 and y0 <= y <= y1:
                        ref[y, x] = 1.0
        out = box_mask(boxes, h, w)
        assert out.dtype == np.float32 and out.shape == (h, w)
        np.testing.assert_array_equal(out, ref)


def test_box_masks_from_masks_per_class():
    h, w = 40, 40
    masks = np.zeros((h, w, 3), np.float32)
    masks[..., 0] = _disk(h, w, 10, 10, 4)
    masks[..., 2] = _disk(h, w, 30, 28, 5)
    out = box_masks_from_masks(masks, np.random.default_rng(0))
    assert out.shape == (h, w, 3) and out.dtype == np.float32
    assert not out[..., 1].any()
    for k in (0, 2):
        assert out[..., k][masks[..., k] > 0].min() == 1.0
        assert out[..., k].sum() > masks[..., k].sum()


def test_scale_boxes():
    boxes = np.array([[0, 0, 63, 63], [10, 20, 29, 39]])
    up = scale_boxes(boxes, (64, 64), (256, 256))
    np.testing.assert_array_equal(up, [[0, 0, 255, 255], [40, 80, 119, 159]])
    np.testing.assert_array_equal(scale_boxes(up, (256, 256), (64, 64)), boxes)
    # non-integer factors round outwards: the scaled box covers the scaled mask
    h, w, th, tw = 45, 60, 32, 37
    mask = np.zeros((h, w), bool)
    mask[7:19, 23:41] = True
    b = boxes_from_mask(mask, None, margin=0)
    sb = scale_boxes(b, (h, w), (th, tw))
    ys, xs = np.nonzero(mask)
    ty = np.floor((ys + 0.5) * th / h).astype(int)
    tx = np.floor((xs + 0.5) * tw / w).astype(int)
    assert box_mask(sb, th, tw)[ty, tx].min() == 1.0
    assert scale_boxes(np.zeros((0, 4)), (10, 10), (20, 20)).shape == (0, 4)


def _boxes_from_bfs(mask, rng, margin, min_area, connectivity):
    """Per-component boxes computed from the BFS reference labelling (the pre-scipy algorithm)."""
    labels, n = _bfs_label(mask, connectivity)
    tight = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        if ys.size >= min_area:
            tight.append([xs.min(), ys.min(), xs.max(), ys.max()])
    if not tight:
        return np.zeros((0, 4), np.int64)
    tight = np.array(tight, np.int64)
    m = rng.integers(margin[0], margin[1], size=tight.shape, endpoint=True)
    b = tight + m * np.array([-1, -1, 1, 1])
    h, w = mask.shape
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h - 1)
    return b


def test_scipy_boxes_identical_to_previous_implementation():
    """Boxes from scipy.ndimage.label + find_objects equal the ones of the hand-written union-find
    they replaced: the same on many random masks as the BFS reference, and the digest of 2,400
    box sets equals the one the old implementation printed (recorded before the swap)."""
    import hashlib
    rng = np.random.default_rng(11)
    for t in range(150):
        h, w = rng.integers(1, 30, size=2)
        mask = rng.random((h, w)) < rng.uniform(0.02, 0.6)
        for conn in (4, 8):
            got = boxes_from_mask(mask, sample_rng(2, t, conn), min_area=2, connectivity=conn)
            want = _boxes_from_bfs(mask, sample_rng(2, t, conn), (1, 9), 2, conn)
            np.testing.assert_array_equal(got, want)
    rng = np.random.default_rng(123)
    digest = hashlib.sha256()
    for t in range(600):
        h, w = rng.integers(1, 48, 2)
        mask = rng.random((h, w)) < rng.uniform(0.02, 0.6)
        for conn in (4, 8):
            for min_area in (1, 3):
                b = boxes_from_mask(mask, sample_rng(7, t, conn), margin=(1, 9),
                                    min_area=min_area, connectivity=conn)
                digest.update(np.ascontiguousarray(b, np.int64).tobytes())
                digest.update(b"|")
    assert digest.hexdigest()[:16] == "9fbeb67211f2746a"


def _reference_box_mask(mask, margins):
    """The reference's drawing: box[y0 - m : y1 + m, x0 - m : x1 + m] = 1 on the tight inclusive
    extent (start clipped at 0; the exclusive slice end makes bottom/right one pixel smaller)."""
    ys, xs = np.nonzero(mask)
    ml, mt, mr, mb = margins
    out = np.zeros(mask.shape, np.float32)
    out[max(ys.min() - mt, 0):ys.max() + mb, max(xs.min() - ml, 0):xs.max() + mr] = 1
    return out


def test_enclosing_box_mode_matches_reference_drawing():
    h, w = 60, 70
    mask = _disk(h, w, 15, 15, 5) | _disk(h, w, 45, 50, 6)
    for i in range(30):
        b = boxes_from_mask(mask, sample_rng(4, i), box_mode="enclosing")
        assert b.shape == (1, 4)
        margins = sample_rng(4, i).integers(1, 9, size=(1, 4), endpoint=True)[0]
        np.testing.assert_array_equal(box_mask(b, h, w), _reference_box_mask(mask, margins))
        # the same margins in 'component' mode: two boxes, full margin on every side
        assert boxes_from_mask(mask, sample_rng(4, i)).shape == (2, 4)
    # fixed margin 2: left/top 2 px, right/bottom 1 px; clipped at the image border
    np.testing.assert_array_equal(boxes_from_mask(mask, None, margin=2, box_mode="enclosing"),
                                  [[8, 8, 57, 52]])
    corner = np.zeros((20, 20), bool)
    corner[15:20, 0:3] = True
    np.testing.assert_array_equal(boxes_from_mask(corner, None, margin=3, box_mode="enclosing"),
                                  [[0, 12, 4, 19]])
    assert boxes_from_mask(np.zeros((5, 5)), None, margin=1, box_mode="enclosing").shape == (0, 4)
    per_class = box_masks_from_masks(np.stack([mask, np.zeros_like(mask)], -1), sample_rng(4, 0),
                                     box_mode="enclosing")
    margins = sample_rng(4, 0).integers(1, 9, size=(1, 4), endpoint=True)[0]
    np.testing.assert_array_equal(per_class[..., 0], _reference_box_mask(mask, margins))
    assert not per_class[..., 1].any()
    with pytest.raises(ValueError, match="box_mode"):
        boxes_from_mask(mask, None, margin=1, box_mode="tight")


def test_box_mode_plumbed_through_the_synthetic_federation():
    from fedmix_jax.data.synthetic import make_synthetic_federation, \
        synthetic_federation_from_config
    kw = dict(num_clients=2, image_size=32, train_sizes=(6, 6), val_size=2, test_size=2,
              levels=("box", "pixel"), num_classes=2, seed=3)
    comp = make_synthetic_federation(**kw)
    enc = synthetic_federation_from_config(dict(kw, box_mode="enclosing"))
    np.testing.assert_array_equal(comp.train.masks, enc.train.masks)
    assert not np.array_equal(comp.train.boxes, enc.train.boxes)
    boxes, masks = np.asarray(enc.train.boxes), np.asarray(enc.train.masks)
    for idx in np.ndindex(*boxes.shape[:2]):
        for k in range(boxes.shape[-1]):
            b, m = boxes[idx][..., k], masks[idx][..., k] > 0.5
            if not m.any():
                assert not b.any()
                continue
            ys, xs = np.nonzero(b)
            # one filled rectangle around all of the class's foreground
            assert b.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            # bottom/right: within 8 px (a 1-9 px margin minus the exclusive end), may touch m
            my, mx = np.nonzero(m)
            assert 0 <= ys.max() - my.max() <= 8 and 0 <= xs.max() - mx.max() <= 8
    with pytest.raises(ValueError, match="box_mode"):
        make_synthetic_federation(**kw, box_mode="tight")

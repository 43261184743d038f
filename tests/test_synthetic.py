"""Tests for the embedded synthetic federation (fedmix_jax.data.synthetic)."""

import numpy as np
import pytest

from fedmix_jax.data.federation import BOX, PIXEL, Federation, FederatedSplit
from fedmix_jax.data.synthetic import (make_synthetic_federation, preview_grid,
                                       synthetic_federation_from_config)
from fedmix_jax.data.synthetic_render import DEFAULT_DOMAINS

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def fed():
    return make_synthetic_federation()


def _small(**kw):
    args = dict(train_sizes=(8, 12, 6, 10), val_size=4, test_size=5)
    args.update(kw)
    return make_synthetic_federation(**args)


def test_layout_shapes_and_dtypes(fed):
    assert isinstance(fed, Federation)
    assert fed.num_clients == 4 and fed.class_names == ["lesion"]
    assert len(set(fed.client_names)) == 4
    sizes = {"train": (96, 128, 24, 112), "val": (24,) * 4, "test": (48,) * 4}
    for name in SPLITS:
        s = getattr(fed, name)
        assert isinstance(s, FederatedSplit)
        c, n = 4, max(sizes[name])
        assert s.images.shape == (c, n, 64, 64, 1) and s.images.dtype == np.float32
        assert s.masks.shape == (c, n, 64, 64, 1) and s.masks.dtype == np.uint8   # {0, 1}
        assert s.boxes.shape == (c, n, 64, 64, 1) and s.boxes.dtype == np.uint8
        assert s.image_labels.shape == (c, n, 1) and s.image_labels.dtype == np.float32
        assert s.levels.shape == (c, n) and s.levels.dtype == np.int32
        assert s.valid.shape == (c, n) and s.valid.dtype == bool
        np.testing.assert_array_equal(s.counts(), sizes[name])
        assert s.images.min() >= 0.0 and s.images.max() <= 1.0
        for field in (s.masks, s.boxes, s.image_labels):
            assert set(np.unique(field)) <= {0.0, 1.0}
        # padding is zero
        pad = ~s.valid
        assert not s.images[pad].any() and not s.masks[pad].any() and not s.boxes[pad].any()


def test_levels_as_asked(fed):
    tr = fed.train
    for c, want in enumerate((BOX, BOX, PIXEL, BOX)):
        assert (tr.levels[c][tr.valid[c]] == want).all()
    f = _small(levels=("pixel", "B", "image", "none"))
    assert [int(f.train.levels[c, 0]) for c in range(4)] == [0, 1, 2, 3]


def test_deterministic_and_seed_dependent():
    a, b, c = _small(seed=3), _small(seed=3), _small(seed=4)
    for name in SPLITS:
        sa, sb, sc = getattr(a, name), getattr(b, name), getattr(c, name)
        for field in ("images", "masks", "boxes", "image_labels", "levels", "valid"):
            np.testing.assert_array_equal(getattr(sa, field), getattr(sb, field))
        assert not np.array_equal(sa.images, sc.images)
    # a sample does not depend on the other clients' or splits' sizes
    d = _small(seed=3, train_sizes=(8, 3, 6, 10), test_size=9)
    np.testing.assert_array_equal(d.train.images[0, :8], a.train.images[0, :8])
    np.testing.assert_array_equal(d.train.boxes[3, :10], a.train.boxes[3, :10])
    np.testing.assert_array_equal(d.test.images[:, :5], a.test.images[:, :5])


def test_splits_disjoint(fed):
    def flat(s):
        return s.images[s.valid].reshape(int(s.valid.sum()), -1)

    tr, va, te = flat(fed.train), flat(fed.val), flat(fed.test)
    for x, y in ((tr, te), (tr, va), (va, te)):
        # no identical image, and no near-duplicate either
        d = (x ** 2).sum(1)[:, None] + (y ** 2).sum(1)[None] - 2 * x @ y.T
        assert d.min() > 1.0
    assert len(np.unique(tr, axis=0)) == len(tr)


def test_lesion_free_fraction_and_labels(fed):
    for name in SPLITS:
        s = getattr(fed, name)
        v = s.valid
        present = s.masks.max(axis=(2, 3)) > 0  # [C, N, K]
        np.testing.assert_array_equal(s.image_labels > 0, present)
        free = 1.0 - s.image_labels[v][:, 0].mean()
        assert 0.1 <= free <= 0.2, (name, free)
        for c in range(4):  # spread evenly over each client
            n = int(v[c].sum())
            assert abs((1 - s.image_labels[c][v[c]][:, 0]).sum() - 0.15 * n) <= 1.5
    none = _small(lesion_free_fraction=0.0)
    assert none.train.image_labels[none.train.valid].min() == 1.0
    all_free = _small(lesion_free_fraction=1.0)
    assert not all_free.train.masks.any() and not all_free.train.boxes.any()


def test_boxes_contain_masks(fed):
    for name in SPLITS:
        s = getattr(fed, name)
        m, b = s.masks > 0, s.boxes > 0
        assert not (m & ~b).any()
        # boxes exist exactly where lesions exist, and are not much larger than needed
        np.testing.assert_array_equal(b.any(axis=(2, 3)), m.any(axis=(2, 3)))
        fill = m.sum(axis=(2, 3, 4)) / np.maximum(b.sum(axis=(2, 3, 4)), 1)
        assert fill[m.any(axis=(2, 3, 4))].mean() > 0.3
    # lesions are visible: on average darker than the surrounding skin, in every domain
    tr = fed.train
    for c in range(4):
        v, im, m = tr.valid[c], tr.images[c, ..., 0], tr.masks[c, ..., 0]
        ring = (tr.boxes[c, ..., 0] > 0) & (m == 0)
        inside = (im * m)[v].sum() / m[v].sum()
        around = (im * ring)[v].sum() / ring[v].sum()
        assert around - inside > 0.05, (c, inside, around)


def test_client_domains_differ(fed):
    tr = fed.train
    means, noise = [], []
    for c in range(4):
        im = tr.images[c][tr.valid[c]][..., 0].astype(np.float64)
        means.append(im.mean())
        # high-frequency energy: std of the horizontal second difference (sensor noise vs blur)
        noise.append(np.diff(im, n=2, axis=2).std())
    means, noise = np.array(means), np.array(noise)
    assert np.min(np.abs(means[:, None] - means[None]) + np.eye(4)) > 0.05, means
    # the four domains are pairwise distinguishable by (brightness, noise)
    feats = np.stack([means / means.std(), noise / noise.std()], 1)
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=-1) + np.eye(4) * 9
    assert dist.min() > 0.3
    assert fed.client_names == [d.name for d in DEFAULT_DOMAINS]


def test_per_client_sizes_more_clients_and_multiclass():
    f = make_synthetic_federation(num_clients=6, image_size=48, train_sizes=5,
                                  val_size=(1, 2, 3, 0, 2, 1), test_size=2, num_classes=3,
                                  levels=("box", "image", "pixel", "box", "none", "box"), seed=1)
    assert f.num_clients == 6 and f.class_names == ["nodular", "irregular", "elongated"]
    assert len(set(f.client_names)) == 6
    np.testing.assert_array_equal(f.val.counts(), [1, 2, 3, 0, 2, 1])
    assert f.train.images.shape == (6, 5, 48, 48, 1)
    assert f.train.masks.shape == (6, 5, 48, 48, 3) and f.train.image_labels.shape == (6, 5, 3)
    s = f.train
    np.testing.assert_array_equal(s.image_labels > 0, s.masks.max(axis=(2, 3)) > 0)
    assert not ((s.masks > 0) & ~(s.boxes > 0)).any()
    # several classes occur
    assert (s.image_labels[s.valid].sum(0) > 0).all()
    with pytest.raises(ValueError):
        make_synthetic_federation(num_clients=3, train_sizes=(1, 2))
    with pytest.raises(ValueError):
        make_synthetic_federation(levels=("box", "box", "pixel", "bogus"))


def test_from_config(tmp_path):
    ml_collections = pytest.importorskip("ml_collections")
    cfg = ml_collections.ConfigDict(dict(image_size=32, train_sizes=[3, 4, 5, 6], val_size=2,
                                         test_size=2, seed=5))
    f = synthetic_federation_from_config(cfg)
    assert f.train.images.shape == (4, 6, 32, 32, 1)
    ref = make_synthetic_federation(image_size=32, train_sizes=(3, 4, 5, 6), val_size=2,
                                    test_size=2, seed=5)
    np.testing.assert_array_equal(f.train.images, ref.train.images)
    path = preview_grid(f, str(tmp_path / "preview.png"), per_client=3)
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

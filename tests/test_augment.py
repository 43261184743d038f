"""Joint augmentation keeps image, targets and boxes aligned."""

import jax
import numpy as np
import pytest

from fedmix_jax.augment import augment_jointly


def test_joint_crop_and_flip_keep_arrays_aligned():
    rng = np.random.default_rng(0)
    img = rng.random((6, 20, 24, 1)).astype(np.float32)
    tgt = np.concatenate([img, 2 * img], -1)          # targets derived from the image pixels
    a, b = augment_jointly(jax.random.PRNGKey(3), (img, tgt), crop_hw=(16, 18))
    assert a.shape == (6, 16, 18, 1) and b.shape == (6, 16, 18, 2)
    np.testing.assert_array_equal(np.asarray(b[..., :1]), np.asarray(a))
    np.testing.assert_array_equal(np.asarray(b[..., 1:]), 2 * np.asarray(a))
    # every output is a crop of some flip of its input
    for i in range(6):
        found = False
        for f in (lambda x: x, lambda x: x[::-1], lambda x: x[:, ::-1], lambda x: x[::-1, ::-1]):
            src = f(img[i, :, :, 0])
            for y in range(5):
                for x in range(7):
                    if np.array_equal(src[y:y + 16, x:x + 18], np.asarray(a[i, :, :, 0])):
                        found = True
        assert found


def test_no_augmentation_is_identity_and_bad_crop_raises():
    x = np.ones((2, 8, 8, 1), np.float32)
    (y,) = augment_jointly(jax.random.PRNGKey(0), (x,), None, False, False)
    assert y is x
    with pytest.raises(ValueError, match="larger"):
        augment_jointly(jax.random.PRNGKey(0), (x,), (9, 8))

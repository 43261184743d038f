"""Train-time augmentation on device: random crop and random flips, applied jointly.

The image, its targets (ground truth, both pseudo-labels) and its box are transformed with the same
crop and flips, so a pseudo-label computed on the un-augmented image (spec difference 5) stays
aligned with the pixels it supervises.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _augment_one(key: jax.Array, x: jax.Array, crop_hw: tuple[int, int] | None,
                 hflip: bool, vflip: bool) -> jax.Array:
    """x: [H, W, D] -> [h, w, D]."""
    k_y, k_x, k_h, k_v = jax.random.split(key, 4)
    if crop_hw is not None:
        h, w = crop_hw
        y0 = jax.random.randint(k_y, (), 0, x.shape[0] - h + 1)
        x0 = jax.random.randint(k_x, (), 0, x.shape[1] - w + 1)
        x = jax.lax.dynamic_slice(x, (y0, x0, 0), (h, w, x.shape[2]))
    if hflip:
        x = jnp.where(jax.random.bernoulli(k_h), x[:, ::-1], x)
    if vflip:
        x = jnp.where(jax.random.bernoulli(k_v), x[::-1], x)
    return x


def augment_jointly(key: jax.Array, arrays: tuple[jax.Array, ...],
                    crop_hw: tuple[int, int] | None = None, hflip: bool = True,
                    vflip: bool = True) -> tuple[jax.Array, ...]:
    """Apply one random crop and flip per sample to every array of ``arrays`` alike.

    Args:
      key: PRNG key for this batch.
      arrays: arrays [B, H, W, D_j] sharing B, H, W (channels D_j may differ).
      crop_hw: output (h, w) of the random crop, or None for no crop (h <= H, w <= W).
      hflip, vflip: random horizontal / vertical flips with probability 1/2 each.

    Returns:
      the transformed arrays, [B, h, w, D_j] each, in the input dtypes.
    """
    b, height, width = arrays[0].shape[:3]
    if crop_hw is not None:
        crop_hw = (int(crop_hw[0]), int(crop_hw[1]))
        if crop_hw[0] > height or crop_hw[1] > width:
            raise ValueError(f"crop {crop_hw} is larger than the images ({height}, {width})")
        if crop_hw == (height, width):
            crop_hw = None
    if crop_hw is None and not hflip and not vflip:
        return tuple(arrays)
    dtype = jnp.result_type(*arrays)
    sizes = [a.shape[-1] for a in arrays]
    stacked = jnp.concatenate([a.astype(dtype) for a in arrays], axis=-1)
    keys = jax.random.split(key, b)
    out = jax.vmap(lambda k, x: _augment_one(k, x, crop_hw, hflip, vflip))(keys, stacked)
    ends = np.cumsum(sizes)
    return tuple(out[..., end - d:end].astype(a.dtype) for a, d, end in zip(arrays, sizes, ends))

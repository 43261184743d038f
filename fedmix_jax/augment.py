"""Train-time augmentation on device: one random crop and flips per sample, applied alike to the
image, its targets and its boxes (so a pseudo-label stays aligned: spec difference 5).
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
    """One random ``crop_hw`` crop (None: none) and flips (p = 1/2 each) per sample, alike on
    every [B, H, W, D_j] array -> [B, h, w, D_j] (input dtypes). Raises ValueError if h > H or
    w > W."""
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

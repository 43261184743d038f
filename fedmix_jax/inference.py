"""Batched inference of a Flax model over many images in fixed-size chunks (one compiled body)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def apply_in_chunks(fn: Callable[[Any], Any], inputs: Any, chunk_size: int) -> Any:
    """Run ``fn`` over ``inputs`` in chunks of ``chunk_size`` samples along the leading axis.

    ``inputs`` is an array [M, ...] or a pytree of arrays sharing the leading axis M (e.g.
    ``(images, masks)``); ``fn`` maps a chunk [b, ...] to outputs with leading axis b (any pytree).
    The sample axis is zero-padded to a multiple of the chunk and the chunks run under
    ``lax.map``, so the compiled program holds one copy of the model however many images there are.

    Returns:
      the outputs for all M samples, leading axis M.
    """
    m = jax.tree.leaves(inputs)[0].shape[0]
    if m <= chunk_size:
        return fn(inputs)
    num_chunks = -(-m // chunk_size)
    pad = num_chunks * chunk_size - m

    def to_chunks(x):
        x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        return x.reshape((num_chunks, chunk_size) + x.shape[1:])

    out = jax.lax.map(fn, jax.tree.map(to_chunks, inputs))
    return jax.tree.map(lambda y: y.reshape((num_chunks * chunk_size,) + y.shape[2:])[:m], out)

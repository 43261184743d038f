"""Batched inference of a Flax model over many images in fixed-size chunks (one compiled body)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def apply_in_chunks(fn: Callable[[Any], Any], inputs: Any, chunk_size: int) -> Any:
    """``fn`` over ``inputs`` (a pytree of [M, ...] arrays) in zero-padded chunks of
    ``chunk_size`` under ``lax.map`` (one copy of the model): outputs with leading axis M."""
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

"""Server-side aggregation: client weights [C] and the weighted average of stacked pytrees.

The weights are finite, non-negative and sum to 1 (edge cases: docs/strategies.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _normalise(x: jax.Array, fallback: jax.Array) -> jax.Array:
    total = jnp.sum(x)
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, x / safe, fallback)


def _uniform(mask: jax.Array | None, num: int) -> jax.Array:
    if mask is None:
        return jnp.full((num,), 1.0 / num, jnp.float32)
    m = mask.astype(jnp.float32)
    return m / jnp.maximum(jnp.sum(m), 1.0)


def _counts(counts: jax.Array, mask: jax.Array | None) -> jax.Array:
    n = jnp.asarray(counts, jnp.float32)
    return n if mask is None else jnp.where(mask, n, 0.0)


def fedavg_weights(counts: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """FedAvg weights ``n_i / sum_j n_j`` of [C] ``counts`` over the [C] bool ``mask`` (default
    all), [C]; uniform over ``mask`` if all counts are 0."""
    n = _counts(counts, mask)
    return _normalise(n, _uniform(mask, n.shape[0]))


def fedmix_weights(counts: jax.Array, losses: jax.Array, lam: float = 10.0, beta: float = 3.0,
                   mask: jax.Array | None = None) -> jax.Array:
    """FedMix's adaptive weights [C] from ``counts`` n_i and model 1's ``losses`` l_i [C]::

        d_i = n_i / sum_j n_j,   s_i = l_i^beta / sum_j l_j^beta,
        w_i = (d_i + lam * s_i) / sum_j (d_j + lam * s_j)
    """
    n = _counts(counts, mask)
    trained = n > 0
    loss = jnp.where(trained, jnp.maximum(jnp.asarray(losses, jnp.float32), 0.0), 0.0)
    d = _normalise(n, jnp.zeros_like(n))
    powered = jnp.where(trained, jnp.power(jnp.where(trained, loss, 1.0), beta), 0.0)
    s = _normalise(powered, jnp.zeros_like(n))
    return _normalise(d + lam * s, _uniform(mask, n.shape[0]))


def weighted_average(stacked_tree, weights: jax.Array):
    """``sum_i w_i * x_i`` over the client axis: leaves [C, ...] -> [...] (same dtype)."""
    w = jnp.asarray(weights, jnp.float32)
    return jax.tree.map(
        lambda x: jnp.tensordot(w, x.astype(jnp.float32), axes=1).astype(x.dtype), stacked_tree)

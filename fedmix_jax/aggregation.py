"""Server-side aggregation: client weights and the weighted average of stacked pytrees.

Client quantities are vectors over the client axis, [C]. Stacked pytrees have leaves [C, ...].

FedMix adaptive weights (fedmix-spec.md, step 4)::

    s_i = l_i^beta / sum_j l_j^beta        d_i = n_i / sum_j n_j
    w_i = (d_i + lam * s_i) / sum_j (d_j + lam * s_j)

The weights are always finite, non-negative and sum to 1: a client with ``n_i = 0`` gets weight 0
(its loss is taken as 0); all losses 0 (or ``lam = 0``): ``w = d``; all counts 0: uniform over the
participating clients (``mask``), so the aggregate is the broadcast model (docs/strategies.md).
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


def fedavg_weights(counts: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """FedAvg weights ``n_i / sum_j n_j`` ([C] -> [C]); uniform over ``mask`` if all counts are 0.

    Args:
      counts: [C] non-negative sample counts.
      mask: optional [C] bool, the clients that take part (others get weight 0).
    """
    n = jnp.asarray(counts, jnp.float32)
    if mask is not None:
        n = jnp.where(mask, n, 0.0)
    return _normalise(n, _uniform(mask, n.shape[0]))


def fedmix_weights(counts: jax.Array, losses: jax.Array, lam: float = 10.0, beta: float = 3.0,
                   mask: jax.Array | None = None) -> jax.Array:
    """FedMix adaptive aggregation weights ([C], [C] -> [C]); see the module docstring.

    Args:
      counts: [C] usable sample counts n_i this round.
      losses: [C] mean training loss of model 1 on each client this round (>= 0).
      lam: lambda, the strength of the loss term.
      beta: the sharpening exponent of the losses.
      mask: optional [C] bool, the clients that take part.
    """
    n = jnp.asarray(counts, jnp.float32)
    if mask is not None:
        n = jnp.where(mask, n, 0.0)
    trained = n > 0
    loss = jnp.where(trained, jnp.maximum(jnp.asarray(losses, jnp.float32), 0.0), 0.0)
    zeros = jnp.zeros_like(n)
    d = _normalise(n, zeros)
    powered = jnp.where(trained, jnp.power(jnp.where(trained, loss, 1.0), beta), 0.0)
    s = _normalise(powered, zeros)
    return _normalise(d + lam * s, _uniform(mask, n.shape[0]))


def weighted_average(stacked_tree, weights: jax.Array):
    """``sum_i w_i * x_i`` over the leading client axis of every leaf.

    Args:
      stacked_tree: a pytree whose leaves are [C, ...].
      weights: [C] weights (normally summing to 1).

    Returns:
      a pytree with the client axis removed, leaves [...] in their original dtype.
    """
    w = jnp.asarray(weights, jnp.float32)
    return jax.tree.map(
        lambda x: jnp.tensordot(w, x.astype(jnp.float32), axes=1).astype(x.dtype), stacked_tree)

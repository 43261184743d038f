"""Federated self-training (FedST, FedRGD) as the reference runs it: a weak sample's BCE toward
``[p > 0.5]`` on the confident pixels (``p > tau`` or ``p < 1 - tau``) of an intensity-shifted
view (:func:`self_training_loss`), fixed weights after the warm-up (:class:`SelfTrainingWeights`).
Logits [B, H, W, K], per-sample values [B]. Details: docs/strategies.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedmix_jax import aggregation
from fedmix_jax.losses import bce_loss_per_sample, weighted_mean

CONFIDENCE = 0.9
SELF_TRAINING_MEANS = ("pixels", "samples")


def intensity_shift(key: jax.Array, images: jax.Array, max_gamma: float = 2.0) -> jax.Array:
    """``images ** gamma`` with one ``gamma ~ U(0, max_gamma)`` for the batch; images in [0, 1]."""
    gamma = jax.random.uniform(key, (), minval=0.0, maxval=max_gamma)
    return jnp.power(jnp.clip(images, 0.0, 1.0), gamma)


def confident_bce_per_sample(logits_shifted: jax.Array, logits_plain: jax.Array,
                             tau: float = CONFIDENCE) -> jax.Array:
    """[B]: each sample's BCE of ``logits_shifted`` toward ``[p > 0.5]`` on its confident pixels
    of ``p = sigmoid(logits_plain)`` (no gradient through ``p``)."""
    return bce_loss_per_sample(logits_shifted, *_confident_targets(logits_plain, tau))


def _confident_targets(logits_plain: jax.Array, tau: float):
    """``([p > 0.5], confident)``, [B, H, W, K] float32, without gradient."""
    p = jax.lax.stop_gradient(jax.nn.sigmoid(logits_plain.astype(jnp.float32)))
    confident = ((p > tau) | (p < 1.0 - tau)).astype(jnp.float32)
    return (p > 0.5).astype(jnp.float32), confident


def confident_bce_batch(logits_shifted: jax.Array, logits_plain: jax.Array,
                        weights: jax.Array | None = None, tau: float = CONFIDENCE) -> jax.Array:
    """[]: the reference's ``CE_LOSS(pred[mask], target[mask])``, ``sum_b w_b sum_px c * bce /
    sum_b w_b sum_px c`` over the confident pixels ``c``; 0 (zero gradient) without any."""
    target, confident = _confident_targets(logits_plain, tau)
    per_pixel = optax.sigmoid_binary_cross_entropy(logits_shifted.astype(jnp.float32), target)
    if weights is not None:
        confident = confident * weights.astype(jnp.float32)[:, None, None, None]
    total = jnp.sum(confident)
    return jnp.sum(confident * per_pixel) / jnp.maximum(total, 1e-12) * (total > 0)


def self_training_loss(logits_shifted: jax.Array, logits_plain: jax.Array, dice: jax.Array,
                       weights: jax.Array, self_train: jax.Array, mean: str = "pixels",
                       tau: float = CONFIDENCE) -> jax.Array:
    """FedST's loss of a batch, []: ``mean="pixels"`` (reference) ``(sum_pixel w_b dice_b +
    W_st * confident_bce_batch) / sum(w)``; ``"samples"`` ``sum_b w_b l_b / sum(w)`` (``l_b``: its
    confident BCE or Dice). Logits [B, H, W, K]; dice, weights [B]; self_train [B] bool."""
    st = self_train.astype(weights.dtype) * weights
    if mean == "samples":
        per_sample = jnp.where(self_train, confident_bce_per_sample(logits_shifted, logits_plain,
                                                                    tau), dice)
        return weighted_mean(per_sample, weights)
    pixel = weights - st
    total = jnp.sum(weights)
    bce = confident_bce_batch(logits_shifted, logits_plain, st, tau)
    return (jnp.sum(pixel * dice) + jnp.sum(st) * bce) / jnp.maximum(total, 1e-12) * (total > 0)


@dataclasses.dataclass(frozen=True)
class SelfTrainingWeights:
    """FedST / FedRGD's weights: by counts over the pixel clients during the warm-up, then
    ``pixel_share`` on them and the rest shared equally by the other participants."""

    pixel_share: float

    def __call__(self, reports, participating, hparams, warming_up):
        has_pixel = (reports.num_pixel > 0) & participating
        # (no pixel client at all: uniform over the participants; the job refuses such runs)
        pixel = jnp.where(jnp.any(has_pixel),
                          aggregation.fedavg_weights(reports.num_pixel, has_pixel),
                          aggregation.fedavg_weights(participating.astype(jnp.int32),
                                                     participating))
        others = participating & ~has_pixel
        rest = others.astype(jnp.float32) / jnp.maximum(jnp.sum(others), 1)
        share = jnp.where(jnp.any(others) & jnp.any(has_pixel), self.pixel_share, 1.0)
        after = share * pixel + (1.0 - share) * rest
        return jnp.where(warming_up, pixel, after)

"""Federated self-training (FedST) and its variant FedRGD, as the reference runs them.

Shapes: images / logits [B, H, W, K] (NHWC), per-sample values [B].

One model per client (model 2 does not train). During the warm-up rounds only the pixel clients
train, and the weights are by counts over them (1 on a single pixel client). After the warm-up
every client trains; a weak sample's step (fedmix-spec.md, "Baselines"):

* ``p = sigmoid(f(x))`` on the un-shifted (augmented) image, without gradient;
* confident pixels: ``p > tau`` or ``p < 1 - tau`` (tau = 0.9); target ``[p > 0.5]``;
* the prediction on an intensity-shifted view ``x ** gamma`` (gamma ~ U(0, 2), one per batch) is
  trained with BCE on the confident pixels only.

Post-warm-up weights are fixed: FedST puts 0.9 on the pixel client(s) and shares 0.1 equally among
the others; FedRGD 0.5 and 0.5. Both ignore boxes and image labels.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fedmix_jax import aggregation
from fedmix_jax.losses import bce_loss_per_sample

CONFIDENCE = 0.9


def intensity_shift(key: jax.Array, images: jax.Array, max_gamma: float = 2.0) -> jax.Array:
    """``images ** gamma`` with one ``gamma ~ U(0, max_gamma)`` for the batch; images in [0, 1]."""
    gamma = jax.random.uniform(key, (), minval=0.0, maxval=max_gamma)
    return jnp.power(jnp.clip(images, 0.0, 1.0), gamma)


def confident_bce_per_sample(logits_shifted: jax.Array, logits_plain: jax.Array,
                             tau: float = CONFIDENCE) -> jax.Array:
    """Self-training loss per sample: BCE of the shifted view's logits toward ``[p > 0.5]`` on
    the confident pixels of ``p = sigmoid(logits_plain)`` (no gradient through ``p``). [B]."""
    p = jax.lax.stop_gradient(jax.nn.sigmoid(logits_plain.astype(jnp.float32)))
    confident = ((p > tau) | (p < 1.0 - tau)).astype(jnp.float32)
    return bce_loss_per_sample(logits_shifted, (p > 0.5).astype(jnp.float32), confident)


@dataclasses.dataclass(frozen=True)
class SelfTrainingWeights:
    """Weights of FedST / FedRGD: by counts over the pixel clients during the warm-up; after it
    ``pixel_share`` on the pixel client(s) (split by their counts) and the rest shared equally by
    the other participating clients."""

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

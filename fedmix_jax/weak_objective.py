"""The objective of one local step under a strategy with direct weak-label losses (``fedmix_plus``).

Every usable sample of the batch contributes (per sample, then averaged over the usable ones):

* its target loss where it has a target (``has_target``: a pixel sample's ground truth, or a
  selected weak sample's cross pseudo-label) -- soft Dice, or with ``empty_target_loss = "bce"``
  BCE for an empty target; a certain empty target also gets ``image_mil`` x
  :func:`~fedmix_jax.losses.negative_max_loss_per_sample` (its maximum probability below 0.5);
* plus, for every box and image-level sample, selected or not, the weighted weak-label terms of
  :func:`~fedmix_jax.losses.weak_supervision_loss_per_sample` (box emptiness, box tightness,
  multiple-instance bags).

l_i for the FedMix weights stays what :mod:`fedmix_jax.site` reports for FedMix: the Dice loss of
the samples that have a target (with ``"bce"``: those with foreground).
"""

from __future__ import annotations

import jax.numpy as jnp

from fedmix_jax.losses import (dice_loss_per_sample, empty_aware_loss_per_sample,
                               negative_max_loss_per_sample, weak_supervision_loss_per_sample,
                               weighted_mean)


def weak_batch_loss(models, apply, config, x, targets, w, extras):
    """The loss of the models that train on one augmented batch, with its aux outputs.

    Args:
      models: tuple of the training models' params; apply: ``apply(params, x) -> logits``.
      config: the static round config (``strategy.weak``: a
        :class:`~fedmix_jax.losses.WeakSupervision`; ``empty_target_loss``).
      x: [B, H, W, Cin] images; targets: tuple of [B, H, W, K] targets, one per model;
      w: [B] float32 usable-sample weights;
      extras: ``(self_train, has_target [B] bool, boxes [B,H,W,K], image_labels [B,K],
        levels [B])``, boxes augmented with the images.

    Returns:
      ``(loss, (fits, counted))``: the summed loss of the models; per model the Dice loss of the
      samples with a target (what l_i averages), and whether model 1's batch counts for l_i.
    """
    weights = config.strategy.weak
    _, has_target, boxes, labels, levels = extras
    has_target = has_target.astype(w.dtype)
    losses, fits, counted = [], [], None
    for p, t in zip(models, targets):
        logits = apply(p, x)
        if config.empty_target_loss == "dice":
            target_loss = dice_loss_per_sample(logits, t)
        else:
            target_loss = empty_aware_loss_per_sample(logits, t)
        if weights.image_mil:     # a certain empty target: its maximum below 0.5 too
            spare = weights.outside_margin if weights.spare_lesions else None
            target_loss += weights.image_mil * negative_max_loss_per_sample(logits, t, spare)
        weak = weak_supervision_loss_per_sample(logits, boxes, labels, levels, w > 0, weights)
        losses.append(weighted_mean(has_target * target_loss + weak, w))
        has_fg = (jnp.sum(t, axis=(1, 2, 3)) > 0).astype(w.dtype)
        fit_w = w * has_target * (has_fg if config.empty_target_loss == "bce" else 1.0)
        fits.append(weighted_mean(dice_loss_per_sample(logits, t), fit_w))
        if counted is None:
            counted = (jnp.sum(fit_w) > 0).astype(jnp.float32)
    return sum(losses), (tuple(fits), counted)

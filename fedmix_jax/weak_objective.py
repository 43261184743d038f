"""One local step's objective with direct weak-label losses (``fedmix_plus``): the terms' weights
(:class:`WeakSupervision`), their sum per sample (:func:`weak_supervision_loss_per_sample`) and
a batch's loss ``has_target * target_loss + weak_terms`` over the usable samples
(:func:`weak_batch_loss`). Details: docs/weak_supervision.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fedmix_jax.data.federation import BOX
from fedmix_jax.losses import (box_appearance_loss_per_sample, box_appearance_masks,
                               box_size_loss_per_sample, box_tightness_loss_per_sample,
                               dice_loss_per_sample, empty_aware_loss_per_sample,
                               mil_image_loss_per_sample, negative_max_loss_per_sample,
                               outside_region_bce_per_sample, weak_label_regions, weighted_mean)


@dataclasses.dataclass(frozen=True)
class WeakSupervision:
    """Static weights of the weak-label terms (0: off), ``config.weak``; each field's meaning:
    docs/weak_supervision.md. Raises ValueError on a negative or out-of-range value."""

    emptiness: float = 1.0
    tightness: float = 1.0
    image_mil: float = 1.0
    tightness_inset: int = 0
    outside_margin: int = 4
    absent_emptiness: float = 1.0
    absent_mil: float = 1.0
    box_fit: float = 0.2
    warmup_rounds: int = 0
    spare_lesions: bool = True
    box_size: float = 0.0
    box_fill_min: float = 0.3
    box_fill_max: float = 0.5
    box_appearance: float = 0.0
    appearance_smooth: int = 2
    appearance_ring: int = 2
    appearance_min_contrast: float = 3.0

    def __post_init__(self):
        if not 0.0 < self.box_fill_min <= self.box_fill_max <= 1.0:
            raise ValueError(f"weak.box_fill_min / box_fill_max must satisfy 0 < min <= max <= 1, "
                             f"got {self.box_fill_min}, {self.box_fill_max}")
        for name in ("emptiness", "tightness", "image_mil", "absent_emptiness", "absent_mil",
                     "box_size", "tightness_inset", "outside_margin", "warmup_rounds",
                     "box_appearance", "appearance_smooth", "appearance_ring",
                     "appearance_min_contrast"):
            if not 0 <= (value := getattr(self, name)) < float("inf"):
                raise ValueError(f"weak.{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.box_fit <= 1.0:
            raise ValueError(f"weak.box_fit must be in [0, 1], got {self.box_fit}")


def weak_supervision_loss_per_sample(logits: jax.Array, boxes: jax.Array,
                                     image_labels: jax.Array, levels: jax.Array,
                                     valid: jax.Array, weights: WeakSupervision,
                                     images: jax.Array | None = None) -> jax.Array:
    """Weighted sum of the weak terms per sample, [B] (0 for pixel, unlabelled, invalid samples).
    logits, boxes: [B, H, W, K]; image_labels: [B, K]; levels: [B] int; valid: [B] bool;
    images [B, H, W, C] (the model's input), needed by ``box_appearance`` only."""
    region, present, known = weak_label_regions(boxes, image_labels, levels, valid)
    total = jnp.zeros(logits.shape[:1], jnp.float32)
    if weights.emptiness:
        total += weights.emptiness * outside_region_bce_per_sample(logits, region, known * present)
        if weights.absent_emptiness:
            total += (weights.emptiness * weights.absent_emptiness
                      * outside_region_bce_per_sample(logits, region, known * (1.0 - present)))
    if weights.image_mil:
        total += weights.image_mil * mil_image_loss_per_sample(
            logits, region, present, known, weights.outside_margin, weights.absent_mil,
            weights.spare_lesions)
    box_known = known * (levels == BOX)[:, None]
    if weights.box_size:
        total += weights.box_size * box_size_loss_per_sample(
            logits, boxes, box_known, weights.box_fill_min, weights.box_fill_max)
    if weights.tightness:
        total += weights.tightness * box_tightness_loss_per_sample(
            logits, boxes, box_known, weights.tightness_inset)
    if weights.box_appearance:
        if images is None:
            raise ValueError("weak.box_appearance needs the images")
        masks, contrast = box_appearance_masks(images, boxes, weights.appearance_smooth,
                                               weights.appearance_ring)
        confident = box_known * (contrast >= weights.appearance_min_contrast)
        total += weights.box_appearance * box_appearance_loss_per_sample(
            logits, masks, boxes, confident)
    return total


def weak_batch_loss(models, apply, config, x, targets, w, extras):
    """``(loss, (fits, counted))`` of the training ``models`` on an augmented batch: the summed
    loss, per model the Dice loss of the samples with a target (l_i), and whether model 1's batch
    counts for l_i. x [B, H, W, Cin]; one [B, H, W, K] target per model; w [B] float32; extras
    ``(self_train, has_target, boxes [B, H, W, K], image_labels [B, K], levels [B])``."""
    weights = config.strategy.weak
    _, has_target, boxes, labels, levels = extras
    has_target = has_target.astype(w.dtype)
    target_loss_fn = (dice_loss_per_sample if config.empty_target_loss == "dice"
                      else empty_aware_loss_per_sample)
    losses, fits, counted = [], [], None
    for p, t in zip(models, targets):
        logits = apply(p, x)
        target_loss = target_loss_fn(logits, t)
        if weights.image_mil:     # a certain empty target: its maximum below 0.5 too
            spare = weights.outside_margin if weights.spare_lesions else None
            target_loss += weights.image_mil * negative_max_loss_per_sample(logits, t, spare)
        weak = weak_supervision_loss_per_sample(logits, boxes, labels, levels, w > 0, weights, x)
        losses.append(weighted_mean(has_target * target_loss + weak, w))
        has_fg = (jnp.sum(t, axis=(1, 2, 3)) > 0).astype(w.dtype)
        fit_w = w * has_target * (has_fg if config.empty_target_loss == "bce" else 1.0)
        fits.append(weighted_mean(dice_loss_per_sample(logits, t), fit_w))
        if counted is None:
            counted = (jnp.sum(fit_w) > 0).astype(jnp.float32)
    return sum(losses), (tuple(fits), counted)

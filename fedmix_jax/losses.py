"""Segmentation losses: soft Dice, BCE and the FedMix mixed-supervision loss.

All functions are pure, jittable, vmappable and differentiable. Arrays are NHWC with one sigmoid
channel per class: ``logits`` / ``targets`` are [B, H, W, K]. Per-sample quantities are [B].

The Dice coefficient of one sample is (spec, "Local training")::

    dice(a, b) = (2 * sum(a * b) + eps) / (sum(a) + sum(b) + eps),   eps = 1e-4

with the sums over all pixels and channels of that sample. Losses that take per-sample ``weights``
return ``sum(w * l) / sum(w)``; a batch whose weights are all zero returns 0 with zero gradients
(never NaN), which is how masked (padded or unselected) samples contribute nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedmix_jax.data.federation import PIXEL

DICE_EPS = 1e-4


def dice_coefficient(pred: jax.Array, target: jax.Array, eps: float = DICE_EPS) -> jax.Array:
    """Per-sample Dice coefficient of soft or binary maps.

    Args:
      pred: [B, ...] predictions in [0, 1] (probabilities or binarised).
      target: [B, ...] targets in [0, 1], same shape as ``pred``.
      eps: smoothing term added to numerator and denominator.

    Returns:
      [B] Dice per sample; two empty maps score 1 (through ``eps``).
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    axes = tuple(range(1, pred.ndim))
    inter = jnp.sum(pred * target, axis=axes)
    total = jnp.sum(pred, axis=axes) + jnp.sum(target, axis=axes)
    return (2.0 * inter + eps) / (total + eps)


def iou_coefficient(pred: jax.Array, target: jax.Array, eps: float = DICE_EPS) -> jax.Array:
    """Per-sample intersection over union, [B, ...] -> [B]; two empty maps score 1."""
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    axes = tuple(range(1, pred.ndim))
    inter = jnp.sum(pred * target, axis=axes)
    union = jnp.sum(pred, axis=axes) + jnp.sum(target, axis=axes) - inter
    return (inter + eps) / (union + eps)


def weighted_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """``sum(w * v) / sum(w)`` over a [B] vector; 0 (with zero gradient) when all weights are 0."""
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(values.dtype)
    total = jnp.sum(weights)
    return jnp.sum(weights * values) / jnp.maximum(total, jnp.finfo(values.dtype).tiny) * (
        total > 0)


def dice_loss_per_sample(logits: jax.Array, targets: jax.Array,
                         eps: float = DICE_EPS) -> jax.Array:
    """``1 - dice(sigmoid(logits), targets)`` per sample: [B, H, W, K] -> [B]."""
    return 1.0 - dice_coefficient(jax.nn.sigmoid(logits.astype(jnp.float32)), targets, eps)


def dice_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None,
              eps: float = DICE_EPS) -> jax.Array:
    """Soft Dice loss on logits, averaged over the batch with optional per-sample weights.

    Args:
      logits: [B, H, W, K] raw model outputs.
      targets: [B, H, W, K] targets in {0, 1} (soft targets also work).
      weights: optional [B] non-negative per-sample weights (0 = the sample does not count).

    Returns:
      scalar loss; 0 with zero gradients when every weight is 0.
    """
    return weighted_mean(dice_loss_per_sample(logits, targets, eps), weights)


def bce_loss_per_sample(logits: jax.Array, targets: jax.Array,
                        pixel_weights: jax.Array | None = None) -> jax.Array:
    """Mean binary cross-entropy per sample (numerically stable, on logits): -> [B].

    The per-pixel term is ``optax.sigmoid_binary_cross_entropy`` (float32). ``pixel_weights``
    ([B, H, W, K], optional) weighs pixels, e.g. FedST's confident-pixel mask; the per-sample
    value is then ``sum(pw * bce) / max(sum(pw), tiny)``.
    """
    logits = logits.astype(jnp.float32)
    per_pixel = optax.sigmoid_binary_cross_entropy(logits, targets.astype(jnp.float32))
    axes = tuple(range(1, logits.ndim))
    if pixel_weights is None:
        return jnp.mean(per_pixel, axis=axes)
    pw = pixel_weights.astype(jnp.float32)
    return jnp.sum(pw * per_pixel, axis=axes) / jnp.maximum(jnp.sum(pw, axis=axes), 1e-12)


def bce_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None,
             pixel_weights: jax.Array | None = None) -> jax.Array:
    """Binary cross-entropy on logits, batch mean with optional [B] sample weights."""
    return weighted_mean(bce_loss_per_sample(logits, targets, pixel_weights), weights)


def empty_aware_loss_per_sample(logits: jax.Array, targets: jax.Array,
                                eps: float = DICE_EPS) -> jax.Array:
    """Soft Dice loss per sample, with binary cross-entropy for samples whose target is empty.

    With an empty target, ``1 - dice`` is ~1 with a gradient ~0 whatever the prediction, so a
    lesion-free image teaches nothing (fedmix-spec.md difference 7). Here such a sample's loss is
    the mean BCE of its logits toward background, whose gradient ``sigmoid(logit) / (H W K)``
    pushes every predicted foreground pixel down. Samples with foreground keep the Dice loss.

    Args:
      logits, targets: [B, H, W, K].
    Returns:
      [B] per-sample losses.
    """
    empty = jnp.sum(targets.astype(jnp.float32), axis=tuple(range(1, targets.ndim))) == 0
    return jnp.where(empty, bce_loss_per_sample(logits, targets),
                     dice_loss_per_sample(logits, targets, eps))


def mixed_supervision_targets(masks: jax.Array, pseudo1: jax.Array, pseudo2: jax.Array,
                              levels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Targets of model 1 and model 2 under cross pseudo-supervision.

    Pixel samples train both models on the ground truth; every other level trains model 1 on
    model 2's pseudo-label and model 2 on model 1's.

    Args:
      masks: [B, H, W, K] ground truth (only read for pixel samples).
      pseudo1, pseudo2: [B, H, W, K] refined binary pseudo-labels of the global models 1 and 2.
      levels: [B] int supervision levels.

    Returns:
      (target_model1, target_model2), each [B, H, W, K].
    """
    is_pixel = (levels == PIXEL)[:, None, None, None]
    return jnp.where(is_pixel, masks, pseudo2), jnp.where(is_pixel, masks, pseudo1)


def sample_weights(levels: jax.Array, selected: jax.Array, valid: jax.Array) -> jax.Array:
    """[B] loss weights: 1 for valid pixel samples and valid selected weak samples, else 0."""
    usable = valid & ((levels == PIXEL) | selected)
    return usable.astype(jnp.float32)


def mixed_supervision_loss(logits1: jax.Array, logits2: jax.Array, masks: jax.Array,
                           pseudo1: jax.Array, pseudo2: jax.Array, levels: jax.Array,
                           selected: jax.Array, valid: jax.Array,
                           eps: float = DICE_EPS) -> tuple[jax.Array, jax.Array]:
    """FedMix loss of both models on one batch of mixed supervision levels.

    Args:
      logits1, logits2: [B, H, W, K] outputs of local model 1 and model 2.
      masks: [B, H, W, K] ground truth (used for pixel samples only).
      pseudo1, pseudo2: [B, H, W, K] refined pseudo-labels from global models 1 and 2.
      levels: [B] int levels; selected: [B] bool selection; valid: [B] bool (False = padding).

    Returns:
      (loss_model1, loss_model2): Dice losses averaged over the usable samples; both 0 with zero
      gradients when no sample of the batch is usable.
    """
    t1, t2 = mixed_supervision_targets(masks, pseudo1, pseudo2, levels)
    w = sample_weights(levels, selected, valid)
    return dice_loss(logits1, t1, w, eps), dice_loss(logits2, t2, w, eps)

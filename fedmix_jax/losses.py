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

from fedmix_jax.data.federation import BOX, IMAGE, PIXEL

DICE_EPS = 1e-4


def overlap_sums(pred: jax.Array, target: jax.Array, axes=None) -> tuple[jax.Array, jax.Array]:
    """``(sum(pred * target), sum(pred) + sum(target))`` in float32 over ``axes`` (default: all
    but the first), e.g. [B, ...] -> ([B], [B])."""
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    axes = tuple(range(1, pred.ndim)) if axes is None else axes
    return (jnp.sum(pred * target, axis=axes),
            jnp.sum(pred, axis=axes) + jnp.sum(target, axis=axes))


def dice_coefficient(pred: jax.Array, target: jax.Array, eps: float = DICE_EPS) -> jax.Array:
    """Per-sample Dice of soft or binary maps ``pred``, ``target`` [B, ...] in [0, 1] -> [B];
    ``eps`` is added to numerator and denominator, so two empty maps score 1."""
    inter, total = overlap_sums(pred, target)
    return (2.0 * inter + eps) / (total + eps)


def iou_coefficient(pred: jax.Array, target: jax.Array, eps: float = DICE_EPS) -> jax.Array:
    """Per-sample intersection over union, [B, ...] -> [B]; two empty maps score 1."""
    inter, total = overlap_sums(pred, target)
    return (inter + eps) / (total - inter + eps)


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
    """Soft Dice loss of ``logits`` against ``targets`` ([B, H, W, K], targets in [0, 1]),
    averaged over the batch with optional [B] weights; 0 with zero gradients if every weight is 0.
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
    """Per-sample losses [B] of ``logits``, ``targets`` [B, H, W, K]: ``1 - dice`` where the
    target has foreground, the mean BCE toward background where it is empty (an empty target's
    Dice loss has no gradient: docs/strategies.md, difference 7)."""
    empty = jnp.sum(targets.astype(jnp.float32), axis=tuple(range(1, targets.ndim))) == 0
    return jnp.where(empty, bce_loss_per_sample(logits, targets),
                     dice_loss_per_sample(logits, targets, eps))


def mixed_supervision_targets(masks: jax.Array, pseudo1: jax.Array, pseudo2: jax.Array,
                              levels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Targets of model 1 and model 2 under cross pseudo-supervision: pixel samples train both
    models on the ground truth, every other level trains model 1 on model 2's pseudo-label and
    model 2 on model 1's.

    Args:
      masks: [B, H, W, K] ground truth (only read for pixel samples).
      pseudo1, pseudo2: [B, H, W, K] refined binary pseudo-labels of the global models 1 and 2.
      levels: [B] int supervision levels.
    Returns:
      (target_model1, target_model2), each [B, H, W, K].
    """
    is_pixel = (levels == PIXEL)[:, None, None, None]
    return jnp.where(is_pixel, masks, pseudo2), jnp.where(is_pixel, masks, pseudo1)


def mixed_supervision_loss(logits1: jax.Array, logits2: jax.Array, masks: jax.Array,
                           pseudo1: jax.Array, pseudo2: jax.Array, levels: jax.Array,
                           selected: jax.Array, valid: jax.Array,
                           eps: float = DICE_EPS) -> tuple[jax.Array, jax.Array]:
    """FedMix loss of both models on one batch of mixed supervision levels.

    Args:
      logits1, logits2: [B, H, W, K] outputs of local model 1 and model 2; masks: [B, H, W, K]
        ground truth (read for pixel samples); pseudo1, pseudo2: [B, H, W, K] refined
        pseudo-labels of the global models; levels: [B] int; selected, valid: [B] bool.
    Returns:
      (loss_model1, loss_model2): Dice losses averaged over the usable samples; both 0 with zero
      gradients when no sample of the batch is usable.
    """
    t1, t2 = mixed_supervision_targets(masks, pseudo1, pseudo2, levels)
    w = (valid & ((levels == PIXEL) | selected)).astype(jnp.float32)     # the usable samples
    return dice_loss(logits1, t1, w, eps), dice_loss(logits2, t2, w, eps)


# Weak labels used directly (docs/weak_supervision.md): per sample and class, where the class may
# be (``region`` [B, H, W, K] in {0, 1}), whether it is present (``present`` [B, K]) and whether
# the label speaks about it (``known`` [B, K]); :func:`weak_label_regions` builds the three.

def weak_label_regions(boxes: jax.Array, image_labels: jax.Array, levels: jax.Array,
                       valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What a box or image-level label says about each class: ``(region, present, known)``.

    Args:
      boxes: [B, H, W, K] box masks in {0, 1} (read for box samples).
      image_labels: [B, K] in {0, 1} (read for image-level samples).
      levels: [B] int supervision levels; valid: [B] bool.
    Returns:
      region [B, H, W, K] float32 (box samples: their boxes; image samples: all ones where the
      class is present, zeros where absent), present [B, K] float32 (box: the class has a box;
      image: the label), known [B, K] float32 (1 for valid box / image samples, else 0).
    """
    boxes = boxes.astype(jnp.float32)
    labels = image_labels.astype(jnp.float32)
    is_box = (levels == BOX)[:, None]
    is_image = (levels == IMAGE)[:, None]
    box_present = (jnp.max(boxes, axis=(1, 2)) > 0).astype(jnp.float32)
    present = jnp.where(is_box, box_present, labels)
    region = jnp.where(is_box[:, None, None, :], boxes,
                       jnp.broadcast_to(labels[:, None, None, :], boxes.shape))
    known = ((is_box | is_image) & valid[:, None]).astype(jnp.float32)
    return region, present, jnp.broadcast_to(known, present.shape)


def _masked_max(logits: jax.Array, mask: jax.Array, axes) -> jax.Array:
    """Max of ``logits`` over ``axes`` where ``mask`` is 1 (a very negative number where empty)."""
    return jnp.max(jnp.where(mask > 0, logits, -1e4), axis=axes)


def outside_region_bce_per_sample(logits: jax.Array, region: jax.Array,
                                  known: jax.Array) -> jax.Array:
    """Box emptiness: every pixel outside a class's region is certain background.

    ``mean_{pixels with region = 0, classes with known = 1} BCE(logit, 0)`` per sample.

    Args:
      logits: [B, H, W, K]; region: [B, H, W, K] in {0, 1}; known: [B, K] in {0, 1}.
    Returns:
      [B]; 0 (zero gradient) for a sample without any such pixel.
    """
    neg = (1.0 - region.astype(jnp.float32)) * known[:, None, None, :]
    per_pixel = jax.nn.softplus(logits.astype(jnp.float32))     # BCE toward 0
    total = jnp.sum(neg, axis=(1, 2, 3))
    return jnp.sum(neg * per_pixel, axis=(1, 2, 3)) / jnp.maximum(total, 1.0)


def dilate(region: jax.Array, radius: int) -> jax.Array:
    """``region`` [B, H, W, K] in {0, 1} grown by ``radius`` px (a square window, static int)."""
    if radius <= 0:
        return region
    size = (1, 2 * radius + 1, 2 * radius + 1, 1)
    return jax.lax.reduce_window(region, -jnp.inf, jax.lax.max, size, (1, 1, 1, 1), "SAME")


def mil_image_loss_per_sample(logits: jax.Array, region: jax.Array, present: jax.Array,
                              known: jax.Array, outside_margin: int = 0,
                              absent_weight: float = 1.0, spare_lesions: bool = False) -> jax.Array:
    """Multiple-instance loss of a weak label: a positive bag inside a present class's region,
    a negative bag outside it. Per known class: ``softplus(-max_{region} logit)`` if the class
    is present (a foreground pixel in its boxes / in the image), plus ``softplus(max_{outside}
    logit)`` when there are pixels outside the region (for an absent class or an empty box, the
    whole image: its maximum probability below 0.5, what the false-positive-rate metric counts).
    Averaged over the known classes. ``outside_margin`` (px) leaves the pixels that close to the
    region out of the negative bag (a prediction bleeding past a box edge is left to the
    emptiness term). ``absent_weight`` scales the negative bag of absent classes and empty boxes.
    ``spare_lesions`` also leaves out of every negative bag the pixels within ``outside_margin``
    of any present class's region (:func:`spared_pixels`); with one class it changes nothing.

    Args:
      logits: [B, H, W, K]; region: [B, H, W, K] in {0, 1}; present, known: [B, K] in {0, 1};
      outside_margin: static int >= 0; absent_weight: float >= 0; spare_lesions: static bool.
    Returns:
      [B]; 0 for a sample with no known class.
    """
    logits = logits.astype(jnp.float32)
    present = present.astype(jnp.float32)
    region = region.astype(jnp.float32)
    inside = _masked_max(logits, region, axes=(1, 2))                       # [B, K]
    near = dilate(region, outside_margin)
    if spare_lesions:
        near = jnp.maximum(near, spared_pixels(region * present[:, None, None, :], outside_margin))
    outside = _masked_max(logits, 1.0 - near, axes=(1, 2))
    has_outside = (jnp.min(near, axis=(1, 2)) == 0).astype(jnp.float32)
    negative = has_outside * jnp.where(present > 0, 1.0, absent_weight)
    per_class = present * jax.nn.softplus(-inside) + negative * jax.nn.softplus(outside)
    return jnp.sum(per_class * known, axis=1) / jnp.maximum(jnp.sum(known, axis=1), 1.0)


def spared_pixels(lesions: jax.Array, margin: int) -> jax.Array:
    """[B, H, W, 1]: the pixels within ``margin`` px of any class's ``lesions`` [B, H, W, K],
    which ``spare_lesions`` leaves out of the maximum-based negatives (docs/weak_supervision.md)."""
    return dilate(jnp.max(lesions.astype(jnp.float32), axis=-1, keepdims=True), margin)


def negative_max_loss_per_sample(logits: jax.Array, targets: jax.Array,
                                 spare_margin: int | None = None) -> jax.Array:
    """[B]: for a sample whose target ([B, H, W, K] in {0, 1}) is empty in a class,
    ``softplus(max logit)`` of that class (its maximum probability below 0.5); averaged over
    classes, 0 for classes with foreground. With ``spare_margin`` (static int) the maximum leaves
    out the pixels within that many px of any class's target (:func:`spared_pixels`)."""
    logits = logits.astype(jnp.float32)
    empty = (jnp.max(targets.astype(jnp.float32), axis=(1, 2)) == 0).astype(jnp.float32)
    if spare_margin is None:
        peak = jnp.max(logits, axis=(1, 2))
    else:
        peak = _masked_max(logits, 1.0 - spared_pixels(targets, spare_margin), axes=(1, 2))
    return jnp.mean(empty * jax.nn.softplus(peak), axis=1)


def _inset(region: jax.Array, inset: int, axis: int) -> jax.Array:
    """``region`` [B, H, W, K] kept where it also holds ``inset`` pixels before and after along
    ``axis`` (1 = H, 2 = W): the box shrunk by ``inset`` on the two sides of that axis."""
    if inset <= 0:
        return region
    size = region.shape[axis]
    pad = [(0, 0)] * region.ndim
    pad[axis] = (inset, inset)
    padded = jnp.pad(region, pad)
    before = jax.lax.slice_in_dim(padded, 0, size, axis=axis)
    after = jax.lax.slice_in_dim(padded, 2 * inset, 2 * inset + size, axis=axis)
    return region * before * after


def box_tightness_loss_per_sample(logits: jax.Array, boxes: jax.Array, known: jax.Array,
                                  inset: int = 0) -> jax.Array:
    """Box tightness prior (Hsu et al., NeurIPS 2019): every horizontal and vertical line of
    pixels crossing a box holds at least one foreground pixel.

    Each line (a row or a column of a class's box mask) is a positive bag; its loss is
    ``softplus(-max logit over the line's box pixels)`` (BCE of the bag's maximum toward 1). The
    loss is the mean over the bags of the sample's known classes. ``inset`` (px) keeps only the
    lines at least that far inside the box from both of its ends across the line (rows at least
    ``inset`` rows from the box's top and bottom), for boxes drawn with a margin around the lesion.

    Args:
      logits, boxes: [B, H, W, K] (boxes in {0, 1}); known: [B, K] in {0, 1}.
      inset: static int >= 0.
    Returns:
      [B]; 0 for a sample without any bag.
    """
    logits = logits.astype(jnp.float32)
    boxes = boxes.astype(jnp.float32) * known[:, None, None, :]
    total, count = 0.0, 0.0
    for line_axis, across in ((2, 1), (1, 2)):     # rows (max over W), columns (max over H)
        keep = _inset(boxes, inset, across)
        bag = jnp.max(keep, axis=line_axis)                           # [B, L, K] line in use
        pooled = _masked_max(logits, boxes, axes=line_axis)           # [B, L, K]
        total = total + jnp.sum(bag * jax.nn.softplus(-pooled), axis=(1, 2))
        count = count + jnp.sum(bag, axis=(1, 2))
    return total / jnp.maximum(count, 1.0)


def box_size_loss_per_sample(logits: jax.Array, boxes: jax.Array, known: jax.Array,
                             fill_min: float, fill_max: float) -> jax.Array:
    """Box size bounds (after Kervadec et al., MIDL 2020): a class's predicted area fills between
    ``fill_min`` and ``fill_max`` of its boxes' area.

    Per known class with a box: ``r = sum(sigmoid(logits) * boxes) / sum(boxes)`` and the hinge
    ``relu(1 - r / fill_min) + relu(r / fill_max - 1)``; averaged over those classes.

    Args:
      logits, boxes: [B, H, W, K] (boxes in {0, 1}); known: [B, K] in {0, 1};
      fill_min, fill_max: static floats, 0 < fill_min <= fill_max.
    Returns:
      [B]; 0 for a sample without a known box.
    """
    boxes = boxes.astype(jnp.float32)
    area = jnp.sum(boxes, axis=(1, 2))                                  # [B, K]
    pred = jnp.sum(jax.nn.sigmoid(logits.astype(jnp.float32)) * boxes, axis=(1, 2))
    ratio = pred / jnp.maximum(area, 1.0)
    hinge = jax.nn.relu(1.0 - ratio / fill_min) + jax.nn.relu(ratio / fill_max - 1.0)
    counted = known * (area > 0)
    return jnp.sum(hinge * counted, axis=1) / jnp.maximum(jnp.sum(counted, axis=1), 1.0)


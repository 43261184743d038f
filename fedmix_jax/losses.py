"""Segmentation losses (pure, jittable): soft Dice, BCE, FedMix's mixed supervision, weak labels.

``logits`` / ``targets`` are [B, H, W, K] (one sigmoid channel per class), per-sample values [B];
with [B] ``weights`` a loss is :func:`weighted_mean`'s. The weak-label terms:
docs/weak_supervision.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedmix_jax.data.federation import BOX, IMAGE, PIXEL

DICE_EPS = 1e-4


def overlap_sums(pred: jax.Array, target: jax.Array, axes=None) -> tuple[jax.Array, jax.Array]:
    """``(sum(pred * target), sum(pred) + sum(target))`` in float32 over ``axes`` (default: all
    but the first), e.g. [B, ...] -> ([B], [B])."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    axes = tuple(range(1, pred.ndim)) if axes is None else axes
    return (jnp.sum(pred * target, axis=axes),
            jnp.sum(pred, axis=axes) + jnp.sum(target, axis=axes))


def dice_coefficient(pred: jax.Array, target: jax.Array, eps: float = DICE_EPS) -> jax.Array:
    """Per-sample ``(2 sum(pred target) + eps) / (sum(pred) + sum(target) + eps)`` of soft or
    binary maps ``pred``, ``target`` [B, ...] in [0, 1] -> [B]: two empty maps score 1."""
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
    """Soft Dice loss of ``logits`` toward ``targets`` [B, H, W, K], weighted mean over B."""
    return weighted_mean(dice_loss_per_sample(logits, targets, eps), weights)


def bce_loss_per_sample(logits: jax.Array, targets: jax.Array,
                        pixel_weights: jax.Array | None = None) -> jax.Array:
    """Mean BCE on logits per sample, [B, H, W, K] -> [B] float32; with ``pixel_weights``
    [B, H, W, K]: ``sum(pw * bce) / max(sum(pw), 1e-12)``."""
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
    """Cross pseudo-supervision targets ``(of model 1, of model 2)``, each [B, H, W, K]: pixel
    samples (``levels`` [B]) the ``masks``, the others ``pseudo2`` / ``pseudo1`` [B, H, W, K]."""
    is_pixel = (levels == PIXEL)[:, None, None, None]
    return jnp.where(is_pixel, masks, pseudo2), jnp.where(is_pixel, masks, pseudo1)


def mixed_supervision_loss(logits1: jax.Array, logits2: jax.Array, masks: jax.Array,
                           pseudo1: jax.Array, pseudo2: jax.Array, levels: jax.Array,
                           selected: jax.Array, valid: jax.Array,
                           eps: float = DICE_EPS) -> tuple[jax.Array, jax.Array]:
    """FedMix's ``(loss_model1, loss_model2)``: Dice losses of ``logits1`` / ``logits2`` toward
    :func:`mixed_supervision_targets`, averaged over the usable samples (valid, and pixel or
    selected). Maps [B, H, W, K]; levels [B] int; selected, valid [B] bool."""
    t1, t2 = mixed_supervision_targets(masks, pseudo1, pseudo2, levels)
    w = (valid & ((levels == PIXEL) | selected)).astype(jnp.float32)     # the usable samples
    return dice_loss(logits1, t1, w, eps), dice_loss(logits2, t2, w, eps)


def weak_label_regions(boxes: jax.Array, image_labels: jax.Array, levels: jax.Array,
                       valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(region [B, H, W, K], present [B, K], known [B, K])`` float32 of ``boxes`` [B, H, W, K]
    and ``image_labels`` [B, K] in {0, 1}, ``levels`` [B] int, ``valid`` [B] bool: a box sample's
    boxes / an image sample's label broadcast; known 1 for valid box and image samples."""
    boxes, labels = boxes.astype(jnp.float32), image_labels.astype(jnp.float32)
    is_box, is_image = (levels == BOX)[:, None], (levels == IMAGE)[:, None]
    present = jnp.where(is_box, (jnp.max(boxes, axis=(1, 2)) > 0).astype(jnp.float32), labels)
    region = jnp.where(is_box[:, None, None, :], boxes,
                       jnp.broadcast_to(labels[:, None, None, :], boxes.shape))
    known = ((is_box | is_image) & valid[:, None]).astype(jnp.float32)
    return region, present, jnp.broadcast_to(known, present.shape)


def _masked_max(logits: jax.Array, mask: jax.Array, axes) -> jax.Array:
    return jnp.max(jnp.where(mask > 0, logits, -1e4), axis=axes)


def outside_region_bce_per_sample(logits: jax.Array, region: jax.Array,
                                  known: jax.Array) -> jax.Array:
    """Box emptiness, [B]: ``mean_{pixels with region = 0, classes with known = 1} BCE(logit, 0)``
    (0 without such pixel). logits, region: [B, H, W, K]; known: [B, K] in {0, 1}."""
    neg = (1.0 - region.astype(jnp.float32)) * known[:, None, None, :]
    per_pixel = jax.nn.softplus(logits.astype(jnp.float32))     # BCE toward 0
    return jnp.sum(neg * per_pixel, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(neg, axis=(1, 2, 3)), 1.0)


def dilate(region: jax.Array, radius: int) -> jax.Array:
    """``region`` [B, H, W, K] in {0, 1} grown by ``radius`` px (a square window, static int)."""
    if radius <= 0:
        return region
    size = (1, 2 * radius + 1, 2 * radius + 1, 1)
    return jax.lax.reduce_window(region, -jnp.inf, jax.lax.max, size, (1, 1, 1, 1), "SAME")


def mil_image_loss_per_sample(logits: jax.Array, region: jax.Array, present: jax.Array,
                              known: jax.Array, outside_margin: int = 0,
                              absent_weight: float = 1.0, spare_lesions: bool = False) -> jax.Array:
    """Multiple-instance bags, [B] (0 without known class): per known class
    ``present * softplus(-max_{region} logit) + softplus(max_{outside} logit)`` (the negative bag
    only where pixels lie outside ``region`` dilated by ``outside_margin`` px, scaled by
    ``absent_weight`` for absent classes; ``spare_lesions``: :func:`spared_pixels` left out too),
    averaged over the known classes. logits, region: [B, H, W, K]; present, known: [B, K]."""
    logits = logits.astype(jnp.float32)
    present, region = present.astype(jnp.float32), region.astype(jnp.float32)
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
    """[B, H, W, 1]: the pixels within ``margin`` px of any class's ``lesions`` [B, H, W, K]."""
    return dilate(jnp.max(lesions.astype(jnp.float32), axis=-1, keepdims=True), margin)


def negative_max_loss_per_sample(logits: jax.Array, targets: jax.Array,
                                 spare_margin: int | None = None) -> jax.Array:
    """[B]: ``softplus(max logit)`` of each class empty in ``targets`` [B, H, W, K], averaged over
    the classes; ``spare_margin`` (static int) leaves :func:`spared_pixels` out of the maximum."""
    logits = logits.astype(jnp.float32)
    empty = (jnp.max(targets.astype(jnp.float32), axis=(1, 2)) == 0).astype(jnp.float32)
    if spare_margin is None:
        peak = jnp.max(logits, axis=(1, 2))
    else:
        peak = _masked_max(logits, 1.0 - spared_pixels(targets, spare_margin), axes=(1, 2))
    return jnp.mean(empty * jax.nn.softplus(peak), axis=1)


def _inset(region: jax.Array, inset: int, axis: int) -> jax.Array:
    """``region`` [B, H, W, K] shrunk by ``inset`` px on both sides of ``axis`` (1 = H, 2 = W)."""
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
    """Box tightness (Hsu et al., 2019), [B] (0 without bag): the mean over every row and column
    of a known class's box (a positive bag) of ``softplus(-max logit over its box pixels)``; only
    the lines at least ``inset`` px (static) inside the box's ends. logits, boxes: [B, H, W, K];
    known: [B, K]."""
    logits = logits.astype(jnp.float32)
    boxes = boxes.astype(jnp.float32) * known[:, None, None, :]
    total, count = 0.0, 0.0
    for line_axis, across in ((2, 1), (1, 2)):     # rows (max over W), columns (max over H)
        bag = jnp.max(_inset(boxes, inset, across), axis=line_axis)   # [B, L, K] line in use
        pooled = _masked_max(logits, boxes, axes=line_axis)           # [B, L, K]
        total = total + jnp.sum(bag * jax.nn.softplus(-pooled), axis=(1, 2))
        count = count + jnp.sum(bag, axis=(1, 2))
    return total / jnp.maximum(count, 1.0)


def box_size_loss_per_sample(logits: jax.Array, boxes: jax.Array, known: jax.Array,
                             fill_min: float, fill_max: float) -> jax.Array:
    """Box size bounds (after Kervadec et al., 2020), [B] (0 without known box): per known class
    with a box, ``r = sum(sigmoid(logits) * boxes) / sum(boxes)`` and ``relu(1 - r / fill_min) +
    relu(r / fill_max - 1)``, averaged. logits, boxes: [B, H, W, K]; known: [B, K]."""
    boxes = boxes.astype(jnp.float32)
    area = jnp.sum(boxes, axis=(1, 2))                                  # [B, K]
    pred = jnp.sum(jax.nn.sigmoid(logits.astype(jnp.float32)) * boxes, axis=(1, 2))
    ratio = pred / jnp.maximum(area, 1.0)
    hinge = jax.nn.relu(1.0 - ratio / fill_min) + jax.nn.relu(ratio / fill_max - 1.0)
    counted = known * (area > 0)
    return jnp.sum(hinge * counted, axis=1) / jnp.maximum(jnp.sum(counted, axis=1), 1.0)


def window_sums(x: jax.Array, radius: int) -> jax.Array:
    """``x`` [B, H, W, C] summed over a (2 radius + 1)² window (static int; zero outside the
    image), separably by cumulative sums."""
    for axis in (1, 2):
        n, pad = x.shape[axis], [(0, 0)] * x.ndim
        pad[axis] = (radius + 1, radius)
        total = jnp.cumsum(jnp.pad(x, pad), axis=axis)
        x = (jax.lax.slice_in_dim(total, 2 * radius + 1, 2 * radius + 1 + n, axis=axis)
             - jax.lax.slice_in_dim(total, 0, n, axis=axis))
    return x


def local_mean(x: jax.Array, radius: int) -> jax.Array:
    """``x`` [B, H, W, C] averaged over a (2 radius + 1)² window (static int; at the edges over
    the window's pixels inside the image)."""
    if radius <= 0:
        return x
    counts = [np.minimum(np.arange(n) + radius, n - 1) - np.maximum(np.arange(n) - radius, 0) + 1
              for n in x.shape[1:3]]
    return window_sums(x, radius) / np.outer(*counts).astype(np.float32)[None, :, :, None]


def box_appearance_masks(images: jax.Array, boxes: jax.Array, smooth: int = 2, ring: int = 2,
                         iterations: int = 10) -> tuple[jax.Array, jax.Array]:
    """What a box's pixels look like, split in two: ``(masks [B, H, W, K] in {0, 1}, contrast
    [B, K])`` of ``images`` [B, H, W, C] and ``boxes`` [B, H, W, K] in {0, 1} (per class, the
    union of its boxes). Per sample and class: the image's channel mean, :func:`local_mean` over
    ``smooth`` px, minus the plane fitted (least squares) to the pixels within ``ring`` px of
    the boxes' border on either side (mostly background: a box is drawn around its lesion);
    inside the boxes, ``iterations`` (≥ 1) steps of 2-means (threshold = the midpoint of the two
    sides' means) split it, and the side whose mean lies farther from the border's is the mask.
    ``contrast``: that distance over the border pixels' standard deviation (0 without box);
    a box whose lesion does not stand out from its surroundings has a low contrast. Constant
    in the images' gain and offset; no gradient."""
    images, boxes = jax.lax.stop_gradient(images), boxes.astype(jnp.float32)
    _, h, w, _ = images.shape
    g = local_mean(jnp.mean(images.astype(jnp.float32), axis=-1, keepdims=True), smooth)
    border = dilate(boxes, ring) * dilate(1.0 - boxes, ring)               # [B, H, W, K]
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    basis = np.stack([np.ones((h, w)), yy, xx], axis=-1).astype(np.float32)    # [H, W, 3]
    normal = (jnp.einsum("bhwk,hwi,hwj->bkij", border, basis, basis)
              + 1e-4 * jnp.eye(3, dtype=jnp.float32))
    rhs = jnp.einsum("bhwk,hwi,bhw->bki", border, basis, g[..., 0])
    plane = jnp.einsum("hwi,bki->bhwk", basis, jnp.linalg.solve(normal, rhs[..., None])[..., 0])
    g = g - plane                                                          # [B, H, W, K]
    flat = lambda a: jnp.moveaxis(a, -1, 1).reshape(a.shape[0], a.shape[-1], h * w)  # noqa: E731
    g_flat, box_flat, border = flat(g), flat(boxes), flat(border)          # [B, K, HW]

    def sums(weights):
        return jnp.sum(g_flat * weights, axis=-1), jnp.sum(weights, axis=-1)

    (border_sum, border_n), (box_sum, box_n) = sums(border), sums(box_flat)
    border_mean = border_sum / jnp.maximum(border_n, 1.0)
    border_sd = jnp.sqrt(jnp.sum(border * (g_flat - border_mean[..., None]) ** 2, axis=-1)
                         / jnp.maximum(border_n, 1.0))
    threshold = box_sum / jnp.maximum(box_n, 1.0)
    for _ in range(iterations):
        low_sum, low_n = sums(box_flat * (g_flat < threshold[..., None]))
        low = low_sum / jnp.maximum(low_n, 1.0)
        high = (box_sum - low_sum) / jnp.maximum(box_n - low_n, 1.0)
        threshold = 0.5 * (low + high)
    below = (g < threshold[:, None, None, :]).astype(jnp.float32)
    dark = jnp.abs(low - border_mean) > jnp.abs(high - border_mean)        # [B, K]
    masks = boxes * jnp.where(dark[:, None, None, :], below, 1.0 - below)
    distance = jnp.maximum(jnp.abs(low - border_mean), jnp.abs(high - border_mean))
    contrast = jnp.where(box_n > 0, distance / jnp.maximum(border_sd, 1e-6), 0.0)
    return masks, contrast


def box_appearance_loss_per_sample(logits: jax.Array, masks: jax.Array, boxes: jax.Array,
                                   confident: jax.Array) -> jax.Array:
    """Box appearance, [B] (0 without confident box): per class with ``confident`` = 1, the mean
    over its box pixels of ``BCE(logit, mask)`` (:func:`box_appearance_masks`), averaged over
    those classes. logits, masks, boxes: [B, H, W, K]; confident: [B, K] in {0, 1}."""
    logits, boxes = logits.astype(jnp.float32), boxes.astype(jnp.float32)
    per_pixel = optax.sigmoid_binary_cross_entropy(logits, masks.astype(jnp.float32))
    area = jnp.sum(boxes, axis=(1, 2))
    per_class = jnp.sum(per_pixel * boxes, axis=(1, 2)) / jnp.maximum(area, 1.0)
    counted = confident.astype(jnp.float32) * (area > 0)
    return jnp.sum(per_class * counted, axis=1) / jnp.maximum(jnp.sum(counted, axis=1), 1.0)

"""Pseudo-labels of the two global models: binarise, refine with weak labels, select by agreement.

``p_k = [sigmoid(f_k(x)) > threshold]``; box samples ``p_k <- p_k * B``; a weak sample is selected
when ``dice(p1, p2) >= agreement`` (a box sample also ``dice(p1 * B, B) >= box_fit``); pixel
samples always. Maps [B, H, W, K], image labels [B, K], levels / valid / selection [B]. The fixes
(``reject_empty``, ``use_image_labels``, ``empty_boxes_negative``): docs/strategies.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, float_images, float_labels
from fedmix_jax.losses import dice_coefficient


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Static switches and thresholds of pseudo-label generation (hashable: a jit static arg)."""

    threshold: float = 0.5       # probability threshold that binarises predictions
    agreement: float = 0.9       # tau: minimum dice(p1, p2) for a weak sample to be selected
    box_fit: float = 0.5         # minimum dice(p1 * B, B) for a box sample
    refine: bool = True          # box refinement and multi-class image-label refinement
    reject_empty: bool = True    # fix: reject empty agreed pseudo-labels (reference: False)
    use_image_labels: bool = True  # fix: use binary image labels (reference: False)
    empty_boxes_negative: bool = True  # fix: an empty box is a certain "no lesion"

    @classmethod
    def reference(cls) -> "SelectionConfig":
        """The reference implementation's behaviour (the fixes off)."""
        return cls(reject_empty=False, use_image_labels=False, empty_boxes_negative=False)


@struct.dataclass
class PseudoLabels:
    """A batch's refined ``pseudo1`` / ``pseudo2`` [B, H, W, K] in {0, 1} (model 1 trains on
    pseudo2), ``selected`` [B] bool (pixel: True, padding: False), ``agreement`` dice(p1, p2) and
    ``box_fit`` dice(p1 * B, B) (1 for non-box) [B] float32."""

    pseudo1: jax.Array
    pseudo2: jax.Array
    selected: jax.Array
    agreement: jax.Array
    box_fit: jax.Array


def binarize(logits: jax.Array, threshold: float = 0.5) -> jax.Array:
    """``[sigmoid(logits) > threshold]`` as float32, any shape."""
    return (jax.nn.sigmoid(logits.astype(jnp.float32)) > threshold).astype(jnp.float32)


def refine_with_boxes(pred: jax.Array, boxes: jax.Array, levels: jax.Array) -> jax.Array:
    """Zero predictions outside the boxes of box-level samples: [B,H,W,K] -> [B,H,W,K]."""
    return jnp.where((levels == BOX)[:, None, None, None], pred * boxes, pred)


def refine_with_image_labels(pred: jax.Array, image_labels: jax.Array,
                             levels: jax.Array) -> jax.Array:
    """Zero the class channels an image-level sample's label marks absent: [B,H,W,K] x [B,K]."""
    is_image = (levels == IMAGE)[:, None, None, None]
    return jnp.where(is_image, pred * image_labels[:, None, None, :].astype(pred.dtype), pred)


def select_pseudo_labels(p1: jax.Array, p2: jax.Array, boxes: jax.Array, image_labels: jax.Array,
                         levels: jax.Array, valid: jax.Array,
                         config: SelectionConfig = SelectionConfig()) -> PseudoLabels:
    """Refine binarised ``p1``, ``p2`` [B, H, W, K] with ``boxes`` [B, H, W, K] / ``image_labels``
    [B, K] and select (``levels`` [B] int, ``valid`` [B] bool): a :class:`PseudoLabels`."""
    is_box = levels == BOX
    is_image = levels == IMAGE
    if config.refine:
        p1, p2 = (refine_with_boxes(p, boxes, levels) for p in (p1, p2))
    if (config.refine and p1.shape[-1] > 1) or config.use_image_labels:
        p1, p2 = (refine_with_image_labels(p, image_labels, levels) for p in (p1, p2))

    agreement = dice_coefficient(p1, p2)
    fit = jnp.where(is_box, dice_coefficient(p1 * boxes, boxes), 1.0)
    selected = (agreement >= config.agreement) & (fit >= config.box_fit)
    # [B, K]: both predictions hold class k (only box samples' change below, by the empty box)
    class_found = (jnp.sum(p1, axis=(1, 2)) > 0) & (jnp.sum(p2, axis=(1, 2)) > 0)
    if config.reject_empty:     # two empty predictions agree through eps: reject them
        nonempty = (jnp.sum(p1, axis=(1, 2, 3)) + jnp.sum(p2, axis=(1, 2, 3))) > 0
        # Box samples: every class with a box needs an agreed non-empty prediction (pooled over
        # classes, a class could otherwise be selected with an empty target despite its box).
        every_box_found = jnp.all(class_found | ~(jnp.sum(boxes, axis=(1, 2)) > 0), axis=-1)
        selected = selected & nonempty & jnp.where(is_box, every_box_found, True)
    if config.empty_boxes_negative:     # an empty box: a certain empty label, always selected
        empty_box = is_box & (jnp.sum(boxes, axis=(1, 2, 3)) == 0)
        p1, p2 = (jnp.where(empty_box[:, None, None, None], 0.0, p) for p in (p1, p2))
        selected = selected | empty_box
    if config.use_image_labels:     # "absent": an empty label; "present": agreed, non-empty
        present = image_labels > 0                                      # [B, K]
        agreed = (agreement >= config.agreement) & jnp.all(class_found | ~present, axis=-1)
        image_selected = jnp.where(~jnp.any(present, axis=-1), True, agreed)
        selected = jnp.where(is_image, image_selected, selected)
    selected = jnp.where(levels == PIXEL, True, selected) & valid
    return PseudoLabels(pseudo1=p1, pseudo2=p2, selected=selected, agreement=agreement, box_fit=fit)


def pseudo_labels_from_logits(logits1: jax.Array, logits2: jax.Array, boxes: jax.Array,
                              image_labels: jax.Array, levels: jax.Array, valid: jax.Array,
                              config: SelectionConfig = SelectionConfig()) -> PseudoLabels:
    """Binarise the two global models' logits ([B,H,W,K] each) and select; see above."""
    return select_pseudo_labels(binarize(logits1, config.threshold),
                                binarize(logits2, config.threshold),
                                boxes, image_labels, levels, valid, config)


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


def site_pseudo_labels(model, global_params, data, config) -> "PseudoLabels":
    """Pseudo-labels of the global pair (leaves [...]) on a site's un-augmented images (``data``
    leaves [N, ...], labels unpacked), in chunks of ``config.inference_chunk`` (a chunk without weak
    sample skipped): pseudo1 / pseudo2 [N, H, W, K] in the masks' dtype, selected [N]."""
    p1, p2 = global_params
    needs = data.valid & (data.levels != PIXEL)

    def both(x):
        return model.apply({"params": p1}, x), model.apply({"params": p2}, x)

    def chunk(args):
        x, boxes, labels, levels, valid, need = args
        skip = lambda x: jax.tree.map(  # noqa: E731
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(both, x))
        logits1, logits2 = jax.lax.cond(jnp.any(need), both, skip, float_images(x))
        pl = pseudo_labels_from_logits(logits1, logits2, float_labels(boxes), float_labels(labels),
                                       levels, valid, config.strategy.selection)
        store = data.masks.dtype    # {0, 1}: lossless in uint8
        return pl.replace(pseudo1=pl.pseudo1.astype(store), pseudo2=pl.pseudo2.astype(store))

    return apply_in_chunks(chunk, (data.images, data.boxes, data.image_labels, data.levels,
                                   data.valid, needs), config.inference_chunk)

"""Evaluation: per-client Dice and IoU of a model on held-out arrays, batched and jitted.

As in the reference, predictions are binarised at 0.5, Dice and IoU are computed per image (over
all pixels and class channels, eps = 1e-4, so an image with empty ground truth and empty prediction
scores 1) and averaged over each client's valid images. The mean over clients is the headline.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax.data.federation import FederatedSplit
from fedmix_jax.inference import apply_in_chunks
from fedmix_jax.losses import dice_coefficient, iou_coefficient


def segmentation_scores(logits: jax.Array, masks: jax.Array, threshold: float = 0.5):
    """Per-image (dice, iou) of binarised logits vs masks: [B, H, W, K] -> ([B], [B])."""
    pred = (jax.nn.sigmoid(logits.astype(jnp.float32)) > threshold).astype(jnp.float32)
    return dice_coefficient(pred, masks), iou_coefficient(pred, masks)


def _client_means(per_image: jax.Array, valid: jax.Array) -> jax.Array:
    v = valid.astype(jnp.float32)
    return jnp.sum(per_image * v, axis=-1) / jnp.maximum(jnp.sum(v, axis=-1), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _scores_shared(model: nn.Module, chunk: int, threshold: float, params, images, masks):
    """One model on every client's images: [C, M, ...] -> per-image dice, iou [C, M]."""
    c, m = images.shape[:2]
    flat = lambda x: x.reshape((c * m,) + x.shape[2:])  # noqa: E731

    def score(batch):
        x, y = batch
        return segmentation_scores(model.apply({"params": params}, x), y, threshold)

    dice, iou = apply_in_chunks(score, (flat(images), flat(masks)), chunk)
    return dice.reshape(c, m), iou.reshape(c, m)


def evaluate(model: nn.Module, params, split: FederatedSplit, per_client_params: bool = False,
             chunk_size: int = 64, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per-client Dice and IoU of ``model`` on a held-out split.

    Args:
      model: the Flax model.
      params: one model's params (leaves [...]) applied to every client, or — with
        ``per_client_params=True`` (the ``local`` strategy) — params with leaves [C, ...], client
        c's model evaluated on client c's images.
      split: held-out :class:`FederatedSplit` ([C, M, ...] arrays; ``valid`` masks padding).
      chunk_size: images per compiled inference chunk.

    Returns:
      dict of NumPy arrays: ``dice`` [C], ``iou`` [C], ``mean_dice`` [], ``mean_iou`` [] (mean
      over clients that have at least one valid image), ``per_image_dice`` [C, M].
    """
    images, masks = jnp.asarray(split.images), jnp.asarray(split.masks)
    valid = np.asarray(split.valid)
    if per_client_params:
        rows = []
        for c in range(images.shape[0]):
            p = jax.tree.map(lambda x: x[c], params)
            rows.append(_scores_shared(model, chunk_size, threshold, p, images[c:c + 1],
                                       masks[c:c + 1]))
        dice = jnp.concatenate([r[0] for r in rows])
        iou = jnp.concatenate([r[1] for r in rows])
    else:
        dice, iou = _scores_shared(model, chunk_size, threshold, params, images, masks)
    dice, iou = np.asarray(dice), np.asarray(iou)
    client_dice = np.asarray(_client_means(dice, valid))
    client_iou = np.asarray(_client_means(iou, valid))
    has = valid.any(axis=1)
    mean = lambda x: float(x[has].mean()) if has.any() else float("nan")  # noqa: E731
    return dict(dice=client_dice, iou=client_iou, mean_dice=np.float64(mean(client_dice)),
                mean_iou=np.float64(mean(client_iou)), per_image_dice=np.where(valid, dice, np.nan))

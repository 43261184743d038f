"""Evaluation (:func:`evaluate`): per-client, per-class Dice, IoU and HD95 of a model on held-out
arrays, predictions binarised at 0.5. The conventions and every returned key: docs/multiclass.md.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax.data.compact import CompactSplit, padded_rows
from fedmix_jax.data.federation import (FederatedSplit, float_images, gathered_labels,
                                        labels_packed, unpack_labels)
from fedmix_jax.hd95 import hd95_per_class, nanmean
from fedmix_jax.losses import DICE_EPS, dice_coefficient, iou_coefficient, overlap_sums
from fedmix_jax.pseudo_labels import apply_in_chunks, binarize


def segmentation_scores(logits: jax.Array, masks: jax.Array, threshold: float = 0.5):
    """Per-image (dice, iou) pooled over pixels and classes: [B, H, W, K] -> ([B], [B])."""
    pred = binarize(logits, threshold)
    return dice_coefficient(pred, masks), iou_coefficient(pred, masks)


def per_class_scores(pred: jax.Array, masks: jax.Array, eps: float = DICE_EPS):
    """Per-image, per-class Dice and IoU of binary maps: [B, H, W, K] -> ([B, K], [B, K])."""
    inter, total = overlap_sums(pred, masks, (1, 2))
    return (2.0 * inter + eps) / (total + eps), (inter + eps) / (total - inter + eps)


def _client_means(per_image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over the valid images of each client: [C, M, ...] -> [C, ...] (0 when none)."""
    v = valid.astype(np.float64).reshape(valid.shape + (1,) * (per_image.ndim - 2))
    return np.sum(per_image * v, axis=1) / np.maximum(np.sum(v, axis=1), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _scores_shared(model: nn.Module, chunk: int, threshold: float, with_pred: bool, params, images,
                   masks):
    """One model on every client's images [C, M, ...] (storage dtype, converted per chunk): dict
    of per-image scores [C, M(, K)] (and bool predictions [C, M, H, W, K] when ``with_pred``)."""
    c, m = images.shape[:2]
    flat = lambda x: x.reshape((c * m,) + x.shape[2:])  # noqa: E731

    def score(batch):
        x = float_images(batch[0])                      # the chunk only, on device
        y = gathered_labels(batch[1], x.shape[-2])      # unpacked if bit-packed
        pred = binarize(model.apply({"params": params}, x), threshold)
        dice_k, iou_k = per_class_scores(pred, y)
        out = dict(dice_k=dice_k, iou_k=iou_k, pooled_dice=dice_coefficient(pred, y),
                   pooled_iou=iou_coefficient(pred, y), present_k=jnp.any(y > 0.5, axis=(1, 2)))
        if with_pred:
            out["pred"] = pred > 0.5
        return out

    out = apply_in_chunks(score, (flat(images), flat(masks)), chunk)
    return jax.tree.map(lambda v: v.reshape((c, m) + v.shape[1:]), out)


def _host_masks(split: FederatedSplit | CompactSplit) -> np.ndarray:
    """``split.masks`` as a NumPy array [C, M, ...], unpacked if bit-packed (for HD95)."""
    m = np.asarray(split.masks)
    m = unpack_labels(m, split.images.shape[-2]) if labels_packed(split) else m
    if isinstance(split, CompactSplit):
        m = padded_rows(m, np.asarray(split.offsets), np.asarray(split.lengths), split.max_samples)
    return m


def _pieces(split: FederatedSplit | CompactSplit, params, per_client_params: bool,
            block_size: int | None):
    """``(params, images, masks, put)`` per piece of any layout: ``images`` / ``masks`` [a, b, ...]
    slices (padded: ``block_size`` images of every client; compact: ``block_size * C`` rows;
    per-client params: one client), ``put(dst, v)`` writes outputs [a, b, ...] into [C, M, ...]."""
    client = lambda c: jax.tree.map(lambda x: x[c], params)  # noqa: E731
    m = split.max_samples
    if not isinstance(split, CompactSplit):
        if per_client_params:
            for c in range(split.num_clients):
                yield (client(c), split.images[c:c + 1], split.masks[c:c + 1],
                       lambda dst, v, c=c: dst.__setitem__(c, v[0]))
            return
        step = m if block_size is None else max(int(block_size), 1)
        for lo in range(0, m, step):
            yield (params, _cut(split.images, lo, step, 1), _cut(split.masks, lo, step, 1),
                   lambda dst, v, lo=lo: dst.__setitem__((slice(None), slice(lo, lo + step)), v))
        return
    offsets, lengths = np.asarray(split.offsets), np.asarray(split.lengths)
    if per_client_params:
        for c, (o, n) in enumerate(zip(offsets, lengths)):
            o, n = int(o), int(n)       # T >= o + M: a static slice of device or host rows
            yield (client(c), split.images[o:o + m][None], split.masks[o:o + m][None],
                   lambda dst, v, c=c, n=n: dst.__setitem__((c, slice(0, n)), v[0, :n]))
        return
    t = split.images.shape[0]
    row_client, row_image = np.full(t, -1), np.zeros(t, np.int64)    # -1: a row of no client
    for c, (o, n) in enumerate(zip(offsets, lengths)):
        row_client[o:o + n], row_image[o:o + n] = c, np.arange(n)
    step = t if block_size is None else max(int(block_size) * split.num_clients, 1)
    for lo in range(0, t, step):
        yield (params, _cut(split.images, lo, step, 0)[None], _cut(split.masks, lo, step, 0)[None],
               lambda dst, v, lo=lo: _put_rows(dst, v[0], row_client[lo:lo + step],
                                               row_image[lo:lo + step]))


def _cut(x, lo: int, size: int, axis: int):
    if lo == 0 and size >= x.shape[axis]:
        return x
    return x[(slice(None),) * axis + (slice(lo, lo + size),)]


def _put_rows(dst, rows, row_client, row_image):
    """Row r of a compact split's outputs to ``dst[row_client[r], row_image[r]]`` (-1: dropped)."""
    mine = row_client >= 0
    dst[row_client[mine], row_image[mine]] = rows[mine]


def evaluate(model: nn.Module, params, split: FederatedSplit, per_client_params: bool = False,
             chunk_size: int = 64, threshold: float = 0.5, hd95: bool = True,
             hd95_one_empty: str = "diagonal", block_size: int | None = None
             ) -> dict[str, np.ndarray]:
    """Per-client (and per-class) Dice, IoU and HD95 of ``model`` on a held-out split.

    ``params``: leaves [...] for every client, or [C, ...] with ``per_client_params`` (client c's
    model on client c). ``split``: a :class:`FederatedSplit` [C, M, ...] or its ``CompactSplit``.
    ``hd95=False`` skips HD95; ``hd95_one_empty``: ``'diagonal'``, ``'nan'`` or ``'inf'``;
    ``block_size``: images of every client moved to the device at a time (None: all).
    Returns a dict of NumPy arrays [C], [C, K], [C, M(, K)] and ``mean_*`` ([], [K]); every key:
    docs/multiclass.md.
    """
    valid = (split.padded_valid() if isinstance(split, CompactSplit)
             else np.asarray(split.valid).astype(bool))
    out: dict[str, np.ndarray] = {}     # per-image scores [C, M(, ...)], every layout alike
    for p, images, masks, put in _pieces(split, params, per_client_params, block_size):
        scores = _scores_shared(model, chunk_size, threshold, bool(hd95), p, images, masks)
        for k, v in scores.items():
            v = np.asarray(v)
            put(out.setdefault(k, np.zeros(valid.shape + v.shape[2:], v.dtype)), v)
    res = _figures(out, valid)
    if hd95:
        res.update(_hd95_figures(out["pred"], _host_masks(split) > 0.5, valid, hd95_one_empty))
    return res


def _over_clients(x: np.ndarray, has: np.ndarray, mean=np.mean) -> np.ndarray:
    """[C, ...] -> [...]: the mean over the clients with data (NaN when none has any)."""
    return mean(x[has], axis=0) if has.any() else np.full(x.shape[1:], np.nan)


_nan_over_clients = functools.partial(_over_clients, mean=nanmean)     # NaNs skipped


def _figures(out: dict, valid: np.ndarray) -> dict:
    """:func:`evaluate`'s figures but HD95 from per-image scores [C, M(, K)], ``valid`` [C, M]."""
    has = valid.any(axis=1)
    dice_pc, iou_pc, pooled_dice, pooled_iou = (          # [C, K], [C, K], [C], [C]
        _client_means(out[k].astype(np.float64), valid)
        for k in ("dice_k", "iou_k", "pooled_dice", "pooled_iou"))
    dice, iou = dice_pc.mean(axis=-1), iou_pc.mean(axis=-1)                # [C]
    present = out["present_k"] & valid[..., None]       # [C, M, K]: class k in image m's mask
    dice_present_pc = nanmean(np.where(present, out["dice_k"], np.nan), axis=1)     # [C, K]
    dice_present = nanmean(dice_present_pc, axis=-1)
    # Lesion-free images with any predicted foreground: their pooled Dice is <= eps, not 1.
    lesion_free = valid & ~present.any(axis=-1)                                     # [C, M]
    num_free = lesion_free.sum(axis=1)
    fp = np.sum(lesion_free & (out["pooled_dice"] < 0.5), axis=1)
    fp_rate = np.where(num_free > 0, fp / np.maximum(num_free, 1), np.nan)
    return dict(
        dice=dice, iou=iou,
        mean_dice=np.float64(_over_clients(dice, has)),
        mean_iou=np.float64(_over_clients(iou, has)),
        dice_per_class=dice_pc, iou_per_class=iou_pc,
        mean_dice_per_class=_over_clients(dice_pc, has),
        mean_iou_per_class=_over_clients(iou_pc, has),
        per_image_dice=np.where(valid, out["dice_k"].mean(axis=-1), np.nan),
        per_image_dice_per_class=np.where(valid[..., None], out["dice_k"], np.nan),
        pooled_dice=pooled_dice, pooled_iou=pooled_iou,
        mean_pooled_dice=np.float64(_over_clients(pooled_dice, has)),
        dice_present_per_class=dice_present_pc, dice_present=dice_present,
        mean_dice_present=np.float64(_nan_over_clients(dice_present, has)),
        mean_dice_present_per_class=_nan_over_clients(dice_present_pc, has),
        false_positive_rate=fp_rate, num_lesion_free=num_free,
        mean_false_positive_rate=np.float64(_nan_over_clients(fp_rate, has)))


def _hd95_figures(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, one_empty: str) -> dict:
    """HD95 figures of :func:`evaluate` from binary predictions and truths [C, M, H, W, K]."""
    has = valid.any(axis=1)
    per_image = np.full(valid.shape + pred.shape[-1:], np.nan)
    for c in range(valid.shape[0]):
        idx = np.flatnonzero(valid[c])
        per_image[c, idx] = hd95_per_class(pred[c, idx], gt[c, idx], one_empty=one_empty)
    hd_pc = nanmean(per_image, axis=1)                                   # [C, K]
    hd = nanmean(hd_pc, axis=-1)                                         # [C]
    return dict(hd95_per_class=hd_pc, hd95=hd, mean_hd95=np.float64(_nan_over_clients(hd, has)),
                mean_hd95_per_class=_nan_over_clients(hd_pc, has), per_image_hd95=per_image)

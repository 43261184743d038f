"""HD95: the 95th-percentile symmetric Hausdorff distance between two binary masks, in pixels.

Definition (as MONAI's ``compute_hausdorff_distance(..., percentile=95)``, the field's usual
implementation):

* the *edge* of a mask is its set of foreground pixels that have a background 4-neighbour, the
  outside of the image counting as background (``mask & ~binary_erosion(mask)`` with SciPy's
  default cross-shaped structuring element and ``border_value=0``);
* the directed distance set ``d(A -> B)`` is, for every edge pixel of A, the Euclidean distance (in
  pixels, centre to centre) to the nearest edge pixel of B (a distance transform of B's
  edge-complement, read at A's edge pixels);
* ``HD95(A, B) = max(P95(d(A -> B)), P95(d(B -> A)))`` with ``P95`` NumPy's default (linear
  interpolation) percentile.

Empty masks (the definition needs two non-empty edges), per class and per image:

===============================  =======================  ====================================
case                             here (default)           MONAI ``compute_hausdorff_distance``
===============================  =======================  ====================================
prediction and truth both empty  ``nan``: excluded from   ``nan``: excluded by its nan-aware
                                 every mean               reductions
exactly one of them empty        the image diagonal       ``nan`` with ``percentile=95`` (the
                                 ``sqrt(H^2 + W^2)``      percentile of infinite distances);
                                                          ``inf`` without a percentile
===============================  =======================  ====================================

Both-empty is excluded as MONAI does (there is no boundary to measure, and Dice already scores the
agreement). A missed or hallucinated lesion gets the largest distance two pixels of the image can
have: a finite penalty, where MONAI's HD95 silently drops it from its mean (which rewards
predicting nothing on hard images) and its plain Hausdorff distance makes the mean infinite.
``one_empty='nan'`` gives MONAI's HD95 value (excluded) and ``one_empty='inf'`` its Hausdorff
value. Means over images, classes and clients skip NaNs (:func:`nanmean`); a mean over nothing but
NaNs is NaN.

Runs on the host with ``scipy.ndimage`` (evaluation, not the training hot path). Masks are cropped
to the bounding box of their union first, which changes no distance (both edge sets lie inside it)
and keeps the distance transforms small.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

ONE_EMPTY_CHOICES = ("diagonal", "inf", "nan")


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """Edge pixels of a 2D boolean mask: foreground with a background 4-neighbour (border = 0)."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _crop(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    union = pred | gt
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return pred[sl], gt[sl]


def _directed(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Distances from every edge pixel of ``src`` to the nearest edge pixel of ``dst``."""
    return ndimage.distance_transform_edt(~dst_edges)[src_edges]


def hd95(pred, gt, *, percentile: float = 95.0, one_empty: str = "diagonal") -> float:
    """Percentile symmetric Hausdorff distance of two 2D binary masks [H, W], in pixels.

    Args:
      pred, gt: [H, W] masks (anything ``> 0.5`` is foreground).
      percentile: 95 for HD95; 100 gives the classical Hausdorff distance.
      one_empty: value when exactly one mask is empty: ``'diagonal'`` (``sqrt(H^2 + W^2)``),
        ``'nan'`` (excluded from means, as MONAI's HD95) or ``'inf'``.

    Returns:
      the distance (float); ``nan`` when both masks are empty.

    Example: a 4 x 4 square and the same square shifted by 2 px along x -> 2.0.
    """
    if one_empty not in ONE_EMPTY_CHOICES:
        raise ValueError(f"one_empty must be one of {ONE_EMPTY_CHOICES}, got {one_empty!r}")
    pred = np.asarray(pred) > 0.5
    gt = np.asarray(gt) > 0.5
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"hd95 needs two 2D masks of the same shape, got {pred.shape} and "
                         f"{gt.shape}")
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return float("nan")
    if has_p != has_g:
        return {"diagonal": math.hypot(*pred.shape), "inf": math.inf,
                "nan": math.nan}[one_empty]
    pred, gt = _crop(pred, gt)
    ep, eg = mask_edges(pred), mask_edges(gt)
    return float(max(np.percentile(_directed(ep, eg), percentile),
                     np.percentile(_directed(eg, ep), percentile)))


def hd95_per_class(pred, gt, *, percentile: float = 95.0, one_empty: str = "diagonal"
                   ) -> np.ndarray:
    """HD95 of every image and class: masks [B, H, W, K] -> float64 [B, K] (NaN: both empty)."""
    pred = np.asarray(pred) > 0.5
    gt = np.asarray(gt) > 0.5
    if pred.ndim != 4 or pred.shape != gt.shape:
        raise ValueError(f"hd95_per_class needs [B, H, W, K] masks of the same shape, got "
                         f"{pred.shape} and {gt.shape}")
    b, _, _, k = pred.shape
    out = np.full((b, k), np.nan)
    has_p, has_g = pred.any(axis=(1, 2)), gt.any(axis=(1, 2))
    for i, j in zip(*np.nonzero(has_p | has_g)):
        out[i, j] = hd95(pred[i, ..., j], gt[i, ..., j], percentile=percentile,
                         one_empty=one_empty)
    return out


def nanmean(x, axis=None):
    """Mean skipping NaNs; NaN (without a warning) where everything is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(np.asarray(x, np.float64), axis=axis)


__all__ = ["hd95", "hd95_per_class"]

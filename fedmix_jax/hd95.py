"""HD95: the 95th-percentile symmetric Hausdorff distance between two binary masks, in pixels.

As MONAI's ``compute_hausdorff_distance(..., percentile=95)``, on the host (``scipy.ndimage``);
both masks empty: NaN, exactly one: the image diagonal by default. Details: docs/multiclass.md.
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


def _directed(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Distances from every edge pixel of ``src`` to the nearest edge pixel of ``dst``."""
    return ndimage.distance_transform_edt(~dst_edges)[src_edges]


def hd95(pred, gt, *, percentile: float = 95.0, one_empty: str = "diagonal") -> float:
    """Percentile symmetric Hausdorff distance (px) of masks ``pred``, ``gt`` [H, W] (> 0.5:
    foreground); NaN when both are empty; ``one_empty``: ``'diagonal'``, ``'nan'`` or ``'inf'``.
    Raises ValueError on other shapes or ``one_empty`` values."""
    if one_empty not in ONE_EMPTY_CHOICES:
        raise ValueError(f"one_empty must be one of {ONE_EMPTY_CHOICES}, got {one_empty!r}")
    pred, gt = np.asarray(pred) > 0.5, np.asarray(gt) > 0.5
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"hd95 needs two 2D masks of the same shape, got {pred.shape} and "
                         f"{gt.shape}")
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return float("nan")
    if has_p != has_g:
        return {"diagonal": math.hypot(*pred.shape), "inf": math.inf, "nan": math.nan}[one_empty]
    union = pred | gt                   # cropped to the union's bounding box (same distances)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    ep, eg = mask_edges(pred[box]), mask_edges(gt[box])
    return float(max(np.percentile(_directed(ep, eg), percentile),
                     np.percentile(_directed(eg, ep), percentile)))


def hd95_per_class(pred, gt, *, percentile: float = 95.0, one_empty: str = "diagonal"
                   ) -> np.ndarray:
    """HD95 of every image and class: masks [B, H, W, K] -> float64 [B, K] (NaN: both empty)."""
    pred, gt = np.asarray(pred) > 0.5, np.asarray(gt) > 0.5
    if pred.ndim != 4 or pred.shape != gt.shape:
        raise ValueError(f"hd95_per_class needs [B, H, W, K] masks of the same shape, got "
                         f"{pred.shape} and {gt.shape}")
    b, _, _, k = pred.shape
    out = np.full((b, k), np.nan)
    for i, j in zip(*np.nonzero(pred.any(axis=(1, 2)) | gt.any(axis=(1, 2)))):
        out[i, j] = hd95(pred[i, ..., j], gt[i, ..., j], percentile=percentile, one_empty=one_empty)
    return out


def nanmean(x, axis=None):
    """Mean skipping NaNs; NaN (without a warning) where everything is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(np.asarray(x, np.float64), axis=axis)


__all__ = ["hd95", "hd95_per_class"]

"""Bounding boxes from segmentation masks, shared by every data source.

Boxes are int64 ``[nb, 4]`` ``(x_min, y_min, x_max, y_max)``, inclusive pixel coordinates, with
per-side random margins drawn once per sample (:func:`sample_rng`); ``box_mode`` is ``component``
or ``enclosing``. Details: docs/data.md, docs/data_faults.md.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

BOX_MODES = ("component", "enclosing")


def check_box_mode(box_mode: str) -> str:
    """``box_mode`` normalised ('component' | 'enclosing'); ValueError naming the choices."""
    mode = str(box_mode).strip().lower()
    if mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r} "
                         "(--config.data.box_mode)")
    return mode


def sample_rng(seed: int, *ids: int) -> np.random.Generator:
    """A generator seeded from ``(seed, *ids)`` (ints >= 0), e.g. ``sample_rng(seed, client,
    split, index)``: a sample's draws do not depend on the order samples are built in."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed)] + [int(i) for i in ids])))


def _foreground(mask2d) -> np.ndarray:
    """A [H, W] mask as bool (``True`` or ``> 0.5``)."""
    m = np.asarray(mask2d)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {m.shape}")
    return m if m.dtype == bool else m > 0.5


def connected_components(mask2d: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected foreground regions of a [H, W] mask (8- or 4-``connectivity``):
    ``(labels [H, W] int32, count)``, 0 background, ``1..count`` in raster order."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = ndimage.generate_binary_structure(2, connectivity // 4)  # 4 or 8 neighbours
    labels, count = ndimage.label(_foreground(mask2d), structure=structure)  # int32 labels
    return labels, int(count)


def boxes_from_mask(mask2d: np.ndarray, rng: np.random.Generator | None, margin=(1, 9),
                    per_component: bool = True, min_area: int = 1,
                    connectivity: int = 8, box_mode: str = "component") -> np.ndarray:
    """Noisy bounding boxes of a [H, W] mask's lesions, as an annotator would draw them.

    Each side is pushed out by an integer drawn uniformly from ``margin = (lo, hi)`` (an int:
    fixed, then ``rng`` may be None). ``per_component=False``: one box around the whole mask;
    components under ``min_area`` px are ignored. Returns int64 ``[nb, 4]``, inclusive, clipped,
    in raster order; an empty mask gives ``[0, 4]`` and draws nothing, otherwise exactly
    ``4 * nb`` integers are drawn in one call.
    """
    mode = check_box_mode(box_mode)
    m = _foreground(mask2d)
    h, w = m.shape
    lo, hi = (int(margin),) * 2 if np.isscalar(margin) else (int(x) for x in margin)
    if lo < 0 or hi < lo:
        raise ValueError(f"margin must be an int >= 0 or a pair lo <= hi, got {margin!r}")
    if mode == "component" and per_component:
        labels, count = connected_components(m, connectivity)
        area = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        tight = np.array([[sx.start, sy.start, sx.stop - 1, sy.stop - 1]
                          for sy, sx in ndimage.find_objects(labels, max_label=count)],
                         np.int64).reshape(-1, 4)[area >= max(int(min_area), 1)]
    else:
        ys, xs = np.flatnonzero(np.any(m, axis=1)), np.flatnonzero(np.any(m, axis=0))
        tight = np.array([[xs[0], ys[0], xs[-1], ys[-1]]] if ys.size else [],
                         np.int64).reshape(-1, 4)
    nb = tight.shape[0]
    if nb == 0:
        return np.zeros((0, 4), np.int64)
    if lo != hi and rng is None:
        raise ValueError("boxes_from_mask needs an rng for a random margin")
    margins = (np.full((nb, 4), lo, np.int64) if lo == hi
               else rng.integers(lo, hi, size=(nb, 4), endpoint=True).astype(np.int64))
    boxes = tight + margins * np.array([-1, -1, 1, 1], np.int64)
    if mode == "enclosing":
        boxes[:, 2:] -= 1  # the reference's exclusive slice end: bottom/right one pixel smaller
    return np.clip(boxes, 0, [w - 1, h - 1, w - 1, h - 1])


def box_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise boxes [nb, 4] (inclusive, clipped; an inverted box is empty): [H, W] float32,
    1 inside any box, else 0 (a 2-D difference array)."""
    b = np.asarray(boxes, np.int64).reshape(-1, 4)
    start = np.clip(b[:, :2], 0, [width, height])
    stop = np.clip(b[:, 2:] + 1, 0, [width, height])
    ok = (stop > start).all(axis=1)
    (x0, y0), (x1, y1) = start[ok].T, stop[ok].T
    diff = np.zeros((height + 1, width + 1), np.int64)
    for y, x, v in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        np.add.at(diff, (y, x), v)
    cover = diff.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    return (cover > 0).astype(np.float32)


def box_masks_from_masks(masks_hwk: np.ndarray, rng: np.random.Generator | None, margin=(1, 9),
                         per_component: bool = True, min_area: int = 1,
                         connectivity: int = 8, box_mode: str = "component") -> np.ndarray:
    """Per-class box masks of one sample: [H, W, K] (or [H, W]) mask -> [H, W, K] float32, the
    boxes of :func:`boxes_from_mask` for classes 0..K-1 in order, with the same ``rng``."""
    m = np.atleast_3d(masks_hwk)  # [H, W] -> [H, W, 1]
    h, w, k = m.shape
    out = np.zeros((h, w, k), np.float32)
    for c in range(k):
        b = boxes_from_mask(m[..., c], rng, margin=margin, per_component=per_component,
                            min_area=min_area, connectivity=connectivity, box_mode=box_mode)
        out[..., c] = box_mask(b, h, w)   # no box: all zeros
    return out


def scale_boxes(boxes: np.ndarray, from_hw: Sequence[int], to_hw: Sequence[int]) -> np.ndarray:
    """Map inclusive pixel boxes [nb, 4] from an image of size ``from_hw`` to ``to_hw``: the
    pixel-edge interval ``[x_min, x_max + 1)`` is scaled and rounded outwards. int64 ``[nb, 4]``,
    clipped to the new image."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    fh, fw = (float(v) for v in from_hw)
    th, tw = (int(v) for v in to_hw)
    scale = np.array([tw / fw, th / fh])
    eps = 1e-9  # so that exact multiples do not round outwards by one pixel
    start = np.floor(b[:, :2] * scale + eps)
    stop = np.ceil((b[:, 2:] + 1) * scale - eps) - 1
    return np.clip(np.concatenate([start, stop], axis=1).astype(np.int64), 0,
                   [tw - 1, th - 1, tw - 1, th - 1])

"""Bounding boxes from segmentation masks, shared by every data source.

FedMix's box-level clients see, instead of a mask, one box per lesion drawn by an "annotator" with a
small random slack: each side of the tight bounding box is pushed out by an independent random
integer margin (1 to 9 px in the reference) and clipped to the image. Unlike the reference, which
re-draws the margins every epoch, the margins here are drawn **once per sample**: the caller passes
a ``numpy.random.Generator`` seeded per sample (see :func:`sample_rng`), so a sample's box never
changes between epochs, runs or machines.

Conventions
-----------
* Boxes are ``int64`` arrays ``[nb, 4]`` of ``(x_min, y_min, x_max, y_max)`` with **inclusive**
  pixel coordinates (column ``x``, row ``y``): the box covers ``mask[y_min:y_max+1, x_min:x_max+1]``.
* A mask pixel is foreground when it is ``True`` (bool masks) or ``> 0.5`` (numeric masks).
* Connected components use **8-connectivity** by default (pixels touching at a corner belong to the
  same lesion, like ``skimage.measure.label``'s default for 2-D); pass ``connectivity=4`` for the
  4-neighbourhood (``scipy.ndimage.label``'s default). Labels are numbered ``1..count`` in raster
  order of each component's first pixel, ``0`` is background.

Everything is NumPy only (no SciPy / scikit-image / OpenCV).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "sample_rng",
    "connected_components",
    "boxes_from_mask",
    "box_mask",
    "box_masks_from_masks",
    "scale_boxes",
]


def sample_rng(seed: int, *ids: int) -> np.random.Generator:
    """A generator seeded from ``(seed, *ids)``, e.g. ``sample_rng(seed, client, split, index)``.

    Independent of the order in which samples are visited, so one sample's draws (its box margins,
    say) do not depend on how many other samples were built before it. All ids must be ints >= 0.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed)] + [int(i) for i in ids])))


def _foreground(mask2d) -> np.ndarray:
    m = np.asarray(mask2d)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {m.shape}")
    return m if m.dtype == bool else m > 0.5


def connected_components(mask2d: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected foreground regions of a 2-D mask.

    Args:
      mask2d: [H, W] bool or numeric mask (numeric: foreground is ``> 0.5``).
      connectivity: 8 (default; corner-touching pixels are connected) or 4.

    Returns:
      ``(labels, count)``: ``labels`` [H, W] int32 with 0 for background and ``1..count`` for the
      components, numbered in raster order of their first (top-most, then left-most) pixel.

    Vectorised union-find: pixels of one horizontal run start out sharing a parent (the run's first
    pixel); the remaining adjacencies (one vertical edge per overlapping run pair, and diagonal
    edges not already implied by a shorter path) are merged by repeated "hook the larger root onto
    the smaller" passes with full pointer jumping, until every edge joins equal roots. A 600x450
    mask takes a few milliseconds.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    m = _foreground(mask2d)
    h, w = m.shape
    labels = np.zeros((h, w), np.int32)
    if not m.any():
        return labels, 0

    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    # Parent of every foreground pixel = first pixel of its horizontal run.
    start = m.copy()
    start[:, 1:] &= ~m[:, :-1]
    run = np.maximum.accumulate(np.where(start, idx, -1), axis=1)
    parent = np.where(m, run, idx).ravel()

    # Vertical edges (y, x)-(y+1, x): only the left-most of each horizontally contiguous stretch
    # is needed, the others are implied by the two runs.
    vert = m[:-1] & m[1:]
    vert_first = vert.copy()
    vert_first[:, 1:] &= ~vert[:, :-1]
    ys, xs = np.nonzero(vert_first)
    us = [ys * w + xs]
    vs = [(ys + 1) * w + xs]
    if connectivity == 8:
        # Diagonals, only where neither orthogonal path through a shared neighbour exists.
        d1 = m[:-1, :-1] & m[1:, 1:] & ~m[:-1, 1:] & ~m[1:, :-1]   # (y, x)-(y+1, x+1)
        ys, xs = np.nonzero(d1)
        us.append(ys * w + xs)
        vs.append((ys + 1) * w + xs + 1)
        d2 = m[:-1, 1:] & m[1:, :-1] & ~m[:-1, :-1] & ~m[1:, 1:]   # (y, x+1)-(y+1, x)
        ys, xs = np.nonzero(d2)
        us.append(ys * w + xs + 1)
        vs.append((ys + 1) * w + xs)
    u = np.concatenate(us)
    v = np.concatenate(vs)

    while u.size:
        pu, pv = parent[u], parent[v]
        keep = pu != pv
        if not keep.any():
            break
        u, v, pu, pv = u[keep], v[keep], pu[keep], pv[keep]
        # Hook: each root pu/pv is a root (parent fully compressed), so setting parent[hi] = lo
        # (lo < hi) never creates a cycle; when several edges hook the same root one write wins
        # and the others are retried next pass.
        parent[np.maximum(pu, pv)] = np.minimum(pu, pv)
        while True:  # pointer jumping until every node points at its root
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp

    # The root of a component is its smallest (first in raster order) pixel index, so numbering
    # the roots in index order numbers the components in raster order.
    flat_m = m.ravel()
    is_root = flat_m & (parent == idx.ravel())
    number = np.cumsum(is_root, dtype=np.int32)
    labels = np.where(flat_m, number[parent], 0).astype(np.int32).reshape(h, w)
    return labels, int(number[-1])


def _margin_range(margin) -> tuple[int, int]:
    if np.isscalar(margin):
        lo = hi = int(margin)
    else:
        lo, hi = (int(x) for x in margin)
    if lo < 0 or hi < lo:
        raise ValueError(f"margin must be an int >= 0 or a pair lo <= hi, got {margin!r}")
    return lo, hi


def boxes_from_mask(mask2d: np.ndarray, rng: np.random.Generator | None, margin=(1, 9),
                    per_component: bool = True, min_area: int = 1,
                    connectivity: int = 8) -> np.ndarray:
    """Noisy bounding boxes of a mask's lesions, as an annotator would draw them.

    Args:
      mask2d: [H, W] bool or numeric mask (numeric: foreground is ``> 0.5``).
      rng: generator for the margins, seeded once per sample by the caller (e.g.
        :func:`sample_rng`); may be ``None`` only when the margin is fixed (``lo == hi``).
      margin: ``(lo, hi)``: each side of each box is enlarged by an independent integer drawn
        uniformly from ``[lo, hi]`` (both inclusive), or an int for a fixed margin.
      per_component: one box per connected component (default) or one box around the whole mask.
      min_area: components with fewer pixels are ignored (``per_component=True`` only).
      connectivity: 8 (default) or 4, see :func:`connected_components`.

    Returns:
      int64 ``[nb, 4]`` boxes ``(x_min, y_min, x_max, y_max)``, inclusive, clipped to the image,
      in raster order of the components' first pixels. An empty mask gives ``[0, 4]`` and draws
      nothing from ``rng``; otherwise exactly ``4 * nb`` integers are drawn, in one call.
    """
    m = _foreground(mask2d)
    h, w = m.shape
    lo, hi = _margin_range(margin)
    if per_component:
        labels, count = connected_components(m, connectivity)
        if count == 0:
            return np.zeros((0, 4), np.int64)
        ys, xs = np.nonzero(labels)
        lab = labels[ys, xs] - 1
        area = np.bincount(lab, minlength=count)
        x0 = np.full(count, w, np.int64)
        y0 = np.full(count, h, np.int64)
        x1 = np.full(count, -1, np.int64)
        y1 = np.full(count, -1, np.int64)
        np.minimum.at(x0, lab, xs)
        np.minimum.at(y0, lab, ys)
        np.maximum.at(x1, lab, xs)
        np.maximum.at(y1, lab, ys)
        tight = np.stack([x0, y0, x1, y1], axis=1)[area >= max(int(min_area), 1)]
    else:
        ys, xs = np.nonzero(m)
        if ys.size == 0:
            return np.zeros((0, 4), np.int64)
        tight = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], np.int64)
    nb = tight.shape[0]
    if nb == 0:
        return np.zeros((0, 4), np.int64)
    if lo == hi:
        margins = np.full((nb, 4), lo, np.int64)
    else:
        if rng is None:
            raise ValueError("boxes_from_mask needs an rng for a random margin")
        margins = rng.integers(lo, hi, size=(nb, 4), endpoint=True).astype(np.int64)
    boxes = tight + margins * np.array([-1, -1, 1, 1], np.int64)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
    return boxes


def box_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise boxes: [H, W] float32, 1 inside any box (inclusive coordinates), else 0.

    Coordinates outside the image are clipped; a box with ``x_max < x_min`` or ``y_max < y_min``
    after clipping is empty. Uses a 2-D difference array, O(H*W + nb).
    """
    b = np.asarray(boxes, np.int64).reshape(-1, 4)
    if b.shape[0] == 0:
        return np.zeros((height, width), np.float32)
    x0 = np.clip(b[:, 0], 0, width)
    y0 = np.clip(b[:, 1], 0, height)
    x1 = np.clip(b[:, 2] + 1, 0, width)
    y1 = np.clip(b[:, 3] + 1, 0, height)
    ok = (x1 > x0) & (y1 > y0)
    x0, y0, x1, y1 = x0[ok], y0[ok], x1[ok], y1[ok]
    diff = np.zeros((height + 1, width + 1), np.int64)
    np.add.at(diff, (y0, x0), 1)
    np.add.at(diff, (y0, x1), -1)
    np.add.at(diff, (y1, x0), -1)
    np.add.at(diff, (y1, x1), 1)
    cover = diff.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    return (cover > 0).astype(np.float32)


def box_masks_from_masks(masks_hwk: np.ndarray, rng: np.random.Generator | None, margin=(1, 9),
                         per_component: bool = True, min_area: int = 1,
                         connectivity: int = 8) -> np.ndarray:
    """Per-class box masks of one sample: [H, W, K] mask -> [H, W, K] float32 box mask.

    Channel ``k`` is 1 inside any box drawn around class ``k``'s mask (see :func:`boxes_from_mask`;
    classes are processed in order 0..K-1 with the same ``rng``). A [H, W] mask is treated as K=1.
    """
    m = np.asarray(masks_hwk)
    if m.ndim == 2:
        m = m[..., None]
    h, w, k = m.shape
    out = np.zeros((h, w, k), np.float32)
    for c in range(k):
        b = boxes_from_mask(m[..., c], rng, margin=margin, per_component=per_component,
                            min_area=min_area, connectivity=connectivity)
        if b.shape[0]:
            out[..., c] = box_mask(b, h, w)
    return out


def scale_boxes(boxes: np.ndarray, from_hw: Sequence[int], to_hw: Sequence[int]) -> np.ndarray:
    """Map inclusive pixel boxes from an image of size ``from_hw`` to one of size ``to_hw``.

    A box covers the continuous interval ``[x_min, x_max + 1)`` of pixel edges; that interval is
    scaled and rounded outwards (floor of the start, ceil of the end), so the scaled box still
    contains everything the original covered. Result int64 ``[nb, 4]``, clipped to the new image.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    fh, fw = (float(v) for v in from_hw)
    th, tw = (int(v) for v in to_hw)
    sx, sy = tw / fw, th / fh
    eps = 1e-9  # so that exact multiples do not round outwards by one pixel
    x0 = np.floor(b[:, 0] * sx + eps)
    y0 = np.floor(b[:, 1] * sy + eps)
    x1 = np.ceil((b[:, 2] + 1) * sx - eps) - 1
    y1 = np.ceil((b[:, 3] + 1) * sy - eps) - 1
    out = np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, tw - 1)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, th - 1)
    return out

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

Components come from ``scipy.ndimage.label`` and their extents from ``scipy.ndimage.find_objects``.

Box geometry (``box_mode``)
---------------------------
* ``"component"`` (default): one box per connected component, each side pushed out by its own
  margin (inclusive ends on all four sides).
* ``"enclosing"``: the reference's geometry -- one box enclosing all of the mask's foreground (per
  class), drawn as the reference draws it, ``box[y0 - m : y1 + m, x0 - m : x1 + m] = 1`` with the
  tight *inclusive* ends ``y1``/``x1`` used as an *exclusive* slice end, so the bottom/right margin
  is one pixel smaller than the drawn margin (with the 1-9 px margins, 0-8 px).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


BOX_MODES = ("component", "enclosing")

# scipy.ndimage structuring elements for 4- and 8-connectivity.
_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1),
              8: ndimage.generate_binary_structure(2, 2)}


def check_box_mode(box_mode: str) -> str:
    """``box_mode`` normalised ('component' | 'enclosing'); ValueError naming the choices."""
    mode = str(box_mode).strip().lower()
    if mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r} "
                         "(--config.data.box_mode)")
    return mode


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
    """Label the connected foreground regions of a 2-D mask (``scipy.ndimage.label``).

    Args:
      mask2d: [H, W] bool or numeric mask (numeric: foreground is ``> 0.5``).
      connectivity: 8 (default; corner-touching pixels are connected) or 4.

    Returns:
      ``(labels, count)``: ``labels`` [H, W] int32 with 0 for background and ``1..count`` for the
      components, numbered in raster order of their first (top-most, then left-most) pixel
      (``scipy.ndimage.label`` numbers them in scan order).
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    m = _foreground(mask2d)
    labels = np.zeros(m.shape, np.int32)
    if not m.any():
        return labels, 0
    count = ndimage.label(m, structure=_STRUCTURE[connectivity], output=labels)
    return labels, int(count)


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
                    connectivity: int = 8, box_mode: str = "component") -> np.ndarray:
    """Noisy bounding boxes of a mask's lesions, as an annotator would draw them.

    Args:
      mask2d: [H, W] bool or numeric mask (numeric: foreground is ``> 0.5``).
      rng: generator for the margins, seeded once per sample by the caller (e.g.
        :func:`sample_rng`); may be ``None`` only when the margin is fixed (``lo == hi``).
      margin: ``(lo, hi)``: each side of each box is enlarged by an independent integer drawn
        uniformly from ``[lo, hi]`` (both inclusive), or an int for a fixed margin.
      per_component: with ``box_mode='component'``: one box per connected component (default) or
        one box around the whole mask (inclusive ends, full margin on every side).
      min_area: components with fewer pixels are ignored (per-component boxes only).
      connectivity: 8 (default) or 4, see :func:`connected_components`.
      box_mode: ``'component'`` (default, as above) or ``'enclosing'``: the reference's single box
        around all the foreground, whose bottom/right side gets the drawn margin minus one pixel
        (the reference uses the tight inclusive end as an exclusive slice end; see the module
        docstring). With ``margin=0`` that box therefore leaves out the last row/column, as the
        reference does.

    Returns:
      int64 ``[nb, 4]`` boxes ``(x_min, y_min, x_max, y_max)``, inclusive, clipped to the image,
      in raster order of the components' first pixels. An empty mask gives ``[0, 4]`` and draws
      nothing from ``rng``; otherwise exactly ``4 * nb`` integers are drawn, in one call.
    """
    mode = check_box_mode(box_mode)
    m = _foreground(mask2d)
    h, w = m.shape
    lo, hi = _margin_range(margin)
    if mode == "component" and per_component:
        labels, count = connected_components(m, connectivity)
        if count == 0:
            return np.zeros((0, 4), np.int64)
        area = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        tight = np.array([[sx.start, sy.start, sx.stop - 1, sy.stop - 1]
                          for sy, sx in ndimage.find_objects(labels, max_label=count)],
                         np.int64).reshape(-1, 4)[area >= max(int(min_area), 1)]
    else:
        rows, cols = np.any(m, axis=1), np.any(m, axis=0)
        if not rows.any():
            return np.zeros((0, 4), np.int64)
        ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
        tight = np.array([[xs[0], ys[0], xs[-1], ys[-1]]], np.int64)
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
    if mode == "enclosing":
        boxes[:, 2:] -= 1  # the reference's exclusive slice end: bottom/right one pixel smaller
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
                         connectivity: int = 8, box_mode: str = "component") -> np.ndarray:
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
                            min_area=min_area, connectivity=connectivity, box_mode=box_mode)
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

"""One record of the real-data cache: its TFDS features and the decoding of a scanned sample.

:func:`features` is the ``FeaturesDict`` of a record (the fields, shapes and dtypes: docs/data.md,
"The records"; e.g. ``image`` uint8 [S, S, Cin], ``mask`` / ``boxes`` uint8 [S, S, K]),
:func:`process_sample` decodes one :class:`~fedmix_jax.data.real.scanning.Sample` into a record.
Boxes come from ``boxes.csv`` when given (scaled to S, rounded outwards), else from the resized
mask with 1-9 px margins drawn once per sample (seeded by ``(seed, hash(id))``, ``box_mode``:
:mod:`fedmix_jax.data.boxes`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from fedmix_jax.data.boxes import box_mask, boxes_from_mask, sample_rng, scale_boxes
from fedmix_jax.data.real.errors import BadInputError
from fedmix_jax.data.real.imaging import load_image, load_mask, resize_mask
from fedmix_jax.data.real.scanning import Sample
from fedmix_jax.data.real.splits import stable_int

BOX_MARGIN = (1, 9)
# zlib per feature: relying on array_record's own compression alone was slower and larger.
_ENCODING = tfds.features.Encoding.ZLIB


def features(s: int, c: int, k: int, **extra) -> tfds.features.FeaturesDict:
    """The features of a record of S x S images with ``c`` channels and ``k`` classes (then
    ``extra``, a builder's own)."""

    def u8(shape):
        return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=_ENCODING)

    return tfds.features.FeaturesDict({
        "image": u8((s, s, c)),
        "mask": u8((s, s, k)),
        "boxes": u8((s, s, k)),
        "box_coords": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
        "label": tfds.features.Tensor(shape=(k,), dtype=np.uint8),
        "has_mask": tfds.features.Tensor(shape=(), dtype=np.bool_),
        "level": tfds.features.Tensor(shape=(), dtype=np.int32),
        "client": tfds.features.Text(),
        "client_index": tfds.features.Tensor(shape=(), dtype=np.int32),
        "id": tfds.features.Text(),
        "stem": tfds.features.Text(),
        "category": tfds.features.Text(),
        "malignant": tfds.features.Tensor(shape=(), dtype=np.int32),
        "image_path": tfds.features.Text(),
        "orig_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
        **extra,
    })


def process_sample(s: Sample, size: int, channels: int, seed: int, data_dir: str,
                   cindex: dict, box_mode: str = "component"):
    """Decode one sample -> ``(example, label_disagrees_with_mask)``, or the
    :class:`BadInputError` describing why it is unusable (returned, not raised)."""
    try:
        image, (h, w) = load_image(s.image_path, size, channels)
        full = None
        for mp in s.mask_paths:
            m = load_mask(mp, (h, w), s.image_path)
            full = m if full is None else (full | m)
        has_mask = full is not None
        mask = resize_mask(full, size) if has_mask else np.zeros((size, size), bool)
        if s.boxes is not None:
            b = np.asarray(s.boxes, np.int64).reshape(-1, 4)
            outside = (b[:, 2] >= w) | (b[:, 3] >= h)
            if outside.any():
                src = s.boxes_source.split(" line ")[0]
                raise BadInputError(
                    f"box {b[outside][0].tolist()} for {s.image_path} lies outside the "
                    f"{w}x{h} image ({s.boxes_source})", src or s.image_path)
            boxes = scale_boxes(b, (h, w), (size, size))
        elif has_mask:
            rng = sample_rng(seed, stable_int("boxes", s.id))
            boxes = boxes_from_mask(mask, rng, margin=BOX_MARGIN, box_mode=box_mode)
        else:
            boxes = np.zeros((0, 4), np.int64)
        present = bool(full.any()) if has_mask else None
        label = int(s.label) if s.label is not None else int(bool(present))
        disagree = present is not None and s.label is not None and bool(s.label) != present
    except BadInputError as e:
        return e
    example = {
        "image": image,
        "mask": mask[..., None].astype(np.uint8),
        "boxes": box_mask(boxes, size, size)[..., None].astype(np.uint8),
        "box_coords": np.asarray(boxes, np.int32).reshape(-1, 4),
        "label": np.array([label], np.uint8),
        "has_mask": bool(has_mask),
        **sample_fields(s, cindex, data_dir, (h, w)),
    }
    return example, bool(disagree)


def sample_fields(s: Sample, cindex: dict, data_dir: str, orig_hw) -> dict:
    """The fields of a record that describe its sample (all but the pixels, boxes and label)."""
    return {"level": np.int32(s.level), "client": s.client,
            "client_index": np.int32(cindex[s.client]), "id": s.id, "stem": s.stem,
            "category": s.category, "malignant": np.int32(s.malignant),
            "image_path": os.path.relpath(s.image_path, data_dir),
            "orig_size": np.array(orig_hw, np.int32)}

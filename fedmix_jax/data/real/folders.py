"""The folders layout: one folder per client with ``images/``, ``masks/`` and the optional
``labels.csv`` (0/1), ``boxes.csv`` (int64 ``[nb, 4]``, original pixels, inclusive) and
``levels.csv`` (level ints of :mod:`fedmix_jax.data.federation`). Details: docs/data.md.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, level_from_name
from fedmix_jax.data.real.errors import BadInputError
from fedmix_jax.data.real.imaging import is_image_file
from fedmix_jax.data.real.scanning import (Layout, Sample, Scan, find_subdir, pair_images_masks,
                                           read_table, subdirs, walk_data_files)

# Box coordinates must be below this (pixels); larger numbers are a broken row, not an image.
MAX_COORDINATE = 1 << 20
_POSITIVE = {"1", "true", "yes", "present", "positive", "abnormal", "lesion"}
_NEGATIVE = {"0", "false", "no", "absent", "negative", "normal", "none", "background", "healthy"}


class Folders(Layout):
    name = "folders"
    title = "Folder federation (one folder per client)"
    tree = """\
    data_dir/
      <client_a>/
        images/<stem>.png|jpg|bmp|tif    (PNG/JPG/BMP/TIFF)
        masks/<stem>.png                 (or <stem>_mask.png; binary {0,1} or {0,255})
        labels.csv   (optional)  stem,label                     label 0/1 or normal/lesion
        boxes.csv    (optional)  stem,x_min,y_min,x_max,y_max   several rows per stem allowed
        levels.csv   (optional)  stem,level                     pixel|box|image|none
      <client_b>/
        ...
"""
    download = "your own data: prepare it in this layout (see docs/data.md)"

    def scan(self, data_dir, policy):
        data_dir = self.check_data_dir(data_dir)
        subs = subdirs(data_dir)
        clients = [e for e, p in subs if find_subdir(p, ("images",)) is not None]
        warnings = [f"ignored folder {p}: no images/ inside" for e, p in subs if e not in clients]
        if not clients:
            raise self.not_found(f"no client folder with an images/ sub-folder in {data_dir}")
        samples = [s for c in clients
                   for s in self._scan_client(c, os.path.join(data_dir, c), policy, warnings)]
        return Scan(samples, clients, warnings)

    @staticmethod
    def _csv(cdir: str, name: str) -> str | None:
        return next((os.path.join(cdir, e) for e in os.listdir(cdir) if e.lower() == name), None)

    def _scan_client(self, client, cdir, policy, warnings):
        image_dir, mask_dir = (find_subdir(cdir, (name,)) for name in ("images", "masks"))
        if other := [f for _, f in walk_data_files(image_dir) if not is_image_file(f)]:
            warnings.append(f"{len(other)} non-image file(s) in {image_dir} ignored (e.g. "
                            f"{other[0]})")
        images, masks = pair_images_masks(client, image_dir, mask_dir, policy)

        def resolve(path, line, stem):
            for name in (stem, os.path.splitext(stem)[0]):
                if name in images:
                    return name
            policy(BadInputError(f"{path} line {line}: stem {stem!r} is not an image in "
                                 f"{image_dir}", path))
            return None

        labels = self._read_labels(self._csv(cdir, "labels.csv"), resolve, policy)
        levels = self._read_map(self._csv(cdir, "levels.csv"), "level", level_from_name, resolve,
                                policy)
        boxes = self._read_boxes(self._csv(cdir, "boxes.csv"), resolve, policy)
        samples = []
        for stem, img in sorted(images.items()):
            level = levels.get(stem, -1)
            mask_paths = masks.get(stem, [])
            if not mask_paths and not self._weak_label_found(
                    img, stem, level, labels, boxes, policy,
                    f"expected {os.path.join(mask_dir or os.path.join(cdir, 'masks'), stem)}"
                    ".png or _mask.png"):
                continue
            b = boxes.get(stem)
            samples.append(Sample(
                id=f"{client}/{stem}", client=client, stem=stem, image_path=img, level=level,
                mask_paths=mask_paths, group=f"{client}/{stem}", label=labels.get(stem),
                boxes=None if b is None else np.array([x for x, _ in b], np.int64),
                boxes_source=", ".join(s for _, s in b) if b else ""))
        return samples

    @staticmethod
    def _weak_label_found(img, stem, level, labels, boxes, policy, hint) -> bool:
        """Whether an image without a mask has the weak label its level needs (else reported)."""
        if level in (-1, PIXEL):
            why = f"({hint}; a sample without a mask needs a box/image/none level in levels.csv)"
        elif level == BOX and stem not in boxes:
            why = f"has level 'box' in levels.csv but no rows in boxes.csv ({hint})"
        elif level == IMAGE and stem not in labels:
            why = f"has level 'image' in levels.csv but no label in labels.csv ({hint})"
        else:
            return True
        policy(BadInputError(f"image with no mask: {img} {why}", img))
        return False

    @staticmethod
    def _rows(path, columns, resolve, policy):
        """``(line, stem, row)`` of a client's CSV whose stem names one of its images."""
        if not path:
            return
        for line, row in read_table(path, columns, policy):
            stem = resolve(path, line, row["stem"])
            if stem is not None:
                yield line, stem, row

    @classmethod
    def _read_map(cls, path, column, convert, resolve, policy) -> dict:
        """``{stem: convert(row[column])}`` from a client's CSV; bad values go to ``policy``."""
        out = {}
        for line, stem, row in cls._rows(path, ("stem", column), resolve, policy):
            try:
                value = convert(row[column])
            except ValueError as e:
                policy(BadInputError(f"{path} line {line}: {e}", path))
                continue
            if stem in out:
                policy(BadInputError(f"{path} line {line}: duplicate stem {stem!r}", path))
                continue
            out[stem] = value
        return out

    def _read_labels(self, path, resolve, policy) -> dict:
        """``{stem: 0 | 1}`` from ``labels.csv`` (absent: {})."""
        names = {n.lower() for n in self.class_names}

        def label(text):
            v = text.strip().lower()
            if v in _POSITIVE or v in names:
                return 1
            if v in _NEGATIVE:
                return 0
            raise ValueError(f"label {text!r} is not 0/1, yes/no, present/absent, normal or a "
                             f"class name {sorted(names)}")

        return self._read_map(path, "label", label, resolve, policy)

    def _read_boxes(self, path, resolve, policy) -> dict:
        """``{stem: [([x0, y0, x1, y1], source), ...]}`` from ``boxes.csv`` (absent: {})."""
        cols = ("stem", "x_min", "y_min", "x_max", "y_max")
        boxes = defaultdict(list)
        for line, stem, row in self._rows(path, cols, resolve, policy):
            try:
                b = [float(row[c]) for c in cols[1:]]
                if not all(math.isfinite(v) for v in b):
                    raise ValueError("coordinates must be finite numbers")
                if any(v < 0 or v >= MAX_COORDINATE for v in b):
                    raise ValueError(f"coordinates must be in [0, {MAX_COORDINATE}) pixels")
                if b[0] > b[2] or b[1] > b[3]:
                    raise ValueError("need 0 <= x_min <= x_max and 0 <= y_min <= y_max")
            except ValueError as e:
                policy(BadInputError(f"{path} line {line}: bad box {[row[c] for c in cols[1:]]}"
                                     f": {e}", path))
                continue
            boxes[stem].append(([int(round(v)) for v in b], f"{path} line {line}"))
        return boxes


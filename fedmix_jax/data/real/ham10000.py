"""The HAM10000 layout: ISIC images and Tschandl lesion masks found by name, one
:class:`~.scanning.Sample` per row of ``HAM10000_metadata.csv`` (client = ``dataset``, group =
``lesion_id``, ``malignant`` from ``dx``); the tree and rules: docs/data.md.
"""

from __future__ import annotations

import os
from collections import defaultdict

from fedmix_jax.data.real.errors import BadInputError
from fedmix_jax.data.real.imaging import IMAGE_EXTENSIONS
from fedmix_jax.data.real.scanning import (HAM_CSV_NAMES, Layout, Sample, Scan, read_rows,
                                           unique_paths, walk_data_files)

HAM_CLIENTS = ("rosendahl", "vidir_modern", "vienna_dias", "vidir_molemax")
HAM_BENIGN = ("nv", "bkl", "df", "vasc")
HAM_MALIGNANT = ("bcc", "akiec", "mel")
_HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dataset")


class HAM10000(Layout):
    name = "ham10000"
    title = "HAM10000 (with lesion masks)"
    tree = """\
    data_dir/
      HAM10000_metadata.csv          lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
      HAM10000_images_part_1/ISIC_0024306.jpg ...
      HAM10000_images_part_2/ISIC_0029306.jpg ...
      HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png ...
"""
    download = ("Harvard Dataverse, doi:10.7910/DVN/DBW86T (HAM10000_images_part_1.zip, "
                "HAM10000_images_part_2.zip, HAM10000_metadata, and "
                "HAM10000_segmentations_lesion_tschandl.zip); unzip all into data_dir")
    default_clients = HAM_CLIENTS
    default_levels = ("box", "box", "pixel", "box")

    def scan(self, data_dir, policy):
        data_dir = self.check_data_dir(data_dir)
        csv_path, images, masks = self._find_files(data_dir, policy)
        rows = read_rows(csv_path)
        if not rows:
            raise BadInputError(f"{csv_path} is empty", csv_path)
        header = [c.lower() for c in rows[0][1]]
        if missing := [c for c in _HAM_COLUMNS if c not in header]:
            raise BadInputError(f"{csv_path}: missing column(s) {missing} (header: {rows[0][1]})",
                                csv_path)
        col = {c: header.index(c) for c in _HAM_COLUMNS}
        warnings, seen = [], {}

        def sample(line, cells):
            if len(cells) < len(header):
                raise BadInputError(f"{csv_path} line {line}: expected {len(header)} columns, "
                                    f"got {len(cells)}", csv_path)
            image_id, client = cells[col["image_id"]], cells[col["dataset"]]
            if not image_id or not client:
                raise BadInputError(f"{csv_path} line {line}: empty image_id or dataset", csv_path)
            if image_id in seen:
                raise BadInputError(f"duplicate image_id {image_id} in {csv_path} (lines "
                                    f"{seen[image_id]} and {line})", csv_path)
            seen[image_id] = line
            img = images.get(image_id)
            if img is None:
                raise BadInputError(
                    f"image {image_id}.jpg listed in {csv_path} line {line} was not found under "
                    f"{data_dir} (expected in HAM10000_images_part_1/ or _part_2/)", csv_path)
            if image_id not in masks:
                raise BadInputError(
                    f"image with no mask: {img} (expected {image_id}_segmentation.png under "
                    f"{data_dir}, from HAM10000_segmentations_lesion_tschandl)", img)
            dx = cells[col["dx"]].lower()
            malignant = 1 if dx in HAM_MALIGNANT else 0 if dx in HAM_BENIGN else -1
            return Sample(id=image_id, client=client, stem=image_id, image_path=img,
                          mask_paths=[masks[image_id]], group=cells[col["lesion_id"]] or image_id,
                          category=dx, malignant=malignant)

        samples = []
        for line, cells in rows[1:]:
            try:
                samples.append(sample(line, cells))
            except BadInputError as e:
                policy(e)
        if unlisted := len(set(images) - set(seen)):
            warnings.append(f"{unlisted} ISIC_*.jpg image(s) under {data_dir} are not listed in "
                            f"{csv_path} and were not used")
        if unknown_dx := sum(s.malignant < 0 for s in samples):
            warnings.append(f"{unknown_dx} row(s) of {csv_path} have a dx outside "
                            f"{HAM_BENIGN + HAM_MALIGNANT}: malignant=-1")
        found = {s.client for s in samples}
        clients = [c for c in HAM_CLIENTS if c in found] + sorted(found - set(HAM_CLIENTS))
        return Scan(samples, clients, warnings)

    def _find_files(self, data_dir, policy):
        """``(metadata csv, {image id: path}, {image id: mask path})`` under ``data_dir``."""
        csv_paths, images, masks = [], defaultdict(list), defaultdict(list)
        for dirpath, f in walk_data_files(data_dir):
            stem, ext = os.path.splitext(f)
            path = os.path.join(dirpath, f)
            if f.lower() in HAM_CSV_NAMES:
                csv_paths.append(path)
            elif ext.lower() in IMAGE_EXTENSIONS:
                if stem.lower().endswith("_segmentation"):
                    masks[stem[: -len("_segmentation")]].append(path)
                elif stem.upper().startswith("ISIC_"):
                    images[stem].append(path)
        if not csv_paths:
            raise self.not_found(f"no HAM10000_metadata.csv under {data_dir}")
        if len(csv_paths) > 1:
            depth = sorted(csv_paths, key=lambda p: (p.count(os.sep), p))
            if depth[0].count(os.sep) == depth[1].count(os.sep):
                raise BadInputError(f"several metadata files under {data_dir}: {depth[0]} and "
                                    f"{depth[1]}; keep one", depth[1])
            csv_paths = depth[:1]
        if not images:
            raise self.not_found(f"no ISIC_*.jpg images under {data_dir} (expected "
                                 "HAM10000_images_part_1/ and HAM10000_images_part_2/)")
        if not masks:
            raise self.not_found(f"no ISIC_*_segmentation.png masks under {data_dir} (expected "
                                 "HAM10000_segmentations_lesion_tschandl/)")
        return (csv_paths[0], unique_paths("image id", images, policy),
                unique_paths("mask id", masks, policy))

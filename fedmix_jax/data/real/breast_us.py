"""The breast ultrasound layout: BUSI (``{benign,malignant,normal}/`` with ``_mask[_j]`` files
merged by logical OR; image label 0 for ``normal``), BUSIS and UDIAT Dataset B (an image folder
and a mask folder with matching stems), one client each; the tree and rules: docs/data.md.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from fedmix_jax.data.real.errors import BadInputError
from fedmix_jax.data.real.scanning import (Layout, Sample, Scan, find_subdir, image_files,
                                           pair_images_masks)

_BREAST_ALIASES = {
    "busi": ("Dataset_BUSI_with_GT", "BUSI"),
    "busis": ("BUSIS",),
    "udiat": ("UDIAT", "DatasetB", "Dataset_B", "BUS_Dataset_B", "UDIAT_Dataset_B"),
}
_IMAGE_DIRS = ("original", "images", "image", "imgs")
_MASK_DIRS = ("gt", "masks", "mask", "groundtruth", "ground_truth")
_BUSI_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


class BreastUS(Layout):
    name = "breast"
    title = "Breast ultrasound (BUSI, BUSIS, UDIAT)"
    tree = """\
    data_dir/
      Dataset_BUSI_with_GT/         (or BUSI/)   -> client 'busi'
        benign/benign (1).png, benign (1)_mask.png, [benign (1)_mask_1.png ...]
        malignant/malignant (1).png, malignant (1)_mask.png
        normal/normal (1).png, normal (1)_mask.png
      BUSIS/                                     -> client 'busis'
        original/ (or Original/, images/)  case001.png ...
        GT/       (or masks/)              case001.png ...
      UDIAT/                        (or DatasetB/) -> client 'udiat'
        original/000001.png ...
        GT/000001.png ...
"""
    download = ("BUSI: Al-Dhabyani et al. 2020, https://scholar.cu.edu.eg/?q=afahmy/pages/dataset "
                "(Dataset_BUSI_with_GT.zip); BUSIS: Xian et al., http://cvprip.cs.usu.edu/busbench/ "
                "(on request); UDIAT Dataset B: Yap et al. 2017, "
                "http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php (on request)")
    default_clients = ("busi", "busis", "udiat")
    default_levels = ("image", "box", "pixel")

    def scan(self, data_dir, policy):
        data_dir = self.check_data_dir(data_dir)
        found = {c: p for c, a in _BREAST_ALIASES.items()
                 if (p := find_subdir(data_dir, a)) is not None}
        if not found:
            raise self.not_found(f"none of the folders {sum(_BREAST_ALIASES.values(), ())} in "
                                 f"{data_dir}")
        warnings = [f"no {c} folder ({' or '.join(_BREAST_ALIASES[c])}) in {data_dir}; client {c} "
                    "is absent" for c in _BREAST_ALIASES if c not in found]
        samples = []
        for client in (c for c in self.default_clients if c in found):
            samples += (self._scan_busi(found[client], policy, warnings) if client == "busi"
                        else self._scan_pair(client, found[client], policy))
        clients = [c for c in self.default_clients if any(s.client == c for s in samples)]
        return Scan(samples, clients, warnings)

    def _scan_busi(self, root, policy, warnings):
        cats = {c: find_subdir(root, (c,)) for c in ("benign", "malignant", "normal")}
        if not any(cats.values()):
            inner = find_subdir(root, _BREAST_ALIASES["busi"])
            if inner is not None:
                return self._scan_busi(inner, policy, warnings)
            raise self.not_found(f"{root} has none of the folders benign/, malignant/, normal/")
        samples, seen = [], {}
        for cat, cdir in cats.items():
            if cdir is None:
                warnings.append(f"BUSI: no {cat}/ folder in {root}")
                continue
            images, masks = {}, defaultdict(list)
            for p in image_files(cdir):
                stem = os.path.splitext(os.path.basename(p))[0]
                if m := _BUSI_MASK.match(stem):
                    masks[m.group("stem")].append(p)
                elif stem in images or stem in seen:
                    other = images.get(stem) or seen[stem]
                    policy(BadInputError(f"duplicate image id busi/{stem}: {other} and {p}", p))
                else:
                    images[stem] = p
            for stem, paths in masks.items():
                if stem not in images:
                    for p in paths:
                        policy(BadInputError(f"mask with no image: {p} (expected the image "
                                             f"'{stem}.png' next to it)", p))
            for stem, img in images.items():
                seen[stem] = img
                if stem not in masks:
                    policy(BadInputError(f"image with no mask: {img} (expected '{stem}_mask.png' "
                                         "next to it)", img))
                    continue
                samples.append(Sample(
                    id=f"busi/{stem}", client="busi", stem=stem, image_path=img, category=cat,
                    mask_paths=sorted(masks[stem]), group=f"busi/{stem}",
                    label=0 if cat == "normal" else 1, malignant=1 if cat == "malignant" else 0))
        return samples

    def _scan_pair(self, client, root, policy):
        image_dir, mask_dir = find_subdir(root, _IMAGE_DIRS), find_subdir(root, _MASK_DIRS)
        if image_dir is None or mask_dir is None:
            raise self.not_found(f"{root} needs an image folder ({'/, '.join(_IMAGE_DIRS)}/) and "
                                 f"a mask folder ({'/, '.join(_MASK_DIRS)}/) for client {client}")
        images, masks = pair_images_masks(client, image_dir, mask_dir, policy)
        samples = []
        for stem, img in sorted(images.items()):
            if stem not in masks:
                policy(BadInputError(f"image with no mask: {img} (expected {mask_dir}/{stem}.png)",
                                     img))
                continue
            samples.append(Sample(id=f"{client}/{stem}", client=client, stem=stem, image_path=img,
                                  mask_paths=masks[stem], group=f"{client}/{stem}"))
        return samples

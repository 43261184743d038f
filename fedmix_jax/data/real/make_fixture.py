"""Fake datasets in the published layouts (real names, types and sizes; synthetic pixels with
darker elliptical lesions, and their masks), for tests and for timing builds.

    python -m fedmix_jax.data.real.make_fixture --layout ham10000 --out /tmp/ham_fake --num 1000
"""

from __future__ import annotations

import argparse
import csv
import os
from typing import Sequence

import numpy as np
from PIL import Image

from fedmix_jax.data.real.ham10000 import HAM_BENIGN, HAM_CLIENTS, HAM_MALIGNANT

#: Images per client (the metadata's ``dataset`` column) of the real HAM10000: 10,015 in all.
HAM_REAL_CLIENT_SIZES = {"rosendahl": 2259, "vidir_modern": 3363, "vienna_dias": 439,
                         "vidir_molemax": 3954}

HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")


def ellipse_mask(height: int, width: int, rng: np.random.Generator, count: int = 1) -> np.ndarray:
    """bool [H, W] with ``count`` random ellipses inside the image."""
    yy, xx = np.mgrid[0:height, 0:width]
    m = np.zeros((height, width), bool)
    for _ in range(count):
        ry = rng.uniform(0.12, 0.3) * height
        rx = rng.uniform(0.12, 0.3) * width
        cy = rng.uniform(ry + 1, height - ry - 1)
        cx = rng.uniform(rx + 1, width - rx - 1)
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return m


def synthetic_image(mask: np.ndarray, rng: np.random.Generator, rgb: bool = True) -> np.ndarray:
    """uint8 [H, W, 3] (or [H, W]) noisy image with the mask's region darker."""
    h, w = mask.shape
    if rgb:
        base = np.array([205.0, 160.0, 140.0]) + rng.normal(0, 8, 3)
        lesion = np.array([110.0, 70.0, 55.0]) + rng.normal(0, 8, 3)
        img = np.where(mask[..., None], lesion, base) + rng.normal(0, 12, (h, w, 3))
    else:
        img = np.where(mask, 40.0, 120.0) + rng.normal(0, 20, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save_mask(mask: np.ndarray, path: str) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path)


def make_ham10000(root: str, num_images: int = 1000, size: tuple[int, int] = (600, 450),
                  seed: int = 0, clients: Sequence[str] = HAM_CLIENTS,
                  repeat_lesion_every: int = 5, quality: int = 90, progress: bool = False,
                  client_sizes: Sequence[int] | None = None) -> dict:
    """HAM10000 layout (metadata CSV, images in the two part folders, masks): clients cycle over
    ``clients`` by lesion, every ``repeat_lesion_every``-th image re-uses the previous
    ``lesion_id``; ``client_sizes`` (one count per client, e.g. :data:`HAM_REAL_CLIENT_SIZES`)
    gives contiguous blocks instead. Returns ``{"csv", "images", "masks", "rows"}``."""
    rng = np.random.default_rng(seed)
    w, h = size
    owner = None
    if client_sizes is not None:
        if len(client_sizes) != len(clients):
            raise ValueError(f"client_sizes {list(client_sizes)} needs one count per client "
                             f"{list(clients)}")
        owner = np.repeat(np.arange(len(clients)), np.asarray(client_sizes, int))
        num_images = len(owner)
    parts = [os.path.join(root, f"HAM10000_images_part_{k}") for k in (1, 2)]
    mdir = os.path.join(root, "HAM10000_segmentations_lesion_tschandl")
    for d in parts + [mdir]:
        os.makedirs(d, exist_ok=True)
    dxs = HAM_BENIGN + HAM_MALIGNANT
    rows, images, masks = [], [], []
    it = range(num_images)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="writing fake HAM10000", unit="img")
    lesion = 0
    for i in it:
        image_id = f"ISIC_{24306 + i:07d}"
        first_of_client = owner is not None and (i == 0 or owner[i] != owner[i - 1])
        if first_of_client or not (repeat_lesion_every
                                   and i % repeat_lesion_every == repeat_lesion_every - 1):
            lesion += 1
        mask = ellipse_mask(h, w, rng, count=1 + int(rng.random() < 0.1))
        ipath = os.path.join(parts[0 if i < num_images // 2 else 1], image_id + ".jpg")
        Image.fromarray(synthetic_image(mask, rng, rgb=True), "RGB").save(ipath, quality=quality)
        mpath = os.path.join(mdir, image_id + "_segmentation.png")
        _save_mask(mask, mpath)
        images.append(ipath)
        masks.append(mpath)
        rows.append(dict(lesion_id=f"HAM_{lesion:07d}", image_id=image_id, dx_type="histo",
                         dx=dxs[int(rng.integers(len(dxs)))], age=f"{int(rng.integers(20, 85))}.0",
                         sex=("male", "female")[int(rng.integers(2))], localization="back",
                         dataset=clients[lesion % len(clients) if owner is None else owner[i]]))
    csv_path = os.path.join(root, "HAM10000_metadata.csv")
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=HAM_COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    return {"csv": csv_path, "images": images, "masks": masks, "rows": rows}


def make_breast(root: str, num_busi: Sequence[int] = (3, 2, 2), num_udiat: int = 4,
                num_busis: int = 4, size: tuple[int, int] = (40, 30), seed: int = 0,
                busis_dirs: tuple[str, str] = ("original", "GT")) -> dict:
    """BUSI (``num_busi`` benign/malignant/normal; the first benign image has an extra
    ``_mask_1.png`` to OR-merge), UDIAT and BUSIS (``busis_dirs``), grayscale PNGs. Returns
    per-client lists of (image, [masks], merged mask)."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = {"busi": [], "udiat": [], "busis": []}
    busi = os.path.join(root, "Dataset_BUSI_with_GT")
    for cat, n in zip(("benign", "malignant", "normal"), num_busi):
        d = os.path.join(busi, cat)
        os.makedirs(d, exist_ok=True)
        for k in range(1, n + 1):
            stem = f"{cat} ({k})"
            mask = ellipse_mask(h, w, rng) if cat != "normal" else np.zeros((h, w), bool)
            ipath = os.path.join(d, stem + ".png")
            mpaths = [os.path.join(d, stem + "_mask.png")]
            merged = mask.copy()
            _save_mask(mask, mpaths[0])
            if cat == "benign" and k == 1:
                extra = ellipse_mask(h, w, rng) & ~mask
                mpaths.append(os.path.join(d, stem + "_mask_1.png"))
                _save_mask(extra, mpaths[1])
                merged |= extra
            Image.fromarray(synthetic_image(merged, rng, rgb=False), "L").save(ipath)
            out["busi"].append((ipath, mpaths, merged))
    for client, folder, n, (idir, mdir) in (("udiat", "UDIAT", num_udiat, ("original", "GT")),
                                            ("busis", "BUSIS", num_busis, busis_dirs)):
        for sub in (idir, mdir):
            os.makedirs(os.path.join(root, folder, sub), exist_ok=True)
        for k in range(1, n + 1):
            stem = f"{k:06d}" if client == "udiat" else f"case{k:03d}"
            mask = ellipse_mask(h, w, rng)
            ipath = os.path.join(root, folder, idir, stem + ".png")
            mpath = os.path.join(root, folder, mdir, stem + ".png")
            Image.fromarray(synthetic_image(mask, rng, rgb=False), "L").save(ipath)
            _save_mask(mask, mpath)
            out[client].append((ipath, [mpath], mask))
    return out


def make_folders(root: str, clients: dict[str, int] | None = None,
                 size: tuple[int, int] = (40, 30), seed: int = 0, ext: str = ".png",
                 mask_suffix: str = "", labels: dict | None = None, boxes: dict | None = None,
                 levels: dict | None = None, no_mask: dict | None = None) -> dict:
    """A folder federation (``<client>/images/<stem><ext>``, ``masks/<stem><suffix>.png``);
    ``labels`` / ``boxes`` (lists of [x0, y0, x1, y1]) / ``levels``: ``{client: {stem: value}}``
    CSVs; ``no_mask``: ``{client: [stems]}`` without a mask. Returns ``{client: {stem: (image,
    mask, mask_array)}}``."""
    rng = np.random.default_rng(seed)
    clients = clients or {"hospital_a": 5, "hospital_b": 4}
    w, h = size
    out = {}
    for c, n in clients.items():
        idir, mdir = os.path.join(root, c, "images"), os.path.join(root, c, "masks")
        os.makedirs(idir, exist_ok=True)
        os.makedirs(mdir, exist_ok=True)
        out[c] = {}
        for k in range(n):
            stem = f"img{k:03d}"
            mask = ellipse_mask(h, w, rng) if k % 4 != 3 else np.zeros((h, w), bool)
            ipath = os.path.join(idir, stem + ext)
            Image.fromarray(synthetic_image(mask, rng, rgb=ext in (".jpg", ".jpeg"))).save(ipath)
            mpath = (None if stem in (no_mask or {}).get(c, ())
                     else os.path.join(mdir, stem + mask_suffix + ".png"))
            if mpath is not None:
                _save_mask(mask, mpath)
            out[c][stem] = (ipath, mpath, mask)
        tables = (("labels.csv", labels, ("stem", "label")),
                  ("levels.csv", levels, ("stem", "level")),
                  ("boxes.csv", boxes, ("stem", "x_min", "y_min", "x_max", "y_max")))
        for fname, table, header in tables:
            if table and c in table:
                rows = ([[stem, *b] for stem, bl in table[c].items() for b in bl]
                        if fname == "boxes.csv" else [[stem, v] for stem, v in table[c].items()])
                with open(os.path.join(root, c, fname), "w", newline="") as f:
                    csv.writer(f).writerows([header, *rows])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=("ham10000", "breast", "folders"), default="ham10000")
    p.add_argument("--out", required=True, help="directory to write the fake tree into")
    p.add_argument("--num", type=int, default=1000, help="number of images (ham10000)")
    p.add_argument("--width", type=int, default=600)
    p.add_argument("--height", type=int, default=450)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    size = (a.width, a.height)
    if a.layout == "ham10000":
        r = make_ham10000(a.out, num_images=a.num, size=size, seed=a.seed, progress=True)
        print(f"wrote {len(r['images'])} images, masks and {r['csv']}")
    elif a.layout == "breast":
        make_breast(a.out, size=size, seed=a.seed)
        print(f"wrote a fake breast-ultrasound tree to {a.out}")
    else:
        make_folders(a.out, size=size, seed=a.seed)
        print(f"wrote a fake folder federation to {a.out}")


if __name__ == "__main__":
    main()

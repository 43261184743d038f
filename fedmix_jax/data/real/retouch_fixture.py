"""A fake RETOUCH training set (.mhd/.raw volumes written with SimpleITK; the published names,
sizes with ``--realistic`` and voxel types; synthetic voxels), for tests and timing::

    python -m fedmix_jax.data.real.retouch_fixture --out /tmp/retouch_fake --volumes 3
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Sequence

import numpy as np

from fedmix_jax.data.boxes import sample_rng
from fedmix_jax.data.real.splits import stable_int

# Full-size volumes of the training set, numpy order [Z, Y, X] (B-scans, depth, A-scans), dtype.
REALISTIC = {"cirrus": ((128, 1024, 512), np.uint8), "spectralis": ((49, 496, 512), np.uint16),
             "topcon": ((128, 885, 512), np.uint8)}
_FIRST_ID = {"cirrus": 1, "spectralis": 25, "topcon": 49}


def fake_oct_volume(shape: Sequence[int], rng: np.random.Generator, dtype=np.uint8,
                    lesions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic OCT volume [Z, Y, X] (a wavy retina band over a bright RPE line, speckle) and
    its labels uint8 [Z, Y, X]: ellipsoids of IRF (dark cysts, 1), SRF (a dark dome above the RPE,
    2) and PED (a grey dome under a lifted RPE, 3) over a few B-scans; some B-scans hold none."""
    z, h, w = (int(v) for v in shape)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    top = h * (0.3 + 0.05 * np.sin(2 * np.pi * xx[0] / w + rng.uniform(0, 6)))    # [W]
    rpe = top + h * rng.uniform(0.2, 0.3)
    base_img = np.full((h, w), 20.0, np.float32)
    base_img += np.where((yy > top) & (yy < rpe), 90.0, 0.0)
    base_img += np.where(np.abs(yy - rpe) < max(1.0, 0.015 * h), 120.0, 0.0)
    base_img += np.where(yy > rpe, 50.0 * np.exp(-(yy - rpe) / (0.1 * h)), 0.0)
    fluid = []
    for _ in range(int(lesions)):
        cls = int(rng.integers(1, 4))
        cz, cx = rng.uniform(0, z), rng.uniform(0.2 * w, 0.8 * w)
        rz = max(1.0, rng.uniform(0.15, 0.35) * z)
        rx, ry = rng.uniform(0.06, 0.15) * w, rng.uniform(0.04, 0.08) * h
        base = rpe[int(cx)]
        cy = {1: (top[int(cx)] + base) / 2, 2: base - ry, 3: base}[cls]
        fluid.append((cls, cz, cy, cx, rz, ry, rx, base))
    img = np.empty((z, h, w), dtype)
    labels = np.zeros((z, h, w), np.uint8)
    for k in range(z):   # slice by slice: a full-size volume never needs float copies of itself
        sl, lab = base_img.copy(), labels[k]
        for cls, cz, cy, cx, rz, ry, rx, base in fluid:
            dz = ((k - cz) / rz) ** 2
            if dz >= 1:
                continue
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 - dz
            if cls == 3:
                inside &= yy < base   # the detachment lifts the RPE: above its old position
            lab[inside] = cls
            sl[inside] = {1: 15.0, 2: 10.0, 3: 70.0}[cls]
        sl *= rng.gamma(4.0, 0.25, size=(h, w)).astype(np.float32)   # speckle
        if dtype == np.uint16:
            sl *= 64.0
        img[k] = np.clip(sl, 0, np.iinfo(dtype).max).astype(dtype)
    return img, labels


def write_mhd(arr: np.ndarray, path: str, spacing=(0.0117, 0.0039, 0.047)) -> None:
    try:
        import SimpleITK as sitk
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the RETOUCH fixture is written with SimpleITK: pip install "
                          "SimpleITK (or pip install 'fedmix_jax[retouch]')") from e
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(tuple(float(v) for v in spacing))
    sitk.WriteImage(im, path, False)   # path.mhd + path.raw (uncompressed), as RETOUCH ships


def make_retouch_fixture(root: str, volumes: int | Sequence[int] = 3,
                         shape: Sequence[int] | None = (6, 40, 32), seed: int = 0,
                         vendors: Sequence[str] = ("cirrus", "spectralis", "topcon"),
                         lesions: int = 2) -> str:
    """Write a fake RETOUCH training set under ``root`` and return ``root``: ``volumes`` per vendor
    (an int or one each), of ``shape`` [Z, Y, X] (``None``: the vendors' sizes and types,
    :data:`REALISTIC`), ``lesions`` fluid regions each, deterministic in (seed, vendor, index)."""
    counts = [int(volumes)] * len(vendors) if np.isscalar(volumes) else [int(v) for v in volumes]
    for vendor, n in zip(vendors, counts):
        vdir = os.path.join(root, f"RETOUCH-TrainingSet-{vendor.capitalize()}")
        for i in range(n):
            vol_dir = os.path.join(vdir, f"TRAIN{_FIRST_ID[vendor] + i:03d}")
            os.makedirs(vol_dir, exist_ok=True)
            vshape, dtype = REALISTIC[vendor] if shape is None else (tuple(shape), np.uint8)
            rng = sample_rng(seed, stable_int("retouch_fixture", vendor, i))
            img, lab = fake_oct_volume(vshape, rng, dtype, lesions)
            write_mhd(img, os.path.join(vol_dir, "oct.mhd"))
            write_mhd(lab, os.path.join(vol_dir, "reference.mhd"))
    return root


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a fake RETOUCH training set (.mhd/.raw).")
    p.add_argument("--out", required=True)
    p.add_argument("--volumes", type=int, default=3, help="volumes per vendor")
    p.add_argument("--shape", default="6,40,32", help="Z,Y,X of each volume")
    p.add_argument("--realistic", action="store_true", help="the vendors' real sizes and types")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    shape = None if a.realistic else tuple(int(v) for v in re.split(r"[,x ]+", a.shape.strip()))
    make_retouch_fixture(a.out, a.volumes, shape, a.seed)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

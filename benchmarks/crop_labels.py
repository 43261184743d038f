"""How often the train-time random crop changes a sample's image label (docs/reproducing_paper.md).

The loaders compute image labels and boxes once, from the whole resized image; the reference
derives them from the cropped mask. This counts, on the multi-class synthetic federation at the
RETOUCH sizes (224 px cropped to 200), the random crops after which a class present in the image
is absent from the crop:

    python benchmarks/crop_labels.py [--size 224 --crop 200 --crops 20 --seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from fedmix_jax.data.synthetic import make_synthetic_federation


def count_changed(masks: np.ndarray, valid: np.ndarray, crop: int, crops: int,
                  rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Over ``crops`` random crops of every valid sample of masks [C, N, S, S, K]:
    (crops, crops whose image label changed, class labels lost, class labels present)."""
    size = masks.shape[2]
    n = changed = lost = present = 0
    for c in range(masks.shape[0]):
        for i in np.flatnonzero(valid[c]):
            m = masks[c, i] > 0.5
            full = m.any(axis=(0, 1))
            for _ in range(crops):
                y, x = rng.integers(0, size - crop + 1, size=2)
                part = m[y:y + crop, x:x + crop].any(axis=(0, 1))
                n += 1
                changed += bool((part != full).any())
                lost += int((part != full).sum())
                present += int(full.sum())
    return n, changed, lost, present


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--crop", type=int, default=200)
    p.add_argument("--crops", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    fed = make_synthetic_federation(image_size=a.size, num_classes=3, seed=a.seed)
    n, changed, lost, present = count_changed(np.asarray(fed.train.masks),
                                              np.asarray(fed.train.valid), a.crop, a.crops,
                                              np.random.default_rng(a.seed))
    print(f"{n} crops ({a.size} -> {a.crop}): image label changed in {changed} "
          f"({100 * changed / n:.2f} %); class labels lost {lost} of {present} present")


if __name__ == "__main__":
    main()

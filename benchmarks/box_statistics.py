r"""What a binary federation's boxes and images offer the box losses (training split, true masks).

    python benchmarks/box_statistics.py --config configs/synthetic.py --data_seed 0

Prints, over the box samples that hold a lesion:

* the **fill ratio** (lesion area / box area, per sample over the union of its boxes) at the 5th,
  25th, 50th, 75th and 95th percentile: the range ``weak.box_fill_min`` / ``box_fill_max`` (the
  box size bounds) must hold;

and over every training image, for neighbour pairs ``d`` px apart along a row:

* the share of pairs whose intensities differ by at most 0.02 / 0.05 / 0.1 / 0.2, for pairs
  inside a lesion, on skin, and across a lesion boundary: how much edge a colour-affinity
  pairwise term (BoxInst) would have to follow;

and per client, over its box samples with a lesion:

* the **box appearance masks** (``fedmix_jax.losses.box_appearance_masks``, the target of
  ``weak.box_appearance``): their Dice and median area against the true masks, for every box and
  for the boxes whose contrast passes ``weak.appearance_min_contrast`` (the ones the term trains).
"""

from __future__ import annotations

import importlib.util

import numpy as np
from absl import app, flags

from fedmix_jax.losses import box_appearance_masks
from fedmix_jax.data.federation import BOX, float_images
from fedmix_jax.data.sources import load_federation

FLAGS = flags.FLAGS
TOLERANCES = (0.02, 0.05, 0.1, 0.2)


def fill_ratios(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Lesion area / box area per sample, [N] for ``masks``, ``boxes`` [N, H, W] bool."""
    return masks.sum((1, 2)) / np.maximum(boxes.sum((1, 2)), 1)


def neighbour_differences(images: np.ndarray, masks: np.ndarray, d: int) -> dict:
    """Intensity distance of row neighbours ``d`` px apart (``images`` [N, H, W, C] float,
    ``masks`` [N, H, W] bool), split into pairs inside a lesion, on skin and across a boundary."""
    dist = np.linalg.norm(images[:, :, :-d] - images[:, :, d:], axis=-1)
    a, b = masks[:, :, :-d], masks[:, :, d:]
    return {"inside": dist[a & b], "skin": dist[~a & ~b], "across": dist[a ^ b]}


def main(argv):
    del argv
    spec = importlib.util.spec_from_file_location("config", FLAGS.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.seed = FLAGS.data_seed
    federation = load_federation(config.data, verbose=False)
    train = federation.train
    if train.masks.shape[-1] != 1:
        raise SystemExit("box_statistics.py reads binary federations (one class)")
    masks = np.asarray(train.masks)[..., 0] > 0
    boxes = np.asarray(train.boxes)[..., 0] > 0
    valid = np.asarray(train.valid)
    box = valid & (np.asarray(train.levels) == BOX) & masks.any(axis=(2, 3))     # [C, N]
    r = fill_ratios(masks[box], boxes[box])
    print(f"{config.data.name}, data seed {FLAGS.data_seed}: {len(r)} box samples with a lesion")
    print("fill ratio (lesion / box area), percentiles 5 25 50 75 95:",
          " ".join(f"{x:.2f}" for x in np.percentile(r, [5, 25, 50, 75, 95])))
    images = np.asarray(float_images(train.images))[valid]
    for d in (1, 2):
        parts = neighbour_differences(images, masks[valid], d)
        for name, v in parts.items():
            shares = "  ".join(f"<= {t}: {np.mean(v <= t):.2f}" for t in TOLERANCES)
            print(f"pairs {d} px apart, {name:6s} (n={v.size:7d}): {shares}")
    weak = config.weak
    print(f"box appearance masks (smooth {weak.appearance_smooth}, ring {weak.appearance_ring}; "
          f"confident: contrast >= {weak.appearance_min_contrast}):")
    for c, name in enumerate(federation.client_names):
        if not box[c].any():
            continue
        found, contrast = box_appearance_masks(
            float_images(train.images[c][box[c]]), boxes[c][box[c]][..., None].astype(np.float32),
            weak.appearance_smooth, weak.appearance_ring)
        found, truth = np.asarray(found)[..., 0] > 0, masks[c][box[c]]
        dice = 2 * (found & truth).sum((1, 2)) / np.maximum(found.sum((1, 2)) + truth.sum((1, 2)), 1)
        area = found.sum((1, 2)) / np.maximum(truth.sum((1, 2)), 1)
        sure = np.asarray(contrast)[:, 0] >= weak.appearance_min_contrast
        print(f"  {name}: all {len(dice)}: Dice {dice.mean():.3f}, area {np.median(area):.2f}; "
              f"confident {sure.sum()}: Dice {dice[sure].mean() if sure.any() else float('nan'):.3f}, "
              f"area {np.median(area[sure]) if sure.any() else float('nan'):.2f}")


if __name__ == "__main__":
    flags.DEFINE_string("config", "configs/synthetic.py", "a binary config file")
    flags.DEFINE_integer("data_seed", 0, "config.data.seed")
    app.run(main)

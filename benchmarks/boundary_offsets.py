r"""Where a trained binary model loses Dice on lesion images: lesion extent, per client.

    python -m fedmix_jax.main --config configs/synthetic.py --config.strategy=fedmix_plus \
        --workdir runs/plus
    python benchmarks/boundary_offsets.py --workdir runs/plus

Loads the run's best-validation model from its newest checkpoint (run it on a finished run: as
the job does, a damaged checkpoint is moved aside) and, on each client's test images that
contain a lesion, prints: the median ratio
of predicted to true lesion area (with its interquartile range), Dice against the true mask and
against the mask eroded / dilated by 1 px, Dice at each image's best offset in -2..+2 px (the
median offset), and how many images score below 0.5 (lesions missed or split). A ratio well below
1 with a negative best offset is a model that keeps the lesion's core and drops its rim.
Only for data with true masks on every test image (the synthetic federations, or a real data
set's test split); one class.

``--thresholds 0.5,0.3,0.1`` also prints, per client and probability threshold, Dice on the test
images with a lesion, the FP rate on the lesion-free ones, and the median share of each training
box that the prediction fills against the true lesion's share (does a lower threshold recover
the rim, and would the boxes say which threshold to take?).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from scipy import ndimage

from fedmix_jax import init_state, rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.data.federation import float_images
from fedmix_jax.data.sources import load_federation

FLAGS = flags.FLAGS
OFFSETS = (-2, -1, 0, 1, 2)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _shifted(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` [H, W] bool dilated (px > 0) or eroded (px < 0) by |px| pixels."""
    if px == 0:
        return mask
    grow = ndimage.binary_dilation if px > 0 else ndimage.binary_erosion
    return grow(mask, iterations=abs(px))


def extent_figures(pred: np.ndarray, true: np.ndarray) -> dict:
    """Per-image figures of binary ``pred`` / ``true`` [N, H, W] (images with a lesion only)."""
    rows = []
    for p, t in zip(pred, true):
        by_offset = [_dice(p, _shifted(t, k)) for k in OFFSETS]
        rows.append((p.sum() / t.sum(), by_offset[OFFSETS.index(0)], max(by_offset),
                     OFFSETS[int(np.argmax(by_offset))], by_offset[OFFSETS.index(-1)],
                     by_offset[OFFSETS.index(1)]))
    r = np.array(rows)
    return {"n": len(r), "area_ratio_median": float(np.median(r[:, 0])),
            "area_ratio_iqr": [float(np.percentile(r[:, 0], q)) for q in (25, 75)],
            "dice": float(r[:, 1].mean()), "dice_eroded_1px": float(r[:, 4].mean()),
            "dice_dilated_1px": float(r[:, 5].mean()), "dice_best_offset": float(r[:, 2].mean()),
            "median_offset": float(np.median(r[:, 3])), "below_half": int((r[:, 1] < 0.5).sum())}


def threshold_figures(probs, true, train_probs, train_masks, train_boxes, threshold: float):
    """Dice on the lesion images and FP rate on the lesion-free ones of test ``probs`` [N, H, W]
    against bool ``true``, binarised at ``threshold``; and the median share of each training box
    [M, H, W] bool filled by the prediction and by the true mask (``train_masks``, bool)."""
    lesion = true.reshape(len(true), -1).any(1)
    pred = probs > threshold
    boxed = train_boxes.reshape(len(train_boxes), -1).any(1)

    def fill(masks):
        shares = [m.sum() / b.sum() for m, b in zip(masks[boxed], train_boxes[boxed])]
        return float(np.median(shares)) if shares else float("nan")

    return {"dice": float(np.mean([_dice(a, b) for a, b in zip(pred[lesion], true[lesion])])),
            "fp_rate": float(np.mean([a.any() for a in pred[~lesion]])) if (~lesion).any()
            else float("nan"),
            "box_fill_pred": fill(train_probs > threshold), "box_fill_true": fill(train_masks)}


def best_params(workdir: str):
    """``(config, federation, model, params, best_round)`` of the run in ``workdir``."""
    with open(os.path.join(workdir, rundir.CONFIG_FILE), encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    federation = load_federation(config.data, verbose=False)
    model = build_model(config, federation.num_classes)
    rc = build_round_config(config)
    state = init_state(model, jax.random.PRNGKey(int(config.seed)),
                       tuple(federation.train.images.shape[2:]), federation.num_clients, rc)
    ckpt = Checkpointer(os.path.join(workdir, rundir.CHECKPOINT_DIR), max_to_keep=None,
                        async_save=False)
    found = ckpt.restore_newest(state, state.global_params[0])
    if found is None:
        raise SystemExit(f"no checkpoint in {workdir}")
    _, _, params, extra = found
    return config, federation, model, params, extra["best"]["round"]


def _probs(model, params, images) -> np.ndarray:
    logits = model.apply({"params": params}, jnp.asarray(float_images(images)))
    return np.asarray(jax.nn.sigmoid(logits))[..., 0]


def main(argv):
    del argv
    config, federation, model, params, best_round = best_params(FLAGS.workdir)
    if federation.num_classes != 1:
        raise SystemExit("boundary_offsets.py reads binary runs (one class)")
    print(f"{FLAGS.workdir}: {config.strategy}, model of round {best_round}")
    test, train, out = federation.test, federation.train, {}
    thresholds = [float(t) for t in FLAGS.thresholds.split(",")] if FLAGS.thresholds else []
    for c, name in enumerate(federation.client_names):
        true = np.asarray(test.masks[c])[..., 0] > 0
        valid = np.asarray(test.valid[c])
        keep = valid & true.reshape(len(true), -1).any(1)
        probs = _probs(model, params, test.images[c][valid])
        fig = extent_figures(probs[keep[valid]] > 0.5, true[keep])
        out[name] = fig
        print(f"{name:14s} n={fig['n']:2d}  area pred/true {fig['area_ratio_median']:.2f} "
              f"(IQR {fig['area_ratio_iqr'][0]:.2f}-{fig['area_ratio_iqr'][1]:.2f})  "
              f"Dice {fig['dice']:.3f}  eroded 1 px {fig['dice_eroded_1px']:.3f}  "
              f"dilated 1 px {fig['dice_dilated_1px']:.3f}  best offset "
              f"{fig['dice_best_offset']:.3f} (median {fig['median_offset']:+.0f} px)  "
              f"Dice < 0.5: {fig['below_half']}")
        if thresholds:
            tv = np.asarray(train.valid[c])
            train_probs = _probs(model, params, train.images[c][tv])
            masks, boxes = (np.asarray(getattr(train, k)[c])[..., 0][tv] > 0
                            for k in ("masks", "boxes"))
            fig["thresholds"] = {t: threshold_figures(probs, true[valid], train_probs, masks,
                                                      boxes, t) for t in thresholds}
            for t, f in fig["thresholds"].items():
                print(f"{'':14s} threshold {t:.2f}: Dice {f['dice']:.3f}  FP rate "
                      f"{f['fp_rate']:.2f}  training boxes filled {f['box_fill_pred']:.2f} "
                      f"(true {f['box_fill_true']:.2f})")
    if FLAGS.json:
        with open(FLAGS.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "a finished binary run's folder", required=True)
    flags.DEFINE_string("json", None, "also write the figures here")
    flags.DEFINE_string("thresholds", None, "comma-separated probability thresholds, e.g. "
                        "0.5,0.3,0.1: Dice, FP rate and box fill at each")
    app.run(main)

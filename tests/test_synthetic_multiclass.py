"""The multi-class synthetic federation [I, B, L] and configs/synthetic_multiclass.py end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
from fedmix_jax import evaluation
from fedmix_jax import main as main_lib
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL
from fedmix_jax.data.sources import load_federation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "synthetic_multiclass.py")
TINY = ["--config.model.width=4", "--config.model.depth=2", "--config.data.image_size=32",
        "--config.data.train_sizes=(16,16,8)", "--config.data.val_size=8",
        "--config.data.test_size=8", "--config.train.batch_size=8"]


def _config():
    spec = importlib.util.spec_from_file_location("synthetic_multiclass_config", CONFIG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def test_config_builds_three_classes_three_levels():
    cfg = _config()
    cfg.data.image_size, cfg.data.train_sizes = 32, (12, 12, 12)
    cfg.data.val_size = cfg.data.test_size = 4
    fed = load_federation(cfg.data, verbose=False)
    assert fed.client_names == ["site_a_dim", "site_b_hairy", "site_c_clean"]
    assert fed.class_names == ["nodular", "irregular", "elongated"]
    tr = fed.train
    assert [int(tr.levels[c, 0]) for c in range(3)] == [IMAGE, BOX, PIXEL]
    assert tr.masks.shape[-1] == tr.boxes.shape[-1] == tr.image_labels.shape[-1] == 3
    v = tr.valid
    # image labels per class = presence of that class's mask; every class occurs
    np.testing.assert_array_equal(tr.image_labels[v] > 0, tr.masks[v].max(axis=(1, 2)) > 0)
    assert (tr.image_labels[v].sum(0) > 0).all()
    # boxes per class: each class's mask lies inside that class's boxes, and nowhere else boxed
    for k in range(3):
        assert not ((tr.masks[v][..., k] > 0) & ~(tr.boxes[v][..., k] > 0)).any()
        np.testing.assert_array_equal(tr.boxes[v][..., k].max(axis=(1, 2)) > 0,
                                      tr.image_labels[v][:, k] > 0)
    # some images hold two classes at once (multi-label, not one class per image)
    assert (tr.image_labels[v].sum(-1) >= 2).any()
    assert cfg.train.lam == 2.0 and cfg.train.beta == 3.0


def test_classes_look_different():
    """Per-class appearance differs: mean darkening and boundary roughness are class-specific."""
    cfg = _config()
    cfg.data.train_sizes, cfg.data.levels = (60, 60, 60), ("pixel",) * 3
    fed = load_federation(cfg.data, verbose=False)
    tr = fed.train
    masks = tr.masks[tr.valid] > 0
    perims = []
    for k in range(3):
        m = masks[..., k]
        area = m.sum(axis=(1, 2))
        edge = m & ~(np.roll(m, 1, 1) & np.roll(m, -1, 1) & np.roll(m, 1, 2) & np.roll(m, -1, 2))
        keep = area > 20
        perims.append(edge.sum(axis=(1, 2))[keep] / np.sqrt(area[keep]))  # ~ shape complexity
    # irregular lesions have rougher (longer) boundaries than nodular ones of the same area
    assert np.median(perims[1]) > 1.15 * np.median(perims[0])
    # elongated lesions: the longest axis of their mask is clearly longer than nodular ones'
    def elong(m):
        ys, xs = np.nonzero(m)
        cov = np.cov(np.stack([ys, xs]))
        ev = np.linalg.eigvalsh(cov)
        return ev[-1] / max(ev[0], 1e-6)
    e = [np.median([elong(m) for m in masks[..., k][masks[..., k].sum((1, 2)) > 20]])
         for k in range(3)]
    assert e[2] > 2.0 * e[0]


def test_main_two_rounds_reports_per_class_metrics(tmp_path, monkeypatch):
    """Two tiny rounds of the main job: 3 output channels, per-class Dice/IoU/HD95 evaluated."""
    seen = []
    real = evaluation.evaluate

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out)
        return out

    # patch every module that imported evaluate (train.py or the modules split out of it)
    for name, mod in list(sys.modules.items()):
        if name.startswith("fedmix_jax") and getattr(mod, "evaluate", None) is real:
            monkeypatch.setattr(mod, "evaluate", spy)
    wd = str(tmp_path / "run")
    argv = ["fedmix_jax.main", f"--config={CONFIG}", "--config.num_rounds=2", *TINY,
            f"--workdir={wd}", "--quiet"]
    assert main_lib.main(argv) == 0
    with open(os.path.join(wd, "summary.json")) as f:
        summary = json.loads(f.read())
    assert summary["class_names"] == ["nodular", "irregular", "elongated"]
    assert len(summary["best"]["test"]["dice"]) == 3
    assert seen, "the job did not evaluate"
    for ev in seen:
        assert ev["dice_per_class"].shape == (3, 3) and ev["iou_per_class"].shape == (3, 3)
        assert np.all((ev["dice_per_class"] >= 0) & (ev["dice_per_class"] <= 1))
        np.testing.assert_allclose(ev["dice"], ev["dice_per_class"].mean(-1))
        assert ev["hd95_per_class"].shape == (3, 3) and ev["mean_hd95_per_class"].shape == (3,)
        finite = ev["hd95_per_class"][np.isfinite(ev["hd95_per_class"])]
        assert np.all((finite >= 0) & (finite <= np.hypot(32, 32) + 1e-9))
    # once the job writes the per-class keys, they must be [C][K]
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        rec = [json.loads(line) for line in f][-1]
    if "test_dice_per_class" in rec:
        assert np.asarray(rec["test_dice_per_class"]).shape == (3, 3)

"""benchmarks/efficacy.py: the gap recovered, the tables, merging, and a tiny smoke run.

No figure is asserted: the benchmark measures, the test checks that it runs and that its
arithmetic is right."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import efficacy  # noqa: E402
from fedmix_jax.round_selection import selection_score  # noqa: E402


def _run(dice_lesion, fp=0.5, seed=0, diag=None):
    r = dict(seed=seed, dice=dice_lesion - 0.05, dice_lesion=dice_lesion,
             min_class_dice_lesion=dice_lesion, fp_rate=fp, hd95=10.0)
    if diag is not None:
        r["pseudo_labels"] = diag
    return r


def test_gap_recovered_is_paired_by_seed():
    assert efficacy.gap_recovered(0.8, 0.7, 0.9) == pytest.approx(0.5)
    assert math.isnan(efficacy.gap_recovered(0.8, 0.9, 0.9))
    results = {"binary": {"1": {
        "fedavg_pixel": [_run(0.70, seed=0), _run(0.60, seed=1)],
        "fedavg_full": [_run(0.90, seed=0), _run(0.80, seed=1)],
        "fedmix_plus": [_run(0.85, seed=0), _run(0.65, seed=1)]}}}
    table = efficacy.tables(results, ["fedmix_plus", "fedavg_pixel", "fedavg_full"])
    # paired: (0.85-0.70)/0.20 = 0.75 and (0.65-0.60)/0.20 = 0.25 -> 0.500 ± 0.354
    row = next(line for line in table.splitlines() if line.startswith("| 1 | fedmix_plus"))
    assert row.endswith("| 0.500 ± 0.354 |")
    assert "| all | fedmix_plus |" in table


def test_local_results_hold_only_runs_with_local_figures():
    with_local = dict(_run(0.8), local=_run(0.9))
    results = {"binary": {"1": {"fedmix_plus": [with_local], "fedavg_pixel": [_run(0.7)]}}}
    local = efficacy.local_results(results)
    assert local == {"binary": {"1": {"fedmix_plus": [_run(0.9)]}}}
    assert efficacy.local_results({"binary": {"1": {"fedavg_pixel": [_run(0.7)]}}}) == {}
    both = dict(_run(0.8), local=_run(0.9), consensus=_run(0.88))
    results = {"binary": {"1": {"fedmix_plus": [both], "fedavg_pixel": [_run(0.7)]}}}
    assert efficacy.local_results(results, "consensus") == {"binary": {"1": {
        "fedmix_plus": [_run(0.88)]}}}


def test_gap_against_other_baselines():
    """The consensus models' gap can be taken against the baselines' global models."""
    mine = {"binary": {"1": {"fedmix_plus": [_run(0.85)], "fedavg_pixel": [_run(0.75)],
                             "fedavg_full": [_run(0.95)]}}}
    glob = {"binary": {"1": {"fedavg_pixel": [_run(0.70)], "fedavg_full": [_run(0.90)]}}}
    row = lambda t: next(x for x in t.splitlines() if x.startswith("| 1 | fedmix_plus"))  # noqa
    assert row(efficacy.tables(mine, ["fedmix_plus"])).endswith("| 0.500 ± 0.000 |")
    assert row(efficacy.tables(mine, ["fedmix_plus"], baselines=glob)).endswith(
        "| 0.750 ± 0.000 |")


def test_merge_and_diagnostics_table(tmp_path):
    diag = [{"round": 1, "pl_box_n": 10.0, "pl_box_sel": 2.0, "pl_box_sel_lesion": 1.0,
             "pl_box_dice": 0.5, "pl_box_dice_all": 0.4, "pl_box_precision": 0.5,
             "pl_box_recall": 1.0, "pl_box_area": 0.7}]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"results": {"binary": {"1": {"fedavg_pixel": [_run(0.7)]}}}}))
    b.write_text(json.dumps({"results": {"binary": {"1": {"fedmix": [_run(0.75, diag=diag)]}}}}))
    merged = efficacy.merged([str(a), str(b)])
    assert set(merged["binary"]["1"]) == {"fedavg_pixel", "fedmix"}
    text = efficacy.diagnostics_table(merged, ["fedmix"])
    assert "| fedmix | box | 1 | 0.200 ± 0.000 | 0.100 ± 0.000 | 0.500 ± 0.000 |" in text


@pytest.mark.slow
def test_efficacy_smoke_run(tmp_path):
    out = tmp_path / "eff.json"
    tiny = ["--set", "model.width=4", "--set", "model.depth=2", "--set", "data.image_size=32",
            "--set", "data.train_sizes=(8,8,8,8)", "--set", "data.val_size=4",
            "--set", "data.test_size=6", "--set", "compilation_cache='off'"]
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "efficacy.py"), "--tasks", "binary",
           "--strategies", "fedmix_plus,fedavg_pixel,fedavg_full", "--data_seeds", "1",
           "--seeds", "0", "--rounds", "1", "--diagnostics_every", "1", "--local_models",
           "--fine_tune_epochs", "2", "--select_by", "lesion_balanced", "--every_round",
           "--json", str(out)] + tiny
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| all | fedmix_plus |" in proc.stdout
    data = json.loads(out.read_text())
    run = data["results"]["binary"]["1"]["fedmix_plus"][0]
    assert {"dice", "dice_lesion", "fp_rate", "hd95", "min_class_dice_lesion"} <= set(run)
    assert run["pseudo_labels"][0]["round"] == 1 and "pl_box_n" in run["pseudo_labels"][0]
    assert data["select_by"] == "lesion_balanced"
    every, = run["rounds"]      # --every_round: the global model's figures at each round
    assert every["round"] == run["round"] == 1 and every["dice_lesion"] == run["dice_lesion"]
    assert run["val_dice"] == pytest.approx(selection_score(
        {"mean_dice_present": every["val_dice_lesion"],
         "mean_false_positive_rate": every["val_fp_rate"]}, "lesion_balanced"))
    local = run["local"]     # the sites' own models, scored on their own test splits
    assert {"round", "dice", "dice_lesion", "fp_rate", "min_class_dice_lesion"} <= set(local)
    assert len(local["fp_rate_per_client"]) == 4
    assert "Local models" in proc.stdout
    consensus = run["consensus"]     # each site's local mask where both models mark a lesion
    assert {"round", "dice_lesion", "fp_rate", "min_class_dice_lesion"} <= set(consensus)
    assert "Consensus models" in proc.stdout and "gap against the global models" in proc.stdout
    tuned = run["consensus_tuned"]  # each site's mask threshold from its own validation split
    assert len(tuned["thresholds"]) == 4 and set(tuned["thresholds"]) <= {0.5, 0.4, 0.3, 0.2, 0.1}
    assert tuned["fp_rate"] == consensus["fp_rate"]     # the lesion decision is not moved
    fine = run["consensus_finetuned"]   # the mask of each site's further fine-tuned copy
    assert set(fine["epochs"]) <= {0, 1, 2} and len(fine["thresholds"]) == 4
    assert fine["fp_rate"] <= consensus["fp_rate"]     # marks a subset of the consensus's images
    assert "pseudo_labels" not in data["results"]["binary"]["1"]["fedavg_pixel"][0] or \
        data["results"]["binary"]["1"]["fedavg_pixel"][0]["pseudo_labels"][0].keys() == {"round"}


def test_boundary_offsets_reads_a_shrunken_prediction_as_a_lost_rim():
    import boundary_offsets
    from scipy import ndimage

    yy, xx = np.mgrid[:32, :32]
    true = np.stack([(yy - 16) ** 2 + (xx - c) ** 2 <= r * r for c, r in ((14, 8), (17, 10))])
    core = np.stack([ndimage.binary_erosion(t, iterations=1) for t in true])
    fig = boundary_offsets.extent_figures(core, true)
    assert fig["n"] == 2 and fig["area_ratio_median"] < 0.9 and fig["median_offset"] == -1
    assert fig["dice_best_offset"] == pytest.approx(1.0) and fig["dice"] < fig["dice_eroded_1px"]
    same = boundary_offsets.extent_figures(true, true)
    assert same["median_offset"] == 0 and same["dice"] == 1.0 and same["below_half"] == 0


def test_boundary_offsets_threshold_figures():
    import boundary_offsets

    true = np.zeros((3, 8, 8), bool)
    true[0, 2:6, 2:6] = True                        # a lesion image; images 1, 2 lesion-free
    probs = np.zeros((3, 8, 8), np.float32)
    probs[0, 2:6, 2:6] = 0.9
    probs[0, 2:6, 6] = 0.3                          # a faint rim
    probs[1, 0, 0] = 0.35                           # a faint false positive
    boxes = np.zeros((1, 8, 8), bool)
    boxes[0, 1:7, 1:7] = True                       # 36 px box around the 16 px lesion
    at_half = boundary_offsets.threshold_figures(probs, true, probs[:1], true[:1], boxes, 0.5)
    assert at_half == {"dice": 1.0, "fp_rate": 0.0, "box_fill_pred": 16 / 36,
                       "box_fill_true": 16 / 36}
    low = boundary_offsets.threshold_figures(probs, true, probs[:1], true[:1], boxes, 0.2)
    assert low["dice"] == pytest.approx(2 * 16 / (20 + 16)) and low["fp_rate"] == 0.5
    assert low["box_fill_pred"] == pytest.approx(20 / 36)


def test_box_statistics_fill_ratio_and_neighbour_pairs():
    import box_statistics

    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:4, 2:6] = True                       # 8 lesion px in a 4 x 8 box
    boxes = np.zeros_like(masks)
    boxes[0, 1:5, :] = True
    np.testing.assert_allclose(box_statistics.fill_ratios(masks, boxes), [8 / 32])
    images = np.where(masks, 0.2, 0.8)[..., None].astype(np.float32)
    parts = box_statistics.neighbour_differences(images, masks, 1)
    assert parts["across"].size == 4 and np.allclose(parts["across"], 0.6)
    assert parts["inside"].size == 6 and not parts["inside"].any()
    assert parts["skin"].size == 56 - 10 and not parts["skin"].any()

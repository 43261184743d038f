"""fedmix_jax.round_selection: the score that picks a run's reported round, against the spec's
definitions on random figures, and the main job keeping the round it scores best."""

import math

import numpy as np
import pytest

from fedmix_jax.round_selection import SELECT_ROUND_BY, is_better, selection_score


def _oracle(d, f, select_by):
    """From the definitions: mean Dice as is; lesion_balanced = mean of D and 1 - F over the
    terms that exist (None / NaN: missing)."""
    def ok(x):
        return x is not None and np.isfinite(x)

    if select_by == "mean_dice":
        return d["mean_dice"] if ok(d["mean_dice"]) else math.nan
    terms = ([d["mean_dice_present"]] if ok(d["mean_dice_present"]) else []) + \
        ([1.0 - f] if ok(f) else [])
    return float(np.mean(terms)) if terms else math.nan


@pytest.mark.parametrize("select_by", SELECT_ROUND_BY)
def test_score_matches_the_definitions_on_random_figures(select_by):
    rng = np.random.default_rng(0)
    for _ in range(200):
        figures = {k: rng.choice([None, math.nan, float(rng.uniform())], p=[0.1, 0.1, 0.8])
                   for k in ("mean_dice", "mean_dice_present", "mean_false_positive_rate")}
        got = selection_score(figures, select_by)
        want = _oracle(figures, figures["mean_false_positive_rate"], select_by)
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, abs=1e-12)


def test_a_timid_round_wins_on_mean_dice_and_loses_on_lesion_balanced():
    """The multi-class failure the criterion exists for: a round that marks little scores a high
    mean Dice (absent (image, class) pairs score 1) but a low Dice on the lesion images."""
    timid = {"mean_dice": 0.40, "mean_dice_present": 0.08, "mean_false_positive_rate": 0.10}
    later = {"mean_dice": 0.35, "mean_dice_present": 0.55, "mean_false_positive_rate": 0.20}
    assert is_better(timid, later, "mean_dice") and not is_better(later, timid, "mean_dice")
    assert is_better(later, timid, "lesion_balanced")
    assert not is_better(timid, later, "lesion_balanced")
    assert selection_score(later, "lesion_balanced") == pytest.approx((0.55 + 0.80) / 2)


def test_missing_scores_never_win_and_an_unknown_criterion_is_an_error():
    nothing = {"mean_dice": None, "mean_dice_present": None, "mean_false_positive_rate": None}
    some = {"mean_dice": 0.1, "mean_dice_present": 0.1, "mean_false_positive_rate": 1.0}
    for select_by in SELECT_ROUND_BY:
        assert not is_better(nothing, None, select_by)
        assert is_better(some, None, select_by) and is_better(some, nothing, select_by)
        assert not is_better(some, some, select_by)       # ties keep the earlier round
    with pytest.raises(ValueError, match="select_round_by"):
        selection_score(some, "mean_iou")


def test_the_main_job_reports_the_round_its_criterion_scores_best(tmp_path, monkeypatch):
    from fedmix_jax import run_loop, train
    from fedmix_jax.errors import ConfigError
    from fedmix_jax.records import read_metrics
    from fedmix_jax.rundir import METRICS_FILE
    from fedmix_jax.summary import format_summary
    from test_main import tiny_config

    asked = []      # the criterion the run loop compares rounds by (the two rules may agree here)
    monkeypatch.setattr(run_loop, "is_better",
                        lambda val, best, by: asked.append(by) or is_better(val, best, by))
    cfg = tiny_config(strategy="fedavg_pixel", select_round_by="lesion_balanced", num_rounds=4)
    summary = train.train_and_evaluate(cfg, str(tmp_path / "run"), quiet=True, write_plots=False)
    scores = [selection_score({k[4:]: v for k, v in rec.items() if k.startswith("val_")},
                              "lesion_balanced")
              for rec in read_metrics(str(tmp_path / "run" / METRICS_FILE))]
    assert len(scores) == 4 and all(np.isfinite(scores))
    assert asked == ["lesion_balanced"] * 4
    assert summary["best"]["round"] == int(np.argmax(scores)) + 1     # the first on ties
    assert "Dice on lesion images + 1 - FP rate" in format_summary(summary)
    with pytest.raises(ConfigError, match="select_round_by"):
        train.train_and_evaluate(tiny_config(select_round_by="val_loss"), str(tmp_path / "bad"),
                                 quiet=True, write_plots=False)
    assert not (tmp_path / "bad").exists()

"""The comparison command: strategies x seeds on one federation, mean ± std table."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from fedmix_jax import compare

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_main import SYNTHETIC, TINY  # noqa: E402


def test_compare_two_strategies_two_seeds(tmp_path, capsys):
    wd = str(tmp_path / "cmp")
    code = compare.main(["fedmix_jax.compare", f"--config={SYNTHETIC}", "--config.num_rounds=1",
                         *TINY, "--strategies=fedmix,fedavg_pixel", "--seeds=0,1",
                         f"--workdir={wd}", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    with open(os.path.join(wd, "compare.json")) as f:
        result = json.load(f)
    with open(os.path.join(wd, "compare.md")) as f:
        md = f.read()
    assert result["strategies"] == ["fedmix", "fedavg_pixel"] and result["seeds"] == [0, 1]
    for strategy in ("fedmix", "fedavg_pixel"):
        r = result["results"][strategy]
        assert r["num_ok"] == 2
        runs = [r["runs"]["0"], r["runs"]["1"]]
        per_seed = np.array([run["dice"] for run in runs])
        np.testing.assert_allclose(r["dice_mean"], per_seed.mean(0))
        np.testing.assert_allclose(r["dice_std"], per_seed.std(0, ddof=1))
        means = [run["mean_dice"] for run in runs]
        np.testing.assert_allclose(r["mean_dice_mean"], np.mean(means))
        np.testing.assert_allclose(r["mean_dice_std"], np.std(means, ddof=1))
        assert means[0] != means[1]                      # the seeds differ
        assert all(os.path.isdir(run["workdir"]) for run in runs)
        cell = f"{r['mean_dice_mean']:.4f} ± {r['mean_dice_std']:.4f}"
        assert cell in md and cell in out
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| fed")]
    # 4 clients + mean + Dice on lesion images, HD95, FP rate, per strategy
    assert sum(ln.count("±") for ln in table_rows) == 2 * 8
    assert "site_c_clean (pixel)" in md


def test_compare_unknown_strategy(tmp_path, capsys):
    code = compare.main(["c", f"--config={SYNTHETIC}", "--strategies=fedmix,nope",
                         f"--workdir={tmp_path / 'x'}"])
    assert code == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err

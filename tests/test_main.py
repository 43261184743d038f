"""The training job end to end: main's files, resume, refusals, divergence and the real configs.

Every synthetic run here uses one tiny configuration (width 4, depth 2, 32 px, 16 images per
client), so the round compiles once for the whole test session (rounds are cached per (model,
round config)).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from fedmix_jax import main as main_lib
from fedmix_jax import train
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.data.synthetic import synthetic_federation_from_config
from fedmix_jax.errors import TrainingDivergedError
from fedmix_jax.plots import PLOT_FILES
from fedmix_jax.records import read_metrics
from fedmix_jax.rundir import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
from fedmix_jax.summary import format_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, "configs", "synthetic.py")
ISIC = os.path.join(REPO, "configs", "isic.py")
BREAST = os.path.join(REPO, "configs", "breast.py")

# The CI smoke configuration (an override of configs/synthetic.py).
TINY = ["--config.model.width=4", "--config.model.depth=2", "--config.data.image_size=32",
        "--config.data.train_sizes=(16,16,8,16)", "--config.data.val_size=8",
        "--config.data.test_size=8", "--config.train.batch_size=8"]


def tiny_config(**top):
    """configs/synthetic.py with the TINY overrides, as a ConfigDict (for in-process runs)."""
    spec = importlib.util.spec_from_file_location("synthetic_config", SYNTHETIC)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    cfg.model.width, cfg.model.depth = 4, 2
    cfg.data.image_size = 32
    cfg.data.train_sizes = (16, 16, 8, 16)
    cfg.data.val_size = cfg.data.test_size = 8
    cfg.train.batch_size = 8
    cfg.num_rounds = 2
    for k, v in top.items():
        cfg[k] = v
    return cfg


def run_main(config, workdir, *extra, quiet=True):
    argv = ["fedmix_jax.main", f"--config={config}", *extra, f"--workdir={workdir}"]
    if quiet:
        argv.append("--quiet")
    return main_lib.main(argv)


def lines(workdir):
    return read_metrics(os.path.join(workdir, METRICS_FILE))


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """A finished 2-round smoke run (through main's command line, with the progress bar)."""
    wd = str(tmp_path_factory.mktemp("smoke") / "run")
    assert run_main(SYNTHETIC, wd, "--config.num_rounds=2", *TINY, quiet=False) == 0
    return wd


def test_smoke_writes_every_file(smoke_dir, capsys):
    names = set(os.listdir(smoke_dir))
    assert {METRICS_FILE, SUMMARY_FILE, CONFIG_FILE,
            CHECKPOINT_DIR} <= names
    for png in PLOT_FILES:
        with open(os.path.join(smoke_dir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    recs = lines(smoke_dir)
    assert [r["round"] for r in recs] == [1, 2]
    for r in recs:
        for key in ("loss1", "loss2", "counts", "selection_rate", "weights", "steps",
                    "val_dice", "val_iou", "test_dice", "test_iou"):
            assert len(r[key]) == 4, key
        for key in ("val_mean_dice", "test_mean_dice", "val_mean_iou", "test_mean_iou",
                    "round_time_s"):
            assert np.isfinite(r[key]), key
        assert r["counts"][2] == 8          # the pixel client trains on its 8 masks
    with open(os.path.join(smoke_dir, SUMMARY_FILE)) as f:
        summary = json.load(f)
    best = summary["best"]
    assert summary["rounds_completed"] == 2 and summary["strategy"] == "fedmix"
    # the reported test numbers are those of the round with the best validation Dice
    chosen = max(recs, key=lambda r: r["val_mean_dice"])
    assert best["round"] == chosen["round"]
    assert best["test"]["mean_dice"] == chosen["test_mean_dice"]
    assert best["test"]["dice"] == chosen["test_dice"]
    assert summary["timing"]["compile_s"] is not None
    assert Checkpointer(os.path.join(smoke_dir, CHECKPOINT_DIR)).all_steps() == [2]
    assert "site_c_clean" in format_summary(summary)


def test_resume_continues_and_keeps_one_line_per_round(smoke_dir, capsys):
    first = lines(smoke_dir)
    assert run_main(SYNTHETIC, smoke_dir, "--config.num_rounds=3", *TINY) == 0
    out, err = capsys.readouterr()
    assert "resuming from the checkpoint of round 2" in err
    assert "mean" in out and "test Dice" in out                      # the closing table
    recs = lines(smoke_dir)
    assert [r["round"] for r in recs] == [1, 2, 3]
    assert recs[:2] == first
    with open(os.path.join(smoke_dir, SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["resumed_from"] == 2 and summary["rounds_completed"] == 3
    assert Checkpointer(os.path.join(smoke_dir, CHECKPOINT_DIR)).all_steps() == [2, 3]
    # the same command again: nothing to train, same files
    assert run_main(SYNTHETIC, smoke_dir, "--config.num_rounds=3", *TINY) == 0
    assert [r["round"] for r in lines(smoke_dir)] == [1, 2, 3]


def test_different_config_in_workdir_is_refused(smoke_dir, capsys):
    code = run_main(SYNTHETIC, smoke_dir, "--config.num_rounds=3", *TINY,
                    "--config.model.width=8")
    err = capsys.readouterr().err
    assert code == 2
    assert "different config" in err and "model.width: 4 -> 8" in err
    assert "Traceback" not in err


def test_missing_config_file_and_bad_override(tmp_path, capsys):
    assert main_lib.main(["m", "--config", str(tmp_path / "nope.py")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "nope.py" in err
    assert main_lib.main(["m"]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert main_lib.main(["m", f"--config={SYNTHETIC}", "--config.no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")


def test_nan_in_a_client_stops_with_round_and_client(tmp_path):
    cfg = tiny_config()
    fed = synthetic_federation_from_config(cfg.data)
    images = np.array(fed.train.images)
    images[2, 0, 3, 3] = np.nan                         # the pixel client trains on it at once
    fed.train = fed.train.replace(images=images)
    wd = str(tmp_path / "nan")
    with pytest.raises(TrainingDivergedError) as info:
        train.train_and_evaluate(cfg, wd, quiet=True, federation=fed, write_plots=False)
    e = info.value
    assert e.round == 1 and e.clients == [2]
    assert "round 1" in str(e) and "client 2 (site_c_clean)" in str(e)
    assert Checkpointer(os.path.join(wd, CHECKPOINT_DIR)).latest_step() is None
    assert lines(wd) == []


def test_nan_in_a_later_round_keeps_earlier_checkpoint(tmp_path, monkeypatch, capsys):
    """Round 2 reports a NaN loss for client 1: main exits 1, checkpoint 1 stays, no 2."""
    real = train.make_round_fn

    def poisoned(model, config):
        round_fn = real(model, config)

        def wrapped(state, data):
            state, m = round_fn(state, data)
            if int(state.round) == 2:
                m = m.replace(reports=m.reports.replace(loss1=m.reports.loss1.at[1].set(np.nan)))
            return state, m
        return wrapped

    monkeypatch.setattr(train, "make_round_fn", poisoned)
    wd = str(tmp_path / "nan2")
    code = run_main(SYNTHETIC, wd, "--config.num_rounds=3", "--config.checkpoint_every=1",
                    *TINY)
    err = capsys.readouterr().err
    assert code == 1
    assert "round 2" in err and "client 1 (site_b_hairy)" in err and "Traceback" not in err
    assert Checkpointer(os.path.join(wd, CHECKPOINT_DIR)).all_steps() == [1]
    assert [r["round"] for r in lines(wd)] == [1]


# ------------------------------------------------------------------------------- real configs


@pytest.mark.parametrize("config,name", [(ISIC, "HAM10000_metadata.csv"),
                                         (BREAST, "Dataset_BUSI_with_GT")])
def test_real_config_without_data_exits_2_with_layout(config, name, tmp_path, capsys):
    wd = tmp_path / "run"
    code = run_main(config, wd, f"--config.data.data_dir={tmp_path / 'missing'}",
                    f"--config.data.cache_dir={tmp_path / 'cache'}")
    err = capsys.readouterr().err
    assert code == 2
    assert "--config.data.data_dir" in err and name in err
    assert "Traceback" not in err
    assert not wd.exists()


REAL_TINY = ["--config.num_rounds=2", "--config.model.width=4", "--config.model.depth=2",
             "--config.data.image_size=32", "--config.train.crop=None",
             "--config.train.batch_size=8"]


def test_isic_config_end_to_end_on_fixture(tmp_path, capsys):
    from fedmix_jax.data.real.make_fixture import make_ham10000

    # 56 images give train arrays [4, 16, 32, 32, 1], the TINY synthetic shape: the compiled round
    # is reused (a different size would only cost one more compilation).
    make_ham10000(str(tmp_path / "ham"), num_images=56, size=(40, 30), seed=0)
    wd = str(tmp_path / "run")
    code = run_main(ISIC, wd, f"--config.data.data_dir={tmp_path / 'ham'}",
                    f"--config.data.cache_dir={tmp_path / 'cache'}", *REAL_TINY)
    assert code == 0, capsys.readouterr().err
    with open(os.path.join(wd, SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["client_names"] == ["rosendahl", "vidir_modern", "vienna_dias",
                                       "vidir_molemax"]
    assert summary["levels"] == ["box", "box", "pixel", "box"]
    assert [r["round"] for r in lines(wd)] == [1, 2]


def test_breast_config_end_to_end_on_fixture(tmp_path, capsys):
    from fedmix_jax.data.real.make_fixture import make_breast

    make_breast(str(tmp_path / "breast"), num_busi=(4, 3, 3), num_udiat=8, num_busis=8)
    wd = str(tmp_path / "run")
    code = run_main(BREAST, wd, f"--config.data.data_dir={tmp_path / 'breast'}",
                    f"--config.data.cache_dir={tmp_path / 'cache'}", *REAL_TINY)
    assert code == 0, capsys.readouterr().err
    with open(os.path.join(wd, SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["client_names"] == ["busi", "busis", "udiat"]
    assert summary["levels"] == ["image", "box", "pixel"]
    assert summary["config"]["train"]["lam"] == 10.0
    assert summary["config"]["train"]["beta"] == 1.5


def test_the_job_keeps_no_host_copy_of_the_placed_data(tmp_path, monkeypatch):
    """Once the data is on the device, the job holds no host copy of the loaded pixels (issue
    14: on the CPU backend the device's arrays are host memory, so a kept copy doubled the
    process): every loaded image / mask / box array is dead when training starts, or is the
    device's own buffer (the CPU backend may alias an aligned array instead of copying)."""
    import weakref

    import jax

    cfg = tiny_config(num_rounds=1)
    weak, seen = [], {}

    def load(data_cfg, verbose=True):
        fed = synthetic_federation_from_config(data_cfg)
        weak.extend(weakref.ref(getattr(getattr(fed, s), f)) for s in ("train", "val", "test")
                    for f in ("images", "masks", "boxes"))
        return fed

    def check_then_train(run, state, progress):
        buffers = {x.unsafe_buffer_pointer()
                   for x in jax.tree.leaves((run.train_data, run.val, run.test))}
        seen["copies"] = [r().shape for r in weak
                          if r() is not None and r().ctypes.data not in buffers]
        return original(run, state, progress)

    original = train._Run.train
    monkeypatch.setattr(train, "load_run_federation", load)
    monkeypatch.setattr(train._Run, "train", check_then_train)
    summary = train.train_and_evaluate(cfg, str(tmp_path / "run"), quiet=True)
    assert len(weak) == 9 and seen["copies"] == []
    assert summary["rounds_completed"] == 1 and summary["plots"]   # the plot's own samples

"""Every config value is range-checked before anything is loaded: exit 2 and one line naming
the field, never a traceback, MemoryError or the OOM killer; the workdir is not created."""

from __future__ import annotations

import os
import sys

import pytest

from fedmix_jax.config_checks import check_config_values

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_main import SYNTHETIC, TINY, run_main, tiny_config  # noqa: E402
from hang_alarm import alarm_fixture  # noqa: E402


alarm = alarm_fixture(120)


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("overrides,names", [
    (["--config.data.val_size=0"], "data.val_size"),
    (["--config.data.test_size=0"], "data.test_size"),
    (["--config.data.train_sizes=(16,-1,8,16)"], "data.train_sizes"),
    (["--config.data.image_size=100000"], "data.image_size"),
    (["--config.data.stream_block_steps=0"], "data.stream_block_steps"),
    (["--config.seed=100000000000000000000"], "seed"),
    (["--config.seed=-1"], "seed"),
    (["--config.data.device_data_budget_gb=-1"], "data.device_data_budget_gb"),
    (["--config.data.device_data_budget_gb=nan"], "data.device_data_budget_gb"),
    (["--config.model.width=10000"], "model.width=10000"),
    (["--config.model.width=5"], "even"),
    (["--config.model.depth=0"], "model.depth"),
    (["--config.num_rounds=0"], "num_rounds"),
    (["--config.train.batch_size=0"], "train.batch_size"),
    (["--config.train.learning_rate=nan"], "learning_rate"),
    (["--config.train.executor=sharded", "--config.train.num_devices=9"], "num_devices=9"),
])
def test_out_of_range_values_are_one_line(tmp_path, capsys, overrides, names):
    wd = tmp_path / "run"
    assert run_main(SYNTHETIC, wd, "--config.num_rounds=1", *TINY, *overrides) == 2
    assert names in _error_line(capsys)
    assert not wd.exists()


@pytest.mark.parametrize("drop,names", [
    ("del config['model']", "'model' group"),
    ("del config['num_rounds']", "'num_rounds'"),
    ("del config['strategy']", "'strategy'"),
    ("del config.train['batch_size']", "'train.batch_size'"),
])
def test_config_file_missing_fields(tmp_path, capsys, drop, names):
    cfg = tmp_path / "partial.py"
    cfg.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('base', {SYNTHETIC!r})\n"
        "base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n\n\n"
        "def get_config():\n"
        "    config = base.get_config()\n"
        f"    {drop}\n"
        "    return config\n")
    wd = tmp_path / "run"
    args = [a for a in TINY if not (a.startswith("--config.model") and "model" in drop)
            and not (a.startswith("--config.train.batch") and "batch" in drop)]
    assert run_main(str(cfg), wd, *args) == 2
    assert names in _error_line(capsys)
    assert not wd.exists()


def test_the_shipped_configs_pass():
    import glob
    import importlib.util

    check_config_values(tiny_config())
    configs = sorted(glob.glob(os.path.join(os.path.dirname(SYNTHETIC), "*.py")))
    assert len(configs) >= 4
    for path in configs:
        spec = importlib.util.spec_from_file_location("shipped_config", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        check_config_values(mod.get_config())

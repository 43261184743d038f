"""fedmix_jax.job_settings: the job's settings read once from the ConfigDict, defaults in one place."""

import ml_collections
import pytest

from fedmix_jax.config_defaults import add_streaming_fields, run_config, train_config
from fedmix_jax.errors import ConfigError
from fedmix_jax.job_settings import JobSettings, MemorySettings


def _config():
    config = run_config(2, checkpoint_every=1, keep_checkpoints=1, width=4)
    config.train = train_config(batch_size=2, crop=None, lam=0.5, beta=1.0)
    config.data = add_streaming_fields(ml_collections.ConfigDict({"name": "synthetic"}))
    return config


def test_the_configs_defaults_are_the_settings_defaults():
    assert JobSettings.from_config(_config()) == JobSettings()


def test_missing_fields_get_the_defaults_and_set_ones_are_read():
    assert JobSettings.from_config(ml_collections.ConfigDict({})) == JobSettings()
    config = _config()
    config.eval_local_models, config.diagnostics = True, True
    config.select_round_by = "lesion_balanced"
    config.train.cpu_devices = 0
    config.data.compact, config.data.device_data_budget_gb = False, 0.5
    config.data.stream_block_steps, config.data.pack_labels = 3, True
    got = JobSettings.from_config(config)
    assert got == JobSettings(eval_local_models=True, diagnostics=True, cpu_devices=0,
                              select_round_by="lesion_balanced",
                              memory=MemorySettings(device_data_budget_gb=0.5,
                                                    stream_block_steps=3, pack_labels=True,
                                                    compact=False))


def test_no_cache_directory_means_off_and_bad_values_are_config_errors():
    config = ml_collections.ConfigDict({"compilation_cache": None})
    assert JobSettings.from_config(config).compilation_cache == "off"
    with pytest.raises(ConfigError, match="train.cpu_devices"):
        JobSettings.from_config(ml_collections.ConfigDict({"train": {"cpu_devices": "many"}}))
    with pytest.raises(ConfigError, match="select_round_by must be one of mean_dice, "
                                          "lesion_balanced, got 'dice'"):
        JobSettings.from_config(ml_collections.ConfigDict({"select_round_by": "dice"}))
    with pytest.raises(ConfigError, match="data"):
        JobSettings.from_config(ml_collections.ConfigDict({"data": {"stream_block_steps": "x"}}))

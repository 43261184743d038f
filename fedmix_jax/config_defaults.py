"""The config groups every ``configs/*.py`` shares (the run and model, ``train``, ``selection``),
with the defaults of the typed objects they become (``RoundConfig``, ``JobSettings``,
``SelectionConfig``), so every default is written once; each config file (loaded by path, unable
to import another) calls these with its own numbers."""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from fedmix_jax.config import RoundConfig
from fedmix_jax.job_settings import JobSettings
from fedmix_jax.weak_objective import WeakSupervision
from fedmix_jax.pseudo_labels import SelectionConfig

_JOB = JobSettings()      # the job's defaults (fedmix_jax.job_settings), written once there


def run_config(num_rounds: int, checkpoint_every: int, keep_checkpoints: int, width: int,
               depth: int = 4) -> ml_collections.ConfigDict:
    """The top of every config: the run's fields, ``config.model`` and ``config.weak``; each config
    file adds ``data``, ``train`` and ``selection``."""
    config = ml_collections.ConfigDict()
    config.seed = 0                  # model init and round keys (the data has its own seed)
    config.strategy = "fedmix"       # a name of fedmix_jax.strategies.STRATEGY_NAMES
    config.num_rounds = num_rounds   # communication rounds (one local epoch each)
    config.eval_every = 1            # validate/test global model 1 every k rounds (and the last)
    config.eval_local_models = _JOB.eval_local_models   # local_test_* keys (JobSettings)
    # > 0: after the last round each site fine-tunes its copy for up to this many more local
    # epochs for its consensus model's mask (fedmix_jax.fine_tuning; summary.json)
    config.fine_tune_epochs = _JOB.fine_tune_epochs
    # which round's model is reported: "mean_dice" (best mean validation Dice) or
    # "lesion_balanced" ((Dice on lesion images + 1 - FP rate) / 2; fedmix_jax.round_selection)
    config.select_round_by = _JOB.select_round_by
    config.checkpoint_every = checkpoint_every  # save a checkpoint every k rounds (and the last)
    config.keep_checkpoints = keep_checkpoints  # how many recent checkpoints to keep
    config.compilation_cache = _JOB.compilation_cache   # "default", a directory or "off"
    config.diagnostics = _JOB.diagnostics   # pl_* keys: needs true masks of the weak samples
    config.model = ml_collections.ConfigDict()
    config.model.width = width       # channels of the first U-Net block (paper: 64)
    config.model.depth = depth       # Down/Up blocks (paper: 4)
    config.model.dtype = "float32"   # computation dtype: float32 | bfloat16 (params stay f32)
    # fedmix_plus's weak-label loss weights (WeakSupervision; 0 = off); others ignore them
    config.weak = ml_collections.ConfigDict(dataclasses.asdict(WeakSupervision()))
    return config


def train_config(batch_size: int, crop, lam: float, beta: float,
                 learning_rate: float = 1e-3, **overrides) -> ml_collections.ConfigDict:
    """``config.train``: every field of :class:`~fedmix_jax.config.RoundConfig` but ``strategy``,
    with its default unless given here; ``executor`` "auto", ``crop`` and ``num_devices`` None, plus
    ``cpu_devices`` and ``warmup_rounds``."""
    train = ml_collections.ConfigDict({field.name: field.default for field in
                                       dataclasses.fields(RoundConfig) if field.name != "strategy"})
    train.crop = config_dict.placeholder(tuple)
    train.num_devices = config_dict.placeholder(int)
    train.executor = "auto"
    train.cpu_devices = _JOB.cpu_devices     # CPU only: 0 = one JAX device per core (cpu_cores)
    # FedST / FedRGD's warm-up rounds; None: half of num_rounds, fixed when the run starts
    # (fedmix_jax.config.resolve_warmup_rounds)
    train.warmup_rounds = config_dict.placeholder(int)
    train.update(dict(batch_size=batch_size, crop=crop, lam=lam, beta=beta,
                      learning_rate=learning_rate, **overrides))
    return train


def selection_config(**overrides) -> ml_collections.ConfigDict:
    """``config.selection``: pseudo-label rules (fedmix-spec.md), the fields of
    :class:`~fedmix_jax.pseudo_labels.SelectionConfig` with its defaults (the fixes on)."""
    selection = ml_collections.ConfigDict(dataclasses.asdict(SelectionConfig()))
    selection.update(overrides)
    return selection


def add_streaming_fields(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``data`` with the device-memory fields of :class:`~fedmix_jax.job_settings.MemorySettings`
    (``device_data_budget_gb``, ``stream_block_steps``, ``pack_labels``, ``compact``)."""
    data.device_data_budget_gb = config_dict.placeholder(float)   # GiB; None: no bound
    data.stream_block_steps = _JOB.memory.stream_block_steps
    data.pack_labels = _JOB.memory.pack_labels
    data.compact = _JOB.memory.compact
    return data

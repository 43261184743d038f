"""The config groups every ``configs/*.py`` shares: the run and model, ``train``, ``selection``.

Their fields and defaults are not written here: they are read from the typed objects they become
(:class:`fedmix_jax.config.RoundConfig`, :class:`fedmix_jax.job_settings.JobSettings` and
:class:`fedmix_jax.pseudo_labels.SelectionConfig`,
whose docstrings say what each field means), so every default is written once. Each config file
calls these with its own numbers (``configs/*.py`` are loaded by path and cannot import each
other).
"""

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
    """The top of every config: the run (seed, strategy, rounds, evaluation and checkpoint
    cadence, compilation cache) and ``config.model``; each config file adds ``data``, ``train``
    and ``selection``."""
    config = ml_collections.ConfigDict()
    config.seed = 0                  # model init and round keys (the data has its own seed)
    config.strategy = "fedmix"       # a name of fedmix_jax.strategies.STRATEGY_NAMES
    config.num_rounds = num_rounds   # communication rounds (one local epoch each)
    config.eval_every = 1            # validate/test global model 1 every k rounds (and the last)
    # also test each client's local (pre-aggregation) model 1 on its own test split: local_test_*
    # keys in metrics.jsonl / summary.json (what the reference's RETOUCH tables report)
    config.eval_local_models = _JOB.eval_local_models
    config.checkpoint_every = checkpoint_every  # save a checkpoint every k rounds (and the last)
    config.keep_checkpoints = keep_checkpoints  # how many recent checkpoints to keep
    # JAX persistent compilation cache: "default" ($FEDMIX_JAX_CACHE_DIR or
    # ~/.cache/fedmix_jax/jax_cache), a directory, or "off"
    config.compilation_cache = _JOB.compilation_cache
    # Pseudo-label quality against the true masks in metrics.jsonl (pl_* keys, every evaluation
    # round; fedmix_jax.diagnostics). Needs true masks for the weak samples: on for the
    # synthetic configs, off for real data unless every sample has a mask. Never sent by a site.
    config.diagnostics = _JOB.diagnostics
    config.model = ml_collections.ConfigDict()
    config.model.width = width       # channels of the first U-Net block (paper: 64)
    config.model.depth = depth       # Down/Up blocks (paper: 4)
    config.model.dtype = "float32"   # computation dtype: float32 | bfloat16 (params stay f32)
    # Direct weak-label losses of fedmix_plus (fedmix_jax.weak_objective.WeakSupervision: the
    # weight of each term, 0 = off); other strategies ignore them.
    config.weak = ml_collections.ConfigDict(dataclasses.asdict(WeakSupervision()))
    return config


def train_config(batch_size: int, crop, lam: float, beta: float,
                 learning_rate: float = 1e-3, **overrides) -> ml_collections.ConfigDict:
    """``config.train``: local training, Adam, FedMix weighting and the client-axis executor.

    Every field of :class:`~fedmix_jax.config.RoundConfig` but ``strategy`` (``config.strategy``)
    with its default, except the arguments; ``executor`` is ``"auto"``
    (:func:`~fedmix_jax.config.default_executor`), ``crop`` None or (h, w), ``num_devices`` None
    (all devices) or an int.
    """
    train = ml_collections.ConfigDict()
    for field in dataclasses.fields(RoundConfig):
        if field.name != "strategy":
            train[field.name] = field.default
    train.crop = config_dict.placeholder(tuple)
    train.num_devices = config_dict.placeholder(int)
    train.executor = "auto"
    # CPU only: 0 = one JAX device per core, the clients side by side on them (the sharded
    # executor when executor is "auto"); 1 = one device (default). See fedmix_jax.cpu_cores.
    train.cpu_devices = _JOB.cpu_devices
    # FedST / FedRGD: warm-up rounds on the pixel clients; other strategies ignore it. None: half
    # of num_rounds, resolved once when the run starts and recorded in the workdir's config.json,
    # so a resumed run keeps it when num_rounds grows (the paper's configs set it explicitly).
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
    """``config.data``'s device-memory bound (see docs/streaming.md and
    :mod:`fedmix_jax.streaming`): ``device_data_budget_gb`` (GiB; None: no bound, the training
    split always goes to the device) -- a larger training split streams block by block from the
    host or the array_record cache, with the same results; ``stream_block_steps``: local steps
    per streamed block (device memory grows with it times the batch size); ``pack_labels``:
    masks and boxes bit-packed in memory (see :mod:`fedmix_jax.data.federation`); ``compact``:
    no padding on the device where clients run one at a time (:mod:`fedmix_jax.data.compact`)."""
    data.device_data_budget_gb = config_dict.placeholder(float)
    data.stream_block_steps = _JOB.memory.stream_block_steps
    # Masks and boxes bit-packed, 8 pixels per byte (an eighth of uint8), unpacked one site at a
    # time in the round and one chunk at a time in evaluation; bit-identical results.
    data.pack_labels = _JOB.memory.pack_labels
    # On the device, the splits read one client at a time hold only the clients' rows, no
    # padding to the largest client (fedmix_jax.data.compact); bit-identical results.
    data.compact = _JOB.memory.compact
    return data

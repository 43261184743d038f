"""Typed configuration: the ``ml_collections`` config (``configs/*.py``) converted once into
:class:`RoundConfig` (static, hashable: changing a field compiles a new program; every default of
the round written here once) and :class:`HParams` (traced λ, β, learning rate: a λ sweep reuses
the compiled program), plus the model (:func:`build_model`) and the checks before compiling.
Fields: docs/main_job.md ("Configs").
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import struct

from fedmix_jax.data.federation import LEVEL_NAMES, PIXEL
from fedmix_jax.errors import ConfigError
from fedmix_jax.weak_objective import WeakSupervision
from fedmix_jax.models import UNet
from fedmix_jax.pseudo_labels import SelectionConfig
from fedmix_jax.self_training import SELF_TRAINING_MEANS
from fedmix_jax.strategies import Strategy, get_strategy

EXECUTORS = ("vmap", "loop", "map", "sharded")
EMPTY_TARGET_LOSSES = ("dice", "bce")


def default_executor() -> str:
    """The client-axis executor measured fastest on a 2-core CPU and an H100 (docs/speed.md)."""
    return "map"


def _hparam(default: float):
    """A traced hyperparameter's default: no part of the compiled program (equality / hash)."""
    return dataclasses.field(default=default, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """Settings of the round; every field but ``lam``, ``beta``, ``learning_rate`` (the defaults of
    :class:`HParams`) is static. Each field is the ``config.train`` field of the same name
    (docs/main_job.md, "Configs"); ``strategy`` is a :class:`~fedmix_jax.strategies.Strategy`.
    Raises ``ValueError`` for a value out of range."""

    strategy: Strategy = get_strategy("fedmix")
    batch_size: int = 16
    crop: tuple[int, int] | None = None
    hflip: bool = True
    vflip: bool = True
    lam: float = _hparam(10.0)
    beta: float = _hparam(3.0)
    learning_rate: float = _hparam(1e-3)
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    executor: str = "map"
    inference_chunk: int = 16
    num_devices: int | None = None
    empty_target_loss: str = "bce"
    client_group: int = 0
    self_training_mean: str = "pixels"

    def __post_init__(self):
        for name, allowed in (("empty_target_loss", EMPTY_TARGET_LOSSES),
                              ("self_training_mean", SELF_TRAINING_MEANS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose one of {EXECUTORS}")
        for name, low in (("batch_size", 1), ("inference_chunk", 1), ("client_group", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.client_group > 1 and self.executor not in ("vmap", "sharded"):
            raise ValueError(f"client_group={self.client_group} groups clients of the 'vmap' or "
                             f"'sharded' executor; the {self.executor!r} executor runs them one "
                             "at a time (set client_group=0 or choose executor='vmap')")
        if self.num_devices is not None and self.num_devices < 1:
            raise ValueError(f"num_devices must be >= 1 or None, got {self.num_devices}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ValueError(f"crop must be None or (h, w) with h, w >= 1, got {self.crop}")
        _check_finite("weight_decay", self.weight_decay)
        _check_finite("adam_eps", self.adam_eps)
        for name, value, end in (("b1", self.b1, ")"), ("b2", self.b2, ")"),
                                 *((f"selection.{n}", getattr(self.strategy.selection, n), "]")
                                   for n in ("threshold", "agreement", "box_fit"))):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0 and (end == "]" or value < 1.0)):
                raise ValueError(f"{name} must be in [0, 1{end}, got {value}")
        validate_hparams(self.lam, self.beta, self.learning_rate)

    def hparams(self) -> "HParams":
        """This config's traced hyperparameters (validated)."""
        return HParams.create(lam=self.lam, beta=self.beta, learning_rate=self.learning_rate)


def _check_finite(name: str, value: float, positive: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and >= 0 (``positive``: > 0)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0.0, got {value}")


def validate_hparams(lam: float, beta: float, learning_rate: float) -> None:
    """Raise ``ValueError`` unless λ >= 0, β >= 0 and the learning rate > 0, all finite (a NaN λ
    or β would silently turn the FedMix weights uniform)."""
    _check_finite("lam", float(lam))
    _check_finite("beta", float(beta))
    _check_finite("learning_rate", float(learning_rate), positive=True)


@struct.dataclass
class HParams:
    """Hyperparameters traced by the compiled round (float32 scalars []): changing them does not
    recompile. ``lam`` / ``beta``: FedMix weighting; ``learning_rate``: Adam's step size."""

    lam: jax.Array
    beta: jax.Array
    learning_rate: jax.Array

    @classmethod
    def create(cls, lam: float = 10.0, beta: float = 3.0, learning_rate: float = 1e-3) -> "HParams":
        """Validated hyperparameters (:func:`validate_hparams`) as float32 scalars."""
        validate_hparams(lam, beta, learning_rate)
        f32 = lambda v: jnp.asarray(float(v), jnp.float32)  # noqa: E731
        return cls(lam=f32(lam), beta=f32(beta), learning_rate=f32(learning_rate))


def _from_group(cls, group):
    """Dataclass ``cls`` from the fields of a config group (missing fields keep their default)."""
    return cls(**{f.name: type(f.default)(group[f.name])
                  for f in dataclasses.fields(cls) if f.name in group})


def build_round_config(config) -> RoundConfig:
    """The :class:`RoundConfig` of ``config`` (strategy, selection, weak, ``config.train``; a
    missing field keeps its default, ``executor='auto'`` is :func:`default_executor`); an invalid
    value raises :class:`~fedmix_jax.errors.ConfigError`."""
    tr = config.train
    convert = {"crop": normalize_crop, "num_devices": lambda v: None if v is None else int(v),
               "executor": lambda v: default_executor() if str(v) == "auto" else str(v)}
    try:
        kwargs = {f.name: convert.get(f.name, type(f.default))(tr[f.name])
                  for f in dataclasses.fields(RoundConfig) if f.name != "strategy" and f.name in tr}
        strategy = get_strategy(str(config.strategy), _from_group(SelectionConfig,
                                                                  config.selection))
        # config.weak: read by strategies with direct weak-label losses (fedmix_plus)
        strategy = strategy.with_weak(_from_group(WeakSupervision, config.get("weak", {})))
        if strategy.weak_samples == "self_training":
            warmup = tr.get("warmup_rounds", None)
            warmup = default_warmup_rounds(config.num_rounds) if warmup is None else int(warmup)
            if warmup < 0:
                raise ValueError(f"train.warmup_rounds must be >= 0, got {warmup}")
            strategy = dataclasses.replace(strategy, warmup_rounds=warmup)
        return RoundConfig(strategy=strategy, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid config: {e}") from None


def default_warmup_rounds(num_rounds: int) -> int:
    """FedST / FedRGD's warm-up when ``train.warmup_rounds`` is None: half the rounds."""
    return int(num_rounds) // 2


def resolve_warmup_rounds(config, stored: dict | None = None):
    """``config`` (a copy) with FedST / FedRGD's ``train.warmup_rounds`` fixed, so that it does not
    move when ``num_rounds`` grows on resume: a set value is kept, None becomes the one in
    ``stored`` (the workdir's ``config.json``), else :func:`default_warmup_rounds`. Other
    strategies: ``config`` itself."""
    try:
        strategy = get_strategy(str(config.strategy))
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None
    if strategy.weak_samples != "self_training" or config.train.get("warmup_rounds") is not None:
        return config
    old = ((stored or {}).get("train") or {}).get("warmup_rounds")
    value = int(old) if isinstance(old, int) else default_warmup_rounds(config.num_rounds)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.warmup_rounds = value
    return config


def normalize_crop(crop) -> tuple[int, int] | None:
    """``None`` / ``0`` / ``()`` / ``(None,)`` -> None; ``n`` -> (n, n); ``(h, w)`` -> (h, w)."""
    if crop is None:
        return None
    crop = (crop,) if isinstance(crop, (int, np.integer)) else [x for x in crop if x is not None]
    if not crop or all(int(x) <= 0 for x in crop):
        return None
    if len(crop) > 2:
        raise ConfigError(f"--config.train.crop must be None, n or (h, w), got {tuple(crop)}")
    return int(crop[0]), int(crop[-1])


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config, num_classes: int) -> UNet:
    """The U-Net of ``config.model`` with ``num_classes`` output channels."""
    m = config.model
    dtype = str(m.get("dtype", "float32"))
    if dtype not in _DTYPES:
        raise ConfigError(f"--config.model.dtype={dtype!r}: choose one of {', '.join(_DTYPES)}")
    for name, value in (("model.width", m.width), ("model.depth", m.depth)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--config.{name} must be an integer >= 1, got {value!r}")
    if int(m.depth) > 8:
        raise ConfigError(f"--config.model.depth={m.depth}: at most 8 Down/Up blocks "
                          "(each halves the image)")
    return UNet(width=int(m.width), num_classes=int(num_classes), depth=int(m.depth),
                dtype=_DTYPES[dtype])


def check_can_learn(strategy: Strategy, levels: np.ndarray, valid: np.ndarray) -> list[str]:
    """Refuse a federation on which ``strategy`` cannot learn (``levels`` / ``valid``: the
    training split's [C, N] arrays): :class:`~fedmix_jax.errors.ConfigError` when no sample can
    ever train; returns warnings (strings) for runs that may stay untrained."""
    levels, valid = np.asarray(levels), np.asarray(valid, bool)
    if not valid.any():
        raise ConfigError("the training split has no sample: nothing can train")
    if strategy.weak_samples == "ground_truth" or (valid & (levels == PIXEL)).any():
        return []
    present = sorted({LEVEL_NAMES[int(v)] for v in levels[valid]})
    if strategy.weak_samples in ("unused", "self_training"):
        raise ConfigError(
            f"strategy {strategy.name!r} trains on pixel-labelled samples, but no client has any "
            f"(levels present: {', '.join(present)}): no sample can ever train. Give at least one "
            "client pixel masks (config.data.levels) or choose fedavg_full / fedmix.")
    return [f"no client has pixel masks (levels present: {', '.join(present)}): {strategy.name} "
            "can only learn from weak samples that the untrained initial models' pseudo-labels "
            "get selected; the run stops if round 1 trains nothing."]


NOTHING_TRAINED = ("round 1 trained nothing: no client has pixel masks and no pseudo-label of the "
                   "initial models was selected, so no later round can train either. Give at "
                   "least one client pixel masks (config.data.levels) or loosen the selection "
                   "(--config.selection.*). Nothing of round 1 was written.")


def validate_run(config, federation, round_config: RoundConfig) -> bool:
    """Refuse, before anything is compiled, a job that cannot run (a crop larger than the images,
    :func:`check_can_learn`); True if the run may not learn (the warnings are logged)."""
    h, w = federation.train.images.shape[2:4]
    if round_config.crop is not None and (round_config.crop[0] > h or round_config.crop[1] > w):
        raise ConfigError(f"--config.train.crop={round_config.crop} is larger than the images "
                          f"({h}x{w}); set a smaller crop or --config.train.crop=None")
    strategy, rounds = round_config.strategy, int(config.num_rounds)
    if strategy.weak_samples == "self_training" and strategy.warmup_rounds >= rounds:
        logging.warning("the warm-up (train.warmup_rounds=%d) covers all %d rounds: only the pixel "
                        "clients train; lower --config.train.warmup_rounds",
                        strategy.warmup_rounds, rounds)
    warnings = check_can_learn(strategy, federation.train.levels, federation.train.valid)
    for message in warnings:
        logging.warning("%s", message)
    return bool(warnings)

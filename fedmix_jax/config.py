"""From an ``ml_collections`` config (``configs/*.py``) to the typed objects of a run.

``configs/*.py`` stay ``ml_collections.ConfigDict`` (the JAX-ecosystem convention); they are
converted here, once, into frozen dataclasses: :class:`~fedmix_jax.federated.RoundConfig` and
the model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fedmix_jax.errors import ConfigError
from fedmix_jax.federated import RoundConfig, default_executor, get_strategy
from fedmix_jax.models import UNet
from fedmix_jax.pseudo_labels import SelectionConfig


def build_round_config(config) -> RoundConfig:
    """The static :class:`RoundConfig` of ``config`` (strategy, selection, train settings).

    ``train.executor = 'auto'`` resolves to :func:`~fedmix_jax.federated.default_executor`.
    ``train.crop`` may be ``None``, an int (square) or ``(h, w)``.
    """
    sel = config.selection
    selection = SelectionConfig(
        threshold=float(sel.threshold), agreement=float(sel.agreement),
        box_fit=float(sel.box_fit), refine=bool(sel.refine), reject_empty=bool(sel.reject_empty),
        use_image_labels=bool(sel.use_image_labels))
    tr = config.train
    executor = str(tr.get("executor", "auto"))
    if executor == "auto":
        executor = default_executor()
    try:
        return RoundConfig(
            strategy=get_strategy(str(config.strategy), selection),
            batch_size=int(tr.batch_size), crop=normalize_crop(tr.get("crop", None)),
            hflip=bool(tr.hflip), vflip=bool(tr.vflip), lam=float(tr.lam), beta=float(tr.beta),
            learning_rate=float(tr.learning_rate), weight_decay=float(tr.weight_decay),
            b1=float(tr.get("b1", 0.9)), b2=float(tr.get("b2", 0.999)),
            adam_eps=float(tr.get("adam_eps", 1e-8)), executor=executor,
            inference_chunk=int(tr.get("inference_chunk", 16)),
            num_devices=None if tr.get("num_devices", None) is None else int(tr.num_devices))
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None


def normalize_crop(crop) -> tuple[int, int] | None:
    """``None`` / ``0`` / ``()`` / ``(None,)`` -> None; ``n`` -> (n, n); ``(h, w)`` -> (h, w)."""
    if crop is None:
        return None
    if isinstance(crop, (int, np.integer)):
        return None if int(crop) <= 0 else (int(crop), int(crop))
    crop = tuple(x for x in crop if x is not None)
    if not crop or all(int(x) <= 0 for x in crop):
        return None
    if len(crop) == 1:
        return int(crop[0]), int(crop[0])
    if len(crop) != 2:
        raise ConfigError(f"--config.train.crop must be None, n or (h, w), got {crop}")
    return int(crop[0]), int(crop[1])


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config, num_classes: int) -> UNet:
    """The U-Net of ``config.model`` with ``num_classes`` output channels."""
    m = config.model
    dtype = str(m.get("dtype", "float32"))
    if dtype not in _DTYPES:
        raise ConfigError(f"--config.model.dtype={dtype!r}: choose one of {', '.join(_DTYPES)}")
    return UNet(width=int(m.width), num_classes=int(num_classes), depth=int(m.depth),
                dtype=_DTYPES[dtype])

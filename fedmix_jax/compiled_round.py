"""The compiled FedMix round: state initialisation and ``make_round_fn``.

The round's logic lives in :mod:`fedmix_jax.round` and :mod:`fedmix_jax.site`; the executor of
``config.executor`` (:mod:`fedmix_jax.executors`) compiles it, once per (model, config).
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedmix_jax import executors
from fedmix_jax.config import HParams, RoundConfig
from fedmix_jax.data.federation import FederatedSplit
from fedmix_jax.models import UNet, init_unet
from fedmix_jax.round import FedState, RoundMetrics, broadcast
from fedmix_jax.site import ModelPair, init_site_state, make_optimizer


def init_params(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...]):
    """One model's ``params`` for images of ``image_shape`` (H, W, Cin): the U-Net's by
    :func:`fedmix_jax.models.init_unet`, other Flax modules' by ``model.init``."""
    if isinstance(model, UNet):
        return init_unet(key, model, (1,) + tuple(image_shape))
    return jax.jit(model.init)(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]


def init_state(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], num_clients: int,
               config: RoundConfig) -> FedState:
    """Initialise both models from independent keys and every client's Adam state.

    Args:
      model: the Flax segmentation model; key: a PRNG key (typed or raw), split into model 1's,
        model 2's and the round keys; image_shape: one image's (H, W, Cin); num_clients: C.
    """
    k1, k2, k_round = jax.random.split(key, 3)
    pair = ModelPair(init_params(model, k1, image_shape), init_params(model, k2, image_shape))
    site = init_site_state(make_optimizer(config), pair)
    return FedState(global_params=pair, client_params=broadcast(pair, num_clients),
                    opt_state=broadcast(site.opt_state, num_clients),
                    round=jnp.zeros((), jnp.int32), key=k_round)


def make_round_fn(model: nn.Module, config: RoundConfig
                  ) -> Callable[..., tuple[FedState, RoundMetrics]]:
    """``round_fn(state, train, hparams=None) -> (state, metrics)``: one whole round, compiled.

    ``hparams`` (:class:`HParams`: λ, β, learning rate; default ``config.hparams()``) is traced:
    sweeps of them compile once (programs are cached per (model, static config)). The input
    state's buffers are donated. ``round_fn.jitted`` lists the jitted programs, ``round_fn.mesh``
    is the ``sharded`` executor's mesh (else None). ``train``: a :class:`FederatedSplit` kept on
    the device(s) (:func:`fedmix_jax.sharding.shard_clients` on ``round_fn.mesh``) or, except
    under ``sharded``, its compact layout (:func:`fedmix_jax.data.compact.compact_split`).
    """
    compiled = _compiled_round(model, config)
    default = config.hparams()        # scalars made once, not per round

    def round_fn(state: FedState, train: FederatedSplit, hparams: HParams | None = None):
        return compiled(state, train, default if hparams is None else hparams)

    round_fn.jitted = compiled.jitted
    round_fn.mesh = getattr(compiled, "mesh", None)
    return round_fn


@functools.lru_cache(maxsize=32)
def _compiled_round(model: nn.Module, config: RoundConfig):
    return executors.for_config(config).compile_round(model)

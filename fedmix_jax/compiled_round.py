"""The compiled FedMix round: :func:`init_state` and :func:`make_round_fn` (compiled by the executor
of ``config.executor`` once per (model, config); the logic: :mod:`fedmix_jax.round`)."""

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
    """One model's ``params`` for images (H, W, Cin): ``init_unet`` for a U-Net, else ``init``."""
    if isinstance(model, UNet):
        return init_unet(key, model, (1,) + tuple(image_shape))
    return jax.jit(model.init)(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]


def init_state(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], num_clients: int,
               config: RoundConfig) -> FedState:
    """A :class:`FedState`: both models from independent keys of ``key`` (typed or raw), every
    client's Adam state; ``image_shape`` (H, W, Cin)."""
    k1, k2, k_round = jax.random.split(key, 3)
    pair = ModelPair(init_params(model, k1, image_shape), init_params(model, k2, image_shape))
    site = init_site_state(make_optimizer(config), pair)
    return FedState(global_params=pair, client_params=broadcast(pair, num_clients),
                    opt_state=broadcast(site.opt_state, num_clients),
                    round=jnp.zeros((), jnp.int32), key=k_round)


def make_round_fn(model: nn.Module, config: RoundConfig
                  ) -> Callable[..., tuple[FedState, RoundMetrics]]:
    """``round_fn(state, train, hparams=None) -> (state, metrics)``: one round, compiled, the state
    donated; ``hparams`` traced (default ``config.hparams()``). ``train``: a :class:`FederatedSplit`
    or (not ``sharded``) its compact layout. ``round_fn.jitted``: its programs; ``round_fn.mesh``:
    the ``sharded`` mesh, else None."""
    compiled = _compiled_round(model, config)
    default = config.hparams()        # scalars made once, not per round

    def round_fn(state: FedState, train: FederatedSplit, hparams: HParams | None = None):
        return compiled(state, train, default if hparams is None else hparams)

    round_fn.jitted, round_fn.mesh = compiled.jitted, compiled.mesh
    return round_fn


@functools.lru_cache(maxsize=32)
def _compiled_round(model: nn.Module, config: RoundConfig):
    return executors.for_config(config).compile_round(model)

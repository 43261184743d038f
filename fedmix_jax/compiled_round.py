"""The compiled FedMix round: state initialisation and ``make_round_fn``.

The round's logic lives in :mod:`fedmix_jax.round` (broadcast, weights, aggregation) and
:mod:`fedmix_jax.site` (what each client does); the executor of ``config.executor``
(:mod:`fedmix_jax.executors`) maps the site function over the clients and compiles the round,
once per (model, config). The names users import are exported by the package
(``import fedmix_jax as fm``; see docs/architecture.md for where each one lives).
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
from fedmix_jax.round import FedState, RoundMetrics, broadcast
from fedmix_jax.site import ModelPair, init_site_state, make_optimizer


def init_params(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...]):
    """One model's ``params`` for images of ``image_shape`` (H, W, Cin).

    The U-Net uses :func:`fedmix_jax.models.init_unet` (same distributions as ``model.init``,
    compiled in a fraction of the time); other Flax modules use ``model.init``.
    """
    from fedmix_jax.models import UNet, init_unet

    if isinstance(model, UNet):
        return init_unet(key, model, (1,) + tuple(image_shape))
    return jax.jit(model.init)(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]


def init_state(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], num_clients: int,
               config: RoundConfig) -> FedState:
    """Initialise both models from independent keys and every client's Adam state.

    Args:
      model: the Flax segmentation model (e.g. :class:`fedmix_jax.models.UNet`).
      key: PRNG key (``jax.random.key(seed)``; raw ``PRNGKey`` arrays work too); model 1,
        model 2 and the round keys are split from it.
      image_shape: one input image's shape (H, W, Cin).
      num_clients: C.
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

    ``hparams`` (:class:`HParams`: λ, β, learning rate) defaults to ``config.hparams()``; it is
    traced, so several runs of one configuration (seeds, λ or learning-rate sweeps) compile once
    (compiled programs are cached per (model, static config)). The input state's buffers are
    donated: keep using the returned one. ``round_fn.jitted`` lists the jitted programs;
    ``round_fn.mesh`` is the ``sharded`` executor's mesh (else None). Keep ``train`` on the
    device(s) (``jax.device_put`` once, or :func:`fedmix_jax.sharding.shard_clients` on
    ``round_fn.mesh``): host arrays would be copied in every round. ``train`` is a
    :class:`FederatedSplit` or, except under ``sharded``, its compact layout
    (:func:`fedmix_jax.data.compact.compact_split`: no padding on the device, the same results).
    For an unjitted pure round, see :func:`fedmix_jax.round.round_step`.
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

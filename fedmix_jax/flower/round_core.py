"""The round core the Flower backend builds on, gathered in one place.

Nothing of the round is re-implemented: the site function, the strategy's weights and
:func:`fedmix_jax.aggregation.weighted_average` compiled once per process, and the PRNG keys'
conversion to raw ``uint32`` data (what crosses the network). Details: docs/architecture.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax import aggregation
from fedmix_jax.config import HParams, RoundConfig
from fedmix_jax.compiled_round import init_state
from fedmix_jax.flower.array_records import REPORT_FIELDS
from fedmix_jax.site import (ModelPair, SiteReport, SiteState, init_site_state,
                             make_optimizer, site_round)


def key_to_numpy(key) -> np.ndarray:
    """A PRNG key (typed or raw) as its raw ``uint32`` data (what crosses the network)."""
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, np.uint32)


def key_from_numpy(data):
    """The inverse of :func:`key_to_numpy`: a typed threefry key."""
    return jax.random.wrap_key_data(jnp.asarray(np.asarray(data, np.uint32)))


def initial_server_state(model, seed: int, image_shape, config: RoundConfig):
    """``(global ModelPair, key)``: the in-process initialisation (same keys, same params)."""
    state = init_state(model, jax.random.key(int(seed)), tuple(image_shape), 1, config)
    return state.global_params, state.key


def initial_site_state(params: ModelPair, config: RoundConfig) -> SiteState:
    """A site's state before its first round: ``params`` and fresh Adam moments."""
    return init_site_state(make_optimizer(config), params)


def round_index(server_round: int) -> int:
    """The 0-based round index (the in-process ``state.round``) of Flower's 1-based round."""
    return int(server_round) - 1


def _index_array(index) -> jax.Array:
    # int32 [], as the in-process state's round counter: one compiled program for every round.
    return jnp.asarray(int(index), jnp.int32)


@functools.lru_cache(maxsize=8)
def compiled_site_fn(model, config: RoundConfig):
    """``jit(site_round)`` for one (model, static config), cached per process:
    ``fn(global, site, data, key, hparams, round_index)`` (0-based index, traced)."""
    jitted = jax.jit(functools.partial(site_round, model, config))
    return lambda g, s, d, k, h, index: jitted(g, s, d, k, h, _index_array(index))


def site_weights(strategy, reports: dict, participating, hparams: HParams,
                 index: int) -> np.ndarray:
    """[C] float32 weights of ``strategy`` from the sites' scalars in round ``index`` (0-based)."""
    rep = SiteReport(**{k: jnp.asarray(reports[k], jnp.float32 if typ is float else jnp.int32)
                        for k, typ in REPORT_FIELDS.items()})
    return np.asarray(_weights_jit(strategy)(rep, jnp.asarray(participating, bool), hparams,
                                             _index_array(index)), np.float32)


@functools.lru_cache(maxsize=16)
def _weights_jit(strategy):
    return jax.jit(strategy.weights)


_weighted_average_jit = jax.jit(aggregation.weighted_average)


def aggregate(stacked, weights):
    """The weighted average of stacked pytrees (leaves [C, ...]) -> leaves [...]."""
    return _weighted_average_jit(stacked, jnp.asarray(weights, jnp.float32))

"""The round core around the site function: :func:`start_round` -> a backend maps
:func:`~fedmix_jax.site.site_round` over the clients -> :func:`finish_round` (weights,
aggregation); :func:`round_step` composes them, pure and unjitted. Details: docs/architecture.md
("The round").
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from fedmix_jax import aggregation
from fedmix_jax.data.compact import ClientRows, CompactSplit, client_counts, client_window
from fedmix_jax.data.federation import FederatedSplit
from fedmix_jax.site import ModelPair, SiteReport, SiteState, site_round


@struct.dataclass
class FedState:
    """The federated state: ``global_params`` (leaves [...]), each client's ``client_params`` and
    Adam ``opt_state`` (leaves [C, ...]), ``round`` ([] int32, rounds done), ``key`` (typed)."""

    global_params: ModelPair
    client_params: ModelPair
    opt_state: ModelPair
    round: jax.Array
    key: jax.Array


@struct.dataclass
class RoundMetrics:
    """Per-client figures of one round: the sites' reports ([C] each) and the weights [C]."""

    reports: SiteReport
    weights: jax.Array

    @property
    def selection_rate(self) -> jax.Array:
        """Selected fraction of each client's weak samples, [C] (0 where it has none)."""
        return self.reports.num_selected_weak / jnp.maximum(self.reports.num_weak, 1)


# ``backend(site_fn, shared, clients) -> outputs``, mapping ``site_fn`` over the client axis.
Backend = Callable[[Callable[[Any, Any], Any], Any, Any], Any]


def round_keys(key: jax.Array, num_clients: int) -> tuple[jax.Array, jax.Array]:
    """(next state key, [C] client keys): client ``c`` gets ``fold_in(k, c)`` (as under Flower)."""
    next_key, round_key = jax.random.split(key)
    client_keys = jax.vmap(lambda c: jax.random.fold_in(round_key, c))(jnp.arange(num_clients))
    return next_key, client_keys


def client_rows(data: FederatedSplit | CompactSplit) -> tuple:
    """``(rows, pool)``: a padded split is its own ``rows`` ([C, N, ...]), ``pool`` None; a
    compact one is the ``pool`` every client reads, ``rows`` its :class:`ClientRows` ([C])."""
    if isinstance(data, CompactSplit):
        return ClientRows(offsets=data.offsets, lengths=data.lengths), data
    return data, None


def client_data(pool, rows):
    """One client's data, leaves [N, ...]: ``rows`` itself, or its window of a compact ``pool``."""
    return rows if pool is None else client_window(pool, rows.offsets, rows.lengths)


def start_round(state: FedState, data: FederatedSplit | CompactSplit):
    """``((global_params, round, pool), (sites, rows, client_keys), next_key)``: the site
    function's shared and per-client args (:func:`client_rows`)."""
    next_key, client_keys = round_keys(state.key, data.num_clients)
    sites = SiteState(params=state.client_params, opt_state=state.opt_state)
    rows, pool = client_rows(data)
    return (state.global_params, state.round, pool), (sites, rows, client_keys), next_key


def participating(data: FederatedSplit | CompactSplit) -> jax.Array:
    """[C] bool: the clients with at least one valid sample."""
    if isinstance(data, CompactSplit):
        return client_counts(data) > 0
    return jnp.any(data.valid, axis=1)


def finish_round(strategy, state: FedState, data: FederatedSplit, sites: SiteState,
                 reports: SiteReport, next_key: jax.Array, hparams
                 ) -> tuple[FedState, RoundMetrics]:
    """After the clients: the strategy's weights from the reports, aggregation of both models."""
    weights = strategy.weights(reports, participating(data), hparams, state.round)
    global_params = state.global_params
    if strategy.aggregates:     # a model that does not train (model 2) stays as it is
        n = 2 if strategy.trains_model2 else 1
        global_params = ModelPair(*(aggregation.weighted_average(p, weights)
                                    for p in tuple(sites.params)[:n]), *tuple(global_params)[n:])
    new_state = FedState(global_params=global_params, client_params=sites.params,
                         opt_state=sites.opt_state, round=state.round + 1, key=next_key)
    return new_state, RoundMetrics(reports=reports, weights=weights)


@functools.lru_cache(maxsize=64)
def site_fn_for(model, config) -> Callable[[Any, Any], tuple[SiteState, SiteReport]]:
    """``site_fn((global_params, round_index, hparams, pool), (site, rows, key))`` for backends."""

    def site_fn(shared, client):
        global_params, round_index, hparams, pool = shared
        site, rows, key = client
        return site_round(model, config, global_params, site, client_data(pool, rows), key,
                          hparams, round_index)

    return site_fn


def round_step(state: FedState, data: FederatedSplit, hparams, *, model, config,
               backend: Backend | None = None) -> tuple[FedState, RoundMetrics]:
    """One whole round, pure and unjitted. ``data``: a :class:`FederatedSplit` (leaves
    [C, N, ...]) or its ``CompactSplit`` (not ``sharded``); ``hparams``: traced; ``backend``:
    default :func:`fedmix_jax.client_backends.map_clients`."""
    if backend is None:
        from fedmix_jax.client_backends import map_clients as backend
    (global_params, round_index, pool), clients, next_key = start_round(state, data)
    sites, reports = backend(site_fn_for(model, config),
                             (global_params, round_index, hparams, pool), clients)
    return finish_round(config.strategy, state, data, sites, reports, next_key, hparams)


def broadcast(tree, num_clients: int):
    """Stack ``num_clients`` copies of every leaf: [...] -> [C, ...]."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + x.shape), tree)

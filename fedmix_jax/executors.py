"""Executors of the client axis, what ``config.train.executor`` names (``map``, ``loop``, ``vmap``,
``sharded``): each owns its backend, compiled round, placement, compact-layout choice and
out-of-memory advice; :func:`for_config` picks one. Details: docs/architecture.md.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

from fedmix_jax import client_backends
from fedmix_jax.data.compact import compact_fields
from fedmix_jax.data.federation import FederatedSplit
from fedmix_jax.round import finish_round, round_step, site_fn_for, start_round
from fedmix_jax.sharding import client_mesh, replicated_sharding, shard_clients


def padded_fields(fields: dict, put: Callable) -> FederatedSplit:
    """A padded split from ``fields`` (``{field: array}``, consumed) through ``put``."""
    return FederatedSplit(**{name: put(fields.pop(name)) for name in list(fields)})


class Executor:
    """The ``map`` executor (clients under ``lax.map``), and every executor's defaults."""

    name = "map"

    def __init__(self, round_config):
        self.round_config = round_config
        self.client_group = int(getattr(round_config, "client_group", 0) or 0)

    def backend(self) -> Callable:
        """The in-program backend: ``backend(site_fn, shared, clients) -> outputs``."""
        return client_backends.map_clients

    def compile_round(self, model) -> Callable:
        """``round(state, train, hparams) -> (state, metrics)``, the state donated; with
        ``.jitted`` (its programs) and ``.mesh`` (or None)."""
        step = functools.partial(round_step, model=model, config=self.round_config,
                                 backend=self.backend())
        donating = jax.jit(step, donate_argnums=(0,))
        donating.jitted, donating.mesh = (donating,), None
        return donating

    def place_state(self, state, round_fn):
        """A fresh or restored ``FedState`` where the round wants it (here: as it is)."""
        return state

    def reads_clients_in_turn(self, num_clients: int) -> bool:
        """Whether the round reads the split one client (or group) at a time: compact pays."""
        return True

    def place_train(self, fields: dict, round_fn, compact: bool, put: Callable):
        """The training split from ``fields`` (``{field: host array}``, consumed) through
        ``put(x)`` or ``put(x, transfer)``; compact where :meth:`reads_clients_in_turn`."""
        in_turn = compact and self.reads_clients_in_turn(int(fields["valid"].shape[0]))
        return (compact_fields if in_turn else padded_fields)(fields, put)

    def eval_params(self, params):
        """The params to evaluate, on the device that holds the held-out splits."""
        return params

    def oom_hint(self) -> str:
        """What else to try when a round does not fit."""
        return ""


class LoopExecutor(Executor):
    """``loop``: jitted start and finish around :class:`~fedmix_jax.client_backends.LoopClients`."""

    name = "loop"

    def compile_round(self, model) -> Callable:
        site_fn = site_fn_for(model, self.round_config)
        loop = client_backends.LoopClients(donate=True)
        start = jax.jit(start_round)
        finish = jax.jit(functools.partial(finish_round, self.round_config.strategy))

        def round_loop(state, train, hparams):
            (global_params, round_index, pool), clients, next_key = start(state, train)
            sites, reports = loop(site_fn, (global_params, round_index, hparams, pool), clients)
            # The client buffers were donated: finish reads the global pair and round only.
            rest = state.replace(client_params=None, opt_state=None)
            return finish(rest, train, sites, reports, next_key, hparams)

        round_loop.jitted, round_loop.mesh = (start, loop.program(site_fn), finish), None
        return round_loop


class VmapExecutor(Executor):
    """``vmap``: every client vectorised, or groups of ``client_group`` one after another."""

    name = "vmap"

    def backend(self) -> Callable:
        if self.client_group:
            return client_backends.grouped_clients(self.client_group)
        return client_backends.vmap_clients

    def reads_clients_in_turn(self, num_clients: int) -> bool:
        # vmap of every client gathers the padded [C, N] split inside the program anyway.
        return 0 < self.client_group < num_clients

    def oom_hint(self) -> str:
        return (", or --config.train.executor=map (the clients one after another instead of all "
                "at once; now vmap) or a smaller --config.train.client_group (clients vectorised "
                f"together; now {self.client_group or 'all'})")


class ShardedExecutor(Executor):
    """``sharded``: per-client leaves split over a 1-D mesh ``"clients"``, the rest replicated;
    params evaluated on the first device, with the held-out splits."""

    name = "sharded"

    def compile_round(self, model) -> Callable:
        mesh = client_mesh(self.round_config.num_devices)
        backend = client_backends.sharded_clients(mesh, group=self.client_group)
        step = functools.partial(round_step, model=model, config=self.round_config, backend=backend)
        donating = jax.jit(step, donate_argnums=(0,))
        plain = jax.jit(step)      # padded clients: the outputs cannot reuse the inputs' buffers

        def sharded_round(state, train, hparams):
            if not isinstance(train, FederatedSplit):
                raise TypeError("the sharded executor splits the client axis of a padded "
                                f"FederatedSplit over the devices; got a {type(train).__name__} "
                                "(a CompactSplit is for clients that run on one device: pass "
                                "its .padded())")
            fn = donating if train.valid.shape[0] % mesh.size == 0 else plain
            return fn(state, train, hparams)

        sharded_round.jitted, sharded_round.mesh = (donating, plain), mesh
        return sharded_round

    def place_state(self, state, round_fn):
        rep = replicated_sharding(round_fn.mesh)
        return state.replace(
            global_params=jax.device_put(state.global_params, rep),
            client_params=shard_clients(state.client_params, round_fn.mesh),
            opt_state=shard_clients(state.opt_state, round_fn.mesh),
            round=jax.device_put(state.round, rep), key=jax.device_put(state.key, rep))

    def reads_clients_in_turn(self, num_clients: int) -> bool:
        return False            # its C axis is split over the devices

    def place_train(self, fields: dict, round_fn, compact: bool, put: Callable):
        return padded_fields(fields, lambda x: put(x, lambda y: shard_clients(y, round_fn.mesh)))

    def eval_params(self, params):
        return jax.device_put(params, jax.devices()[0])

    def oom_hint(self) -> str:
        return (", or --config.train.executor=map (the clients one after another instead of all "
                "at once; now sharded)")


_KINDS = {kind.name: kind for kind in (Executor, LoopExecutor, VmapExecutor, ShardedExecutor)}


def for_config(round_config) -> Executor:
    """The executor ``round_config.executor`` names (a name :class:`RoundConfig` checked)."""
    return _KINDS[str(round_config.executor)](round_config)


__all__ = ["Executor", "LoopExecutor", "ShardedExecutor", "VmapExecutor", "for_config"]

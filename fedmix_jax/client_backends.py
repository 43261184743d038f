"""Backends of the client axis: ``backend(site_fn, shared, clients) -> outputs`` runs
``site_fn(shared, client)`` on each client's slice of ``clients`` (leaves [C, ...]) and stacks the
outputs over C. A count a group or the devices do not divide is padded with non-participating
clients, sliced off. Details: docs/architecture.md ("The round"), docs/speed.md.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fedmix_jax import sharding


def vmap_clients(site_fn: Callable, shared: Any, clients: Any) -> Any:
    """Every client at once: ``jax.vmap`` over the client axis."""
    return jax.vmap(site_fn, in_axes=(None, 0))(shared, clients)


def map_clients(site_fn: Callable, shared: Any, clients: Any) -> Any:
    """One client after another: ``lax.map`` over the client axis (one program)."""
    return jax.lax.map(lambda client: site_fn(shared, client), clients)


def _pad_client_axis(clients: Any, padded: int) -> Any:
    """``(sites, data, keys)`` padded to ``padded`` clients: last site and key copied, no data."""
    if padded == jax.tree.leaves(clients)[0].shape[0]:
        return clients
    sites, data, keys = clients
    sites, keys = sharding.pad_clients((sites, keys), padded, mode="edge")
    return sites, sharding.pad_clients(data, padded), keys


def grouped_clients(group: int) -> Callable:
    """A backend: ``vmap`` within groups of ``group`` clients, ``lax.map`` over the groups."""
    if group < 1:
        raise ValueError(f"a client group needs >= 1 client, got {group}")

    def backend(site_fn: Callable, shared: Any, clients: Any) -> Any:
        num_clients = jax.tree.leaves(clients)[0].shape[0]
        g = min(group, num_clients)
        if g == 1:
            return map_clients(site_fn, shared, clients)
        if g == num_clients:
            return vmap_clients(site_fn, shared, clients)
        padded = -(-num_clients // g) * g
        grouped = jax.tree.map(lambda x: x.reshape((padded // g, g) + x.shape[1:]),
                               _pad_client_axis(clients, padded))
        out = jax.lax.map(lambda block: vmap_clients(site_fn, shared, block), grouped)
        return jax.tree.map(lambda x: x.reshape((padded,) + x.shape[2:])[:num_clients], out)

    return backend


def _take(tree, c):
    return jax.tree.map(lambda x: x[c], tree)


class LoopClients:
    """A Python loop of one jitted per-client program, writing client ``c``'s results at ``c``
    of the stacked outputs (the site states in place when ``donate``)."""

    def __init__(self, donate: bool = False):
        self.donate = donate
        self._indices: dict[int, list[jax.Array]] = {}
        self._programs: dict[Callable, Any] = {}
        self._report_shapes: dict[Callable, Any] = {}

    def program(self, site_fn: Callable):
        """The jitted per-client update of ``site_fn`` (one compilation per site function)."""
        if site_fn not in self._programs:
            def update_one(sites, reports, c, shared, rest):
                client = (_take(sites, c),) + _take(rest, c)
                site, report = site_fn(shared, client)
                return jax.tree.map(lambda x, y: x.at[c].set(y), (sites, reports), (site, report))

            self._programs[site_fn] = jax.jit(update_one,
                                              donate_argnums=(0, 1) if self.donate else (1,))
        return self._programs[site_fn]

    def __call__(self, site_fn: Callable, shared: Any, clients: Any) -> Any:
        sites, rest = clients[0], tuple(clients[1:])
        num_clients = jax.tree.leaves(sites)[0].shape[0]
        update = self.program(site_fn)
        if site_fn not in self._report_shapes:     # traced once, not every round
            self._report_shapes[site_fn] = jax.eval_shape(site_fn, shared, _take(clients, 0))[1]
        reports = jax.tree.map(lambda s: jnp.zeros((num_clients,) + s.shape, s.dtype),
                               self._report_shapes[site_fn])
        if not self.donate:
            sites = jax.tree.map(jnp.copy, sites)
        if num_clients not in self._indices:     # client indices as device scalars, made once
            self._indices[num_clients] = [jnp.asarray(c, jnp.int32) for c in range(num_clients)]
        for c in self._indices[num_clients]:
            sites, reports = update(sites, reports, c, shared, rest)
        return sites, reports


def sharded_clients(mesh: jax.sharding.Mesh, group: int = 1) -> Callable:
    """A backend splitting the clients over ``mesh``; each device maps its block (``group`` 1)
    or runs it in vectorised groups (:func:`grouped_clients`)."""
    axis = sharding.CLIENT_AXIS
    spec = jax.sharding.PartitionSpec
    on_device = map_clients if group <= 1 else grouped_clients(group)

    def backend(site_fn: Callable, shared: Any, clients: Any) -> Any:
        num_clients = jax.tree.leaves(clients)[0].shape[0]
        padded = sharding.padded_count(num_clients, mesh.size)
        # check_vma=False: the skip branches of the round's ``lax.cond``s return constants.
        out = jax.shard_map(functools.partial(on_device, site_fn), mesh=mesh,
                            in_specs=(spec(), spec(axis)), out_specs=spec(axis),
                            check_vma=False)(shared, _pad_client_axis(clients, padded))
        if padded > num_clients:
            out = jax.tree.map(lambda x: x[:num_clients], out)
        return out

    return backend

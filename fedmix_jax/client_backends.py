"""Backends of the client axis: how the site function is mapped over the clients.

The executor objects that choose and compile them are :mod:`fedmix_jax.executors`.

A backend is ``backend(site_fn, shared, clients) -> outputs``: ``site_fn(shared, client)`` runs one
client (``client`` = that client's slice of every leaf of ``clients``, whose leaves carry a
leading axis C); the outputs are stacked back over C. Nothing else of the round lives here
(:mod:`fedmix_jax.round` does broadcast, weights and aggregation once for every backend). All
give the same numbers to float tolerance:

* :func:`vmap_clients` — clients vectorised in one program (memory grows with the clients: at the
  reference size it does not fit an 80 GB GPU for 4 clients; on CPU XLA turns a vmapped
  convolution over different weights into a slow grouped convolution);
* :func:`map_clients` — clients one after another under ``lax.map`` in one program (the memory of
  one client; the default, see :func:`fedmix_jax.config.default_executor`);
* :class:`LoopClients` — a Python loop over one jitted per-client program that writes each
  client's result into the stacked outputs in place;
* :func:`grouped_clients` — clients in groups of G: each group vectorised (``vmap``), the
  groups one after another (``lax.map``). The memory of G clients, the vectorisation of G: the
  middle ground to choose by measurement where ``vmap`` of all clients does not fit a device
  (``RoundConfig.client_group`` with the ``vmap`` executor);
* :func:`sharded_clients` — the client axis split over the devices of a 1-D mesh ``"clients"``
  (``shard_map``; each device maps its block of clients one after another, or in groups of G);
  a client count the device count does not divide is padded with non-participating clients (no
  valid sample: no step, weight 0), sliced off the outputs. The aggregation that follows is a
  weighted sum over a sharded axis, which XLA lowers to one cross-device reduction.

Work that changes nothing is skipped where clients run one at a time (``map``, ``loop``,
``sharded``): a masked local step is a ``lax.cond`` branch that passes the state through, and
pseudo-labelling skips chunks of images that need no pseudo-label. Under ``vmap`` both branches of
a ``cond`` run, with the same results. A multi-site deployment (:mod:`fedmix_jax.flower`) is one
more backend: each hospital runs the same site function on its own data.
"""

from __future__ import annotations

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
    """``(sites, data, keys)`` with the client axis padded to ``padded`` by non-participating
    clients: copies of the last site state, data with no valid sample, the last key repeated."""
    num_clients = jax.tree.leaves(clients)[0].shape[0]
    if padded == num_clients:
        return clients
    sites, data, keys = clients
    return (sharding.pad_clients(sites, padded, mode="edge"),
            sharding.pad_clients(data, padded),               # valid = False
            _pad_keys(keys, padded))


def grouped_clients(group: int) -> Callable:
    """A backend running the clients in groups of ``group``: ``vmap`` within a group,
    ``lax.map`` over the groups, in one program.

    ``group >= C`` is :func:`vmap_clients`, ``group == 1`` is :func:`map_clients`. A client count
    that ``group`` does not divide is padded with non-participating clients (no valid sample: no
    step, weight 0) that are sliced off the outputs, as the ``sharded`` backend does. Leaves
    ``[C, ...]`` are viewed as ``[ceil(C / G), G, ...]``.
    """
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


def _put(tree, c, new):
    return jax.tree.map(lambda x, y: x.at[c].set(y), tree, new)


class LoopClients:
    """A Python loop over clients, each a call of one jitted per-client program.

    The program reads client ``c``'s slice, runs the site function and writes the results at
    ``c`` of the stacked outputs. The outputs' first-round buffers are the inputs'
    ``clients[0]`` (the site states) when ``donate`` is True (as in the compiled round, whose
    state is donated); otherwise they are copied first.
    """

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
                new_site, report = site_fn(shared, client)
                return _put(sites, c, new_site), _put(reports, c, report)

            self._programs[site_fn] = jax.jit(
                update_one, donate_argnums=(0, 1) if self.donate else (1,))
        return self._programs[site_fn]

    def __call__(self, site_fn: Callable, shared: Any, clients: Any) -> Any:
        sites, *rest = clients
        rest = tuple(rest)
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
    """A backend splitting the client axis over ``mesh`` (axis :data:`sharding.CLIENT_AXIS`);
    each device runs its block of clients one after another (``group`` 1) or in vectorised
    groups of ``group`` (:func:`grouped_clients`)."""
    axis = sharding.CLIENT_AXIS
    spec = jax.sharding.PartitionSpec
    num_devices = mesh.size
    on_device = map_clients if group <= 1 else grouped_clients(group)

    def backend(site_fn: Callable, shared: Any, clients: Any) -> Any:
        num_clients = jax.tree.leaves(clients)[0].shape[0]
        padded = sharding.padded_count(num_clients, num_devices)
        clients = _pad_client_axis(clients, padded)

        def per_device(shared, block):
            return on_device(site_fn, shared, block)

        # check_vma=False: the skip branches of the round's ``lax.cond``s return constants (not
        # device-varying values).
        out = jax.shard_map(per_device, mesh=mesh, in_specs=(spec(), spec(axis)),
                            out_specs=spec(axis), check_vma=False)(shared, clients)
        if padded > num_clients:
            out = jax.tree.map(lambda x: x[:num_clients], out)
        return out

    return backend


def _pad_keys(keys: jax.Array, num: int) -> jax.Array:
    extra = num - keys.shape[0]
    return jnp.concatenate([keys, jnp.repeat(keys[-1:], extra, axis=0)], axis=0)

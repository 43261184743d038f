"""The client axis across devices: a 1-D mesh ``"clients"``, padding and placement helpers.

The ``sharded`` executor of :mod:`fedmix_jax.compiled_round` splits every [C, ...] leaf of the state
and of the data over the devices of :func:`client_mesh` (``NamedSharding(mesh, P("clients"))``);
each device trains its block of clients and the aggregation is one cross-device weighted sum.

When the device count ``D`` does not divide ``C``, the round pads the client axis to
:func:`padded_count` with *non-participating* clients: their data is all padding
(``valid = False``), so they have no usable sample, make only masked steps and get weight 0 in
every strategy; the round slices them off its outputs. Keep the data on the devices once
(:func:`shard_clients`) rather than passing host arrays to every round.

On CPU, several devices can be simulated for tests with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before JAX initialises).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["CLIENT_AXIS", "client_mesh", "pad_clients", "shard_clients"]

#: Name of the mesh axis the client axis is split over.
CLIENT_AXIS = "clients"


def client_mesh(num_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh with axis ``"clients"`` over ``devices`` (default: the first ``num_devices``
    of ``jax.devices()``, all of them when None)."""
    if devices is None:
        devices = jax.devices()
        if num_devices is not None:
            if num_devices > len(devices):
                raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices "
                                 f"({jax.default_backend()}) are available")
            devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (CLIENT_AXIS,))


def padded_count(num_clients: int, num_devices: int) -> int:
    """The smallest multiple of ``num_devices`` that is >= ``num_clients``."""
    if num_clients < 1 or num_devices < 1:
        raise ValueError(f"need >= 1 client and device, got {num_clients}, {num_devices}")
    return -(-num_clients // num_devices) * num_devices


def pad_clients(tree: Any, num_clients: int, mode: str = "zeros") -> Any:
    """Pad the leading client axis of every leaf of ``tree`` to ``num_clients``.

    ``mode="zeros"``: added clients are zeros (for a :class:`FederatedSplit` that means
    ``valid = False`` everywhere: clients that do not take part). ``mode="edge"``: copies of the
    last client (for parameters and optimizer states, so padded clients compute on ordinary
    numbers; their results are discarded). Works inside and outside ``jit``.
    """
    if mode not in ("zeros", "edge"):
        raise ValueError(f"mode must be 'zeros' or 'edge', got {mode!r}")

    def pad(x):
        extra = num_clients - x.shape[0]
        if extra < 0:
            raise ValueError(f"cannot pad {x.shape[0]} clients down to {num_clients}")
        if extra == 0:
            return x
        if mode == "edge":
            return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)
        return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))

    return jax.tree.map(pad, tree)


def client_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding`` that splits the leading (client) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding`` that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def shard_clients(tree: Any, mesh: Mesh) -> Any:
    """Place a [C, ...] pytree (a :class:`FederatedSplit`, client params) on the mesh.

    Leaves whose client count the mesh size divides are split over ``"clients"``; the others (a
    client count that needs padding) are replicated, and the round pads them on the devices.
    """
    size = mesh.size

    def place(x):
        x = jnp.asarray(x)
        if x.ndim and x.shape[0] % size == 0:
            return jax.device_put(x, client_sharding(mesh))
        return jax.device_put(x, replicated_sharding(mesh))

    return jax.tree.map(place, tree)

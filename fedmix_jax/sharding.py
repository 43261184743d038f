"""The client axis across devices: a 1-D mesh ``"clients"``, padding and placement helpers for the
``sharded`` executor (a device count that does not divide C: padded, see :func:`padded_count`).
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
    """A 1-D mesh ``"clients"`` over ``devices`` (default: the first ``num_devices``, or all)."""
    if devices is None:
        devices = jax.devices()
        if num_devices is not None and num_devices > len(devices):
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
    """Every leaf's client axis padded to ``num_clients`` with zeros (``"zeros"``: no valid
    sample) or copies of the last client (``"edge"``). Jittable."""
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
    """A [C, ...] pytree on ``mesh``: split where the mesh size divides C, else replicated."""
    def place(x):
        x = jnp.asarray(x)
        split = x.ndim and x.shape[0] % mesh.size == 0
        return jax.device_put(x, client_sharding(mesh) if split else replicated_sharding(mesh))

    return jax.tree.map(place, tree)

"""Where the training job keeps its state and data for each executor of the client axis.

* Single-device executors (``map``, ``loop``, ``vmap``): the state stays uncommitted on the default
  device (as ``init_state`` and the checkpoint restore make it) and each split is put there once.
* ``sharded``: the global pair, the round counter and the key are replicated over the round's
  mesh; the per-client leaves of the state ([C, ...]) and the training split are split over its
  ``"clients"`` axis. Held-out splits stay uncommitted on the first device, and the params are
  evaluated there (:func:`eval_placement`): replicated params would evaluate on every device at
  once, which on CPU devices (``train.cpu_devices``) is the same work twice on the same cores.

Placing the state where the round leaves it means round 2 does not recompile.
"""
from __future__ import annotations

import jax

__all__ = ["place_state", "place_data", "eval_placement"]


def place_state(state, round_fn, executor: str):
    """A fresh or restored :class:`~fedmix_jax.federated.FedState`, placed for ``executor``."""
    if executor != "sharded":
        return state
    from fedmix_jax.sharding import replicated_sharding, shard_clients

    rep = replicated_sharding(round_fn.mesh)
    return state.replace(
        global_params=jax.device_put(state.global_params, rep),
        client_params=shard_clients(state.client_params, round_fn.mesh),
        opt_state=shard_clients(state.opt_state, round_fn.mesh),
        round=jax.device_put(state.round, rep), key=jax.device_put(state.key, rep))


def place_data(federation, round_fn, executor: str):
    """``(train, val, test)`` of ``federation`` on the device(s), once for the whole run."""
    if executor == "sharded":
        from fedmix_jax.sharding import shard_clients

        train = shard_clients(federation.train, round_fn.mesh)
    else:
        train = jax.device_put(federation.train)
    return train, jax.device_put(federation.val), jax.device_put(federation.test)


def eval_placement(params, executor: str):
    """The params to evaluate, on the device that holds the held-out splits."""
    if executor == "sharded":
        return jax.device_put(params, jax.devices()[0])
    return params

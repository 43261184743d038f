"""Where the training job keeps its state and data for each executor of the client axis.

* Single-device executors (``map``, ``loop``, ``vmap``): the state stays uncommitted on the default
  device (as ``init_state`` and the checkpoint restore make it) and each split is put there once.
* ``sharded``: the global pair, the round counter and the key are replicated over the round's
  mesh; the per-client leaves of the state ([C, ...]) and the training split are split over its
  ``"clients"`` axis. Held-out splits stay uncommitted on the first device, and the params are
  evaluated there (:func:`eval_placement`): replicated params would evaluate on every device at
  once, which on CPU devices (``train.cpu_devices``) is the same work twice on the same cores.

Placing the state where the round leaves it means round 2 does not recompile. With
``config.data.compact`` (the default) the splits that are read one client at a time go to the
device without their padding (:mod:`fedmix_jax.data.compact`).
"""
from __future__ import annotations

import jax

__all__ = ["place_state", "place_data", "held_out_on_host", "eval_placement", "compact_applies",
           "train_is_compact"]


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


def compact_applies(executor: str, client_group: int, num_clients: int) -> bool:
    """Whether the round reads the training split one client (or one group) at a time, so that
    its compact layout (:mod:`fedmix_jax.data.compact`) saves device memory: ``map``, ``loop``
    and ``vmap`` in groups smaller than the federation. ``vmap`` of every client would gather
    the padded ``[C, N]`` split inside the program anyway, and ``sharded`` splits its C axis."""
    return executor in ("map", "loop") or (executor == "vmap" and 0 < client_group < num_clients)


def train_is_compact(config, round_config, num_clients: int) -> bool:
    """Whether the job puts its training split on the device compact: ``config.data.compact``
    (default True) and :func:`compact_applies` to ``round_config``'s executor."""
    return bool(config.data.get("compact", True)) and compact_applies(
        round_config.executor, round_config.client_group, num_clients)


def place_data(federation, round_fn, round_config, compact: bool = False):
    """``(train, val, test)`` of ``federation`` on the device(s) for the round of
    ``round_config`` (a :class:`~fedmix_jax.config.RoundConfig`), once for the whole run.

    ``compact``: the held-out splits, and the training split where :func:`compact_applies`,
    go to the device without their padding (:func:`fedmix_jax.data.compact.put_compact`; the
    same results, bit for bit)."""
    from fedmix_jax.data.compact import put_compact

    executor, held_out = round_config.executor, (put_compact if compact else jax.device_put)
    if executor == "sharded":
        from fedmix_jax.sharding import shard_clients

        train = shard_clients(federation.train, round_fn.mesh)
    elif compact and compact_applies(executor, round_config.client_group,
                                     federation.num_clients):
        train = put_compact(federation.train)
    else:
        train = jax.device_put(federation.train)
    return train, held_out(federation.val), held_out(federation.test)


def held_out_on_host(federation, compact: bool = False):
    """``(val, test)`` of a streamed run: they stay on the host and are evaluated in blocks;
    ``compact``: without their padding (host :class:`~fedmix_jax.data.compact.CompactSplit`s,
    so no padded image is moved or evaluated)."""
    from fedmix_jax.data.compact import compact_split

    if not compact:
        return federation.val, federation.test
    return compact_split(federation.val), compact_split(federation.test)


def eval_placement(params, executor: str):
    """The params to evaluate, on the device that holds the held-out splits."""
    if executor == "sharded":
        return jax.device_put(params, jax.devices()[0])
    return params

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

import dataclasses
import gc

import jax
import numpy as np

from fedmix_jax.data.federation import FederatedSplit

__all__ = ["place_state", "place_data", "place_splits", "held_out_on_host", "hand_over",
           "host_arrays", "without_pixels", "first_samples", "eval_placement", "compact_applies",
           "train_is_compact", "PLOT_SAMPLES"]


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


#: Test samples per client the job keeps on the host for its prediction plot.
PLOT_SAMPLES = 4
_SPLITS = ("train", "val", "test")
_PIXEL_FIELDS = ("images", "masks", "boxes")


def host_arrays(federation, splits=_SPLITS) -> dict:
    """``{split: {field: array}}`` of ``federation``'s ``splits``: new dicts of its arrays, for
    :func:`place_splits` / :func:`held_out_on_host` to consume."""
    return {name: {f.name: getattr(getattr(federation, name), f.name)
                   for f in dataclasses.fields(FederatedSplit)} for name in splits}


def without_pixels(federation, splits=_SPLITS):
    """A new :class:`~fedmix_jax.data.federation.Federation` whose ``splits`` hold no pixels:
    ``images``, ``masks`` and ``boxes`` become read-only zero-stride arrays of the same shape and
    dtype (no memory; reading them gives zeros); ``image_labels``, ``levels`` and ``valid``
    (what the summary and the shapes need) are kept. ``federation`` itself is not changed."""
    def nothing(x):
        return np.broadcast_to(np.zeros((), np.asarray(x).dtype), np.shape(x))

    def hollow(split):
        return split.replace(**{f: nothing(getattr(split, f)) for f in _PIXEL_FIELDS})

    return dataclasses.replace(federation, **{name: hollow(getattr(federation, name))
                                              for name in splits})


def first_samples(split, k: int = PLOT_SAMPLES):
    """Copies of the first ``k`` samples of every client of a padded split, ``[C, k, ...]``
    (copies, so that they do not keep the split's arrays alive)."""
    return jax.tree.map(lambda x: np.array(np.asarray(x)[:, :k]), split)


def hand_over(federation, splits=_SPLITS):
    """``(host, hollow, plot)``: the host arrays of ``splits`` (:func:`host_arrays`), the
    federation without them (:func:`without_pixels`) and the test samples of the job's plot.

    The job replaces its federation by ``hollow`` and gives ``host`` to :func:`place_splits`
    (or :func:`held_out_on_host`), which drops each host array as soon as it is on the device:
    when nothing else refers to the loaded federation, the host then holds one field at a time
    on top of what is placed, and nothing once all is (docs/memory.md; on the CPU backend the
    device's arrays are host memory, so this halves what the process holds)."""
    return (host_arrays(federation, splits), without_pixels(federation, splits),
            first_samples(federation.test))


def _put_now(x, put=jax.device_put):
    """``put(x)``, waited for; then a young-generation ``gc`` pass, which runs JAX's callback
    that drops the transfer's deferred hold on the host buffer. Without it the host copy of
    every field placed so far stays alive until the next full collection (HAM10000 RGB at 256
    px on the CPU backend: 6.5 GiB RSS after placing against 3.4 GiB)."""
    y = put(x)
    del x
    jax.block_until_ready(y)
    gc.collect(0)
    return y


def _put_fields(fields: dict, put) -> FederatedSplit:
    """A padded split from its dict of arrays, each through ``put`` and removed from ``fields``
    (consumed) as it goes."""
    return FederatedSplit(**{name: put(fields.pop(name)) for name in list(fields)})


def place_data(federation, round_fn, round_config, compact: bool = False):
    """``(train, val, test)`` of ``federation`` on the device(s) for the round of
    ``round_config`` (a :class:`~fedmix_jax.config.RoundConfig`), once for the whole run;
    ``federation`` is not changed (:func:`place_splits` of its :func:`host_arrays`)."""
    return place_splits(host_arrays(federation), round_fn, round_config, compact)


def place_splits(host: dict, round_fn, round_config, compact: bool = False):
    """``(train, val, test)`` on the device(s) from ``host`` (:func:`host_arrays`), which is
    consumed: each array leaves it as it is put.

    ``compact``: the held-out splits, and the training split where :func:`compact_applies`,
    go to the device without their padding (:func:`fedmix_jax.data.compact.compact_fields`; the
    same results, bit for bit)."""
    from fedmix_jax.data.compact import compact_fields

    executor = round_config.executor
    num_clients = int(np.shape(host["train"]["valid"])[0])
    if executor == "sharded":
        from fedmix_jax.sharding import shard_clients

        train = _put_fields(host.pop("train"),
                            lambda x: _put_now(x, lambda y: shard_clients(y, round_fn.mesh)))
    elif compact and compact_applies(executor, round_config.client_group, num_clients):
        train = compact_fields(host.pop("train"), _put_now)
    else:
        train = _put_fields(host.pop("train"), _put_now)
    held_out = compact_fields if compact else _put_fields
    return train, held_out(host.pop("val"), _put_now), held_out(host.pop("test"), _put_now)


def held_out_on_host(host: dict, compact: bool = False):
    """``(val, test)`` of a streamed run from ``host`` (:func:`host_arrays` of the two splits,
    consumed): they stay on the host and are evaluated in blocks; ``compact``: without their
    padding (host :class:`~fedmix_jax.data.compact.CompactSplit`s, so no padded image is moved
    or evaluated)."""
    from fedmix_jax.data.compact import compact_fields

    put = compact_fields if compact else _put_fields
    return (put(host.pop("val"), lambda x: x), put(host.pop("test"), lambda x: x))


def eval_placement(params, executor: str):
    """The params to evaluate, on the device that holds the held-out splits."""
    if executor == "sharded":
        return jax.device_put(params, jax.devices()[0])
    return params

"""How the training job hands its loaded data over to the device(s), once per run.

Where the state and the training split go depends on the executor
(:mod:`fedmix_jax.executors`: single-device executors keep everything uncommitted on the default
device; ``sharded`` splits the client axis over its mesh); this module moves the host arrays:
each is dropped as soon as it is placed. Held-out splits go to the (first) device. With
``config.data.compact`` (the default) the splits that are read one client at a time go to the
device without their padding (:mod:`fedmix_jax.data.compact`).
"""
from __future__ import annotations

import dataclasses
import gc

import jax
import numpy as np

from fedmix_jax import executors
from fedmix_jax.data.compact import compact_fields
from fedmix_jax.data.federation import FederatedSplit


def train_is_compact(compact: bool, round_config, num_clients: int) -> bool:
    """Whether the job puts its training split on the device compact: ``compact``
    (``config.data.compact``) and the executor reads the split one client at a time
    (:meth:`fedmix_jax.executors.Executor.reads_clients_in_turn`)."""
    return compact and executors.for_config(round_config).reads_clients_in_turn(num_clients)


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

    def pixel_free(split):
        return split.replace(**{f: nothing(getattr(split, f)) for f in _PIXEL_FIELDS})

    return dataclasses.replace(federation, **{name: pixel_free(getattr(federation, name))
                                              for name in splits})


def take_host_arrays(federation, splits=_SPLITS):
    """``(host, pixel_free, plot)``: the host arrays of ``splits`` (:func:`host_arrays`), the
    federation without them (:func:`without_pixels`) and the plot's test samples [C, k, ...].

    The job replaces its federation by ``pixel_free`` and gives ``host`` to :func:`place_splits`
    (or :func:`held_out_on_host`), which drops each host array as soon as it is on the device
    (docs/memory.md)."""
    # The plot's samples are copies, so that they do not keep the split's arrays alive.
    plot = jax.tree.map(lambda x: np.array(np.asarray(x)[:, :PLOT_SAMPLES]), federation.test)
    return host_arrays(federation, splits), without_pixels(federation, splits), plot


def _put_now(x, put=jax.device_put):
    """``put(x)``, waited for; then a young-generation ``gc`` pass, which runs JAX's callback
    that drops the transfer's hold on the host buffer (else kept until a full collection)."""
    y = put(x)
    del x
    jax.block_until_ready(y)
    gc.collect(0)
    return y


def place_data(federation, round_fn, round_config, compact: bool = False):
    """``(train, val, test)`` of ``federation`` on the device(s) for the round of
    ``round_config`` (a :class:`~fedmix_jax.config.RoundConfig`), once for the whole run;
    ``federation`` is not changed (:func:`place_splits` of its :func:`host_arrays`)."""
    return place_splits(host_arrays(federation), round_fn, round_config, compact)


def place_splits(host: dict, round_fn, round_config, compact: bool = False):
    """``(train, val, test)`` on the device(s) from ``host`` (:func:`host_arrays`), which is
    consumed: each array leaves it as it is put.

    ``compact``: the held-out splits, and the training split where :func:`train_is_compact`,
    go to the device without their padding (:func:`fedmix_jax.data.compact.compact_fields`; the
    same results, bit for bit)."""
    train = executors.for_config(round_config).place_train(host.pop("train"), round_fn,
                                                           compact, _put_now)
    held_out = compact_fields if compact else executors.padded_fields
    return train, held_out(host.pop("val"), _put_now), held_out(host.pop("test"), _put_now)


def held_out_on_host(host: dict, compact: bool = False):
    """``(val, test)`` of a streamed run from ``host`` (:func:`host_arrays` of the two splits,
    consumed): they stay on the host and are evaluated in blocks; ``compact``: without their
    padding (host :class:`~fedmix_jax.data.compact.CompactSplit`s, so no padded image is moved
    or evaluated)."""
    put = compact_fields if compact else executors.padded_fields
    return (put(host.pop("val"), lambda x: x), put(host.pop("test"), lambda x: x))

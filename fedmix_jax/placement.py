"""How the job moves its loaded host arrays to the device(s), once per run, each dropped as soon
as it is placed: the training split where its executor wants it, held-out splits on the (first)
device, without padding with ``config.data.compact``. Details: docs/memory.md.
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
    """Whether the training split goes compact: ``compact`` and its executor reads it in turn."""
    return compact and executors.for_config(round_config).reads_clients_in_turn(num_clients)


#: Test samples per client the job keeps on the host for its prediction plot.
PLOT_SAMPLES = 4
_SPLITS = ("train", "val", "test")
_PIXEL_FIELDS = ("images", "masks", "boxes")


def host_arrays(federation, splits=_SPLITS) -> dict:
    """``{split: {field: array}}`` of ``federation``'s ``splits`` (new dicts, to be consumed)."""
    return {name: {f.name: getattr(getattr(federation, name), f.name)
                   for f in dataclasses.fields(FederatedSplit)} for name in splits}


def take_host_arrays(federation, splits=_SPLITS):
    """``(host, pixel_free, plot)``: :func:`host_arrays`; a new federation whose ``splits``'
    images, masks and boxes are zero-stride zeros of the same shape and dtype (no memory), the
    other fields kept; copies of the plot's test samples [C, k, ...]."""
    def nothing(x):
        return np.broadcast_to(np.zeros((), np.asarray(x).dtype), np.shape(x))

    def pixel_free(split):
        return split.replace(**{f: nothing(getattr(split, f)) for f in _PIXEL_FIELDS})

    plot = jax.tree.map(lambda x: np.array(np.asarray(x)[:, :PLOT_SAMPLES]), federation.test)
    free = {name: pixel_free(getattr(federation, name)) for name in splits}
    return host_arrays(federation, splits), dataclasses.replace(federation, **free), plot


def _put_now(x, put=jax.device_put):
    """``put(x)``, waited for; a young ``gc`` pass then frees the host buffer's last hold."""
    y = put(x)
    del x
    jax.block_until_ready(y)
    gc.collect(0)
    return y


def place_data(federation, round_fn, round_config, compact: bool = False):
    """``(train, val, test)`` of ``federation`` (unchanged) on the device(s), for the run."""
    return place_splits(host_arrays(federation), round_fn, round_config, compact)


def place_splits(host: dict, round_fn, round_config, compact: bool = False):
    """``(train, val, test)`` on the device(s) from ``host`` (consumed); ``compact``: held-out
    splits, and the training split where :func:`train_is_compact`, without their padding."""
    train = executors.for_config(round_config).place_train(host.pop("train"), round_fn,
                                                           compact, _put_now)
    held_out = compact_fields if compact else executors.padded_fields
    return train, held_out(host.pop("val"), _put_now), held_out(host.pop("test"), _put_now)


def held_out_on_host(host: dict, compact: bool = False):
    """``(val, test)`` of a streamed run from ``host`` (consumed), kept on the host; ``compact``:
    as host ``CompactSplit``s."""
    put = compact_fields if compact else executors.padded_fields
    return (put(host.pop("val"), lambda x: x), put(host.pop("test"), lambda x: x))

"""Where a streamed training split's rows come from, and whether to stream at all.

:class:`ArraySource` (host arrays) and :class:`ArrayRecordSource` (the array_record cache) read
one client's rows at a time; :func:`choose_mode` decides from ``device_data_budget_gb`` whether
the job streams (:mod:`fedmix_jax.streaming`). Details: docs/streaming.md.
"""

from __future__ import annotations

import jax
import numpy as np

from fedmix_jax.data.compact import client_lengths
from fedmix_jax.data.federation import (Federation, FederatedSplit, SplitSizes,
                                        pack_federation_labels, stack_clients)

FIELDS = ("images", "masks", "boxes", "image_labels", "levels", "valid")
GIB = 1024 ** 3


class SplitSource(SplitSizes):
    """Random access to one training split, client by client; quacks like a FederatedSplit:
    ``levels`` [C, N] int32, ``valid`` [C, N] bool, ``image_labels`` [C, N, K] (NumPy), and
    ``images`` / ``masks`` / ``boxes`` as :class:`jax.ShapeDtypeStruct` [C, N, ...]."""

    levels: np.ndarray
    valid: np.ndarray
    image_labels: np.ndarray
    images: jax.ShapeDtypeStruct
    masks: jax.ShapeDtypeStruct
    boxes: jax.ShapeDtypeStruct

    @property
    def nbytes(self) -> int:
        """Bytes of the split as in-memory arrays."""
        return split_bytes(self)

    def read(self, c: int, rows: np.ndarray, fields=FIELDS) -> FederatedSplit:
        """Rows ``rows`` [R] of client ``c``: a FederatedSplit of [R, ...] NumPy leaves (None if
        not in ``fields``); rows past the client's samples are zeros with ``valid`` False."""
        raise NotImplementedError

    def materialize(self) -> FederatedSplit:
        """The whole split as in-memory arrays (the in-memory round's input)."""
        rows = [self.read(c, np.arange(self.max_samples)) for c in range(self.num_clients)]
        return jax.tree.map(lambda *xs: np.stack(xs), *rows)


def _nbytes(x) -> int:
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize


class ArraySource(SplitSource):
    """A split held in host memory (a :class:`FederatedSplit` [C, N, ...]): rows by indexing."""

    def __init__(self, split: FederatedSplit):
        self.split = jax.tree.map(np.asarray, split)
        self.levels, self.valid = self.split.levels, self.split.valid.astype(bool)
        self.image_labels = self.split.image_labels
        self.images, self.masks, self.boxes = (jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (
            self.split.images, self.split.masks, self.split.boxes))

    def read(self, c: int, rows: np.ndarray, fields=FIELDS) -> FederatedSplit:
        rows = np.asarray(rows, np.int64)
        inside = rows < self.max_samples
        safe = np.where(inside, rows, 0)
        out = dict.fromkeys(FIELDS)
        for f in fields:
            out[f] = getattr(self.split, f)[c][safe]
            out[f][~inside] = 0
        return FederatedSplit(**out)

    def materialize(self) -> FederatedSplit:
        return self.split


class ArrayRecordSource(SplitSource):
    """One split ("train", "validation" or "test") of a built real dataset (a ``PreparedDataset``),
    read record by record from its array_record shards: the clients (names), their default level
    ints and records per client (the first ``takes[c]``, as the loader's ``take``)."""

    def __init__(self, prepared, split: str, clients: list[str], levels: list[int],
                 takes: list[int]):
        self.prepared, self.split_name = prepared, split
        self.ranges = [prepared.client_range(split, c)[:t] for c, t in zip(clients, takes)]
        self.client_names, self.default_levels = list(clients), list(levels)
        cfg = prepared.config
        s, ch, k = cfg.image_size, cfg.channels, len(prepared.metadata["class_names"])
        n, num = max(max((len(r) for r in self.ranges), default=0), 1), len(clients)
        self.images = jax.ShapeDtypeStruct((num, n, s, s, ch), np.dtype(np.uint8))
        self.masks = self.boxes = jax.ShapeDtypeStruct((num, n, s, s, k), np.dtype(np.uint8))
        # The small per-sample arrays: one pass over the records (their pixels are dropped).
        self.levels, self.valid = np.zeros((num, n), np.int32), np.zeros((num, n), bool)
        self.image_labels = np.zeros((num, n, k), np.float32)
        for c in range(num):
            m = len(self.ranges[c])
            for rows in np.split(np.arange(m), range(256, m, 256)):    # 256 records at a time
                part = self.read(c, rows)
                self.levels[c, rows] = part.levels
                self.image_labels[c, rows] = part.image_labels
            self.valid[c, :m] = True

    def read(self, c: int, rows: np.ndarray, fields=FIELDS) -> FederatedSplit:
        from fedmix_jax.data.real.loader import read_records, store_record

        rows = np.asarray(rows, np.int64)
        out = {f: np.zeros((len(rows),) + getattr(self, f).shape[2:], getattr(self, f).dtype)
               for f in FIELDS}
        rng = self.ranges[c]
        inside = np.flatnonzero(rows < len(rng))
        if inside.size:
            recs = read_records(self.prepared, self.split_name, self.client_names[c],
                                [rng[int(rows[j])] for j in inside])
            out["levels"][inside] = self.default_levels[c]
            out["valid"][inside] = True
            for j, r in zip(inside, recs):
                store_record(out, j, r)
        return FederatedSplit(**out)


def split_bytes(split) -> int:
    """Bytes of a split's arrays (a FederatedSplit or a :class:`SplitSource`)."""
    return sum(_nbytes(getattr(split, f)) for f in FIELDS)


def device_bytes(split, compact: bool = False, pack_labels: bool = False) -> int:
    """Bytes of ``split`` as the in-memory job puts it on the device: padded ``[C, N]`` rows or
    (``compact``) each client's rows up to its last valid one; ``pack_labels``: 8 px per byte."""
    valid = np.asarray(split.valid).astype(bool)
    rows = int(client_lengths(valid).sum()) if compact and valid.size else valid.size
    total = 0
    for f in FIELDS:
        x = getattr(split, f)
        nbytes = _nbytes(x)
        if pack_labels and f in ("masks", "boxes") and x.shape[-2] == split.images.shape[-2]:
            nbytes = nbytes // x.shape[-2] * -(-x.shape[-2] // 8)
        total += nbytes // max(valid.size, 1) * rows
    return total


def choose_mode(train, budget_gb, compact: bool = False, pack_labels: bool = False
                ) -> tuple[bool, str]:
    """``(stream, why)``: stream when :func:`device_bytes` exceeds ``budget_gb`` GiB (None or
    <= 0: always in memory)."""
    size = device_bytes(train, compact, pack_labels)
    what = f"training split {size / GIB:.3g} GiB on the device" + (
        " (without padding)" if compact else "")
    if budget_gb is None or float(budget_gb) <= 0:
        return False, f"{what}, no device_data_budget_gb: in memory"
    budget = float(budget_gb)
    if size > budget * GIB:
        return True, (f"{what} > device_data_budget_gb={budget:g}: "
                      "streamed block by block from the host")
    return False, f"{what} <= device_data_budget_gb={budget:g}: in memory"


def open_streamed_federation(data_cfg, verbose: bool = True):
    """A real dataset as a Federation whose ``train`` is an :class:`ArrayRecordSource` (left in
    the cache) and whose ``val`` / ``test`` are read into memory."""
    from fedmix_jax.data.real.cache import prepare_dataset
    from fedmix_jax.data.real.loader import read_client_split, resolve_clients_levels, take_counts
    from fedmix_jax.data.real.settings import RealDataSettings

    settings = RealDataSettings.from_config(data_cfg)
    prepared = prepare_dataset(settings, verbose=verbose)
    clients, levels = resolve_clients_levels(settings, prepared)
    takes = {c: take_counts(prepared, c, settings.max_per_client) for c in clients}
    train = ArrayRecordSource(prepared, "train", clients, levels,
                              [takes[c]["train"] for c in clients])
    held = {fld: stack_clients([read_client_split(prepared, sp, c, lv, takes[c][sp])
                                for c, lv in zip(clients, levels)])
            for sp, fld in (("validation", "val"), ("test", "test"))}
    return Federation(client_names=list(clients),
                      class_names=list(prepared.metadata["class_names"]), train=train, **held)


def load_run_federation(data_cfg, verbose: bool = True):
    """The job's federation from ``config.data``, in memory except a real training split over
    ``device_data_budget_gb`` (left in the cache); bad data raise ``errors.DataError``."""
    from fedmix_jax.data.sources import REAL, load_federation
    from fedmix_jax.errors import DataError, describe_os_error
    from fedmix_jax.job_settings import MemorySettings

    memory = MemorySettings.from_config(data_cfg)
    budget = memory.device_data_budget_gb
    try:
        if budget is not None and budget > 0 and "name" in data_cfg and str(data_cfg.name) in REAL:
            federation = open_streamed_federation(data_cfg, verbose=verbose)
            # The job's default executor reads clients one at a time: compact on the device.
            if not choose_mode(federation.train, budget, memory.compact, memory.pack_labels)[0]:
                federation.train = federation.train.materialize()
        else:
            federation = load_federation(data_cfg, verbose=verbose)
        return pack_federation_labels(federation) if memory.pack_labels else federation
    except (ValueError, FileNotFoundError) as e:  # incl. DatasetNotFoundError, BadInputError
        raise DataError(str(e)) from e
    except OSError as e:                           # e.g. a full or read-only cache_dir
        raise DataError(f"could not read or build the data (--config.data.cache_dir="
                        f"{data_cfg.get('cache_dir')}): {describe_os_error(e)}") from e


__all__ = ["ArraySource", "ArrayRecordSource", "split_bytes", "device_bytes", "choose_mode",
           "open_streamed_federation"]

"""Read a prepared real dataset (:mod:`.cache`) into a
:class:`~fedmix_jax.data.federation.Federation` (:func:`load_federation_from_config`), or one
client's split unpadded (:func:`read_client_split`).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import ml_collections
import numpy as np

from fedmix_jax.data.federation import (FederatedSplit, Federation, level_from_name,
                                        pack_split_labels)
from fedmix_jax.data.real.builders import BUILDERS
from fedmix_jax.data.real.cache import PreparedDataset, prepare_dataset
from fedmix_jax.data.real.errors import DATA_DIR_FLAG, CacheDamagedError, log
from fedmix_jax.data.real.settings import RealDataSettings

SPLIT_FIELDS = {"train": "train", "validation": "val", "test": "test"}
_RECORD_FIELDS = ("images", "masks", "boxes", "image_labels", "levels")


def default_data_config(name: str = "ham10000", **overrides) -> ml_collections.ConfigDict:
    """A ``data`` ConfigDict with every field :func:`load_federation_from_config` reads (the
    defaults of :class:`~fedmix_jax.data.real.settings.RealDataSettings`)."""
    cfg = ml_collections.ConfigDict(dataclasses.asdict(RealDataSettings(name=name)))
    cfg.update(overrides)
    return cfg


def record_text(v) -> str:
    """A text field of a cached record (bytes from array_record, or str) as str."""
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def resolve_clients_levels(data_cfg, prepared: PreparedDataset) -> tuple[list[str], list[int]]:
    """The clients ``data_cfg.clients`` names (default: all of the cache's) and their levels as
    ints (``data_cfg.levels``: one name, one per client, or the dataset's defaults)."""
    available = prepared.clients
    settings = RealDataSettings.from_config(data_cfg)
    clients = list(settings.clients) or list(available)
    if unknown := [c for c in clients if c not in available]:
        raise ValueError(f"unknown client(s) {unknown} in --config.data.clients; "
                         f"{prepared.name} at {prepared.path} has clients {available}")
    if len(set(clients)) != len(clients):
        raise ValueError(f"--config.data.clients lists a client twice: {clients}")
    levels = settings.levels
    levels = [str(x) for x in ([levels] * len(clients) if isinstance(levels, str) else levels)]
    if not levels:   # the layout's (the paper's) levels for its clients, pixel for any other
        layout = getattr(BUILDERS.get(prepared.name), "LAYOUT", None)
        defaults = dict(zip(layout.default_clients, layout.default_levels)) if layout else {}
        levels = [defaults.get(c, "pixel") for c in clients]
    if len(levels) != len(clients):
        raise ValueError(f"--config.data.levels has {len(levels)} entries {levels} but there are "
                         f"{len(clients)} clients {clients}")
    try:
        ints = [level_from_name(x) for x in levels]
    except ValueError as e:
        raise ValueError(f"--config.data.levels: {e}") from None
    return clients, ints


def take_counts(prepared: PreparedDataset, client: str, max_per_client: int) -> dict[str, int]:
    """Per split, how many of ``client``'s records to read: all, or ``max_per_client`` (> 0) in
    all shared over the splits in proportion (largest remainder, at least 1 per non-empty split)."""
    counts = {sp: len(prepared.client_range(sp, client)) for sp in SPLIT_FIELDS}
    total, m = sum(counts.values()), max_per_client
    if m <= 0 or total <= m:
        return counts
    quota = {sp: m * n / total for sp, n in counts.items()}
    take = {sp: min(n, max(1 if n else 0, int(quota[sp]))) for sp, n in counts.items()}
    while sum(take.values()) < m:   # largest remainder first
        sp = max((sp for sp in take if take[sp] < counts[sp]), key=lambda s: quota[s] - take[s])
        take[sp] += 1
    while sum(take.values()) > m:   # the "at least 1 each" rule overshot: trim the largest
        sp = max(take, key=lambda s: take[s])
        take[sp] -= 1
    return take


def read_client_split(prepared: PreparedDataset, split: str, client: str, level: int,
                      take: int | None = None, progress=None, out: dict | None = None) -> dict:
    """One client's records of one split, unpadded: images uint8 [n, S, S, Cin] (k means k / 255),
    masks and boxes uint8 [n, S, S, K] {0, 1}, image_labels float32 [n, K], levels int32 [n]
    (``level``, or the record's own), ``ids`` and ``has_mask`` bool [n]. ``take``: the first
    records only (a seeded subset: records are stored in hashed order); ``out``: arrays of at
    least ``n`` rows to read into (the result is then views of their first ``n`` rows)."""
    rng = prepared.client_range(split, client)[:take]
    n = len(rng)
    out = {f: a[:n] for f, a in (out or record_arrays(prepared, (n,))).items()
           if f in _RECORD_FIELDS}
    out["levels"][:] = level
    out.update(ids=[], has_mask=np.zeros((n,), bool))
    for lo in range(0, n, 256):
        recs = read_records(prepared, split, client, list(rng[lo:lo + 256]))
        for j, r in enumerate(recs, start=lo):
            store_record(out, j, r)
            out["has_mask"][j] = bool(r["has_mask"])
            out["ids"].append(record_text(r["id"]))
        if progress is not None:
            progress.update(len(recs))
    return out


def read_records(prepared: PreparedDataset, split: str, client: str, ids: list[int]) -> list:
    """The records ``ids`` of ``client`` in ``split``, read back and checked against the cache's
    features: a failure is a :class:`CacheDamagedError`, a record of another client an error."""
    cfg, k = prepared.config, len(prepared.metadata["class_names"])
    try:
        recs = prepared.sources[split].__getitems__(ids)
        s, c = cfg.image_size, cfg.channels
        for r in recs:   # the shapes the cache's features promise (else the cache is bad)
            for key, shape in (("image", (s, s, c)), ("mask", (s, s, k)), ("boxes", (s, s, k)),
                               ("label", (k,))):
                if tuple(np.shape(r[key])) != shape:
                    raise ValueError(f"record field {key!r} has shape {np.shape(r[key])}, "
                                     f"expected {shape}")
    except Exception as e:  # noqa: BLE001 -- any failure to read back our own records
        raise CacheDamagedError(
            f"the cache {prepared.path} is damaged: reading records {ids[:8]}"
            f"{'...' if len(ids) > 8 else ''} of its {split} split failed ({type(e).__name__}: "
            f"{str(e)[:300]}); rebuild it with --config.data.rebuild=True (needs "
            f"{DATA_DIR_FLAG})", prepared.path) from e
    for i, r in zip(ids, recs):
        if record_text(r["client"]) != client:
            raise RuntimeError(f"cache {prepared.path} is inconsistent: record {i} of {split} "
                               f"belongs to {record_text(r['client'])}, expected {client}; "
                               "rebuild it (--config.data.rebuild=True)")
    return recs


def store_record(out: dict, j: int, r: dict) -> None:
    """Record ``r``'s arrays into row ``j`` of ``out`` (its level only where it has its own)."""
    for field, key in (("images", "image"), ("masks", "mask"), ("boxes", "boxes"),
                       ("image_labels", "label")):
        out[field][j] = r[key]
    if int(r["level"]) >= 0:
        out["levels"][j] = int(r["level"])


def load_federation_from_config(data_cfg, verbose: bool = True) -> Federation:
    """Build (if not cached) and load a real dataset as a :class:`Federation`: images uint8
    [C, N, S, S, Cin] (k means k / 255), masks and boxes uint8 [C, N, S, S, K] {0, 1} (bit-packed
    with ``pack_labels``), image_labels float32 [C, N, K], levels int32 [C, N]. ``data_cfg``: a
    ``data`` ConfigDict (:func:`default_data_config`; fields: docs/main_job.md). Raises
    :class:`DatasetNotFoundError` when nothing is cached or to build from; a cache found damaged
    while reading (:class:`CacheDamagedError`) is rebuilt once from ``data_dir``."""
    settings = RealDataSettings.from_config(data_cfg)
    try:
        return _load_federation(settings, verbose)
    except CacheDamagedError as e:
        src = settings.source_dir
        if not (src and os.path.isdir(src) and os.listdir(src)):
            raise
        log.warning("%s; rebuilding it from %s", e, src)
        return _load_federation(dataclasses.replace(settings, rebuild=True), verbose)


def record_arrays(prepared: PreparedDataset, lead: tuple[int, ...]) -> dict:
    """Zeroed FederatedSplit arrays for records of ``prepared``: images uint8 ``lead + (S, S, Cin)``
    etc. (``lead = (C, N)``: a padded split; pages never written stay unresident on Linux)."""
    cfg = prepared.config
    s, c, k = cfg.image_size, cfg.channels, len(prepared.metadata["class_names"])
    return dict(images=np.zeros(lead + (s, s, c), np.uint8),
                masks=np.zeros(lead + (s, s, k), np.uint8),
                boxes=np.zeros(lead + (s, s, k), np.uint8),
                image_labels=np.zeros(lead + (k,), np.float32), levels=np.zeros(lead, np.int32),
                valid=np.zeros(lead, bool))


def _load_federation(settings: RealDataSettings, verbose: bool = True) -> Federation:
    from tqdm.auto import tqdm

    prepared = prepare_dataset(settings, verbose=verbose)
    clients, levels = resolve_clients_levels(settings, prepared)
    takes = {c: take_counts(prepared, c, settings.max_per_client) for c in clients}
    splits = {}
    with tqdm(total=sum(sum(t.values()) for t in takes.values()), unit="img", disable=not verbose,
              desc=f"reading {prepared.builder.name}", file=sys.stderr) as bar:
        for sp, fld in SPLIT_FIELDS.items():
            arrays = record_arrays(prepared, (len(clients),
                                              max(1, max(takes[c][sp] for c in clients))))
            for i, (c, lv) in enumerate(zip(clients, levels)):
                d = read_client_split(prepared, sp, c, lv, takes[c][sp], bar,
                                      out={f: a[i] for f, a in arrays.items()})
                if sp != "train" and len(d["ids"]) and not d["has_mask"].all():  # pragma: no cover
                    raise RuntimeError(f"{sp} sample without a mask in client {c}")
                arrays["valid"][i, :len(d["ids"])] = True
            splits[fld] = FederatedSplit(**arrays)
            if settings.pack_labels:   # now: one split's unpacked labels in memory at a time
                splits[fld] = pack_split_labels(splits[fld])
            del arrays
    fed = Federation(client_names=list(clients), class_names=list(prepared.metadata["class_names"]),
                     **splits)
    if verbose:
        print(fed.summary(), file=sys.stderr, flush=True)
    return fed

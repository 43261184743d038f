"""Read a prepared real dataset into a :class:`~fedmix_jax.data.federation.Federation`.

:func:`load_federation_from_config` builds the cache if needed (:mod:`.cache`), picks the clients
and their levels, caps each client at ``max_per_client`` and reads every split into the padded
arrays of a Federation: images uint8 [C, N, S, S, Cin] (value k means k / 255; the compiled code
converts each gathered batch with :func:`~fedmix_jax.data.federation.float_images`), masks and
boxes uint8 [C, N, S, S, K] in {0, 1}, image_labels float32 [C, N, K], levels int32 [C, N].
:func:`read_client_split` reads one client's split unpadded. The cache layout and its validation
are described in :mod:`.cache`.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import ml_collections
import numpy as np

from fedmix_jax.data.federation import (FederatedSplit, Federation, level_from_name,
                                        pack_split_labels)
from fedmix_jax.data.real.cache import PreparedDataset, prepare_dataset
from fedmix_jax.data.real.errors import DATA_DIR_FLAG, CacheDamagedError, log
from fedmix_jax.data.real.layouts import LAYOUTS
from fedmix_jax.data.real.settings import RealDataSettings

SPLIT_FIELDS = {"train": "train", "validation": "val", "test": "test"}


def default_levels(name: str) -> dict[str, str]:
    """Each known client's level when ``levels`` is not given: the layout's
    ``default_clients`` / ``default_levels`` (the paper's settings: HAM10000 [B, B, L, B];
    breast [I, B, L]); any other client is pixel."""
    layout = LAYOUTS.get(name)
    if layout is None:
        return {}
    return dict(zip(layout.default_clients, layout.default_levels))


def default_data_config(name: str = "ham10000", **overrides) -> ml_collections.ConfigDict:
    """A ``data`` ConfigDict with every field :func:`load_federation_from_config` reads (the
    defaults of :class:`~fedmix_jax.data.real.settings.RealDataSettings`)."""
    cfg = ml_collections.ConfigDict(RealDataSettings(name=name).as_dict())
    cfg.update(overrides)
    return cfg


# ----------------------------------------------------------------------------------------------
# read into a Federation


def record_text(v) -> str:
    """A text field of a cached record (bytes from array_record, or str) as str."""
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def resolve_clients_levels(data_cfg, prepared: PreparedDataset) -> tuple[list[str], list[int]]:
    """The clients ``data_cfg.clients`` names (default: all of the cache's) and their levels as
    ints (``data_cfg.levels``: one name, one per client, or the dataset's defaults)."""
    available = prepared.clients
    settings = RealDataSettings.from_config(data_cfg)
    clients = list(settings.clients)
    if not clients:
        clients = list(available)
    unknown = [c for c in clients if c not in available]
    if unknown:
        raise ValueError(f"unknown client(s) {unknown} in --config.data.clients; "
                         f"{prepared.name} at {prepared.path} has clients {available}")
    if len(set(clients)) != len(clients):
        raise ValueError(f"--config.data.clients lists a client twice: {clients}")
    levels = settings.levels
    if isinstance(levels, str):
        levels = [levels] * len(clients)
    levels = [str(x) for x in levels]
    if not levels:
        defaults = default_levels(prepared.name)
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
    if max_per_client <= 0:
        return counts
    total = sum(counts.values())
    if total <= max_per_client:
        return counts
    m = max_per_client
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
    """One client's records of one split as unpadded arrays (the ``stack_clients`` input): images
    uint8 [n, S, S, Cin] as stored (k means k / 255), masks and boxes uint8 {0, 1}, image_labels
    float32.

    ``take`` limits the number of records (the first ones: a seeded random subset, since records
    are stored in hashed order). Per-sample levels from ``levels.csv`` override ``level``.
    ``out``: arrays of at least ``n`` rows (``images``, ``masks``, ``boxes``, ``image_labels``,
    ``levels``; e.g. the client's row of a padded split) to read into instead of new ones; the
    returned arrays are then their first ``n`` rows (views).
    """
    cfg = prepared.config
    s, c, k = cfg.image_size, cfg.channels, len(prepared.metadata["class_names"])
    rng = prepared.client_range(split, client)
    if take is not None:
        rng = rng[:take]
    n = len(rng)
    if out is None:
        out = {"images": np.zeros((n, s, s, c), np.uint8),
               "masks": np.zeros((n, s, s, k), np.uint8),
               "boxes": np.zeros((n, s, s, k), np.uint8),
               "image_labels": np.zeros((n, k), np.float32),
               "levels": np.full((n,), level, np.int32)}
    else:
        out = {f: out[f][:n] for f in ("images", "masks", "boxes", "image_labels", "levels")}
        out["levels"][:] = level
    out.update(ids=[], has_mask=np.zeros((n,), bool))
    if n == 0:
        return out
    source = prepared.sources[split]
    idx = list(rng)
    for lo in range(0, n, 256):
        try:
            recs = source.__getitems__(idx[lo:lo + 256])
            _check_records(recs, s, c, k)
        except Exception as e:  # noqa: BLE001 -- any failure to read back our own records
            raise CacheDamagedError(
                f"the cache {prepared.path} is damaged: reading records {idx[lo]}.."
                f"{idx[min(lo + 256, n) - 1]} of its {split} split failed ({type(e).__name__}: "
                f"{str(e)[:300]}); rebuild it with --config.data.rebuild=True (needs "
                f"{DATA_DIR_FLAG})", prepared.path) from e
        for j, r in enumerate(recs, start=lo):
            if record_text(r["client"]) != client:
                raise RuntimeError(f"cache {prepared.path} is inconsistent: record {idx[j]} of "
                                   f"{split} belongs to {record_text(r['client'])}, expected "
                                   f"{client}; rebuild it (--config.data.rebuild=True)")
            out["images"][j] = r["image"]
            out["masks"][j] = r["mask"]
            out["boxes"][j] = r["boxes"]
            out["image_labels"][j] = r["label"]
            if int(r["level"]) >= 0:
                out["levels"][j] = int(r["level"])
            out["has_mask"][j] = bool(r["has_mask"])
            out["ids"].append(record_text(r["id"]))
        if progress is not None:
            progress.update(len(recs))
    return out


def _check_records(recs, size: int, channels: int, classes: int) -> None:
    """Decoded records have the shapes the cache's features promise (else the cache is bad)."""
    for r in recs:
        for key, shape in (("image", (size, size, channels)), ("mask", (size, size, classes)),
                           ("boxes", (size, size, classes)), ("label", (classes,))):
            if tuple(np.shape(r[key])) != shape:
                raise ValueError(f"record field {key!r} has shape {np.shape(r[key])}, "
                                 f"expected {shape}")


def load_federation_from_config(data_cfg, verbose: bool = True) -> Federation:
    """Build (if not cached) and load a real dataset as a :class:`Federation`.

    ``data_cfg`` (an ``ml_collections.ConfigDict``, see :func:`default_data_config`) fields:
    ``name`` ('ham10000' | 'breast' | 'folders'), ``data_dir`` (the manual download),
    ``cache_dir`` (default ``~/fedmix_data``), ``image_size``, ``channels`` (1 or 3), ``clients``
    (default: every client of the dataset, in its canonical order), ``levels`` (one level name per
    client; default: the paper's setting for the known clients, else pixel; folders' levels.csv
    overrides it per sample), ``seed`` (split and box seed), ``val_fraction``, ``test_fraction``,
    ``on_bad_input`` ('fail' | 'skip'), ``max_per_client`` (0 = all; else the client's total over
    the three splits is capped at it, spread in proportion to the split sizes, at least 1 per
    non-empty split), ``rebuild``, ``box_mode`` ('component' | 'enclosing', boxes derived from
    masks; see :mod:`fedmix_jax.data.boxes`), ``pack_labels`` (masks and boxes bit-packed),
    ``drop_empty_slices`` (RETOUCH only: B-scans without fluid are left out of every split).

    Images are uint8 (k means k / 255); masks and boxes uint8 in {0, 1}; image_labels float32
    [C, N, K]. Records are decoded straight into the padded arrays of their split (no per-client
    copy: the host holds the splits and one batch of 256 decoded records). With ``pack_labels``
    (``config.data.pack_labels``) each split's masks and boxes are bit-packed as soon as it is
    read, so only one split's are ever unpacked.
    Raises :class:`DatasetNotFoundError` when ``data_dir`` is missing/empty and nothing is cached.

    A cache found damaged while reading it (:class:`CacheDamagedError`) is rebuilt once from
    ``data_dir`` when the source is there; otherwise that error says how to rebuild.
    """
    settings = RealDataSettings.from_config(data_cfg)
    try:
        return _load_federation(settings, verbose)
    except CacheDamagedError as e:
        src = settings.source_dir
        if not (src and os.path.isdir(src) and os.listdir(src)):
            raise
        log.warning("%s; rebuilding it from %s", e, src)
        return _load_federation(dataclasses.replace(settings, rebuild=True), verbose)


def _padded_arrays(prepared: PreparedDataset, num_clients: int, num_samples: int) -> dict:
    """Zeroed arrays of one padded split ([C, N, ...], the FederatedSplit fields). The padding is
    never written: on Linux its pages are not resident on the host until something copies them."""
    cfg = prepared.config
    s, c, k = cfg.image_size, cfg.channels, len(prepared.metadata["class_names"])
    cn = (num_clients, num_samples)
    return dict(images=np.zeros(cn + (s, s, c), np.uint8), masks=np.zeros(cn + (s, s, k), np.uint8),
                boxes=np.zeros(cn + (s, s, k), np.uint8),
                image_labels=np.zeros(cn + (k,), np.float32), levels=np.zeros(cn, np.int32),
                valid=np.zeros(cn, bool))


def _load_federation(settings: RealDataSettings, verbose: bool = True) -> Federation:
    """The body of :func:`load_federation_from_config` (no retry)."""
    from tqdm.auto import tqdm

    prepared = prepare_dataset(settings, verbose=verbose)
    clients, levels = resolve_clients_levels(settings, prepared)
    takes = {c: take_counts(prepared, c, settings.max_per_client) for c in clients}
    total = sum(sum(t.values()) for t in takes.values())
    pack = settings.pack_labels
    splits = {}
    with tqdm(total=total, desc=f"reading {prepared.builder.name}", unit="img",
              disable=not verbose, file=sys.stderr) as bar:
        for sp, fld in SPLIT_FIELDS.items():
            arrays = _padded_arrays(prepared, len(clients),
                                    max(1, max(takes[c][sp] for c in clients)))
            for i, (c, lv) in enumerate(zip(clients, levels)):
                d = read_client_split(prepared, sp, c, lv, takes[c][sp], bar,
                                      out={f: a[i] for f, a in arrays.items()})
                if sp != "train" and len(d["ids"]) and not d["has_mask"].all():  # pragma: no cover
                    raise RuntimeError(f"{sp} sample without a mask in client {c}")
                arrays["valid"][i, :len(d["ids"])] = True
            splits[fld] = FederatedSplit(**arrays)
            if pack:     # before the next split is read: one split's unpacked labels at a time
                splits[fld] = pack_split_labels(splits[fld])
            del arrays
    fed = Federation(client_names=list(clients), class_names=list(prepared.metadata["class_names"]),
                     **splits)
    if verbose:
        print(fed.summary(), file=sys.stderr, flush=True)
    return fed

"""Build-if-needed, validate the cache, read with ``tfds.data_source`` and stack into a Federation.

Cache layout (TFDS's own; ``cache_dir`` defaults to ``~/fedmix_data``)::

    cache_dir/
      ham10000_fedmix/                       builder name (breast_us_fedmix, folder_federation)
        gray256_seed0_test20_val10/          config name (preprocessing + split options)
          1.0.0/
            dataset_info.json  features.json  metadata.json (fedmix: clients, counts, skipped...)
            ham10000_fedmix-train.array_record-00000-of-00001
            ham10000_fedmix-validation.array_record-00000-of-00001
            ham10000_fedmix-test.array_record-00000-of-00001
        .config/ ...                         written by TFDS

TFDS writes a build into ``<config>/incomplete.XXXXXX_1.0.0/`` and renames it to ``1.0.0/`` only
after every shard and ``dataset_info.json`` are written, so an interrupted build never appears
complete. Before reading, :func:`prepare_dataset` still checks the version directory (valid
``dataset_info.json``/``features.json``/``metadata.json``, every shard present with the number of
records ``dataset_info.json`` promises) and rebuilds anything that fails; leftover ``incomplete.*``
directories of an interrupted build are removed. It also rebuilds when the image/CSV files under
``data_dir`` changed since the build (a fingerprint of their relative paths and sizes), and when
``rebuild=True``. If ``data_dir`` is gone but a valid cache exists, the cache is used. Do not run
two builds of the same config into the same ``cache_dir`` at the same time.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from fedmix_jax.data.federation import LEVEL_NAMES, Federation, level_from_name, stack_clients
from fedmix_jax.data.real.builders import ARRAY_RECORD, BUILDERS, FedMixConfig, built_splits, \
    make_config
from fedmix_jax.data.real.errors import DATA_DIR_FLAG, CacheDamagedError, DatasetNotFoundError, \
    log
from fedmix_jax.data.real.files import open_regular
from fedmix_jax.data.real.layouts import LAYOUTS, source_fingerprint

DEFAULT_CACHE_DIR = "~/fedmix_data"
SPLIT_FIELDS = {"train": "train", "validation": "val", "test": "test"}

# Default level of each known client when ``levels`` is not given (the paper's settings:
# HAM10000 [B, B, L, B]; breast [I, B, L]); any other client defaults to pixel.
DEFAULT_LEVELS = {
    "ham10000": {"rosendahl": "box", "vidir_modern": "box", "vienna_dias": "pixel",
                 "vidir_molemax": "box"},
    "breast": {"busi": "image", "busis": "box", "udiat": "pixel"},
    "folders": {},
}


def default_data_config(name: str = "ham10000", **overrides) -> ml_collections.ConfigDict:
    """A ``data`` ConfigDict with every field :func:`load_federation_from_config` reads."""
    cfg = ml_collections.ConfigDict(dict(
        name=name, data_dir="", cache_dir=DEFAULT_CACHE_DIR, image_size=256, channels=1,
        clients=(), levels=(), seed=0, val_fraction=0.1, test_fraction=0.2, on_bad_input="fail",
        max_per_client=0, rebuild=False, box_mode="component"))
    cfg.update(overrides)
    return cfg


def _get(cfg, key, default):
    if cfg is None:
        return default
    if isinstance(cfg, dict) or hasattr(cfg, "get"):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None else v


# ----------------------------------------------------------------------------------------------
# cache validation


def _expected_path(builder_cls, cfg: FedMixConfig, cache_dir: str) -> str:
    return os.path.join(cache_dir, builder_cls.name, cfg.name, str(builder_cls.VERSION))


def validate_cache(path: str, builder_name: str, cfg: FedMixConfig | None = None
                   ) -> tuple[bool, str]:
    """Is ``path`` (a ``<config>/<version>`` dir) a complete build? Returns ``(ok, reason)``."""
    from array_record.python.array_record_module import ArrayRecordReader

    if not os.path.isdir(path):
        return False, "not built"
    try:
        with open_regular(os.path.join(path, "dataset_info.json")) as f:
            info = json.load(f)
        with open_regular(os.path.join(path, "metadata.json")) as f:
            meta = json.load(f)["fedmix"]
        if not isinstance(info, dict) or not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"unreadable dataset_info.json/metadata.json ({type(e).__name__}: {e})"
    if not os.path.isfile(os.path.join(path, "features.json")):
        return False, "features.json is missing"
    if info.get("fileFormat") != ARRAY_RECORD:
        return False, f"file format {info.get('fileFormat')!r} is not array_record"
    splits = {s["name"]: s for s in info.get("splits", [])}
    wanted = built_splits(cfg) if cfg is not None else tuple(splits)
    for sp in wanted:
        if sp not in splits:
            return False, f"split {sp!r} is missing"
        lengths = [int(x) for x in splits[sp].get("shardLengths", [])]
        counts = meta.get("counts", {}).get(sp)
        if counts is None or sum(counts.values()) != sum(lengths):
            return False, f"metadata counts of split {sp!r} do not match its shards"
        for i, n in enumerate(lengths):
            fname = f"{builder_name}-{sp}.{ARRAY_RECORD}-{i:05d}-of-{len(lengths):05d}"
            fpath = os.path.join(path, fname)
            if not os.path.isfile(fpath):
                return False, f"shard {fname} is missing"
            try:
                reader = ArrayRecordReader(fpath)
                got = reader.num_records()
                reader.close()
            except Exception as e:  # noqa: BLE001 -- any reader failure means a damaged shard
                return False, f"shard {fname} is unreadable ({type(e).__name__}: {e})"
            if got != n:
                return False, f"shard {fname} holds {got} records, expected {n}"
    return True, "ok"


def _remove_stale_incomplete(path: str) -> None:
    parent, version = os.path.dirname(path), os.path.basename(path)
    if not os.path.isdir(parent):
        return
    for e in os.listdir(parent):
        if e.startswith("incomplete.") and e.endswith("_" + version):
            log.warning("removing %s left by an interrupted build", os.path.join(parent, e))
            shutil.rmtree(os.path.join(parent, e), ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# build


@dataclass
class PreparedDataset:
    """A built, validated dataset: its TFDS data sources and metadata."""

    name: str                       # 'ham10000' | 'breast' | 'folders'
    builder: tfds.core.DatasetBuilder
    config: FedMixConfig
    path: str                       # the cache's version directory
    sources: dict                   # split -> tfds ArrayRecordDataSource
    metadata: dict                  # metadata.json's "fedmix" entry
    built_now: bool = False
    build_seconds: float = 0.0
    extras: dict = field(default_factory=dict)

    @property
    def clients(self) -> list[str]:
        return list(self.metadata["clients"])

    def client_range(self, split: str, client: str) -> range:
        """Record indices of ``client`` in ``split`` (records are grouped by client)."""
        counts = self.metadata["counts"].get(split)
        if counts is None:
            return range(0)
        start = 0
        for c in self.clients:
            if c == client:
                return range(start, start + int(counts.get(c, 0)))
            start += int(counts.get(c, 0))
        raise KeyError(client)


def prepare_dataset(data_cfg, verbose: bool = True) -> PreparedDataset:
    """Build the dataset of ``data_cfg`` if it is not cached (or the cache is bad), then open it.

    The same code path serves the CLI (:mod:`.build`) and :func:`load_federation_from_config`.
    """
    name = str(_get(data_cfg, "name", "ham10000")).strip().lower()
    if name not in BUILDERS:
        raise ValueError(f"unknown --config.data.name {name!r}; expected one of {sorted(BUILDERS)}")
    builder_cls, layout = BUILDERS[name], LAYOUTS[name]
    raw_dir = _get(data_cfg, "data_dir", "")
    data_dir = os.path.abspath(os.path.expanduser(str(raw_dir))) if str(raw_dir).strip() else ""
    cache_dir = os.path.abspath(os.path.expanduser(str(_get(data_cfg, "cache_dir",
                                                             DEFAULT_CACHE_DIR))))
    cfg = make_config(name, image_size=int(_get(data_cfg, "image_size", 256)),
                      channels=int(_get(data_cfg, "channels", 1)),
                      seed=int(_get(data_cfg, "seed", 0)),
                      test_fraction=float(_get(data_cfg, "test_fraction", 0.2)),
                      val_fraction=float(_get(data_cfg, "val_fraction", 0.1)),
                      on_bad_input=str(_get(data_cfg, "on_bad_input", "fail")),
                      data_dir=data_dir or None,
                      box_mode=str(_get(data_cfg, "box_mode", "component")))
    path = _expected_path(builder_cls, cfg, cache_dir)
    have_source = bool(data_dir) and os.path.isdir(data_dir) and any(
        not e.startswith(".") for e in os.listdir(data_dir))

    ok, reason = validate_cache(path, builder_cls.name, cfg)
    if ok and bool(_get(data_cfg, "rebuild", False)):
        ok, reason = False, "rebuild=True"
    if ok and have_source:
        with open(os.path.join(path, "metadata.json")) as f:
            old = json.load(f)["fedmix"].get("source_fingerprint")
        if old != source_fingerprint(data_dir):
            ok, reason = False, f"the files under {data_dir} changed since the cache was built"
    if ok and not have_source:
        log.info("%s=%r is missing or empty; using the cache %s", DATA_DIR_FLAG, raw_dir, path)

    built_now, seconds = False, 0.0
    if not ok:
        if not have_source:
            if os.path.exists(path):
                raise DatasetNotFoundError(
                    f"the cache {path} is damaged ({reason}) and cannot be rebuilt: "
                    f"{DATA_DIR_FLAG}={raw_dir!r} is missing or empty. Point it at the source "
                    "files to rebuild the cache.")
            layout.check_data_dir(data_dir)  # raises DatasetNotFoundError with the layout
            raise DatasetNotFoundError(f"{DATA_DIR_FLAG}={raw_dir!r}: nothing to build from")
        if os.path.exists(path):
            log.warning("cache %s: %s; rebuilding", path, reason)
            shutil.rmtree(path)
        _remove_stale_incomplete(path)
        if verbose:
            print(f"[fedmix_jax] building {builder_cls.name}/{cfg.name} from {data_dir} into "
                  f"{cache_dir} ({reason})", file=sys.stderr, flush=True)
        t0 = time.time()
        builder = builder_cls(config=cfg, data_dir=cache_dir, file_format=ARRAY_RECORD)
        builder.download_and_prepare(
            download_dir=os.path.join(cache_dir, "downloads"),
            download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
        seconds = time.time() - t0
        built_now = True
        ok, reason = validate_cache(path, builder_cls.name, cfg)
        if not ok:  # pragma: no cover -- would be a TFDS bug
            raise RuntimeError(f"build of {path} finished but the cache is invalid: {reason}")

    sources = tfds.data_source(builder_cls.name, data_dir=cache_dir, download=False,
                               builder_kwargs={"config": cfg, "file_format": ARRAY_RECORD})
    first = next(iter(sources.values()))
    meta = dict(first.dataset_info.metadata["fedmix"])
    if not built_now:
        builder = builder_cls(config=cfg, data_dir=cache_dir, file_format=ARRAY_RECORD)
    prepared = PreparedDataset(name=name, builder=builder, config=cfg, path=path,
                               sources=dict(sources), metadata=meta, built_now=built_now,
                               build_seconds=seconds)
    if verbose and built_now:
        n = {sp: sum(c.values()) for sp, c in meta["counts"].items()}
        print(f"[fedmix_jax] built {path} in {seconds:.1f} s: {n}; "
              f"{len(meta['skipped'])} bad file(s) skipped" +
              "".join(f"\n  skipped: {d['reason']}" for d in meta["skipped"][:20]) +
              (f"\n  ... see {path}/metadata.json" if len(meta["skipped"]) > 20 else "") +
              "".join(f"\n  warning: {w}" for w in meta["warnings"]), file=sys.stderr, flush=True)
    elif meta.get("skipped"):
        log.warning("%s was built with on_bad_input='skip': %d file(s) were skipped (listed in "
                    "%s/metadata.json)", path, len(meta["skipped"]), path)
    return prepared


# ----------------------------------------------------------------------------------------------
# read into a Federation


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def _resolve_clients_levels(data_cfg, prepared: PreparedDataset) -> tuple[list[str], list[int]]:
    available = prepared.clients
    clients = [str(c) for c in (_get(data_cfg, "clients", ()) or ())]
    if not clients:
        clients = list(available)
    unknown = [c for c in clients if c not in available]
    if unknown:
        raise ValueError(f"unknown client(s) {unknown} in --config.data.clients; "
                         f"{prepared.name} at {prepared.path} has clients {available}")
    if len(set(clients)) != len(clients):
        raise ValueError(f"--config.data.clients lists a client twice: {clients}")
    levels = _get(data_cfg, "levels", ()) or ()
    if isinstance(levels, str):
        levels = [levels] * len(clients)
    levels = [str(x) for x in levels]
    if not levels:
        defaults = DEFAULT_LEVELS[prepared.name]
        levels = [defaults.get(c, "pixel") for c in clients]
    if len(levels) != len(clients):
        raise ValueError(f"--config.data.levels has {len(levels)} entries {levels} but there are "
                         f"{len(clients)} clients {clients}")
    try:
        ints = [level_from_name(x) for x in levels]
    except ValueError as e:
        raise ValueError(f"--config.data.levels: {e}") from None
    return clients, ints


def _take_counts(prepared: PreparedDataset, client: str, max_per_client: int) -> dict[str, int]:
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
                      take: int | None = None, progress=None) -> dict:
    """One client's records of one split as unpadded float32 arrays (the ``stack_clients`` input).

    ``take`` limits the number of records (the first ones: a seeded random subset, since records
    are stored in hashed order). Per-sample levels from ``levels.csv`` override ``level``.
    """
    cfg = prepared.config
    s, c, k = cfg.image_size, cfg.channels, len(prepared.metadata["class_names"])
    rng = prepared.client_range(split, client)
    if take is not None:
        rng = rng[:take]
    n = len(rng)
    out = {"images": np.zeros((n, s, s, c), np.float32),
           "masks": np.zeros((n, s, s, k), np.float32),
           "boxes": np.zeros((n, s, s, k), np.float32),
           "image_labels": np.zeros((n, k), np.float32),
           "levels": np.full((n,), level, np.int32),
           "ids": [], "has_mask": np.zeros((n,), bool)}
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
            if _text(r["client"]) != client:
                raise RuntimeError(f"cache {prepared.path} is inconsistent: record {idx[j]} of "
                                   f"{split} belongs to {_text(r['client'])}, expected {client}; "
                                   "rebuild it (--config.data.rebuild=True)")
            out["images"][j] = r["image"].astype(np.float32) * (1.0 / 255.0)
            out["masks"][j] = r["mask"]
            out["boxes"][j] = r["boxes"]
            out["image_labels"][j] = r["label"]
            if int(r["level"]) >= 0:
                out["levels"][j] = int(r["level"])
            out["has_mask"][j] = bool(r["has_mask"])
            out["ids"].append(_text(r["id"]))
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
    masks; see :mod:`fedmix_jax.data.boxes`).

    Images are float32 in [0, 1]; masks and boxes float32 in {0, 1}; image_labels [C, N, 1].
    Raises :class:`DatasetNotFoundError` when ``data_dir`` is missing/empty and nothing is cached.

    A cache found damaged while reading it (:class:`CacheDamagedError`) is rebuilt once from
    ``data_dir`` when the source is there; otherwise that error says how to rebuild.
    """
    try:
        return _load_federation(data_cfg, verbose)
    except CacheDamagedError as e:
        raw_dir = str(_get(data_cfg, "data_dir", "")).strip()
        src = os.path.abspath(os.path.expanduser(raw_dir)) if raw_dir else ""
        if not (src and os.path.isdir(src) and os.listdir(src)):
            raise
        log.warning("%s; rebuilding it from %s", e, src)
        retry = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
        retry["rebuild"] = True
        return _load_federation(retry, verbose)


def _load_federation(data_cfg, verbose: bool = True) -> Federation:
    """The body of :func:`load_federation_from_config` (no retry)."""
    from tqdm.auto import tqdm

    prepared = prepare_dataset(data_cfg, verbose=verbose)
    clients, levels = _resolve_clients_levels(data_cfg, prepared)
    max_pc = int(_get(data_cfg, "max_per_client", 0))
    takes = {c: _take_counts(prepared, c, max_pc) for c in clients}
    total = sum(sum(t.values()) for t in takes.values())
    splits = {}
    with tqdm(total=total, desc=f"reading {prepared.builder.name}", unit="img",
              disable=not verbose, file=sys.stderr) as bar:
        for sp, fld in SPLIT_FIELDS.items():
            per_client = [read_client_split(prepared, sp, c, lv, takes[c][sp], bar)
                          for c, lv in zip(clients, levels)]
            for c, d in zip(clients, per_client):
                if sp != "train" and len(d["ids"]) and not d["has_mask"].all():  # pragma: no cover
                    raise RuntimeError(f"{sp} sample without a mask in client {c}")
            splits[fld] = stack_clients(per_client)
    fed = Federation(client_names=list(clients), class_names=list(prepared.metadata["class_names"]),
                     **splits)
    if verbose:
        print(fed.summary(), file=sys.stderr, flush=True)
    return fed


__all__ = ["DEFAULT_CACHE_DIR", "PreparedDataset", "default_data_config", "prepare_dataset",
           "validate_cache", "read_client_split", "load_federation_from_config", "LEVEL_NAMES"]

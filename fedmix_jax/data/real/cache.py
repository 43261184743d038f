"""The real-data cache (``cache_dir/<builder>/<config>/1.0.0/``): :func:`prepare_dataset` builds
it when missing, damaged (:func:`validate_cache`) or stale, and opens it with
``tfds.data_source`` as a :class:`PreparedDataset`. Details: docs/data.md ("The cache").
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import tensorflow_datasets as tfds

from fedmix_jax.data.real.builders import (ARRAY_RECORD, BUILDERS, OPTIONS, FedMixConfig,
                                           built_splits, make_config)
from fedmix_jax.data.real.errors import DATA_DIR_FLAG, DatasetNotFoundError, log, open_regular
from fedmix_jax.data.real.scanning import source_fingerprint
from fedmix_jax.data.real.settings import RealDataSettings


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
    for sp in built_splits(cfg) if cfg is not None else tuple(splits):
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
    """Build the dataset of ``data_cfg`` if it is not cached (or the cache is bad or stale: the
    source files' fingerprint changed, ``rebuild``), then open it; without ``data_dir`` a valid
    cache is used. Raises :class:`DatasetNotFoundError` when there is nothing to build from."""
    settings = RealDataSettings.from_config(data_cfg)
    name = settings.name.strip().lower()
    raw_dir, data_dir, cache_dir = settings.data_dir, settings.source_dir, settings.cache_root
    cfg = make_config(name, data_dir=data_dir or None, **{k: getattr(settings, k) for k in OPTIONS})
    builder_cls = BUILDERS[name]
    path = os.path.join(cache_dir, builder_cls.name, cfg.name, str(builder_cls.VERSION))
    have_source = bool(data_dir) and os.path.isdir(data_dir) and any(
        not e.startswith(".") for e in os.listdir(data_dir))

    ok, reason = validate_cache(path, builder_cls.name, cfg)
    if ok and settings.rebuild:
        ok, reason = False, "rebuild=True"
    if ok and have_source:
        with open(os.path.join(path, "metadata.json")) as f:
            old = json.load(f)["fedmix"].get("source_fingerprint")
        if old != source_fingerprint(data_dir):
            ok, reason = False, f"the files under {data_dir} changed since the cache was built"
    if ok and not have_source:
        log.info("%s=%r is missing or empty; using the cache %s", DATA_DIR_FLAG, raw_dir, path)

    builder, seconds = None, 0.0
    if not ok:
        if not have_source:
            if os.path.exists(path):
                raise DatasetNotFoundError(
                    f"the cache {path} is damaged ({reason}) and cannot be rebuilt: "
                    f"{DATA_DIR_FLAG}={raw_dir!r} is missing or empty. Point it at the source "
                    "files to rebuild the cache.")
            builder_cls.LAYOUT.check_data_dir(data_dir)  # raises DatasetNotFoundError
            raise DatasetNotFoundError(f"{DATA_DIR_FLAG}={raw_dir!r}: nothing to build from")
        builder, seconds = _build(builder_cls, cfg, path, data_dir, cache_dir, reason, verbose)

    sources = tfds.data_source(builder_cls.name, data_dir=cache_dir, download=False,
                               builder_kwargs={"config": cfg, "file_format": ARRAY_RECORD})
    meta = dict(next(iter(sources.values())).dataset_info.metadata["fedmix"])
    built_now = builder is not None
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


def _build(builder_cls, cfg, path, data_dir, cache_dir, reason, verbose):
    """Build the cache at ``path`` from ``data_dir``, replacing a bad one: (builder, seconds)."""
    if os.path.exists(path):
        log.warning("cache %s: %s; rebuilding", path, reason)
        shutil.rmtree(path)
    parent, version = os.path.dirname(path), os.path.basename(path)
    for e in os.listdir(parent) if os.path.isdir(parent) else ():
        if e.startswith("incomplete.") and e.endswith("_" + version):
            log.warning("removing %s left by an interrupted build", os.path.join(parent, e))
            shutil.rmtree(os.path.join(parent, e), ignore_errors=True)
    if verbose:
        print(f"[fedmix_jax] building {builder_cls.name}/{cfg.name} from {data_dir} into "
              f"{cache_dir} ({reason})", file=sys.stderr, flush=True)
    t0 = time.time()
    builder = builder_cls(config=cfg, data_dir=cache_dir, file_format=ARRAY_RECORD)
    builder.download_and_prepare(download_dir=os.path.join(cache_dir, "downloads"),
                                 download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
    seconds = time.time() - t0
    ok, reason = validate_cache(path, builder_cls.name, cfg)
    if not ok:  # pragma: no cover -- would be a TFDS bug
        raise RuntimeError(f"build of {path} finished but the cache is invalid: {reason}")
    return builder, seconds

"""Helpers shared by the real-data tests: tiny fixture trees and config shortcuts."""

from __future__ import annotations

import numpy as np

from fedmix_jax.data.real import default_data_config, prepare_dataset
from fedmix_jax.data.real.imaging import load_mask, resize_mask

SIZE = 32          # target size; fixture images are 40x30


def cfg(name, data_dir, cache_dir, **kw):
    """A data config with the tiny test sizes."""
    return default_data_config(name, data_dir=str(data_dir), cache_dir=str(cache_dir),
                               image_size=SIZE, **kw)


def records(prepared, split):
    """All records of a split of a PreparedDataset, as a list of dicts with str text fields."""
    src = prepared.sources.get(split)
    if src is None:
        return []
    out = []
    for r in src.__getitems__(list(range(len(src)))):
        r = dict(r)
        for k in ("client", "id", "stem", "category", "image_path"):
            v = r[k]
            r[k] = v.decode() if isinstance(v, bytes) else str(v)
        out.append(r)
    return out


def split_of_ids(prepared):
    return {r["id"]: sp for sp in ("train", "validation", "test") for r in records(prepared, sp)}


def expected_mask(mask_paths, size=SIZE):
    full = None
    for p in mask_paths:
        m = load_mask(p)
        full = m if full is None else full | m
    return resize_mask(full, size)


def prepare(name, data_dir, cache_dir, **kw):
    return prepare_dataset(cfg(name, data_dir, cache_dir, **kw), verbose=False)


__all__ = ["SIZE", "cfg", "records", "split_of_ids", "expected_mask", "prepare", "np"]

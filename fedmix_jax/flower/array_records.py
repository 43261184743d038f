"""Conversions between the project's pytrees and Flower records (numpy arrays and scalars only).

A model pair is one ArrayRecord of two packed float32 vectors (:func:`pair_to_record`), any other
pytree one array per leaf keyed by its path (:func:`tree_to_record`); a site's report scalars a
MetricRecord (:data:`REPORT_FIELDS`). Nothing is pickled. Details: docs/across_sites.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flwr.app import Array, ArrayRecord

from fedmix_jax.site import ModelPair, SiteReport

PAIR_PREFIXES = ("model1", "model2")   # ModelPair field names: the record keys' prefixes
# SiteReport fields and their Python types in a MetricRecord: losses float, counts int.
REPORT_FIELDS = {f.name: (float if f.name.startswith("loss") else int)
                 for f in dataclasses.fields(SiteReport)}


def _key_part(k) -> str:
    return next((str(getattr(k, a)) for a in ("key", "name", "idx") if hasattr(k, a)), str(k))


def flatten_with_keys(tree, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(key, leaf)]`` in the tree's flattening order, keys ``prefix/a/b/0``."""
    pre = f"{prefix}/" if prefix else ""
    return [(pre + "/".join(_key_part(k) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def tree_to_record(tree, prefix: str = "") -> ArrayRecord:
    """An :class:`ArrayRecord` with one numpy array per leaf of ``tree`` (stable key order)."""
    return ArrayRecord({key: Array(np.asarray(leaf, order="C"))
                        for key, leaf in flatten_with_keys(tree, prefix)})


def _as_pair(pair) -> ModelPair:
    return pair if isinstance(pair, ModelPair) else ModelPair(*tuple(pair))


def _flat_size(params) -> int:
    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params)))


def pack_model(params) -> np.ndarray:
    """One model's params as one flat float32 vector [P] (leaves in flattening order)."""
    leaves = jax.tree_util.tree_leaves(params)
    for x in leaves:
        if np.dtype(x.dtype) != np.float32:
            raise ValueError(f"packed models need float32 params, got {np.dtype(x.dtype)}")
    return np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves])


def unpack_model(flat: np.ndarray, like):
    """The inverse of :func:`pack_model`: flat [P] -> the structure and shapes of ``like``."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    sizes = [int(np.prod(np.shape(x))) for x in leaves]
    if sum(sizes) != flat.size:
        raise ValueError(f"packed model has {flat.size} values, expected {sum(sizes)}")
    parts = np.split(np.asarray(flat), np.cumsum(sizes)[:-1])
    return jax.tree_util.tree_unflatten(treedef, [a.reshape(np.shape(x))
                                                  for a, x in zip(parts, leaves)])


def pair_to_record(pair) -> ArrayRecord:
    """A :class:`~fedmix_jax.site.ModelPair` (or a 2-tuple) as a record of two float32 vectors,
    ``model1`` [P] and ``model2`` [P] (:func:`pack_model`)."""
    return ArrayRecord({prefix: Array(pack_model(params))
                        for prefix, params in zip(PAIR_PREFIXES, _as_pair(pair))})


def pair_spec(pair) -> dict[str, tuple[tuple[int, ...], str]]:
    """The ``{key: (shape, dtype)}`` of :func:`pair_to_record`'s record."""
    return {prefix: ((_flat_size(params),), "float32")
            for prefix, params in zip(PAIR_PREFIXES, _as_pair(pair))}


def record_to_model(record: ArrayRecord, like, which: str = PAIR_PREFIXES[0]):
    """One model (``model1`` / ``model2``) of a :func:`pair_to_record` record."""
    if which not in record:
        raise ValueError(f"record has no {which!r} array (keys {list(record.keys())[:4]})")
    flat = record[which].numpy()
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size != _flat_size(like):
        raise ValueError(f"{which}: got {flat.dtype}{list(flat.shape)}, expected "
                         f"float32[{_flat_size(like)}]")
    return unpack_model(flat, like)


def record_to_tree(record: ArrayRecord, like, prefix: str = ""):
    """The pytree shaped as ``like`` from ``record``'s arrays (ValueError: other keys, shapes or
    dtypes)."""
    items = flatten_with_keys(like, prefix)
    expected = [k for k, _ in items]
    keys = [k for k in record.keys() if not prefix or k.startswith(prefix + "/")]
    if sorted(keys) != sorted(expected):
        missing = sorted(set(expected) - set(keys))[:3]
        extra = sorted(set(keys) - set(expected))[:3]
        raise ValueError(f"record keys differ from the model's (missing {missing}, "
                         f"unexpected {extra})")
    leaves = []
    for key, ref in items:
        arr = record[key].numpy()
        if arr.shape != np.shape(ref) or arr.dtype != np.dtype(ref.dtype):
            raise ValueError(f"{key}: got {arr.dtype}{list(arr.shape)}, expected "
                             f"{np.dtype(ref.dtype)}{list(np.shape(ref))}")
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def record_to_pair(record: ArrayRecord, like) -> ModelPair:
    """The :class:`~fedmix_jax.site.ModelPair` of a :func:`pair_to_record` record, shaped as
    ``like`` (arrays or ShapeDtypeStructs)."""
    if sorted(record.keys()) != sorted(PAIR_PREFIXES):
        raise ValueError(f"record keys {list(record.keys())[:4]} are not {list(PAIR_PREFIXES)}")
    return ModelPair(*(record_to_model(record, m, k)
                       for k, m in zip(PAIR_PREFIXES, _as_pair(like))))

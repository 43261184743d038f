"""Conversions between the project's pytrees and Flower records (numpy arrays and scalars only).

A params pytree travels as one :class:`flwr.app.ArrayRecord` whose keys are the leaves' paths
(``"model1/Down_0/Conv_0/kernel"``) in :func:`jax.tree_util.tree_flatten_with_path` order, so the
order is stable and a reply can be checked key by key against the tree the server sent. Every
value is a plain :class:`numpy.ndarray` (Flower serialises it with ``np.save(allow_pickle=False)``
and reads it back with ``allow_pickle=False``): nothing is ever unpickled.

The scalars of a site's round (:class:`SiteReport` fields) travel as a
:class:`flwr.app.MetricRecord` of ints and floats.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord

PAIR_PREFIXES = ("model1", "model2")   # ModelPair field names: the record keys' prefixes



def _report_fields() -> dict[str, type]:
    """:class:`~fedmix_jax.site.SiteReport`'s fields and their Python types in a MetricRecord:
    the losses are floats, every other field is a count (int)."""
    import dataclasses

    from fedmix_jax.site import SiteReport

    return {f.name: (float if f.name.startswith("loss") else int)
            for f in dataclasses.fields(SiteReport)}


# SiteReport fields and their Python types in a MetricRecord (ints stay ints).
REPORT_FIELDS = _report_fields()


def _key_part(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_key(path) -> str:
    """``"a/b/0"`` for a pytree key path (dict keys, attribute names, sequence indices)."""
    return "/".join(_key_part(k) for k in path)


def flatten_with_keys(tree, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(key, leaf)]`` in the tree's flattening order, keys ``prefix/path``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    pre = f"{prefix}/" if prefix else ""
    return [(pre + leaf_key(path), leaf) for path, leaf in leaves]


def tree_to_record(tree, prefix: str = "") -> ArrayRecord:
    """An :class:`ArrayRecord` with one numpy array per leaf of ``tree`` (stable key order)."""
    record = ArrayRecord()
    for key, leaf in flatten_with_keys(tree, prefix):
        record[key] = Array(np.asarray(leaf, order="C"))
    return record


def _as_pair(pair):
    from fedmix_jax.site import ModelPair

    return pair if isinstance(pair, ModelPair) else ModelPair(*tuple(pair))


def pair_to_record(pair) -> ArrayRecord:
    """Both models of a :class:`~fedmix_jax.site.ModelPair` (or a 2-tuple) in one record, keys
    ``model1/...`` then ``model2/...``."""
    return tree_to_record(_as_pair(pair))


def tree_spec(tree, prefix: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype name)}`` of every leaf, in order."""
    return {k: (tuple(np.shape(x)), np.dtype(x.dtype).name)
            for k, x in flatten_with_keys(tree, prefix)}


def pair_spec(pair) -> dict[str, tuple[tuple[int, ...], str]]:
    """The ``{key: (shape, dtype)}`` of :func:`pair_to_record`'s record."""
    return tree_spec(_as_pair(pair))


def record_to_tree(record: ArrayRecord, like, prefix: str = ""):
    """The pytree with the structure of ``like`` and the arrays of ``record``.

    Raises ``ValueError`` when the keys, shapes or dtypes differ from ``like``'s.
    """
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


def record_to_pair(record: ArrayRecord, like):
    """The :class:`~fedmix_jax.site.ModelPair` of a :func:`pair_to_record` record (``like``: a
    pair of arrays or ShapeDtypeStructs giving the structure, shapes and dtypes)."""
    return record_to_tree(record, _as_pair(like))


def report_to_metrics(report, **extra) -> MetricRecord:
    """A site's :class:`SiteReport` (scalars) plus ``extra`` scalars as a MetricRecord."""
    get = report.get if isinstance(report, dict) else lambda k: getattr(report, k)
    out = {}
    for name, typ in REPORT_FIELDS.items():
        out[name] = typ(np.asarray(get(name)).item())
    out.update(extra)
    return MetricRecord(out)


def metrics_to_report_dict(metrics: MetricRecord) -> dict[str, Any]:
    """The :data:`REPORT_FIELDS` of a MetricRecord as Python scalars (KeyError if missing)."""
    return {name: typ(metrics[name]) for name, typ in REPORT_FIELDS.items()}


__all__ = ["PAIR_PREFIXES", "REPORT_FIELDS", "flatten_with_keys", "leaf_key", "tree_to_record",
           "pair_to_record", "tree_spec", "pair_spec", "record_to_tree", "record_to_pair",
           "report_to_metrics", "metrics_to_report_dict"]

"""Server-side checks of a site's reply before anything of it reaches the aggregate.

A reply is rejected, with a reason that the server logs and writes to ``metrics.jsonl``, when:

* it is an error reply (the ClientApp raised) or has no content;
* it comes from a node that was not sent this round's message, or names another site;
* it answers another round (a late or replayed reply);
* its arrays differ from the broadcast pair in keys, shapes or dtypes, are not plain numpy
  arrays, or hold a non-finite value;
* its scalars are missing, of the wrong type, non-finite or out of range: a usable count above the
  size the site declared when it joined, negative counts, more selected than weak samples, a
  negative loss.

The round then goes on with the accepted replies (the strategy renormalises the weights over
them). Validation never decodes anything but numpy arrays (``allow_pickle=False``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fedmix_jax.flower.records import REPORT_FIELDS

from fedmix_jax.flower.protocol import LOCAL_RECORD, REPORT_RECORD, SITE_RECORD  # noqa: E402
ALLOWED_STYPE = "numpy.ndarray"


class ReplyRejected(ValueError):
    """A reply that failed a check; ``str(e)`` is the reason."""


@dataclasses.dataclass
class AcceptedReply:
    site: str
    index: int
    arrays: dict[str, np.ndarray] | None   # None when the strategy sends no model back (local)
    report: dict[str, Any]


def _check_arrays(record, spec: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    keys = list(record.keys())
    if keys != list(spec):
        missing = [k for k in spec if k not in record][:3]
        extra = [k for k in keys if k not in spec][:3]
        if missing or extra:
            raise ReplyRejected(f"wrong array keys (missing {missing}, unexpected {extra})")
        raise ReplyRejected("array keys out of order")
    out = {}
    for key, (shape, dtype) in spec.items():
        arr = record[key]
        if getattr(arr, "stype", None) != ALLOWED_STYPE:
            raise ReplyRejected(f"{key}: serialisation {getattr(arr, 'stype', None)!r} is not "
                                f"{ALLOWED_STYPE!r}")
        if str(arr.dtype) != dtype or tuple(arr.shape) != tuple(shape):
            raise ReplyRejected(f"{key}: got {arr.dtype}{list(arr.shape)}, expected "
                                f"{dtype}{list(shape)}")
        try:
            value = arr.numpy()          # np.load(allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any decoding failure rejects the reply
            raise ReplyRejected(f"{key}: cannot decode ({type(e).__name__}: {e})") from None
        if value.dtype != np.dtype(dtype) or value.shape != tuple(shape):
            raise ReplyRejected(f"{key}: payload {value.dtype}{list(value.shape)} differs from "
                                f"its header {dtype}{list(shape)}")
        if not np.all(np.isfinite(value)):
            raise ReplyRejected(f"{key}: non-finite values")
        out[key] = value
    return out


def _scalar(metrics, name: str, typ) -> Any:
    if name not in metrics:
        raise ReplyRejected(f"missing scalar {name!r}")
    v = metrics[name]
    if isinstance(v, (list, bool)) or not isinstance(v, (int, float)):
        raise ReplyRejected(f"{name}: expected a number, got {type(v).__name__}")
    if typ is int and not isinstance(v, int):
        raise ReplyRejected(f"{name}: expected an integer, got {v!r}")
    if not math.isfinite(float(v)):
        raise ReplyRejected(f"{name}: non-finite value {v}")
    return typ(v)


def check_report(metrics, *, round_index: int, site: str, declared_size: int) -> dict[str, Any]:
    """The checked scalars of a train reply's MetricRecord (raises :class:`ReplyRejected`)."""
    r = _scalar(metrics, "round", int)
    if r != round_index:
        raise ReplyRejected(f"reply for round {r}, expected round {round_index}")
    rep = {k: _scalar(metrics, k, typ) for k, typ in REPORT_FIELDS.items()}
    counts = {k: v for k, v in rep.items() if REPORT_FIELDS[k] is int}
    if any(v < 0 for v in counts.values()):
        raise ReplyRejected(f"negative count in {counts}")
    too_large = [k for k, v in counts.items() if k != "steps" and v > declared_size]
    if rep["num_usable"] > declared_size:
        raise ReplyRejected(f"num_usable {rep['num_usable']} is above the site's declared size "
                            f"{declared_size}")
    if rep["num_weak"] > declared_size or rep["num_selected_weak"] > rep["num_weak"]:
        raise ReplyRejected(f"inconsistent weak counts (weak {rep['num_weak']}, selected "
                            f"{rep['num_selected_weak']}, declared size {declared_size})")
    if too_large:
        raise ReplyRejected(f"{too_large[0]} {counts[too_large[0]]} is above the site's declared "
                            f"size {declared_size}")
    if rep["loss1"] < 0 or rep["loss2"] < 0:
        raise ReplyRejected(f"negative loss ({rep['loss1']}, {rep['loss2']})")
    return rep


def check_train_reply(reply, *, round_index: int, site: str, index: int, declared_size: int,
                      spec: dict[str, tuple[tuple[int, ...], str]] | None) -> AcceptedReply:
    """Check one train reply; ``spec`` is the pair's ``{key: (shape, dtype)}`` (None: no arrays).

    Returns the decoded arrays and scalars, or raises :class:`ReplyRejected`.
    """
    if reply.has_error():
        err = reply.error
        raise ReplyRejected(f"site error {err.code}: {err.reason}")
    if not reply.has_content():
        raise ReplyRejected("empty reply")
    content = reply.content
    if REPORT_RECORD not in content.metric_records:
        raise ReplyRejected(f"no {REPORT_RECORD!r} MetricRecord")
    report = check_report(content.metric_records[REPORT_RECORD], round_index=round_index,
                          site=site, declared_size=declared_size)
    named = content.config_records.get(SITE_RECORD)
    name = None if named is None else named.get("site-name")
    if name != site:
        raise ReplyRejected(f"reply names site {name!r}, expected {site!r}")
    arrays = None
    if spec is not None:
        if LOCAL_RECORD not in content.array_records:
            raise ReplyRejected(f"no {LOCAL_RECORD!r} ArrayRecord")
        arrays = _check_arrays(content.array_records[LOCAL_RECORD], spec)
    extra = set(content.array_records) - ({LOCAL_RECORD} if spec is not None else set())
    if extra:
        raise ReplyRejected(f"unexpected array records {sorted(extra)}")
    return AcceptedReply(site=site, index=index, arrays=arrays, report=report)


def check_eval_reply(reply, *, round_index: int, site: str) -> dict[str, float]:
    """Check an evaluate reply: Dice / IoU in [0, 1], counts >= 0 (raises ReplyRejected)."""
    if reply.has_error():
        raise ReplyRejected(f"site error {reply.error.code}: {reply.error.reason}")
    if not reply.has_content() or "eval" not in reply.content.metric_records:
        raise ReplyRejected("no 'eval' MetricRecord")
    m = reply.content.metric_records["eval"]
    if _scalar(m, "round", int) != round_index:
        raise ReplyRejected(f"evaluation for round {m['round']}, expected {round_index}")
    out = {}
    for split in ("val", "test"):
        n = _scalar(m, f"num-{split}", int)
        if n < 0:
            raise ReplyRejected(f"num-{split} < 0")
        out[f"num-{split}"] = n
        for k in ("dice", "iou"):
            v = _scalar(m, f"{split}-{k}", float)
            if not 0.0 <= v <= 1.0:
                raise ReplyRejected(f"{split}-{k} {v} outside [0, 1]")
            out[f"{split}-{k}"] = v
    return out


__all__ = ["ReplyRejected", "AcceptedReply", "check_report", "check_train_reply",
           "check_eval_reply", "LOCAL_RECORD", "REPORT_RECORD", "SITE_RECORD"]

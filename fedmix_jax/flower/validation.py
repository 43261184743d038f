"""Server-side checks of a site's reply before anything of it reaches the aggregate.

:func:`check_train_reply` (arrays as broadcast, finite; scalars typed and bounded by the site's
declared size, losses in the Dice loss range), :func:`check_declaration` and
:func:`check_eval_reply`; each raises :class:`ReplyRejected` with the reason. Nothing but numpy
arrays is decoded. Details: docs/across_sites.md ("Checks of every reply").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fedmix_jax.flower.array_records import REPORT_FIELDS
from fedmix_jax.flower.protocol import LOCAL_RECORD, REPORT_RECORD, SITE_RECORD

ALLOWED_STYPE = "numpy.ndarray"

# A reported loss's range (soft Dice losses) and the rounding a mean of means may add at either end.
LOSS_RANGE = (0.0, 1.0)
LOSS_TOLERANCE = 1e-6


class ReplyRejected(ValueError):
    """A reply that failed a check; ``str(e)`` is the reason."""


@dataclasses.dataclass
class AcceptedReply:
    site: str
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
    """``metrics[name]`` as ``typ`` (int: exact; float: finite)."""
    if name not in metrics:
        raise ReplyRejected(f"missing scalar {name!r}")
    v = metrics[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ReplyRejected(f"{name}: expected a number, got {type(v).__name__}")
    if typ is int:
        if not isinstance(v, int):
            raise ReplyRejected(f"{name}: expected an integer, got {v!r}")
        return int(v)             # exact at any size; the callers bound it
    try:
        f = float(v)
    except OverflowError:         # an integer beyond float64
        raise ReplyRejected(f"{name}: value out of range") from None
    if not math.isfinite(f):
        raise ReplyRejected(f"{name}: non-finite value {v}")
    return typ(f)


def check_report(metrics, *, round_index: int, site: str, declared_size: int) -> dict[str, Any]:
    """The checked scalars of a train reply: counts (``num_pixel + num_weak`` too) in ``[0,
    declared_size]``, ``num_selected_weak <= num_weak``, losses in range, the right round."""
    r = _scalar(metrics, "round", int)
    if r != round_index:
        raise ReplyRejected(f"reply for round {r}, expected round {round_index}")
    rep = {k: _scalar(metrics, k, typ) for k, typ in REPORT_FIELDS.items()}
    counts = {k: v for k, v in rep.items() if REPORT_FIELDS[k] is int}
    if any(v < 0 for v in counts.values()):
        raise ReplyRejected(f"negative count in {counts}")
    if rep["num_weak"] > declared_size or rep["num_selected_weak"] > rep["num_weak"]:
        raise ReplyRejected(f"inconsistent weak counts (weak {rep['num_weak']}, selected "
                            f"{rep['num_selected_weak']}, declared size {declared_size})")
    too_large = [k for k, v in counts.items() if v > declared_size]
    if too_large:
        raise ReplyRejected(f"{too_large[0]} {counts[too_large[0]]} is above the site's declared "
                            f"size {declared_size}")
    if rep["num_pixel"] + rep["num_weak"] > declared_size:
        raise ReplyRejected(f"num_pixel {rep['num_pixel']} + num_weak {rep['num_weak']} is above "
                            f"the site's declared size {declared_size}")
    for k in ("loss1", "loss2"):
        check_loss(k, rep[k])
    return rep


def check_loss(name: str, value: float) -> float:
    """``value`` if in :data:`LOSS_RANGE` ± :data:`LOSS_TOLERANCE` (a soft Dice loss), else
    :class:`ReplyRejected`: refused, never clipped."""
    lo, hi = LOSS_RANGE
    if not lo - LOSS_TOLERANCE <= value <= hi + LOSS_TOLERANCE:
        raise ReplyRejected(f"{name} {value!r} is outside the Dice loss range [{lo:g}, {hi:g}]")
    return value


def check_train_reply(reply, *, round_index: int, site: str, declared_size: int,
                      spec: dict[str, tuple[tuple[int, ...], str]] | None) -> AcceptedReply:
    """One train reply's decoded arrays and scalars; ``spec``: the pair's ``{key: (shape,
    dtype)}`` (None: no arrays)."""
    if reply.has_error():
        raise ReplyRejected(f"site error {reply.error.code}: {reply.error.reason}")
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
    return AcceptedReply(site=site, arrays=arrays, report=report)


# Bounds of a declaration (query.info); sizes stay exact in int32 and float64.
MAX_SITE_SAMPLES = 10**9
MAX_SITE_INDEX = 10**6
MAX_NAME_LENGTH = 128
MAX_IMAGE_SIDE = 1 << 16
MAX_CLASSES = 1024
DECLARATION_INTS = {"site-index": (-1, MAX_SITE_INDEX), "num-train": (0, MAX_SITE_SAMPLES),
                    "num-val": (0, MAX_SITE_SAMPLES), "num-test": (0, MAX_SITE_SAMPLES),
                    "num-classes": (1, MAX_CLASSES)}


def _bounded_int(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ReplyRejected(f"{name}: expected an integer, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise ReplyRejected(f"{name} {int(v)} is outside [{lo}, {hi}]")
    return int(v)


def _bounded_str(name: str, v, max_len: int) -> str:
    if not isinstance(v, str):
        raise ReplyRejected(f"{name}: expected a string, got {type(v).__name__}")
    if not 0 < len(v) <= max_len or not v.isprintable():
        raise ReplyRejected(f"{name}: not a printable string of 1-{max_len} characters")
    return v


def check_declaration(info) -> dict[str, Any]:
    """The checked ``info`` declaration, ``{"site-name": str, "site-index" / "num-*": int,
    "image-shape": (int, int, int), "levels": str}``; ReplyRejected on a bad or missing value."""
    if info is None:
        raise ReplyRejected("no 'info' ConfigRecord")
    missing = [k for k in ("site-name", *DECLARATION_INTS, "image-shape") if k not in info]
    if missing:
        raise ReplyRejected(f"declaration lacks {missing}")
    out = {"site-name": _bounded_str("site-name", info["site-name"], MAX_NAME_LENGTH),
           **{k: _bounded_int(k, info[k], lo, hi) for k, (lo, hi) in DECLARATION_INTS.items()}}
    shape = info["image-shape"]
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise ReplyRejected(f"image-shape: expected 3 integers, got {shape!r:.60}")
    out["image-shape"] = tuple(_bounded_int("image-shape", x, 1, MAX_IMAGE_SIDE) for x in shape)
    levels = info.get("levels", "-")
    out["levels"] = _bounded_str("levels", levels, 64) if levels != "" else "-"
    return out


# An evaluation reply's figures per split, their upper bounds (HD95 px: an image's diagonal).
EVAL_FIGURES = {"dice": 1.0, "iou": 1.0, "hd95": MAX_IMAGE_SIDE * math.sqrt(2.0),
                "dice-present": 1.0, "false-positive-rate": 1.0}
_MAY_BE_NAN = ("hd95", "dice-present", "false-positive-rate")


def _figure(m, name: str, hi: float, may_be_nan: bool) -> float:
    v = m[name] if name in m else None
    if may_be_nan and isinstance(v, float) and math.isnan(v):
        return v
    v = _scalar(m, name, float)     # missing, not a number, non-finite
    if not 0.0 <= v <= hi:
        raise ReplyRejected(f"{name} {v} outside [0, {hi:g}]")
    return v


PER_CLASS_FIGURES = ("dice-per-class", "dice-present-per-class")
MAX_PER_CLASS_VALUES = 256


def _per_class(m, name: str, num_classes: int | None) -> list[float]:
    """A list of ``num_classes`` floats (None: 1 to :data:`MAX_PER_CLASS_VALUES`), NaN or in
    [0, 1]."""
    v = m[name]
    if not isinstance(v, list) or not 0 < len(v) <= MAX_PER_CLASS_VALUES or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise ReplyRejected(f"{name}: expected a list of at most {MAX_PER_CLASS_VALUES} numbers")
    if num_classes is not None and len(v) != num_classes:
        raise ReplyRejected(f"{name}: {len(v)} values, expected one per class ({num_classes})")
    out = [float(x) for x in v]
    if any(not (math.isnan(x) or 0.0 <= x <= 1.0) for x in out):
        raise ReplyRejected(f"{name}: a value outside [0, 1]")
    return out


def check_eval_reply(reply, *, round_index: int, site: str,
                     num_classes: int | None = None) -> dict[str, Any]:
    """The checked evaluate reply: per split the count and :data:`EVAL_FIGURES` in their ranges
    (some may be NaN), the optional :data:`PER_CLASS_FIGURES` lists of ``num_classes`` values."""
    if reply.has_error():
        raise ReplyRejected(f"site error {reply.error.code}: {reply.error.reason}")
    if not reply.has_content() or "eval" not in reply.content.metric_records:
        raise ReplyRejected("no 'eval' MetricRecord")
    m = reply.content.metric_records["eval"]
    if _scalar(m, "round", int) != round_index:
        raise ReplyRejected(f"evaluation for round {m['round']}, expected {round_index}")
    out = {}
    for split in ("val", "test"):
        n = f"num-{split}"
        out[n] = _bounded_int(n, _scalar(m, n, int), 0, MAX_SITE_SAMPLES)
        for k, hi in EVAL_FIGURES.items():
            out[f"{split}-{k}"] = _figure(m, f"{split}-{k}", hi, k in _MAY_BE_NAN)
        for k in PER_CLASS_FIGURES:
            if f"{split}-{k}" in m:
                out[f"{split}-{k}"] = _per_class(m, f"{split}-{k}", num_classes)
    return out

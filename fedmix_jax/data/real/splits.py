"""Seeded, file-order-independent train/validation/test assignment per client.

Every sample belongs to a *group* (the unit that must not straddle splits: HAM10000's
``lesion_id``, so that several photos of one lesion never land in both train and test; elsewhere the
sample id itself). Within each client the groups are ordered by a SHA-256 hash of
``(seed, client, group)``, and taken in that order: first into ``test`` until
``round(test_fraction * n)`` samples are reached (at least 1 when the fraction is > 0), then into
``validation`` until ``round(val_fraction * (n - n_test))`` (at least 1 when > 0), the rest is
``train``. A group that would leave no sample for ``train`` (or, while filling ``test``, none for
``validation``) is passed over for the next one in hash order. The assignment depends only on the set of ids and the seed -- not on file order,
directory names or the machine -- so two builds of the same data in different places agree.

Groups containing a sample that has no mask (possible only in the folders layout, for samples whose
``levels.csv`` level is not ``pixel``) are never put in validation/test (evaluation needs masks);
they always go to ``train``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable

SPLITS = ("train", "validation", "test")


def stable_int(*parts) -> int:
    """A 63-bit integer hash of ``parts`` (their ``str``), stable across runs and machines."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") >> 1


def _target(fraction: float, n: int) -> int:
    if fraction <= 0 or n <= 0:
        return 0
    return max(1, int(round(fraction * n)))


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"--config.data.{name} must be in [0, 1), got {f}")


def assign_splits(items: Iterable[tuple[str, str, str, bool]], seed: int, test_fraction: float,
                  val_fraction: float) -> dict[str, str]:
    """Assign each sample to ``'train'``, ``'validation'`` or ``'test'``.

    Args:
      items: ``(sample_id, client, group, eligible)`` tuples; ``eligible`` is False for samples that
        may only be in train (no mask).
      seed: the split seed.
      test_fraction: fraction of each client's samples held out for test.
      val_fraction: fraction of the remaining (non-test) samples held out for validation.

    Returns:
      ``{sample_id: split}``.
    """
    check_fractions(test_fraction, val_fraction)
    by_client: dict[str, dict[str, list[tuple[str, bool]]]] = defaultdict(lambda: defaultdict(list))
    for sid, client, group, eligible in items:
        by_client[client][group].append((sid, bool(eligible)))
    out: dict[str, str] = {}
    for client, groups in by_client.items():
        n = sum(len(v) for v in groups.values())
        order = sorted(groups, key=lambda g: (stable_int("split", seed, client, g), g))
        eligible = [g for g in order if all(e for _, e in groups[g])]
        n_test = _target(test_fraction, n)
        n_val_min = 1 if val_fraction > 0 else 0
        taken: set[str] = set()
        used = count = 0
        for g in eligible:
            if count >= n_test:
                break
            if n - used - len(groups[g]) < 1 + n_val_min:   # keep room for train (and val)
                continue
            taken.add(g)
            count += len(groups[g])
            used += len(groups[g])
            for sid, _ in groups[g]:
                out[sid] = "test"
        n_val = _target(val_fraction, n - count)
        count = 0
        for g in eligible:
            if count >= n_val:
                break
            if g in taken or n - used - len(groups[g]) < 1:  # keep room for train
                continue
            taken.add(g)
            count += len(groups[g])
            used += len(groups[g])
            for sid, _ in groups[g]:
                out[sid] = "validation"
        for g in order:
            if g not in taken:
                for sid, _ in groups[g]:
                    out[sid] = "train"
    return out


def rank_in_client(sample_id: str, client: str, seed: int) -> int:
    """The stable order of samples inside a client's split (records are written in this order)."""
    return stable_int("order", seed, client, sample_id)

"""Seeded, file-order-independent train/validation/test assignment per client by split group
(:func:`assign_splits`; groups ordered by a SHA-256 hash, :func:`stable_int`). The rules:
docs/data.md ("Splits").
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
    return max(1, int(round(fraction * n))) if fraction > 0 and n > 0 else 0


def _take(groups: dict, eligible: list[str], taken: set[str], target: int, room: int) -> list:
    """Untaken eligible groups until ``target`` samples, each leaving ``room`` samples untaken."""
    chosen, count = [], 0
    left = sum(len(v) for g, v in groups.items() if g not in taken)
    for g in eligible:
        if count >= target:
            break
        if g in taken or left - len(groups[g]) < room:
            continue
        chosen.append(g)
        taken.add(g)
        count += len(groups[g])
        left -= len(groups[g])
    return chosen


def assign_splits(items: Iterable[tuple[str, str, str, bool]], seed: int, test_fraction: float,
                  val_fraction: float) -> dict[str, str]:
    """``{sample_id: 'train' | 'validation' | 'test'}`` of ``(sample_id, client, group,
    eligible)`` items (``eligible`` False: train only, no mask): ``test_fraction`` of each
    client's samples for test, then ``val_fraction`` of the rest for validation (both checked
    by ``make_config``)."""
    by_client: dict[str, dict[str, list[tuple[str, bool]]]] = defaultdict(lambda: defaultdict(list))
    for sid, client, group, eligible in items:
        by_client[client][group].append((sid, bool(eligible)))
    out: dict[str, str] = {}
    for client, groups in by_client.items():
        n = sum(len(v) for v in groups.values())
        order = sorted(groups, key=lambda g: (stable_int("split", seed, client, g), g))
        eligible = [g for g in order if all(e for _, e in groups[g])]
        taken: set[str] = set()
        test = _take(groups, eligible, taken, _target(test_fraction, n),
                     2 if val_fraction > 0 else 1)
        val = _take(groups, eligible, taken,
                    _target(val_fraction, n - sum(len(groups[g]) for g in test)), 1)
        train = [g for g in order if g not in taken]
        for split, chosen in (("test", test), ("validation", val), ("train", train)):
            for g in chosen:
                out.update((sid, split) for sid, _ in groups[g])
    return out


def rank_in_client(sample_id: str, client: str, seed: int) -> int:
    """The stable order of samples inside a client's split (records are written in this order)."""
    return stable_int("order", seed, client, sample_id)

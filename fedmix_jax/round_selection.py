"""Which round's model a run keeps: the score of a round's validation figures.

The figures are those of :func:`~fedmix_jax.evaluation.evaluate` (or their JSON record,
:func:`~fedmix_jax.records.eval_record`, where NaN is null): ``mean_dice``,
``mean_dice_present`` and ``mean_false_positive_rate``, each a mean over the clients that have
such images.

* ``mean_dice`` (the default): the mean validation Dice over clients, classes and images. An
  (image, class) pair without that lesion scores 1 when nothing is predicted, so on a split where
  most pairs hold no lesion -- every multi-class one -- a model that predicts little scores well
  and an early, timid round can win.
* ``lesion_balanced``: ``(D + (1 - F)) / 2``, with ``D`` the mean Dice on the images that
  contain a lesion (per class, over the images with that class) and ``F`` the false-positive
  rate on the lesion-free images (share with any predicted foreground pixel): the two figures
  the efficacy benchmark reports, weighed equally whatever the share of lesion-free images.
  A split without lesion-free images scores ``D``; one without lesion images ``1 - F``.

A higher score is better; a NaN or missing score never wins.
"""

from __future__ import annotations

import math
from typing import Mapping

SELECT_ROUND_BY = ("mean_dice", "lesion_balanced")
# how the closing table names each criterion ("the round with the best ...")
SELECTION_WORDS = {"mean_dice": "mean validation Dice",
                   "lesion_balanced": "validation (Dice on lesion images + 1 - FP rate) / 2"}


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def selection_score(figures: Mapping, select_by: str = "mean_dice") -> float:
    """The score of validation ``figures`` under ``select_by`` (one of :data:`SELECT_ROUND_BY`);
    NaN where the figures it needs are missing or not finite. Raises ValueError for another
    ``select_by``."""
    if select_by == "mean_dice":
        score = _finite(figures.get("mean_dice"))
        return math.nan if score is None else score
    if select_by == "lesion_balanced":
        dice = _finite(figures.get("mean_dice_present"))
        fp = _finite(figures.get("mean_false_positive_rate"))
        terms = [t for t in (dice, None if fp is None else 1.0 - fp) if t is not None]
        return sum(terms) / len(terms) if terms else math.nan
    raise ValueError(f"select_round_by must be one of {', '.join(SELECT_ROUND_BY)}, "
                     f"got {select_by!r}")


def is_better(figures: Mapping, best: Mapping | None, select_by: str = "mean_dice") -> bool:
    """Whether validation ``figures`` beat ``best`` (None: no round yet) under ``select_by``."""
    score = selection_score(figures, select_by)
    if not math.isfinite(score):
        return False
    if best is None:
        return True
    best_score = selection_score(best, select_by)
    return not math.isfinite(best_score) or score > best_score


__all__ = ["SELECTION_WORDS", "SELECT_ROUND_BY", "is_better", "selection_score"]

"""The run loop every training mode shares (the main job, in memory or streamed, and the Flower
ServerApp): :class:`RunLoop` owns the order, the evaluation and checkpoint cadence and the best
round (highest finite mean validation Dice); a round's line goes to ``metrics.jsonl`` *before*
checkpoint r. What a round, an evaluation and a checkpoint are belongs to the mode
(:class:`RoundSteps`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from fedmix_jax.records import add_evaluation


class RoundSteps(Protocol):
    """A mode's side of :class:`RunLoop` (``state``: whatever the mode carries between rounds)."""

    def run_round(self, r: int, state, evaluating: bool) -> tuple[Any, dict]:
        """Round ``r``: ``(state, record)``, the record holding ``round_time_s``."""

    def evaluate_round(self, r: int, state) -> tuple[dict, dict, dict]:
        """``(val, test, extra)`` figures of the round's model (``extra``: more keys of the
        record and of the best round, e.g. local models' test figures; may be empty)."""

    def new_best(self, r: int, state) -> None:
        """Round ``r`` is the best so far: keep its model."""

    def save(self, r: int, state, best: dict, records: list) -> None:
        """Checkpoint round ``r``."""

    def round_done(self, r: int, record: dict) -> None:
        """After round ``r``'s line and checkpoint (progress output)."""


def is_better(val: dict, best_val: dict | None) -> bool:
    """Whether validation figures ``val`` beat the best so far (a NaN / missing Dice never does)."""
    v = val.get("mean_dice")
    if v is None or not math.isfinite(float(v)):
        return False
    return best_val is None or float(v) > float(best_val["mean_dice"])


class RunLoop:
    """The cadence of a run and where its records go: ``metrics`` (a
    :class:`~fedmix_jax.records.MetricsFile`), ``records`` and ``eval_times`` (appended to)."""

    def __init__(self, num_rounds: int, eval_every: int, checkpoint_every: int, metrics,
                 records: list, eval_times: list):
        self.num_rounds, self.eval_every = int(num_rounds), int(eval_every)
        self.checkpoint_every = int(checkpoint_every)
        self.metrics, self.records, self.eval_times = metrics, records, eval_times

    def run(self, steps: RoundSteps, state, start: int, best: dict):
        """Rounds ``start + 1 .. num_rounds``: ``(state, best)`` after the last."""
        for r in range(start + 1, self.num_rounds + 1):
            evaluating = r % self.eval_every == 0 or r == self.num_rounds
            state, rec = steps.run_round(r, state, evaluating)
            if evaluating:
                t1 = time.perf_counter()
                val, test, extra = steps.evaluate_round(r, state)
                self.eval_times.append(time.perf_counter() - t1)
                add_evaluation(rec, val, test, self.eval_times[-1], extra or None)
                if is_better(val, best["val"]):
                    best = {"round": r, "val": val, "test": test, **(extra or {})}
                    steps.new_best(r, state)
            self.metrics.append(rec)
            self.records.append(rec)
            if r % self.checkpoint_every == 0 or r == self.num_rounds:
                steps.save(r, state, best, self.records)
            steps.round_done(r, rec)
        return state, best


__all__ = ["RoundSteps", "RunLoop"]

"""The per-round records of a run and ``metrics.jsonl`` (:class:`MetricsFile`), the file that holds
them; :meth:`MetricsFile.reconcile` makes the file hold exactly a resumed checkpoint's records,
rebuilding a damaged one (kept in ``damaged/``). Keys and rules: docs/main_job.md.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
from absl import logging

from fedmix_jax import rundir
from fedmix_jax.errors import WorkdirError


def _tolist(x) -> list:
    return np.asarray(x).tolist()


def check_checkpoint_record(step: int, extra: dict) -> None:
    """Raise :class:`~fedmix_jax.checkpointing.CheckpointDamagedError` unless folder ``step``'s
    record holds round ``step`` (not a renamed or swapped folder) and its ``best`` tracker."""
    from fedmix_jax.checkpointing import CheckpointDamagedError

    rnd = extra.get("round")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd != int(step):
        raise CheckpointDamagedError(step, f"its record holds round {rnd!r}, not {step} (a "
                                     "renamed or swapped checkpoint folder)")
    best = extra.get("best")
    if not isinstance(best, dict) or "round" not in best:
        raise CheckpointDamagedError(step, "its record lacks the best-validation tracker ('best')")


def round_record(r: int, m, round_time: float) -> dict:
    """The record of round ``r`` from its per-client metrics ``m`` (host NumPy arrays)."""
    rep = m.reports
    weak = np.asarray(rep.num_weak)
    return {"round": r, "loss1": _tolist(rep.loss1), "loss2": _tolist(rep.loss2),
            "counts": _tolist(rep.num_usable), "weak": _tolist(weak),
            "selected_weak": _tolist(rep.num_selected_weak),
            "selection_rate": _tolist(np.asarray(rep.num_selected_weak) / np.maximum(weak, 1)),
            "steps": _tolist(rep.steps), "weights": _tolist(m.weights), "round_time_s": round_time}


# Figures of :func:`fedmix_jax.evaluation.evaluate` a record keeps: per client [C] and their mean.
# HD95 in px; dice_present: Dice on images with a lesion; false_positive_rate: share of lesion-free
# images with any predicted foreground.
EVAL_FIGURES = ("dice", "iou", "hd95", "dice_present", "false_positive_rate")
# Per class: [C][K] per client and [K] their mean (``mean_dice_per_class``, ...).
PER_CLASS_FIGURES = ("dice_per_class", "dice_present_per_class")


def _json_numbers(x):
    """A number or (nested) array as JSON numbers (nested lists); NaN (nothing measured) -> null."""
    if np.ndim(x):
        return [_json_numbers(v) for v in np.asarray(x)]
    return float(x) if np.isfinite(float(x)) else None


def eval_record(ev: dict) -> dict:
    """Per-client figures and their means (``mean_<figure>``) of ``evaluate``; NaN becomes null."""
    return {key: _json_numbers(ev[key]) for name in EVAL_FIGURES + PER_CLASS_FIGURES if name in ev
            for key in (name, f"mean_{name}")}


def add_evaluation(rec: dict, val: dict, test: dict, eval_time: float,
                   extra: dict | None = None) -> None:
    """Add ``<split>_<figure>`` keys: val, test and the ``extra`` ones (``local_test``,
    ``consensus_test``)."""
    for split, ev in (("val", val), ("test", test), *(extra or {}).items()):
        for k, v in ev.items():
            rec[f"{split}_{k}"] = v
    rec["eval_time_s"] = eval_time


def evaluation_of(rec: dict) -> dict:
    """``{"round", "val", "test"}`` of an evaluation round's record."""
    keys = [k for name in EVAL_FIGURES + PER_CLASS_FIGURES for k in (name, f"mean_{name}")]
    out = {"round": rec["round"]}
    for split in ("val", "test", "local_test", "consensus_test"):
        if split in ("val", "test") or f"{split}_mean_dice" in rec:
            out[split] = {k: rec[f"{split}_{k}"] for k in keys if f"{split}_{k}" in rec}
    return out


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` (lines that are not JSON are skipped)."""
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):     # also a blank line
                    out.append(json.loads(line))
    return out


class MetricsFile:
    """``<workdir>/metrics.jsonl``: one JSON line per round, appended as rounds finish."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, rundir.METRICS_FILE)

    def append(self, rec: dict) -> None:
        """Append the line of one round (a failed write raises WorkdirError)."""
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError as e:
            raise rundir.os_error(e, f"append round {rec['round']} to {self.path}") from None

    def _lines(self) -> tuple[list[str], bool] | None:
        """(non-empty lines, whether the text ends with a newline), or None without a file."""
        if not os.path.lexists(self.path):
            return None
        try:
            with open(self.path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError as e:
            raise rundir.os_error(e, f"read {self.path}") from None
        return [ln for ln in text.split("\n") if ln.strip()], (not text or text.endswith("\n"))

    def reconcile(self, history: list[dict] | None, last_round: int) -> list[dict]:
        """Make the file hold (and return) ``history``, the checkpoint's records of rounds
        1..``last_round`` ([]: a fresh start; None, an older version's: WorkdirError)."""
        if history is None:
            raise WorkdirError(
                f"the checkpoint of round {last_round} in {self.workdir} was written by an older "
                "version of fedmix_jax, without the rounds' records; resume it with that version, "
                "or start afresh in another --workdir")
        found = self._lines()
        lines, ends_with_newline = found if found is not None else ([], True)
        problem = "it is missing" if found is None and history else None
        for i, want in enumerate([] if problem else history):
            if i >= len(lines):
                problem = f"round {want['round']} is missing"
                break
            try:
                got = json.loads(lines[i])
            except json.JSONDecodeError:
                cut = i == len(lines) - 1 and not ends_with_newline
                problem = (f"line {i + 1} is cut off" if cut else f"line {i + 1} is not JSON")
                break
            if json.dumps(got, sort_keys=True) != json.dumps(want, sort_keys=True):  # NaN == NaN
                r = got.get("round") if isinstance(got, dict) else None
                problem = (f"line {i + 1} (round {r}) differs from the checkpoint's record"
                           if r == want["round"] else
                           f"line {i + 1} holds round {r} where round {want['round']} belongs")
                break
        if problem:
            kept = "" if found is None else f"; the damaged file is kept as {self._set_aside()}"
            logging.warning("%s: %s; rebuilt from the checkpoint of round %d (rounds 1..%d)%s",
                            self.path, problem, last_round, last_round, kept)
            rundir.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in history))
        elif found is not None and (len(lines) > len(history) or not ends_with_newline):
            dropped = len(lines) - len(history)
            logging.info("%s: dropped %d line(s) after round %d (written after the checkpoint; "
                         "those rounds run again)", self.path, dropped, last_round)
            rundir.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in history))
        return [dict(r) for r in history]

    def _set_aside(self) -> str:
        try:
            return rundir.move_aside(self.path, os.path.join(self.workdir, rundir.DAMAGED_DIR),
                                     rundir.METRICS_FILE)
        except OSError as e:
            raise rundir.os_error(e, f"move the damaged {self.path} aside") from None


__all__ = ["read_metrics"]

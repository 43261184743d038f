"""The run every training mode shares (the main job, in memory or streamed, and the Flower
ServerApp): :class:`RunLoop` resumes from the newest checkpoint, owns the order, the evaluation
and checkpoint cadence and the best round (highest finite validation score,
:mod:`fedmix_jax.round_selection`; ``config.select_round_by``), writes a
round's line to ``metrics.jsonl`` *before* checkpoint r, then ``summary.json`` and the plots.
What a round and an evaluation are belongs to the mode (:class:`RoundSteps`, its subclass).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Protocol

from fedmix_jax import rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.job_settings import JobSettings
from fedmix_jax.records import MetricsFile, add_evaluation, check_checkpoint_record, evaluation_of
from fedmix_jax.round_selection import is_better


class RoundSteps(Protocol):
    """A mode's side of :class:`RunLoop` (``state``: whatever the mode carries between rounds)."""

    def run_round(self, r: int, state, evaluating: bool) -> tuple[Any, dict]:
        """Round ``r``: ``(state, record)``, the record holding ``round_time_s``."""

    def evaluate_round(self, r: int, state) -> tuple[dict, dict, dict]:
        """``(val, test, extra)`` figures of the round's model (``extra``: more keys of the
        record and of the best round, e.g. local models' test figures; may be empty)."""

    def new_best(self, r: int, state) -> None:
        """Round ``r`` is the best so far: keep its model."""

    def round_done(self, r: int, record: dict) -> None:
        """After round ``r``'s line and checkpoint (progress output)."""


class RunLoop:
    """One run in a locked workdir; a subclass supplies the :class:`RoundSteps` of its mode.
    ``records`` (the rounds' lines), ``round_times`` and ``eval_times`` are appended to."""

    def __init__(self, config, cfg_dict: dict, workdir: str, client_names, executor: str):
        self.config, self.cfg_dict, self.workdir = config, cfg_dict, workdir
        self.client_names, self.executor_name = list(client_names), executor
        self.num_rounds = int(config.num_rounds)
        self.select_by = JobSettings.from_config(config).select_round_by
        self.metrics = MetricsFile(workdir)
        self.checkpointer = Checkpointer.for_workdir(workdir, int(config.keep_checkpoints))
        self.round_times, self.eval_times = [], []

    def check_more(self, step: int, extra: dict) -> None:
        """Refuse checkpoint ``step`` for a mode's own reason (after the config check)."""

    def check_checkpoint(self, step: int, extra: dict) -> None:
        rundir.check_config(self.workdir, self.cfg_dict, extra.get("config"), f"checkpoint {step}")
        self.check_more(step, extra)
        check_checkpoint_record(step, extra)

    def resumed(self, step: int, extra: dict) -> None:
        """Checkpoint ``step`` was restored (``best`` and ``start`` are set)."""

    def restore_newest(self, state, best_params):
        """``state`` (initial), or that of the newest intact checkpoint; sets ``best_params``,
        ``best``, ``start``, ``records`` (``metrics.jsonl`` made to match), writes config.json."""
        self.best_params, self.start, history = best_params, 0, []
        self.best: dict[str, Any] = {"round": 0, "val": None, "test": None}
        found = self.checkpointer.restore_newest(state, best_params, check=self.check_checkpoint)
        if found is not None:
            step, state, self.best_params, extra = found
            self.best, self.start = extra["best"], int(extra["round"])
            history = extra.get("history")          # None: written by an older version (refused)
            self.resumed(step, extra)
        self.records = self.metrics.reconcile(history, self.start)
        rundir.atomic_write_text(os.path.join(self.workdir, rundir.CONFIG_FILE),
                                 json.dumps(self.cfg_dict, indent=2) + "\n")
        return state

    def run(self, state):
        """Rounds ``start + 1 .. num_rounds``: the state after the last (sets ``best``)."""
        for r in range(self.start + 1, self.num_rounds + 1):
            evaluating = r % int(self.config.eval_every) == 0 or r == self.num_rounds
            state, rec = self.run_round(r, state, evaluating)
            if evaluating:
                t1 = time.perf_counter()
                val, test, extra = self.evaluate_round(r, state)
                self.eval_times.append(time.perf_counter() - t1)
                add_evaluation(rec, val, test, self.eval_times[-1], extra or None)
                if is_better(val, self.best["val"], self.select_by):
                    self.best = {"round": r, "val": val, "test": test, **(extra or {})}
                    self.new_best(r, state)
            self.metrics.append(rec)
            self.records.append(rec)
            if r % int(self.config.checkpoint_every) == 0 or r == self.num_rounds:
                self.save(r, state)
            self.round_done(r, rec)
        return state

    def save(self, r: int, state) -> None:
        """Checkpoint round ``r``: ``state`` and ``best_params`` as they are."""
        self.checkpointer.save(r, state, self.best_params, {
            "round": r, "best": self.best, "config": self.cfg_dict, "executor": self.executor_name,
            "client_names": self.client_names, "history": self.records})

    def last_evaluation(self) -> dict | None:
        """The figures of the last evaluated round in ``records`` (None: none yet)."""
        return next((evaluation_of(rec) for rec in reversed(self.records)
                     if "val_mean_dice" in rec), None)

    def summary(self, strategy: str, levels: list, class_names: list, final: dict | None,
                t_start: float, backend: str, timing: dict, **more) -> dict:
        """The content of ``summary.json`` (keys: docs/main_job.md; ``more`` before ``config``)."""
        timing = {"total_s": time.time() - t_start, "rounds_this_process": len(self.round_times),
                  "backend": backend, "executor": self.executor_name, **timing}
        return {"workdir": self.workdir, "strategy": strategy, "seed": int(self.config.seed),
                "client_names": self.client_names, "levels": levels, "class_names": class_names,
                "num_rounds": self.num_rounds, "rounds_completed": max(self.start, self.num_rounds),
                "resumed_from": self.start, "best": self.best, "final": final, "timing": timing,
                **more, "config": self.cfg_dict}

    def write_outputs(self, summary: dict, t_start: float, write_plots: bool, **plot_args) -> dict:
        """``summary.json``, then the plots (``plot_args``: more of ``write_run_plots``') and
        ``summary.json`` again with their names."""
        path = os.path.join(self.workdir, rundir.SUMMARY_FILE)
        rundir.atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
        if write_plots and self.records:
            from fedmix_jax.plots import write_run_plots

            try:
                paths = write_run_plots(self.workdir, self.records, self.client_names,
                                        summary["levels"], self.best["round"] or None, **plot_args)
            except OSError as e:
                raise rundir.os_error(e, f"write the plots into {self.workdir} (the run, its "
                                         "checkpoint, metrics.jsonl and summary.json are "
                                         "complete)") from None
            summary["plots"] = [os.path.basename(p) for p in paths]
            summary["timing"]["total_s"] = time.time() - t_start
            rundir.atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
        return summary


__all__ = ["RoundSteps", "RunLoop"]

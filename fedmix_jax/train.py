"""The training job: ``train_and_evaluate(config, workdir)`` runs FedMix (or a baseline) end to end.

Checks the workdir and config, loads the federation (streamed when over the device budget), then
runs the rounds in the locked workdir (:class:`~fedmix_jax.run_loop.RunLoop`: resume, checkpoints,
``summary.json``, plots). Details: docs/main_job.md; faults: docs/what_can_go_wrong.md.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedmix_jax import compilation_cache, cpu_cores, executors, placement, rundir
from fedmix_jax.checkpointing import remove_temporaries
from fedmix_jax.config import (NOTHING_TRAINED, RoundConfig, build_model, build_round_config,
                               resolve_warmup_rounds, validate_run)
from fedmix_jax.config_checks import check_config_values, check_num_devices
from fedmix_jax.consensus import ConsensusModel
from fedmix_jax.console import Progress
from fedmix_jax.data.federation import Federation
from fedmix_jax.diagnostics import diagnostics_of_run
from fedmix_jax.job_settings import JobSettings
from fedmix_jax.run_loop import RunLoop
from fedmix_jax.data.streamed_sources import (ArraySource, SplitSource, choose_mode,
                                              load_run_federation)
from fedmix_jax.errors import (ConfigError, OutOfMemoryError, RunError, TrainingDivergedError,
                               first_line, is_out_of_memory)
from fedmix_jax.evaluation import evaluate
from fedmix_jax.compiled_round import init_state, make_round_fn
from fedmix_jax.records import eval_record, round_record
from fedmix_jax.round import broadcast
from fedmix_jax.streaming import StreamedRound, StreamOptions
from fedmix_jax.summary import level_names, timing


class _Run(RunLoop):
    """One invocation of the job in a locked workdir (the steps of :func:`train_and_evaluate`)."""

    def __init__(self, config, cfg_dict: dict, workdir: str, federation: Federation,
                 round_config: RoundConfig, model, may_not_learn: bool = False):
        super().__init__(config, cfg_dict, workdir, federation.client_names, round_config.executor)
        self.may_not_learn, self.verbose = may_not_learn, False   # verbose: a progress bar
        self.federation, self.round_config, self.model = federation, round_config, model
        self.executor = executors.for_config(round_config)
        self.settings = JobSettings.from_config(config)
        self.local = not round_config.strategy.aggregates
        memory = self.settings.memory
        self.stream_options = StreamOptions(block_steps=memory.stream_block_steps)
        # Streamed (docs/streaming.md): the training split exceeds config.data's device budget.
        self.streamed, self.mode_reason = choose_mode(
            federation.train, memory.device_data_budget_gb,
            placement.train_is_compact(memory.compact, round_config, federation.num_clients))
        if self.settings.fine_tune_epochs and (self.local or self.streamed):
            raise ConfigError(
                f"fine_tune_epochs={self.settings.fine_tune_epochs}: fine-tuning each site's "
                "consensus model needs " + ("a strategy that aggregates (there is no global "
                f"model in {round_config.strategy.name})" if self.local else
                f"the training data on the device, and this run is streamed "
                f"({self.mode_reason})") + "; set --config.fine_tune_epochs=0")

    def _guard(self, doing: str, fn, *args, **kwargs):
        """``fn(*args)``; an out-of-memory error becomes :class:`OutOfMemoryError` with advice."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- only out-of-memory errors are translated
            if not is_out_of_memory(e):
                raise
            rc = self.round_config
            raise OutOfMemoryError(
                f"out of memory {doing} on {jax.default_backend()} ({first_line(e)}). It does not "
                f"fit: try a smaller --config.train.batch_size (now {rc.batch_size}) or "
                f"--config.train.inference_chunk (now {rc.inference_chunk}; pseudo-labels and "
                f"evaluation run in chunks of it){self.executor.oom_hint()}. Nothing of this "
                f"round was written; the last checkpoint is {self._last_checkpoint()}") from None

    def _last_checkpoint(self) -> str:
        kept = self.checkpointer.kept_step()
        return "none" if kept is None else f"round {kept}"

    def _evaluate(self, doing: str, state, split, local: bool | str | None = None) -> dict:
        """The record of ``split``'s evaluation (out of memory: named by ``doing``). ``local``:
        True for each client's own model 1, ``"consensus"`` for each client's
        :class:`~fedmix_jax.consensus.ConsensusModel` of the global and its own model 1."""
        local = self.local if local is None else local      # True: each client's own model 1
        rc = self.round_config      # streamed: held-out images go to the device in blocks
        block = self.stream_options.block_steps * rc.batch_size if self.streamed else None
        pair = state.client_params if local else state.global_params

        def run():
            params = self.executor.eval_params(pair[0])
            model = self.model
            if local == "consensus":    # leaves [C, ...] each: the global model, the client's
                g = self.executor.eval_params(state.global_params[0])
                model, params = ConsensusModel(model), (broadcast(g, split.num_clients), params)
            return evaluate(model, params, split, per_client_params=bool(local),
                            chunk_size=rc.inference_chunk, block_size=block)

        return eval_record(self._guard(doing, run))

    def restore(self):
        """The initial or restored state (:meth:`~fedmix_jax.run_loop.RunLoop.restore_newest`)."""
        fed, rc = self.federation, self.round_config
        state = self._guard("initialising the models", init_state, self.model,
                            jax.random.PRNGKey(int(self.config.seed)),
                            tuple(fed.train.images.shape[2:]), fed.num_clients, rc)
        self.new_best(0, state)
        return self.restore_newest(state, self.best_params)

    def resumed(self, step: int, extra: dict) -> None:
        if extra.get("executor") not in (None, self.executor_name):
            logging.info("checkpoint %d was written with executor %r; continuing with %r "
                         "(results agree to float tolerance, not bit for bit)", step,
                         extra["executor"], self.executor_name)

    def prepare(self, state):
        """The round function, the state placed for it, the data on the device(s); streamed:
        val / test stay on the host and are evaluated in blocks."""
        rc, compact = self.round_config, self.settings.memory.compact
        if self.streamed:
            train = self.federation.train
            source = train if isinstance(train, SplitSource) else ArraySource(train)
            self.round_fn = StreamedRound(self.model, rc, source, self.stream_options)
            host, self.federation, self.plot_split = placement.take_host_arrays(
                self.federation, ("val", "test"))
            self.train_data = None
            self.val, self.test = placement.held_out_on_host(host, compact)
            if self.executor.name != "map":
                logging.info("streamed: clients run one after another on one device (executor "
                             "%r does not apply)", self.executor.name)
            return state
        self.round_fn = make_round_fn(self.model, rc)
        state = self.executor.place_state(state, self.round_fn)
        # The host arrays are handed over and dropped as they are placed (docs/memory.md).
        host, self.federation, self.plot_split = placement.take_host_arrays(self.federation)
        self.train_data, self.val, self.test = self._guard(
            "putting the data on the device", placement.place_splits, host, self.round_fn, rc,
            compact)
        return state

    def _round(self, state):
        args = () if self.streamed else (self.train_data,)
        state, metrics = self.round_fn(state, *args)
        return state, jax.device_get(metrics)  # only the [C] metrics come to the host

    def _check_finite(self, r: int, m) -> None:
        """A NaN/inf loss or weight stops the run before anything of this round is written."""
        rep = m.reports
        finite = np.isfinite(rep.loss1) & np.isfinite(rep.loss2) & np.isfinite(m.weights)
        if finite.all():
            return
        bad = [int(c) for c in np.nonzero(~finite)[0]]
        where = ", ".join(f"client {c} ({self.client_names[c]}): loss1={rep.loss1[c]}, "
                          f"loss2={rep.loss2[c]}, weight={m.weights[c]}" for c in bad)
        self.checkpointer.wait_until_finished()
        raise TrainingDivergedError(
            f"non-finite training loss or weight in round {r} at {where}. The run stopped; no "
            f"checkpoint of round {r} was written (last checkpoint: {self._last_checkpoint()}). "
            f"Check the data of {'these clients' if len(bad) > 1 else 'this client'} and the "
            "learning rate.", round=r, clients=bad)

    def train(self, state, progress: Progress):
        """Rounds ``start + 1 .. num_rounds`` (:class:`~fedmix_jax.run_loop.RunLoop`)."""
        self.progress, self.verbose = progress, progress.bar is not None
        self.last_dice = self.best["val"]["mean_dice"] if self.best.get("val") else None
        return self.run(state)

    def run_round(self, r: int, state, evaluating: bool):
        diag = evaluating and self._guard("the diagnostics", diagnostics_of_run, self, state)
        t0 = time.perf_counter()
        state, m = self._guard(f"in round {r}", self._round, state)
        round_time = time.perf_counter() - t0
        self.round_times.append(round_time)
        self._check_finite(r, m)
        if r == 1 and self.may_not_learn and not np.any(np.asarray(m.reports.steps) > 0):
            raise ConfigError(NOTHING_TRAINED)
        return state, round_record(r, m, round_time) | (diag or {})

    def evaluate_round(self, r: int, state):
        rv, rt = (self._evaluate(f"evaluating round {r}", state, split)
                  for split in (self.val, self.test))
        lt = {}
        if self.settings.eval_local_models:   # each client's local model 1 on its test split
            lt["local_test"] = self._evaluate(f"evaluating the local models of round {r}",
                                              state, self.test, True)
            lt["consensus_test"] = self._evaluate(
                f"evaluating the consensus models of round {r}", state, self.test, "consensus")
        self.last_dice = rv["mean_dice"]
        return rv, rt, lt

    def new_best(self, r: int, state) -> None:
        pair = state.client_params if self.local else state.global_params
        self.best_params = jax.tree.map(jnp.copy, pair[0])

    def round_done(self, r: int, record: dict) -> None:
        self.progress.update(record, self.num_rounds, self.last_dice)

    def finish(self, state, t_start: float, write_plots: bool) -> dict[str, Any]:
        completed = max(self.start, self.num_rounds)
        if self.start >= self.num_rounds:
            logging.info("%s already holds %d rounds (num_rounds=%d); nothing to train",
                         self.workdir, self.start, self.num_rounds)
        final = self.last_evaluation()
        if final is None or final["round"] != completed:
            # not evaluated (resumed with fewer rounds than the checkpoint's): evaluate it now
            final = {"round": completed, **{
                name: self._evaluate("evaluating the last round", state, split)
                for name, split in (("val", self.val), ("test", self.test))}}
        more = {}
        if self.settings.fine_tune_epochs:
            more["fine_tuned_consensus"] = self._guard(
                "fine-tuning the sites' consensus models", self._fine_tuned_consensus, state)
        fed = self.federation
        summary = self.summary(
            self.round_config.strategy.name, level_names(fed), list(fed.class_names), final,
            t_start, jax.default_backend(), timing(self.round_times, self.eval_times), **more)
        return self.write_outputs(summary, t_start, write_plots, model=self.model,
                                  params=self.best_params, split=self.plot_split,
                                  per_client_params=self.local)

    def _fine_tuned_consensus(self, state) -> dict:
        """``summary.json``'s ``fine_tuned_consensus``: from the last round's state, each site
        fine-tunes its copy for up to ``fine_tune_epochs`` more local epochs and keeps the epoch
        and mask threshold its validation split prefers
        (:func:`~fedmix_jax.fine_tuning.fine_tuned_consensus`); its consensus model's figures on
        its test split (``test``, an evaluation record), with ``round``, ``epochs`` [C],
        ``thresholds`` [C] and ``val_dice_present`` [C] (null: a site without a validation
        lesion image)."""
        from fedmix_jax.fine_tuning import fine_tuned_consensus

        rc, r, ex = self.round_config, int(state.round), self.executor
        msg = (f"after round {r}: each site fine-tunes its copy for up to "
               f"{self.settings.fine_tune_epochs} more local epochs (its consensus model's mask)")
        logging.info("%s", msg)
        if self.verbose:
            print(f"[fedmix_jax] {msg}", file=sys.stderr, flush=True)
        g = ex.eval_params(state.global_params[0])
        tuned = fine_tuned_consensus(
            self.model, rc, g, state.client_params, state.opt_state, self.train_data, self.val,
            jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), r), rc.hparams(), r,
            max_epochs=self.settings.fine_tune_epochs)
        params = (broadcast(g, self.test.num_clients), ex.eval_params(state.client_params[0]),
                  jnp.asarray(tuned.thresholds), ex.eval_params(tuned.mask_params))
        test = evaluate(ConsensusModel(self.model), params, self.test, per_client_params=True,
                        chunk_size=rc.inference_chunk)
        val = [float(v) if np.isfinite(v) else None for v in tuned.val_dice]
        return {"round": r, "epochs": [int(e) for e in tuned.epochs],
                "thresholds": [round(float(t), 3) for t in tuned.thresholds],
                "val_dice_present": val, "test": eval_record(test)}

    def interrupted(self) -> None:
        """Ctrl-C: finish a checkpoint being written, then name the one kept."""
        try:
            self.checkpointer.wait_until_finished()
        except RunError as e:       # the pending save failed
            logging.warning("%s", e)
        except KeyboardInterrupt:   # a second Ctrl-C
            pass
        remove_temporaries(self.checkpointer.directory)
        kept = self.checkpointer.kept_step()
        where = ("none" if kept is None else
                 f"round {kept} ({os.path.join(self.checkpointer.directory, str(kept))})")
        logging.warning("interrupted; the last checkpoint is %s. Rerun the same command to "
                        "resume.", where)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, quiet: bool = False,
                       federation: Federation | None = None, write_plots: bool = True
                       ) -> dict[str, Any]:
    """Train ``config.strategy`` for ``config.num_rounds`` rounds in ``workdir`` (created;
    rerunning resumes) and return the summary (also ``workdir/summary.json``). ``quiet``: one log
    line per round, no progress bar; ``federation``: used instead of loading ``config.data``.
    Raises :class:`~fedmix_jax.errors.RunError` subclasses (one-line messages; exit codes in
    docs/main_job.md), KeyboardInterrupt once the pending checkpoint is written."""
    t_start = time.time()
    workdir = rundir.resolve(workdir)
    check_config_values(config)
    rundir.check_usable(workdir)
    stored = rundir.read_config(workdir)
    config = resolve_warmup_rounds(config, stored)     # recorded once: stable on resume
    cfg_dict = rundir.config_to_dict(config)
    rundir.check_config(workdir, cfg_dict, stored, rundir.CONFIG_FILE)
    compilation_cache.enable_from_config(config)
    cpu_cores.cpu_devices_from_config(config)        # before the first JAX computation
    check_num_devices(config)
    if federation is None:
        federation = load_run_federation(config.data, verbose=not quiet)
    round_config = cpu_cores.executor_for_devices(build_round_config(config), config,
                                                  federation.num_clients)
    may_not_learn = validate_run(config, federation, round_config)
    model = build_model(config, federation.num_classes)

    with rundir.WorkdirLock(workdir):
        # Again under the lock: another run may have written the workdir meanwhile.
        rundir.check_config(workdir, cfg_dict, rundir.read_config(workdir), rundir.CONFIG_FILE)
        rundir.remove_stale_temporaries(workdir)
        run = _Run(config, cfg_dict, workdir, federation, round_config, model, may_not_learn)
        del federation      # the run owns it now: its arrays are freed as they are placed
        progress, done = Progress(True, 0, 0), False     # a silent one until the rounds start
        try:
            state = run.prepare(run.restore())
            logging.info("data: %s", run.mode_reason)
            if not quiet:
                print(f"[fedmix_jax] data: {run.mode_reason}", file=sys.stderr, flush=True)
            logging.info("%s: %s, rounds %d..%d (executor %s, %s)",
                         f"resuming from the checkpoint of round {run.start}" if run.start
                         else "starting", round_config.strategy.name, run.start + 1,
                         run.num_rounds, round_config.executor, jax.default_backend())
            progress = Progress(quiet, min(run.start, run.num_rounds), run.num_rounds)
            state = run.train(state, progress)
            progress.close()
            run.checkpointer.wait_until_finished()
            summary = run.finish(state, t_start, write_plots)
            done = True
            return summary
        except KeyboardInterrupt:
            progress.close()
            run.interrupted()
            raise
        finally:
            progress.close()
            run.checkpointer.close(raise_errors=done)


__all__ = ["train_and_evaluate", "build_round_config", "build_model"]

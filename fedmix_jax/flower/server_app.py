"""The Flower ServerApp: the coordinator's side of FedMix across sites.

:func:`run_server` is the whole job: the config, the sites (:mod:`~fedmix_jax.flower.discovery`),
the initial pair (or a resume from ``workdir``'s newest checkpoint), the rounds
(:class:`~fedmix_jax.flower.strategy.FedMixStrategy` in the main job's ``RunLoop``), then
``summary.json`` and the curves. Run config keys (:data:`DEFAULTS`): docs/across_sites.md.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time

import jax
import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedmix_jax import rundir
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.errors import ConfigMismatchError
from fedmix_jax.flower import round_core, array_records
from fedmix_jax.flower.discovery import discover_sites, parse_site_list, send_and_receive
from fedmix_jax.flower.local_site import shared_config_json
from fedmix_jax.flower.strategy import FedMixStrategy
from fedmix_jax.rundir import CONFIG_FILE
from fedmix_jax.run_loop import RunLoop

log = logging.getLogger("fedmix_jax.flower")

DEFAULTS = {"config": "configs/synthetic.py", "overrides": "", "workdir": "runs/flower",
            "num-sites": 0, "min-sites": 1, "join-timeout": 300.0, "round-timeout": 3600.0,
            "wait-cap": 0.2, "max-update-norm-ratio": 0.0, "aggregator": "weighted",
            "trim-fraction": 0.1, "sites": "", "dp-clip-norm": 0.0, "dp-noise-multiplier": 1.0,
            "dp-delta": 1e-5}


def _say(msg: str) -> None:
    print(f"[fedmix_jax.flower {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_config(path: str, overrides: str = ""):
    """The ``ml_collections`` config of ``path`` with ``field=value`` overrides applied."""
    from fedmix_jax.main import define_flags

    if not os.path.isabs(path) and not os.path.exists(path):
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if os.path.exists(os.path.join(repo, path)):
            path = os.path.join(repo, path)
    argv = ["fedmix_jax.flower", f"--config={path}"]
    argv += [f"--config.{item}" for item in shlex.split(overrides or "")]
    fv = define_flags(argv)
    fv(argv)
    return fv.config


def _round_record(r: int, out, round_time: float) -> dict:
    """The ``metrics.jsonl`` line of round ``r`` (the main job's fields, plus ``accepted``,
    ``applied`` and the ``rejected`` reasons)."""
    rep = out.reports
    rec = {"round": r, "loss1": rep["loss1"], "loss2": rep["loss2"], "counts": rep["num_usable"],
           "weak": rep["num_weak"], "selected_weak": rep["num_selected_weak"],
           "selection_rate": (np.asarray(rep["num_selected_weak"])
                              / np.maximum(np.asarray(rep["num_weak"]), 1)).tolist(),
           "steps": rep["steps"], "weights": out.weights, "round_time_s": round_time,
           "accepted": out.accepted, "applied": out.applied}
    for k in ("rejected", "update_norms", "dp_epsilon", "dp_update_norms"):  # only when present
        if getattr(out, k) not in (None, {}):
            rec[k] = getattr(out, k)
    return rec


def _split_record(scores: dict, split: str) -> dict:
    """The main job's figures of one split (:func:`fedmix_jax.records.eval_record`: per site and
    their mean, NaN as ``null``) from :meth:`FedMixStrategy.aggregate_evaluate`'s scores."""
    from fedmix_jax.records import EVAL_FIGURES, PER_CLASS_FIGURES, eval_record

    return eval_record({k: v for name in EVAL_FIGURES + PER_CLASS_FIGURES
                        if f"{split}_{name}" in scores
                        for k, v in ((name, scores[f"{split}_{name}"]),
                                     (f"mean_{name}", scores[f"{split}_mean_{name}"]))})


class _ServerRun(RunLoop):
    """One server job in a locked workdir: restore, rounds, summary (as ``train._Run``)."""

    def __init__(self, grid: Grid, rc: dict, config, workdir: str, sites, infos):
        super().__init__(config, rundir.config_to_dict(config), workdir,
                         [s.name for s in sites], "flower")
        self.grid, self.rc, self.sites, self.infos = grid, rc, sites, infos
        self.round_config = build_round_config(config)
        self.strategy = self.round_config.strategy
        model = build_model(config, int(infos[0]["num-classes"]))
        self.global_pair, self.key = round_core.initial_server_state(
            model, int(config.seed), tuple(int(x) for x in infos[0]["image-shape"]),
            self.round_config)

    def check_more(self, step: int, extra: dict) -> None:
        if extra.get("client_names") != self.client_names:
            raise ConfigMismatchError(
                f"checkpoint {step} in {self.workdir} was written with sites "
                f"{extra.get('client_names')}, now {self.client_names}; connect the same sites "
                "or use another workdir")

    def resumed(self, step: int, extra: dict) -> None:
        _say(f"resuming from the checkpoint of round {self.start}")

    def restore(self) -> None:
        """The initial or the newest intact checkpoint's state; the records of rounds so far."""
        state = self.restore_newest(
            {"global_params": self.global_pair, "key": round_core.key_to_numpy(self.key)},
            self.global_pair.model1)
        self.global_pair = jax.device_get(state["global_params"])
        self.key = round_core.key_from_numpy(state["key"])

    def _exchange(self, messages) -> list:
        cap = float(self.rc["wait-cap"])
        return send_and_receive(self.grid, messages, float(self.rc["round-timeout"]),
                                interval=cap if cap > 0 else 3.0)

    def rounds(self):
        """Rounds ``start+1 .. num_rounds``; returns the strategy and the global arrays."""
        run_name = os.path.basename(self.workdir.rstrip("/")) or "run"
        options = {k.replace("-", "_"): float(self.rc[k]) for k in (
            "max-update-norm-ratio", "trim-fraction", "dp-clip-norm", "dp-noise-multiplier",
            "dp-delta")}
        fed = FedMixStrategy(self.strategy, self.sites, self.global_pair, self.key,
                             self.round_config.hparams(), shared_config_json(self.config),
                             min_sites=int(self.rc["min-sites"]), run_name=run_name,
                             aggregator=str(self.rc["aggregator"]),
                             num_classes=int(self.infos[0]["num-classes"]), **options)
        fed.summary()
        if fed.dp is not None:
            from fedmix_jax.flower.privacy import epsilon, noise_std

            clip, z, delta = fed.dp
            _say(f"client-level differential privacy: updates clipped to norm {clip:g}, noise "
                 f"std {noise_std(clip, z):.4g} (multiplier {z:g} x sensitivity {2 * clip:g}); "
                 f"after {self.num_rounds} rounds (ε, δ) = "
                 f"({epsilon(z, self.num_rounds, delta):.4g}, {delta:g})")
        self.fed = fed
        arrays = self.run(array_records.pair_to_record(self.global_pair))
        self.checkpointer.wait_until_finished()
        return fed, arrays

    # The RunLoop's steps.
    def run_round(self, r: int, arrays, evaluating: bool):
        fed = self.fed
        t0 = time.perf_counter()
        kept = self.checkpointer.all_steps()    # complete checkpoints only
        fed.kept_round = min(kept) if kept else 0
        new_arrays, _ = fed.aggregate_train(
            r, self._exchange(fed.configure_train(r, arrays, ConfigRecord(), self.grid)))
        arrays = arrays if new_arrays is None else new_arrays
        self.round_times.append(time.perf_counter() - t0)
        return arrays, _round_record(r, fed.last_round, self.round_times[-1])

    def evaluate_round(self, r: int, arrays):
        fed = self.fed
        fed.aggregate_evaluate(r, self._exchange(
            fed.configure_evaluate(r, arrays, ConfigRecord(), self.grid)))
        scores = fed.last_eval["scores"]
        return _split_record(scores, "val"), _split_record(scores, "test"), {}

    def new_best(self, r: int, arrays) -> None:
        if self.strategy.aggregates:
            self.best_params = array_records.record_to_pair(arrays, self.global_pair).model1

    def save(self, r: int, arrays) -> None:
        pair = array_records.record_to_pair(arrays, self.global_pair)
        super().save(r, {"global_params": pair, "key": round_core.key_to_numpy(self.fed.key)})

    def round_done(self, r: int, rec: dict) -> None:
        out = self.fed.last_round
        _say(f"round {r}/{self.num_rounds}: {sum(out.accepted)}/{len(self.sites)} sites, "
             f"{self.round_times[-1]:.2f} s"
             + (f", val dice {rec['val_mean_dice']:.4f}"
                if rec.get("val_mean_dice") is not None else "")
             + ("" if out.applied else " (NOT applied)"))

    def finish(self, t_start: float, write_plots: bool) -> dict:
        """``summary.json`` (and the curves; no prediction grid: the server sees no image)."""
        times = self.round_times or [None]
        summary = self.summary(
            self.strategy.name, [str(i.get("levels", "")) for i in self.infos],
            [f"class_{k}" for k in range(int(self.infos[0]["num-classes"]))],
            self.last_evaluation(), t_start, "flower",
            {"first_round_s": times[0],
             "round_s_median": float(np.median(times[1:])) if times[1:] else times[0]},
            sites=[{"name": s.name, "index": s.index, "num_train": s.num_train,
                    "num_val": s.num_val, "num_test": s.num_test} for s in self.sites])
        if self.fed.dp is not None:
            from fedmix_jax.flower.privacy import epsilon

            clip, z, delta = self.fed.dp
            summary["privacy"] = {
                "dp_clip_norm": clip, "dp_noise_multiplier": z, "dp_delta": delta,
                "epsilon": epsilon(z, max(self.start, self.num_rounds), delta),
                "scope": "client-level, the global models sent out; the coordinator is trusted"}
        return self.write_outputs(summary, t_start, write_plots)


def run_server(grid: Grid, run_config, *, write_plots: bool = True, return_state: bool = False):
    """The coordinator's whole job, its workdir handled as the main job's (locked, checked);
    returns the summary, with ``return_state`` ``(summary, final global ModelPair, key)``."""
    t_start = time.time()
    rc = {**DEFAULTS, **dict(run_config or {})}
    config = load_config(str(rc["config"]), str(rc["overrides"]))
    cfg_dict = rundir.config_to_dict(config)
    workdir = rundir.resolve(str(rc["workdir"]))
    rundir.check_usable(workdir)
    rundir.check_config(workdir, cfg_dict, rundir.read_config(workdir), CONFIG_FILE)
    listed = parse_site_list(str(rc["sites"]))
    num_sites = int(rc["num-sites"]) or len(listed) or (
        int(config.data.num_clients) if "num_clients" in config.data else 0)
    if not listed:
        log.warning("run config 'sites' is empty: every node the SuperLink admits takes part "
                    "(list the hospitals as \"name=node_id ...\" to admit only them)")

    with rundir.WorkdirLock(workdir):
        rundir.check_config(workdir, cfg_dict, rundir.read_config(workdir), CONFIG_FILE)
        rundir.remove_stale_temporaries(workdir)
        sites, infos = discover_sites(grid, shared_config_json(config), num_sites,
                                      float(rc["join-timeout"]), float(rc["round-timeout"]),
                                      int(rc["min-sites"]), listed)
        _say(f"{len(sites)} sites: " + ", ".join(f"{s.index}:{s.name} ({s.num_train} train)"
                                                 for s in sites))
        run = _ServerRun(grid, rc, config, workdir, sites, infos)
        done = False
        try:
            run.restore()
            fed, arrays = run.rounds()
            summary = run.finish(t_start, write_plots)
            done = True
        finally:
            run.checkpointer.close(raise_errors=done)
    if return_state:
        return summary, array_records.record_to_pair(arrays, run.global_pair), fed.key
    return summary


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cap = float(dict(context.run_config).get("wait-cap", DEFAULTS["wait-cap"]))
    if cap > 0:     # replies' objects pulled with a short back-off (fedmix_jax.flower.latency)
        from fedmix_jax.flower.latency import cap_object_pulls

        cap_object_pulls(cap)
    run_server(grid, context.run_config)

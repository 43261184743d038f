"""The Flower ServerApp: the coordinator's side of FedMix across sites.

:func:`run_server` is the whole job: the config, the sites (:func:`discover_sites`),
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
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedmix_jax import rundir
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.errors import ConfigError, ConfigMismatchError
from fedmix_jax.flower import array_records, robust, round_core
from fedmix_jax.flower.latency import cap_object_pulls
from fedmix_jax.flower.local_site import shared_config_json
from fedmix_jax.flower.protocol import CONFIG_RECORD, INFO_RECORD
from fedmix_jax.flower.strategy import FedMixStrategy, Site
from fedmix_jax.flower.validation import ReplyRejected, check_declaration
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
    argv = ["fedmix_jax.flower", f"--config={path}",
            *(f"--config.{item}" for item in shlex.split(overrides or ""))]
    fv = define_flags(argv)
    fv(argv)
    return fv.config


def send_and_receive(grid: Grid, messages, timeout: float, interval: float = 0.2) -> list:
    """Push ``messages``, pull their replies every ``interval`` s until all answered or ``timeout``
    (Flower's ``Grid.send_and_receive`` pulls every 3 s)."""
    pending = set(grid.push_messages(list(messages)))
    t_end = time.time() + timeout
    got = []
    while pending:
        replies = list(grid.pull_messages(pending))
        got.extend(replies)
        pending -= {m.metadata.reply_to_message_id for m in replies}
        if not pending or time.time() > t_end:
            break
        time.sleep(interval)
    return got


def parse_site_list(text: str) -> dict[int, str]:
    """The run config ``sites``, ``"name=node_id ..."`` (spaces or commas between entries) ->
    ``{node_id: name}``. ValueError naming an entry not ``name=integer`` or listed twice."""
    listed: dict[int, str] = {}
    for entry in str(text or "").replace(",", " ").split():
        name, sep, node = entry.partition("=")
        if not sep or not name or not node.strip().isdigit():
            raise ValueError(f"run config 'sites': entry {entry!r} is not name=node_id (the "
                             "node id that `flwr supernode register` printed)")
        node_id = int(node)
        if node_id in listed or name in listed.values():
            raise ValueError(f"run config 'sites': {entry!r} repeats a listed name or node id")
        listed[node_id] = name
    return listed


def _wait_for_nodes(grid: Grid, num: int, timeout: float, listed: dict[int, str]) -> list[int]:
    """The connected nodes once ``num`` (with a list: every listed node) are connected, or at
    ``timeout``; with a list, a node not on it is logged once and left out."""
    t_end = time.time() + timeout
    ignored: set[int] = set()
    while True:
        nodes = sorted(grid.get_node_ids())
        if listed:
            for node in set(nodes) - set(listed) - ignored:
                log.warning("node %s is not on the coordinator's site list: ignored (sent "
                            "nothing)", node)
                ignored.add(node)
            nodes = [n for n in nodes if n in listed]
        if len(nodes) >= max(num, 1) or time.time() > t_end:
            return nodes
        time.sleep(0.5)


def discover_sites(grid: Grid, shared_json: str, num_sites: int, join_timeout: float,
                   reply_timeout: float, min_sites: int = 1,
                   listed: dict[int, str] | None = None) -> tuple[list[Site], list[dict]]:
    """``(sites, checked declarations)`` of the (``listed``) nodes that joined, in order; a site
    with a bad, duplicate or minority declaration is excluded with one log line. RuntimeError
    when fewer than ``num_sites`` joined or fewer than ``min_sites`` remain."""
    listed = dict(listed or {})
    num_sites = num_sites or len(listed)
    nodes = _wait_for_nodes(grid, num_sites, join_timeout, listed)
    if num_sites and len(nodes) < num_sites:
        raise RuntimeError(f"only {len(nodes)} of {num_sites} sites joined within "
                           f"{join_timeout:.0f} s")
    msgs = [Message(content=RecordDict({CONFIG_RECORD: ConfigRecord(
        {"config-json": shared_json})}), dst_node_id=n, message_type="query.info")
        for n in nodes]
    found = []      # (node, checked declaration)
    for reply in send_and_receive(grid, msgs, reply_timeout):
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise ReplyRejected(f"site error: {reply.error.reason}")
            info = check_declaration(reply.content.config_records.get(INFO_RECORD)
                                     if reply.has_content() else None)
            if listed and info["site-name"] != listed.get(node):
                raise ReplyRejected(f"it declared the name {info['site-name']!r}, the "
                                    f"coordinator's list names it {listed.get(node)!r}")
        except ReplyRejected as e:
            log.warning("node %s excluded: bad declaration: %s", node, e)
            continue
        found.append((node, info))
    names = [info["site-name"] for _, info in found]
    for name in sorted({n for n in names if names.count(n) > 1}):
        log.warning("site name %r declared by %d nodes: all excluded", name, names.count(name))
    found = [f for f in found if names.count(f[1]["site-name"]) == 1]
    # Declared indices first (in order), then the others by name.
    found.sort(key=lambda f: (f[1]["site-index"] < 0, f[1]["site-index"], f[1]["site-name"]))
    if found:
        # The majority's image shape and classes (ties: the earliest).
        kinds = [(info["image-shape"], info["num-classes"]) for _, info in found]
        kind = max(kinds, key=lambda v: (kinds.count(v), -kinds.index(v)))
        for (_, info), k in zip(found, kinds):
            if k != kind:
                log.warning("site %s excluded: image shape %s / %d classes differ from the "
                            "other sites' %s / %d", info["site-name"], list(k[0]), k[1],
                            list(kind[0]), kind[1])
        found = [f for f, k in zip(found, kinds) if k == kind]
    sites = [Site(node, position, info["site-name"], info["num-train"], info["num-val"],
                  info["num-test"]) for position, (node, info) in enumerate(found)]
    if len(sites) < max(int(min_sites), 1):
        raise RuntimeError(f"only {len(sites)} sites declared themselves validly (min-sites "
                           f"{min_sites}, {len(nodes)} joined)")
    if num_sites and len(sites) < num_sites:
        log.warning("only %d of %d sites declared themselves validly: going on with them",
                    len(sites), num_sites)
    return sites, [info for _, info in found]


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
    extra = ("rejected", "update_norms", "dp_epsilon", "dp_update_norms")   # only when present
    return rec | {k: getattr(out, k) for k in extra if getattr(out, k) not in (None, {})}


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
        self.global_pair, self.key = round_core.initial_server_state(
            build_model(config, int(infos[0]["num-classes"])), int(config.seed),
            tuple(int(x) for x in infos[0]["image-shape"]), self.round_config)

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
            clip, z, delta = fed.dp
            _say(f"client-level differential privacy: updates clipped to norm {clip:g}, noise "
                 f"std {robust.noise_std(clip, z):.4g} (multiplier {z:g} x sensitivity "
                 f"{2 * clip:g}); after {self.num_rounds} rounds (ε, δ) = "
                 f"({robust.epsilon(z, self.num_rounds, delta):.4g}, {delta:g})")
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
            clip, z, delta = self.fed.dp
            summary["privacy"] = {
                "dp_clip_norm": clip, "dp_noise_multiplier": z, "dp_delta": delta,
                "epsilon": robust.epsilon(z, max(self.start, self.num_rounds), delta),
                "scope": "client-level, the global models sent out; the coordinator is trusted"}
        return self.write_outputs(summary, t_start, write_plots)


def run_server(grid: Grid, run_config, *, write_plots: bool = True, return_state: bool = False):
    """The coordinator's whole job, its workdir handled as the main job's (locked, checked);
    returns the summary, with ``return_state`` ``(summary, final global ModelPair, key)``."""
    t_start = time.time()
    rc = {**DEFAULTS, **dict(run_config or {})}
    config = load_config(str(rc["config"]), str(rc["overrides"]))
    if config.get("fine_tune_epochs"):
        raise ConfigError("fine_tune_epochs is the in-process job's (a site's fine-tuned "
                          "consensus model is its own: fedmix_jax.fine_tuning at the site); set "
                          "fine_tune_epochs=0 for the Flower mode")
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
        cap_object_pulls(cap)
    run_server(grid, context.run_config)

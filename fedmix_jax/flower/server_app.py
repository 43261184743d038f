"""The Flower ServerApp: the coordinator's side of FedMix across sites.

``run_server(grid, run_config)`` is the whole job (the ServerApp's main calls it):

1. the config: ``run_config["config"]`` (a ``configs/*.py`` file, as for the main job) with
   ``run_config["overrides"]`` (``"num_rounds=20 model.width=8"``), and the run's ``workdir``;
2. waits until ``num-sites`` SuperNodes are connected (``join-timeout`` seconds), asks each for
   its declaration (name, index, split sizes, image shape, classes) and orders the sites by
   declared index, then name;
3. initialises the global pair and the key from the config's seed (as the in-process job), or
   **resumes** from the newest checkpoint in ``workdir/checkpoints`` (global pair, key, best
   model, bookkeeping; the sites keep their Adam state in their node state and, with
   ``state-dir``, on their disk);
4. every round: :class:`~fedmix_jax.flower.strategy.FedMixStrategy` sends the global pair, checks
   the replies (``round-timeout`` seconds; at least ``min-sites`` accepted), weighs and averages;
   every ``eval_every`` rounds the sites score global model 1 on their validation / test splits;
   one line per round goes to ``metrics.jsonl`` (the main job's fields, plus ``rejected``);
   a checkpoint every ``checkpoint_every`` rounds and the last;
5. ``summary.json`` and the curves (no prediction grid: the server never sees an image).

Run config keys (``flwr run . --run-config "key=value ..."``, defaults in
``fedmix_jax/flower/app/pyproject.toml``): ``config``, ``overrides``, ``workdir``, ``num-sites``,
``min-sites``, ``join-timeout``, ``round-timeout``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import time
from typing import Any

import jax
import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedmix_jax.flower import _core, records
from fedmix_jax.flower.client_app import CONFIG_RECORD
from fedmix_jax.flower.local_site import shared_config_json
from fedmix_jax.flower.strategy import FedMixStrategy, Site

log = logging.getLogger("fedmix_jax.flower")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"

DEFAULTS = {"config": "configs/synthetic.py", "overrides": "", "workdir": "runs/flower",
            "num-sites": 0, "min-sites": 1, "join-timeout": 300.0, "round-timeout": 3600.0}


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


def _run_config(run_config) -> dict:
    rc = dict(DEFAULTS)
    rc.update({k: v for k, v in dict(run_config or {}).items()})
    return rc


def send_and_receive(grid: Grid, messages, timeout: float, interval: float = 0.2) -> list:
    """Push ``messages`` and pull their replies every ``interval`` seconds until all answered or
    ``timeout`` (Flower's ``Grid.send_and_receive`` pulls every 3 s, which adds up to 3 s to
    every exchange of a round)."""
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


def _wait_for_nodes(grid: Grid, num: int, timeout: float) -> list[int]:
    t_end = time.time() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= max(num, 1) or time.time() > t_end:
            return nodes
        time.sleep(0.5)


def discover_sites(grid: Grid, shared_json: str, num_sites: int, join_timeout: float,
                   reply_timeout: float) -> list[Site]:
    """Wait for the SuperNodes, ask each for its declaration, order them (index, then name)."""
    nodes = _wait_for_nodes(grid, num_sites, join_timeout)
    if num_sites and len(nodes) < num_sites:
        raise RuntimeError(f"only {len(nodes)} of {num_sites} sites joined within "
                           f"{join_timeout:.0f} s")
    msgs = [Message(content=RecordDict({CONFIG_RECORD: ConfigRecord(
        {"config-json": shared_json})}), dst_node_id=n, message_type="query.info")
        for n in nodes]
    replies = send_and_receive(grid, msgs, reply_timeout)
    found = []
    for reply in replies:
        if reply.has_error():
            log.warning("node %s failed to declare itself: %s", reply.metadata.src_node_id,
                        reply.error.reason)
            _say(f"node {reply.metadata.src_node_id} failed to declare itself: "
                 f"{reply.error.reason}")
            continue
        info = reply.content.config_records["info"]
        found.append((int(info["site-index"]), str(info["site-name"]),
                      reply.metadata.src_node_id, dict(info)))
    # Declared indices first (in order), then the others by name.
    found.sort(key=lambda t: (t[0] < 0, t[0], t[1]))
    names = [f[1] for f in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two sites declared the same name: {names}")
    sites, infos = [], []
    for position, (_, name, node, info) in enumerate(found):
        sites.append(Site(node_id=node, index=position, name=name,
                          num_train=int(info["num-train"]), num_val=int(info["num-val"]),
                          num_test=int(info["num-test"])))
        infos.append(info)
    if num_sites and len(sites) < num_sites:
        raise RuntimeError(f"only {len(sites)} of {num_sites} sites declared themselves")
    shapes = {tuple(i["image-shape"]) for i in infos}
    classes = {int(i["num-classes"]) for i in infos}
    if len(shapes) != 1 or len(classes) != 1:
        raise RuntimeError(f"sites disagree on image shape {shapes} or classes {classes}")
    return sites, infos


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _tolist(x) -> list:
    return np.asarray(x).tolist()


def run_server(grid: Grid, run_config, *, write_plots: bool = True, return_state: bool = False):
    """The coordinator's whole job (see the module docstring); returns the summary (and, with
    ``return_state``, also the final global :class:`~fedmix_jax.site.ModelPair` and key)."""
    from fedmix_jax.checkpointing import Checkpointer
    from fedmix_jax.config import build_model, build_round_config
    from fedmix_jax.train import _truncate_metrics, config_differences, config_to_dict

    t_start = time.time()
    rc = _run_config(run_config)
    config = load_config(str(rc["config"]), str(rc["overrides"]))
    cfg_dict = config_to_dict(config)
    workdir = os.path.abspath(os.path.expanduser(str(rc["workdir"])))
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path) as f:
            diffs = config_differences(json.load(f), cfg_dict)
        if diffs:
            raise RuntimeError(f"{workdir} holds a run with a different config:\n"
                               + "\n".join(diffs))
    round_config = build_round_config(config)
    strategy = round_config.strategy
    hparams = round_config.hparams()
    shared = shared_config_json(config)
    num_sites = int(rc["num-sites"]) or (int(config.data.num_clients)
                                         if "num_clients" in config.data else 0)
    round_timeout = float(rc["round-timeout"])

    sites, infos = discover_sites(grid, shared, num_sites, float(rc["join-timeout"]),
                                  round_timeout)
    names = [s.name for s in sites]
    levels = [str(i.get("levels", "")) for i in infos]
    _say(f"{len(sites)} sites: " + ", ".join(f"{s.index}:{s.name} ({s.num_train} train)"
                                             for s in sites))
    image_shape = tuple(int(x) for x in infos[0]["image-shape"])
    model = build_model(config, int(infos[0]["num-classes"]))
    global_pair, key = _core.initial_server_state(model, int(config.seed), image_shape,
                                                  round_config)
    best_params = global_pair.model1
    best: dict[str, Any] = {"round": 0, "val": None, "test": None}
    num_rounds, eval_every = int(config.num_rounds), int(config.eval_every)
    ckpt_every = int(config.checkpoint_every)
    metrics_path = os.path.join(workdir, METRICS_FILE)
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                max_to_keep=int(config.keep_checkpoints))
    start = 0
    try:
        server_state = {"global_params": global_pair, "key": _core.key_to_numpy(key)}
        latest = checkpointer.latest_step()
        if latest is not None:
            server_state, best_params, extra = checkpointer.restore(latest, server_state,
                                                                    best_params)
            if extra.get("client_names") != names:
                raise RuntimeError(f"checkpoint {latest} was written with sites "
                                   f"{extra.get('client_names')}, now {names}")
            best, start = extra["best"], int(extra["round"])
            _say(f"resuming from the checkpoint of round {start}")
        _atomic_write(config_path, json.dumps(cfg_dict, indent=2) + "\n")
        records_so_far = _truncate_metrics(metrics_path, start)
        global_pair = jax.device_get(server_state["global_params"])
        key = _core.key_from_numpy(server_state["key"])
        run_name = os.path.basename(workdir.rstrip("/")) or "run"
        fed = FedMixStrategy(strategy, sites, global_pair, key, hparams, shared,
                             min_sites=int(rc["min-sites"]), run_name=run_name)
        fed.summary()
        arrays = records.pair_to_record(global_pair)
        round_times, eval_times = [], []
        for r in range(start + 1, num_rounds + 1):
            t0 = time.perf_counter()
            replies = send_and_receive(
                grid, fed.configure_train(r, arrays, ConfigRecord(), grid), round_timeout)
            new_arrays, _ = fed.aggregate_train(r, replies)
            if new_arrays is not None:
                arrays = new_arrays
            out = fed.last_round
            round_times.append(time.perf_counter() - t0)
            rep = out.reports
            weak = np.asarray(rep["num_weak"])
            rec = {"round": r, "loss1": rep["loss1"], "loss2": rep["loss2"],
                   "counts": rep["num_usable"], "weak": rep["num_weak"],
                   "selected_weak": rep["num_selected_weak"],
                   "selection_rate": _tolist(np.asarray(rep["num_selected_weak"])
                                             / np.maximum(weak, 1)),
                   "steps": rep["steps"], "weights": out.weights,
                   "round_time_s": round_times[-1], "accepted": out.accepted,
                   "applied": out.applied}
            if out.rejected:
                rec["rejected"] = out.rejected
            if r % eval_every == 0 or r == num_rounds:
                t1 = time.perf_counter()
                ev_replies = send_and_receive(
                    grid, fed.configure_evaluate(r, arrays, ConfigRecord(), grid), round_timeout)
                fed.aggregate_evaluate(r, ev_replies)
                eval_times.append(time.perf_counter() - t1)
                scores = fed.last_eval["scores"]
                rec.update(scores)
                rec["eval_time_s"] = eval_times[-1]
                ev = {split: {"dice": scores[f"{split}_dice"], "iou": scores[f"{split}_iou"],
                              "mean_dice": scores[f"{split}_mean_dice"],
                              "mean_iou": scores[f"{split}_mean_iou"]}
                      for split in ("val", "test")}
                v = ev["val"]["mean_dice"]
                if math.isfinite(v) and (best["val"] is None or v > best["val"]["mean_dice"]):
                    best = {"round": r, "val": ev["val"], "test": ev["test"]}
                    if strategy.aggregates:
                        best_params = records.record_to_pair(arrays, global_pair).model1
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            records_so_far.append(rec)
            _say(f"round {r}/{num_rounds}: {sum(out.accepted)}/{len(sites)} sites, "
                 f"{round_times[-1]:.2f} s" + (f", val dice {rec['val_mean_dice']:.4f}"
                                                if "val_mean_dice" in rec else "")
                 + ("" if out.applied else " (NOT applied)"))
            if r % ckpt_every == 0 or r == num_rounds:
                pair = records.record_to_pair(arrays, global_pair)
                checkpointer.save(r, {"global_params": pair,
                                      "key": _core.key_to_numpy(fed.key)}, best_params,
                                  {"round": r, "best": best, "config": cfg_dict,
                                   "client_names": names, "executor": "flower"})
        checkpointer.wait_until_finished()
        final = next((x for x in reversed(records_so_far) if "val_mean_dice" in x), None)
        later = round_times[1:]
        summary = {
            "workdir": workdir, "strategy": strategy.name, "seed": int(config.seed),
            "client_names": names, "levels": levels,
            "class_names": [f"class_{k}" for k in range(int(infos[0]["num-classes"]))],
            "num_rounds": num_rounds, "rounds_completed": max(start, num_rounds),
            "resumed_from": start, "best": best,
            "final": None if final is None else {
                "round": final["round"],
                "val": {k: final[f"val_{k}"] for k in ("dice", "iou", "mean_dice", "mean_iou")},
                "test": {k: final[f"test_{k}"] for k in ("dice", "iou", "mean_dice",
                                                         "mean_iou")}},
            "timing": {"total_s": time.time() - t_start, "rounds_this_process": len(round_times),
                       "backend": "flower", "executor": "flower",
                       "first_round_s": round_times[0] if round_times else None,
                       "round_s_median": float(np.median(later)) if later else
                       (round_times[0] if round_times else None)},
            "sites": [{"name": s.name, "index": s.index, "num_train": s.num_train,
                       "num_val": s.num_val, "num_test": s.num_test} for s in sites],
            "config": cfg_dict,
        }
        _atomic_write(os.path.join(workdir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
        if write_plots and records_so_far:
            from fedmix_jax.plots import write_run_plots
            from fedmix_jax.train import read_metrics

            summary["plots"] = [os.path.basename(p) for p in write_run_plots(
                workdir, read_metrics(metrics_path), names, levels, best["round"] or None)]
            _atomic_write(os.path.join(workdir, SUMMARY_FILE),
                          json.dumps(summary, indent=2) + "\n")
        if return_state:
            return summary, records.record_to_pair(arrays, global_pair), fed.key
        return summary
    finally:
        checkpointer.close()


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, context.run_config)

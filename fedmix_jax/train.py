"""The training job: ``train_and_evaluate(config, workdir)`` runs FedMix (or a baseline) end to end.

What one run does (``config`` as in ``configs/*.py``):

1. checks ``workdir``: a run there with a different config is refused
   (:class:`ConfigMismatchError`);
2. builds the federation (``config.data``), the U-Net, the round configuration and the initial
   state, and puts the arrays on the device once;
3. resumes from the newest checkpoint in ``workdir/checkpoints`` if there is one (state, best-
   validation tracker and selected params), dropping ``metrics.jsonl`` lines of later rounds;
4. runs rounds ``start + 1 .. num_rounds``; after each round only the small per-client metrics [C]
   come to the host (a non-finite loss stops the run: :class:`TrainingDivergedError`); every
   ``eval_every`` rounds (and the last) global model 1 (``local``: each client's model 1) is
   evaluated on the validation and test splits, and the round with the best mean *validation*
   Dice is remembered with its test numbers; one JSON line per round goes to ``metrics.jsonl``;
   every ``checkpoint_every`` rounds (and the last) a checkpoint is saved;
5. writes ``summary.json``, the PNG plots, and returns the summary (printed as a table by main).

An interrupted run (Ctrl-C) leaves its last checkpoint intact; rerunning the same command resumes
and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config, normalize_crop  # noqa: F401
from fedmix_jax.errors import (ConfigError, ConfigMismatchError, DataError,  # noqa: F401
                               RunError, TrainingDivergedError)
from fedmix_jax.data.federation import LEVEL_NAMES, Federation
from fedmix_jax.evaluation import evaluate
from fedmix_jax.federated import RoundConfig, init_state, make_round_fn

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"

# Config fields that may change between a run and its resumption: they do not change what is
# computed in a round (num_rounds may grow; how often / how many checkpoints; where the data cache
# lives; forcing a cache rebuild).
RESUMABLE_FIELDS = ("num_rounds", "checkpoint_every", "keep_checkpoints", "data.cache_dir",
                    "data.rebuild")


def config_to_dict(config) -> dict:
    """A JSON round-tripped plain dict of ``config`` (tuples become lists)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=str))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict, ignore=RESUMABLE_FIELDS) -> list[str]:
    """Human-readable ``field: old -> new`` lines for fields that differ (except ``ignore``)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        if a.get(key, "<missing>") != b.get(key, "<missing>"):
            diffs.append(f"  {key}: {a.get(key, '<missing>')!r} -> {b.get(key, '<missing>')!r}")
    return diffs


def _check_config(workdir: str, new: dict, old: dict | None, where: str) -> None:
    if old is None:
        return
    diffs = config_differences(old, new)
    if diffs:
        raise ConfigMismatchError(
            f"workdir {workdir} already holds a run with a different config ({where}):\n"
            + "\n".join(diffs)
            + "\nThese fields change the computation, so the run cannot be resumed with them. "
            "Use a new --workdir (or delete this one); only "
            + ", ".join(RESUMABLE_FIELDS) + " may change when resuming (num_rounds may grow).")


def _validate(config, federation: Federation, round_config: RoundConfig) -> None:
    for name in ("num_rounds", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(config[name]) < 1:
            raise ConfigError(f"--config.{name} must be >= 1, got {config[name]}")
    h, w = federation.train.images.shape[2:4]
    if round_config.crop is not None and (round_config.crop[0] > h or round_config.crop[1] > w):
        raise ConfigError(f"--config.train.crop={round_config.crop} is larger than the images "
                          f"({h}x{w}); set a smaller crop or --config.train.crop=None")


# ----------------------------------------------------------------------------------------------
# Files


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a torn last line is ignored)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _truncate_metrics(path: str, last_round: int) -> list[dict]:
    """Keep the records of rounds <= ``last_round`` (once each); rewrite atomically if needed."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        raw = f.read()
    kept, seen, changed = [], set(), False
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            r = int(rec["round"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            changed = True
            continue
        if r > last_round or r in seen:
            changed = True
            continue
        seen.add(r)
        kept.append(rec)
    if changed or (raw and not raw.endswith("\n")):
        _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _tolist(x) -> list:
    return np.asarray(x).tolist()


def _eval_record(ev: dict) -> dict:
    return dict(dice=_tolist(ev["dice"]), iou=_tolist(ev["iou"]),
                mean_dice=float(ev["mean_dice"]), mean_iou=float(ev["mean_iou"]))


# ----------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A tqdm bar over rounds, or (quiet) one log line per round on stderr."""

    def __init__(self, quiet: bool, start: int, total: int):
        self.quiet = quiet
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="rounds", unit="round",
                            file=sys.stderr, dynamic_ncols=True)

    def log(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(f"[fedmix_jax {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def update(self, rec: dict, num_rounds: int, last_dice: float | None) -> None:
        steps = np.asarray(rec["steps"])
        loss = np.asarray(rec["loss1"])
        mean_loss = float(loss[steps > 0].mean()) if (steps > 0).any() else float("nan")
        weak = np.asarray(rec["weak"])
        rate = np.asarray(rec["selection_rate"])
        sel = float(rate[weak > 0].mean()) if (weak > 0).any() else float("nan")
        dice = float("nan") if last_dice is None else last_dice
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.3f}", dice=f"{dice:.3f}", sel=f"{sel:.2f}",
                                 refresh=False)
            self.bar.update(1)
        else:
            msg = (f"round {rec['round']}/{num_rounds}  loss {mean_loss:.4f}  selection {sel:.2f}"
                   f"  {rec['round_time_s']:.2f} s")
            if "val_mean_dice" in rec:
                msg += (f"  val dice {rec['val_mean_dice']:.4f}"
                        f"  test dice {rec['test_mean_dice']:.4f}")
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------
# The job


def _copy_tree(tree):
    return jax.tree.map(jnp.copy, tree)


def _place_state(state, round_fn, executor: str):
    """Put a fresh or restored state where the round leaves it, so round 2 does not recompile.

    Single-device executors: unchanged (uncommitted arrays on the default device, as both
    ``init_state`` and the checkpoint restore produce them). ``sharded``: the global pair, round
    and key replicated over the mesh, the per-client leaves split over ``"clients"``.
    """
    if executor != "sharded":
        return state
    from fedmix_jax.sharding import replicated_sharding, shard_clients

    rep = replicated_sharding(round_fn.mesh)
    return state.replace(
        global_params=jax.device_put(state.global_params, rep),
        client_params=shard_clients(state.client_params, round_fn.mesh),
        opt_state=shard_clients(state.opt_state, round_fn.mesh),
        round=jax.device_put(state.round, rep), key=jax.device_put(state.key, rep))


def _eval_params(state, local: bool):
    return state.client_params[0] if local else state.global_params[0]


def _level_names(federation: Federation) -> list[str]:
    out = []
    for c in range(federation.num_clients):
        v = np.asarray(federation.train.valid[c])
        lv = np.asarray(federation.train.levels[c])[v]
        names = sorted({LEVEL_NAMES[int(x)] for x in np.unique(lv)})
        out.append("+".join(names) if names else "-")
    return out


def _timing(round_times: list[float], eval_times: list[float]) -> dict:
    """Per-round time and the compile-time estimate of this process's rounds."""
    t = {}
    if round_times:
        later = round_times[1:]
        t["first_round_s"] = round_times[0]
        t["round_s_median"] = statistics.median(later) if later else round_times[0]
        if later:
            t["compile_s"] = max(0.0, round_times[0] - statistics.median(later))
            t["compile_note"] = ("estimate: first round of this process minus the median of its "
                                 "later rounds (tracing + XLA compilation of the round)")
        else:
            t["compile_s"] = None
            t["compile_note"] = ("one round only: its time includes compilation unless this "
                                 "process had compiled the round before")
    if eval_times:
        later = eval_times[1:]
        t["eval_s_median"] = statistics.median(later) if later else eval_times[0]
        t["eval_compile_s"] = (max(0.0, eval_times[0] - statistics.median(later))
                               if later else None)
    return t


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, quiet: bool = False,
                       federation: Federation | None = None, write_plots: bool = True
                       ) -> dict[str, Any]:
    """Train ``config.strategy`` for ``config.num_rounds`` rounds in ``workdir``; see module doc.

    Args:
      config: the run's ConfigDict (``configs/*.py``).
      workdir: output folder (created); rerunning with the same workdir resumes.
      quiet: no progress bar; one log line per round on stderr instead.
      federation: an already built federation to use instead of loading ``config.data`` (the
        comparison command shares one across runs).
      write_plots: write the PNG plots.

    Returns:
      The summary (also written to ``workdir/summary.json``).

    Raises:
      ConfigMismatchError, ConfigError, DataError (exit code 2 in main);
      TrainingDivergedError (exit code 1); KeyboardInterrupt (after the pending checkpoint is
      written).
    """
    t_start = time.time()
    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    cfg_dict = config_to_dict(config)
    config_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path) as f:
            _check_config(workdir, cfg_dict, json.load(f), CONFIG_FILE)

    if federation is None:
        from fedmix_jax.data.sources import load_federation

        try:
            federation = load_federation(config.data, verbose=not quiet)
        except (ValueError, FileNotFoundError) as e:  # incl. DatasetNotFoundError, BadInputError
            raise DataError(str(e)) from e

    round_config = build_round_config(config)
    _validate(config, federation, round_config)
    model = build_model(config, federation.num_classes)
    local = not round_config.strategy.aggregates
    num_rounds = int(config.num_rounds)
    eval_every = int(config.eval_every)
    ckpt_every = int(config.checkpoint_every)
    client_names = list(federation.client_names)
    levels = _level_names(federation)

    os.makedirs(workdir, exist_ok=True)
    metrics_path = os.path.join(workdir, METRICS_FILE)
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                max_to_keep=int(config.keep_checkpoints))
    progress = None
    try:
        image_shape = tuple(federation.train.images.shape[2:])
        state = init_state(model, jax.random.PRNGKey(int(config.seed)), image_shape,
                           federation.num_clients, round_config)
        best_params = _copy_tree(_eval_params(state, local))
        best: dict[str, Any] = {"round": 0, "val": None, "test": None}
        start = 0
        latest = checkpointer.latest_step()
        if latest is not None:
            state, best_params, extra = checkpointer.restore(latest, state, best_params)
            _check_config(workdir, cfg_dict, extra.get("config"), f"checkpoint {latest}")
            if extra.get("executor") not in (None, round_config.executor):
                print(f"[fedmix_jax] note: checkpoint {latest} was written with executor "
                      f"{extra['executor']!r}; continuing with {round_config.executor!r} "
                      "(results agree to float tolerance, not bit for bit)", file=sys.stderr)
            best = extra["best"]
            start = int(extra["round"])
        _atomic_write_text(config_path, json.dumps(cfg_dict, indent=2) + "\n")
        records = _truncate_metrics(metrics_path, start)

        def checkpoint_extra(r):
            return {"round": r, "best": best, "config": cfg_dict,
                    "executor": round_config.executor, "client_names": client_names}

        round_fn = make_round_fn(model, round_config)
        state = _place_state(state, round_fn, round_config.executor)
        # The data goes to the device(s) once. val/test stay uncommitted, so evaluation runs
        # wherever the params live (one device, or replicated over the "sharded" mesh).
        if round_config.executor == "sharded":
            from fedmix_jax.sharding import shard_clients

            train = shard_clients(federation.train, round_fn.mesh)
        else:
            train = jax.device_put(federation.train)
        val = jax.device_put(federation.val)
        test = jax.device_put(federation.test)
        chunk = round_config.inference_chunk

        if not quiet or start:
            msg = (f"resuming from the checkpoint of round {start}" if start else "starting")
            msg += f": {round_config.strategy.name}, rounds {start + 1}..{num_rounds}"
            print(f"[fedmix_jax] {msg} (executor {round_config.executor}, "
                  f"{jax.default_backend()})", file=sys.stderr, flush=True)
        progress = _Progress(quiet, min(start, num_rounds), num_rounds)
        round_times, eval_times = [], []
        last_dice = best["val"]["mean_dice"] if best.get("val") else None
        for r in range(start + 1, num_rounds + 1):
            t0 = time.perf_counter()
            state, metrics = round_fn(state, train)
            m = jax.device_get(metrics)  # only the [C] metrics come to the host
            round_time = time.perf_counter() - t0
            round_times.append(round_time)
            # A NaN/inf loss (or weight, which would poison the aggregate) stops the run before
            # anything of this round is written.
            finite = np.isfinite(m.loss1) & np.isfinite(m.loss2) & np.isfinite(m.weights)
            if not finite.all():
                bad = [int(c) for c in np.nonzero(~finite)[0]]
                where = ", ".join(f"client {c} ({client_names[c]}): loss1={m.loss1[c]}, "
                                  f"loss2={m.loss2[c]}, weight={m.weights[c]}" for c in bad)
                checkpointer.wait_until_finished()
                last = checkpointer.latest_step()
                raise TrainingDivergedError(
                    f"non-finite training loss or weight in round {r} at {where}. The run "
                    f"stopped; no checkpoint of round {r} was written (last checkpoint: "
                    f"{'none' if last is None else f'round {last}'}). Check the data of "
                    f"{'these clients' if len(bad) > 1 else 'this client'} and the learning "
                    "rate.", round=r, clients=bad)
            rec = {"round": r,
                   "loss1": _tolist(m.loss1), "loss2": _tolist(m.loss2),
                   "counts": _tolist(m.counts), "weak": _tolist(m.weak),
                   "selected_weak": _tolist(m.selected_weak),
                   "selection_rate": _tolist(m.selected_weak / np.maximum(m.weak, 1)),
                   "steps": _tolist(m.steps), "weights": _tolist(m.weights),
                   "round_time_s": round_time}
            if r % eval_every == 0 or r == num_rounds:
                t1 = time.perf_counter()
                params = _eval_params(state, local)
                ev_val = evaluate(model, params, val, per_client_params=local, chunk_size=chunk)
                ev_test = evaluate(model, params, test, per_client_params=local,
                                   chunk_size=chunk)
                eval_times.append(time.perf_counter() - t1)
                rv, rt = _eval_record(ev_val), _eval_record(ev_test)
                for split, ev in (("val", rv), ("test", rt)):
                    for k, v in ev.items():
                        rec[f"{split}_{k}"] = v
                rec["eval_time_s"] = eval_times[-1]
                last_dice = rv["mean_dice"]
                if np.isfinite(rv["mean_dice"]) and (
                        best["val"] is None or rv["mean_dice"] > best["val"]["mean_dice"]):
                    best = {"round": r, "val": rv, "test": rt}
                    best_params = _copy_tree(params)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            records.append(rec)
            # The line of round r is written before checkpoint r, so a resume from any
            # checkpoint finds the lines of all its rounds.
            if r % ckpt_every == 0 or r == num_rounds:
                checkpointer.save(r, state, best_params, checkpoint_extra(r))
            progress.update(rec, num_rounds, last_dice)
        progress.close()
        progress = None
        checkpointer.wait_until_finished()
        completed = max(start, num_rounds)
        if start >= num_rounds:
            print(f"[fedmix_jax] {workdir} already holds {start} rounds (num_rounds="
                  f"{num_rounds}); nothing to train", file=sys.stderr, flush=True)
        final = next((rec for rec in reversed(records) if "val_mean_dice" in rec), None)
        summary = {
            "workdir": workdir,
            "strategy": round_config.strategy.name,
            "seed": int(config.seed),
            "client_names": client_names,
            "levels": levels,
            "class_names": list(federation.class_names),
            "num_rounds": num_rounds,
            "rounds_completed": completed,
            "resumed_from": start,
            "best": best,
            "final": None if final is None else {
                "round": final["round"],
                "val": {k: final[f"val_{k}"] for k in ("dice", "iou", "mean_dice", "mean_iou")},
                "test": {k: final[f"test_{k}"] for k in ("dice", "iou", "mean_dice",
                                                         "mean_iou")}},
            "timing": dict(total_s=time.time() - t_start, rounds_this_process=len(round_times),
                           backend=jax.default_backend(), executor=round_config.executor,
                           **_timing(round_times, eval_times)),
            "config": cfg_dict,
        }
        _atomic_write_text(os.path.join(workdir, SUMMARY_FILE),
                           json.dumps(summary, indent=2) + "\n")
        if write_plots:
            from fedmix_jax.plots import write_run_plots

            all_records = read_metrics(metrics_path)
            summary["plots"] = [os.path.basename(p) for p in write_run_plots(
                workdir, all_records, client_names, levels, best["round"] or None, model,
                best_params, federation.test, per_client_params=local)]
            summary["timing"]["total_s"] = time.time() - t_start
            _atomic_write_text(os.path.join(workdir, SUMMARY_FILE),
                               json.dumps(summary, indent=2) + "\n")
        return summary
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
            progress = None
        checkpointer.wait_until_finished()
        last = checkpointer.latest_step()
        print(f"\n[fedmix_jax] interrupted; the last checkpoint is "
              f"{'none' if last is None else f'round {last}'} in {checkpointer.directory}. "
              "Rerun the same command to resume.", file=sys.stderr, flush=True)
        raise
    finally:
        if progress is not None:
            progress.close()
        checkpointer.close()


def format_summary(summary: dict) -> str:
    """The closing table: per client (and mean) validation and test Dice / IoU at the best round."""
    best = summary["best"]
    names = summary["client_names"]
    levels = summary.get("levels") or [""] * len(names)
    width = max([len("mean")] + [len(n) for n in names]) + 2
    lines = []
    head = f"{'client':<{width}}{'level':<8}{'val Dice':>10}{'test Dice':>11}{'test IoU':>10}"
    lines.append(head)
    lines.append("-" * len(head))
    if best.get("val") is None:
        lines.append("(no evaluation yet)")
    else:
        for c, n in enumerate(names):
            lines.append(f"{n:<{width}}{levels[c]:<8}{best['val']['dice'][c]:>10.4f}"
                         f"{best['test']['dice'][c]:>11.4f}{best['test']['iou'][c]:>10.4f}")
        lines.append("-" * len(head))
        lines.append(f"{'mean':<{width}}{'':<8}{best['val']['mean_dice']:>10.4f}"
                     f"{best['test']['mean_dice']:>11.4f}{best['test']['mean_iou']:>10.4f}")
    t = summary.get("timing", {})
    lines.append(f"strategy {summary['strategy']}, seed {summary['seed']}: test numbers of the "
                 f"round with the best mean validation Dice (round {best['round']} of "
                 f"{summary['rounds_completed']})")
    timing = [f"total {t.get('total_s', 0):.1f} s"]
    if t.get("rounds_this_process"):
        timing.append(f"{t['round_s_median']:.2f} s/round (median)")
        if t.get("compile_s") is not None:
            timing.append(f"compilation ~{t['compile_s']:.1f} s (first round minus the median "
                          "round)")
        else:
            timing.append(f"one round in this process: {t['first_round_s']:.1f} s "
                          "(includes compilation unless compiled before)")
    lines.append(", ".join(timing))
    lines.append(f"workdir: {summary['workdir']}")
    return "\n".join(lines)


__all__ = ["train_and_evaluate", "build_round_config", "build_model", "format_summary",
           "read_metrics", "config_to_dict", "config_differences", "RunError", "ConfigError",
           "ConfigMismatchError", "DataError", "TrainingDivergedError", "METRICS_FILE",
           "SUMMARY_FILE", "CONFIG_FILE", "CHECKPOINT_DIR", "RESUMABLE_FIELDS"]

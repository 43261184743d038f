"""A site's state between rounds, kept per round back to the coordinator's oldest checkpoint.

The state after round r (local pair and Adam moments) starts round r + 1; keeping every round
from ``kept-round`` on makes a resume bit-identical. It lives in this process's memory
(:func:`keep_state_in_process`) or the SuperNode's ``Context.state``, and with node config
``state-dir`` also in ``<state-dir>/<run>.<site>.r<round>.npz``. Details: docs/across_sites.md.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

log = logging.getLogger("fedmix_jax.flower")

STATE_RECORD = "site-state"
STATE_META = "site-state-meta"

_kept_states: dict = {}
_keep_in_process = False


def keep_state_in_process(on: bool = True) -> None:
    """Keep the sites' states in this process instead of ``Context.state``, which travels with
    every message (for a process that serves all its SuperNode's messages); ``state-dir`` stays."""
    global _keep_in_process
    _keep_in_process = bool(on)


def _safe(run_name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_name) or "run"


def _stem(context: Context, run_name: str) -> str:
    """``<run>.<site>``, the site named by ``site-name``, ``client`` or ``site-index``."""
    node = dict(context.node_config)
    site = next((str(node[k]) for k in ("site-name", "client", "site-index") if k in node), "site")
    return f"{_safe(run_name)}.{_safe(site)}"


def _disk_rounds(context: Context, run_name: str) -> dict[int, str]:
    """``{round: path}`` of the run's states of this site in ``state-dir``."""
    d = dict(context.node_config).get("state-dir")
    try:
        names = os.listdir(str(d)) if d else []
    except OSError:
        return {}
    pattern = re.compile(re.escape(_stem(context, run_name)) + r"\.r(\d+)\.npz")
    return {int(m.group(1)): os.path.join(str(d), n) for n in names
            if (m := pattern.fullmatch(n))}


def _context_rounds(context: Context, run_name: str) -> list[int]:
    meta = context.state.config_records.get(STATE_META)
    if meta is None or meta.get("run-name") != run_name:
        return []
    return [int(r) for r in meta.get("rounds", [])]


def save_state(path: str, round_index: int, state) -> None:
    """Write a site's (params, Adam) state to ``path`` (.npz, no pickle) atomically."""
    from jax.tree_util import tree_leaves

    arrays = {f"a{i}": np.asarray(x) for i, x in enumerate(tree_leaves(state))}
    arrays["round"] = np.asarray(round_index, np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_state(path: str, like) -> tuple[int, Any] | None:
    """``(round, state)`` from :func:`save_state`, or None (missing or not matching ``like``)."""
    from jax.tree_util import tree_leaves, tree_structure, tree_unflatten

    if not os.path.exists(path):
        return None
    ref = tree_leaves(like)
    with np.load(path, allow_pickle=False) as z:
        if len(z.files) != len(ref) + 1:
            return None
        leaves = [z[f"a{i}"] for i in range(len(ref))]
        r = int(z["round"])
    if any(a.shape != np.shape(b) or a.dtype != np.dtype(b.dtype) for a, b in zip(leaves, ref)):
        return None
    return r, tree_unflatten(tree_structure(like), leaves)


def restore(context: Context, like, round_index: int, run_name: str):
    """The state after round ``round_index - 1`` (1-based), shaped as ``like``; None for round 1
    and, with a warning, when the site does not hold it (then: fresh Adam moments)."""
    if round_index <= 1:
        return None
    from fedmix_jax.flower import array_records

    need = round_index - 1
    held = _kept_states.get((context.node_id, run_name), {})
    if need in held:
        return held[need]
    name = f"{STATE_RECORD}-{need}"
    if need in _context_rounds(context, run_name) and name in context.state.array_records:
        try:
            return array_records.record_to_tree(context.state.array_records[name], like, "state")
        except ValueError as e:
            log.warning("site state in the node context does not fit the model: %s", e)
    path = _disk_rounds(context, run_name).get(need)
    if path:
        loaded = load_state(path, like)
        if loaded is not None and loaded[0] == need:
            return loaded[1]
    log.warning("no site state of round %d: starting round %d with fresh Adam moments", need,
                round_index)
    return None


def newest(context: Context, like, run_name: str):
    """The state of the newest round the site holds (a local model to evaluate), or None."""
    held = _kept_states.get((context.node_id, run_name), {})
    rounds = list(held) or _context_rounds(context, run_name)
    return restore(context, like, max(rounds) + 1, run_name) if rounds else None


def store(context: Context, state, round_index: int, run_name: str,
          kept_round: int | None = None) -> None:
    """Keep the state after round ``round_index``; drop those before ``kept_round`` (None or 0:
    keep only this one) and after ``round_index`` (an interrupted timeline)."""
    from fedmix_jax.flower import array_records

    r = int(round_index)
    kept = range(min(int(kept_round or r), r), r + 1)
    records = context.state.array_records
    old = [] if _keep_in_process else _context_rounds(context, run_name)
    for key in [k for k in records if k.startswith(STATE_RECORD)]:
        x = key[len(STATE_RECORD) + 1:]
        if not (x.isdigit() and int(x) in old and int(x) in kept):
            del records[key]
    if _keep_in_process:
        held = {**_kept_states.get((context.node_id, run_name), {}), r: state}
        _kept_states[(context.node_id, run_name)] = {x: s for x, s in held.items() if x in kept}
        context.state.config_records.pop(STATE_META, None)
    else:
        records[f"{STATE_RECORD}-{r}"] = array_records.tree_to_record(state, "state")
        context.state.config_records[STATE_META] = ConfigRecord(
            {"run-name": run_name, "rounds": sorted({x for x in old if x in kept} | {r})})
    state_dir = dict(context.node_config).get("state-dir")
    if state_dir:
        save_state(os.path.join(str(state_dir), f"{_stem(context, run_name)}.r{r}.npz"), r, state)
        for x, p in _disk_rounds(context, run_name).items():
            if x not in kept:
                try:
                    os.remove(p)
                except OSError as e:
                    log.warning("could not remove the old site state %s: %s", p, e)

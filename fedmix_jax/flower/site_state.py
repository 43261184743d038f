"""A site's state between rounds, kept per round back to the coordinator's oldest checkpoint.

The state after round r (a :class:`~fedmix_jax.site.SiteState`: local pair and Adam moments) is
what round r + 1 starts from. A site keeps it per run (the server's ``run-name``) for every round
from ``kept-round`` on, the oldest checkpoint the coordinator holds, so that a coordinator resumed
from checkpoint c sends round c + 1 again and every site starts it from its state after round c:
bit-identical to an uninterrupted run. Where the states live (never sent anywhere): this process's
memory (:func:`keep_state_in_process`: the ClientApp inside the SuperNode) or else the
SuperNode's ``Context.state``; with node config ``state-dir`` also on the site's disk
(``<state-dir>/<run name>.<site>.r<round>.npz``, no pickle).
"""

from __future__ import annotations

import logging
import os
import re

from flwr.app import ConfigRecord, Context

log = logging.getLogger("fedmix_jax.flower")

STATE_RECORD = "site-state"
STATE_META = "site-state-meta"

_kept_states: dict = {}
_keep_in_process = False


def keep_state_in_process(on: bool = True) -> None:
    """Keep the sites' states in this process instead of ``Context.state`` (for a process that
    serves every message of its SuperNode: Flower's Context travels with every message, so the
    ~6x-model-size states kept there would be copied twice per message). ``state-dir`` on disk is
    still written."""
    global _keep_in_process
    _keep_in_process = bool(on)


def _safe(run_name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_name) or "run"


def _stem(context: Context, run_name: str) -> str:
    """``<run>.<site>``: the site named by its node config (``site-name``, ``client`` or
    ``site-index``), so that sites sharing a ``state-dir`` do not share files."""
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


def restore(context: Context, like, round_index: int, run_name: str):
    """The state after round ``round_index - 1`` (for training round ``round_index``, 1-based),
    shaped as ``like``; None for round 1 and, with a warning, when the site does not hold it
    (the round then starts from the broadcast pair with fresh Adam moments)."""
    if round_index <= 1:
        return None
    from fedmix_jax.flower import array_records
    from fedmix_jax.flower.local_site import load_state

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
    from fedmix_jax.flower import array_records

    held = _kept_states.get((context.node_id, run_name), {})
    if held:
        return held[max(held)]
    rounds = _context_rounds(context, run_name)
    if rounds:
        return array_records.record_to_tree(
            context.state.array_records[f"{STATE_RECORD}-{max(rounds)}"], like, "state")
    return None


def store(context: Context, state, round_index: int, run_name: str,
          kept_round: int | None = None) -> None:
    """Keep the state after round ``round_index``; drop the states of rounds before
    ``kept_round`` (the coordinator's oldest checkpoint; None or 0: keep only this one) and of
    rounds after ``round_index`` (an interrupted timeline)."""
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
        from fedmix_jax.flower.local_site import save_state

        save_state(os.path.join(str(state_dir), f"{_stem(context, run_name)}.r{r}.npz"), r, state)
        for x, p in _disk_rounds(context, run_name).items():
            if x not in kept:
                try:
                    os.remove(p)
                except OSError as e:
                    log.warning("could not remove the old site state %s: %s", p, e)

"""The Flower ClientApp: one hospital's side of a FedMix round.

Messages it answers (the coordinator's :mod:`~fedmix_jax.flower.server_app` sends them):

* ``query.info`` — the site declares its name, index, split sizes, image shape and classes (sizes
  only: the server checks later replies against them);
* ``train`` — the broadcast global pair, the round, the site's key of the round and the shared
  config; the site runs the project's site function on its own data (pseudo-labels of the global
  pair, one local epoch of both models) and replies with **its local model pair and the scalars
  the weights need** (n_i, l_i, the selection counts, steps) — never an image, a mask, a
  pseudo-label or a per-sample value;
* ``evaluate`` — global model 1: Dice / IoU on the site's validation and test splits (scalars).

The site's data and its state between rounds never leave its machine. The state (local pair and
Adam moments) is kept in the SuperNode's context (``Context.state``, local to the node) — in the
memory of the process instead when the ClientApp runs inside the SuperNode
(``--clientapp-in-process``, :func:`keep_state_in_process`) — and, when the node config sets
``state-dir``, also on the site's disk so that a run resumed after a server restart continues with
the same Adam moments.

Node config (``flower-supernode --node-config "..."``): ``data`` (``folders`` | ``synthetic``),
``data-dir``, ``cache-dir``, ``client``, ``site-name``, ``site-index``, ``state-dir``.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

# No JAX at import time: JAX is imported with the site's data, at its first message.
from fedmix_jax.flower.protocol import (CONFIG_RECORD, GLOBAL_RECORD, LOCAL_RECORD,  # noqa: F401
                                        EVAL_RECORD, INFO_RECORD, REPORT_RECORD,
                                        SITE_RECORD)

log = logging.getLogger("fedmix_jax.flower")

STATE_RECORD = "site-state"
STATE_META = "site-state-meta"

_sites: dict = {}
_lock = threading.Lock()
# The ClientApp inside the SuperNode's process (fedmix_jax.flower.in_process_runtime) keeps each
# site's state in its memory: (node id, run name) -> (round, SiteState). Flower's Context travels
# with every message (pulled with the task, pushed back with the reply, serialised each way even
# in process), so the ~6x-model-size state kept in Context.state would be copied twice per message.
_kept_states: dict = {}
_keep_in_process = False


def keep_state_in_process(on: bool = True) -> None:
    """Keep the sites' state in this process instead of ``Context.state`` (for a process that
    serves every message of its SuperNode; ``state-dir`` on disk is still written)."""
    global _keep_in_process
    _keep_in_process = bool(on)


def _node_config(context: Context) -> dict:
    return {k: v for k, v in dict(context.node_config).items()}


def _local_site(context: Context, shared_json: str | None):
    """The node's :class:`LocalSite`, built once per process and node (data loaded once)."""
    from fedmix_jax.flower.local_site import LocalSite, config_from_json, data_key, load_site_data

    node = _node_config(context)
    # Keyed by what decides the data (node config and the coordinator's data settings): a run
    # with other data settings loads the site anew.
    key = (context.node_id, data_key(node, shared_json))
    with _lock:
        site = _sites.get(key)
        if site is None:
            shared = config_from_json(shared_json) if shared_json else None
            site = LocalSite(load_site_data(node, shared))
            _sites[key] = site
    return site


def _state_path(context: Context, run_name: str) -> str | None:
    d = _node_config(context).get("state-dir")
    if not d:
        return None
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_name) or "run"
    return os.path.join(str(d), f"{safe}.npz")


app = ClientApp()


@app.query("info")
def info(msg: Message, context: Context) -> Message:
    shared = None
    if CONFIG_RECORD in msg.content.config_records:
        shared = msg.content.config_records[CONFIG_RECORD].get("config-json")
    site = _local_site(context, shared)
    cr = ConfigRecord(dict(site.info(shared)))
    return Message(RecordDict({INFO_RECORD: cr}), reply_to=msg)


def hparams_from(cfg):
    from fedmix_jax.config import HParams

    return HParams.create(lam=float(cfg["lam"]), beta=float(cfg["beta"]),
                          learning_rate=float(cfg["learning-rate"]))


def _restore_state(context: Context, site, shared: str, round_index: int, run_name: str):
    """The site's :class:`~fedmix_jax.site.SiteState` for ``round_index`` (None: start fresh)."""
    if round_index <= 1:
        return None
    from fedmix_jax.flower import records
    from fedmix_jax.flower.local_site import load_state

    kept = _kept_states.get((context.node_id, run_name))
    if kept is not None and kept[0] == round_index - 1:
        return kept[1]
    like = site.template_state(shared)
    meta = context.state.config_records.get(STATE_META)
    if (meta is not None and meta.get("run-name") == run_name
            and int(meta.get("round", -1)) == round_index - 1
            and STATE_RECORD in context.state.array_records):
        try:
            return records.record_to_tree(context.state.array_records[STATE_RECORD], like,
                                          "state")
        except ValueError as e:
            log.warning("site state in the node context does not fit the model: %s", e)
    path = _state_path(context, run_name)
    if path:
        loaded = load_state(path, like)
        if loaded is not None and loaded[0] == round_index - 1:
            return loaded[1]
    log.warning("no site state of round %d: starting round %d with fresh Adam moments",
                round_index - 1, round_index)
    return None


def _store_state(context: Context, state, round_index: int, run_name: str) -> None:
    from fedmix_jax.flower import records

    if _keep_in_process:
        _kept_states[(context.node_id, run_name)] = (int(round_index), state)
        for recs, name in ((context.state.array_records, STATE_RECORD),
                           (context.state.config_records, STATE_META)):
            if name in recs:
                del recs[name]
    else:
        context.state.array_records[STATE_RECORD] = records.tree_to_record(state, "state")
        context.state.config_records[STATE_META] = ConfigRecord(
            {"round": int(round_index), "run-name": run_name})
    path = _state_path(context, run_name)
    if path:
        from fedmix_jax.flower.local_site import save_state

        save_state(path, round_index, state)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[CONFIG_RECORD]
    shared = str(cfg["config-json"])
    round_index = int(cfg["round"])
    run_name = str(cfg.get("run-name", "run"))
    key_data = np.asarray(cfg["site-key"], np.uint32)
    send_model = bool(cfg.get("send-model", True))
    from fedmix_jax.flower import records
    from fedmix_jax.flower._core import key_from_numpy
    from fedmix_jax.flower._core import round_index as index_of

    site = _local_site(context, shared)
    global_pair = records.record_to_pair(msg.content.array_records[GLOBAL_RECORD],
                                         site.template_pair(shared))
    state = _restore_state(context, site, shared, round_index, run_name)
    state, report = site.train(shared, global_pair, state, key_from_numpy(key_data),
                               hparams_from(cfg), index_of(round_index))
    _store_state(context, state, round_index, run_name)
    local_record = records.pair_to_record(state.params) if send_model else None
    return make_train_reply(msg, site.info(shared), round_index, report, local_record)


def make_train_reply(msg: Message, site_info: dict, round_index: int, report: dict,
                     local_record) -> Message:
    """The reply: the local pair (when the strategy aggregates) and the round's scalars."""
    content = RecordDict()
    if local_record is not None:
        content[LOCAL_RECORD] = local_record
    scalars = {k: np.asarray(v).item() for k, v in report.items()}
    scalars.update({"round": int(round_index), "site-index": int(site_info["site-index"]),
                    "num-examples": int(scalars["num_usable"])})
    content[REPORT_RECORD] = MetricRecord(scalars)
    content[SITE_RECORD] = ConfigRecord({"site-name": str(site_info["site-name"])})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[CONFIG_RECORD]
    shared = str(cfg["config-json"])
    round_index = int(cfg["round"])
    from fedmix_jax.flower import records

    site = _local_site(context, shared)
    arrays = msg.content.array_records.get(GLOBAL_RECORD)
    if arrays is not None:
        params1 = records.record_to_model(arrays, site.template_pair(shared).model1)
    else:   # local learning: the site evaluates its own model 1
        kept = _kept_states.get((context.node_id, str(cfg.get("run-name", "run"))))
        if kept is not None:
            state = kept[1]
        elif STATE_RECORD in context.state.array_records:
            state = records.record_to_tree(context.state.array_records[STATE_RECORD],
                                           site.template_state(shared), "state")
        else:
            raise RuntimeError("no local model to evaluate")
        params1 = state.params.model1
    scores = dict(site.evaluate(shared, params1))
    scores["round"] = round_index
    return Message(RecordDict({EVAL_RECORD: MetricRecord(scores)}), reply_to=msg)

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

The site's data and its state between rounds never leave its machine. The states (local pair and
Adam moments after each round, back to the coordinator's oldest checkpoint, so that a run resumed
after a server crash replays the interrupted round from the same state) are kept as
:mod:`fedmix_jax.flower.site_state` describes: in the SuperNode's context, in the memory of the
process when the ClientApp runs inside the SuperNode (``--clientapp-in-process``), and with
``state-dir`` also on the site's disk.

Node config (``flower-supernode --node-config "..."``): ``data`` (``folders`` | ``synthetic``),
``data-dir``, ``cache-dir``, ``client``, ``site-name``, ``site-index``, ``state-dir``.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

# No JAX at import time: JAX is imported with the site's data, at its first message.
from fedmix_jax.flower import site_state
from fedmix_jax.flower.protocol import (CONFIG_RECORD, GLOBAL_RECORD, LOCAL_RECORD,
                                        EVAL_RECORD, INFO_RECORD, REPORT_RECORD,
                                        SITE_RECORD)

log = logging.getLogger("fedmix_jax.flower")

_sites: dict = {}
_lock = threading.Lock()


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


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[CONFIG_RECORD]
    shared = str(cfg["config-json"])
    round_index = int(cfg["round"])
    run_name = str(cfg.get("run-name", "run"))
    key_data = np.asarray(cfg["site-key"], np.uint32)
    send_model = bool(cfg.get("send-model", True))
    from fedmix_jax.flower import array_records
    from fedmix_jax.flower.round_core import key_from_numpy
    from fedmix_jax.flower.round_core import round_index as index_of

    site = _local_site(context, shared)
    global_pair = array_records.record_to_pair(msg.content.array_records[GLOBAL_RECORD],
                                         site.template_pair(shared))
    state = site_state.restore(context, site.template_state(shared), round_index, run_name)
    state, report = site.train(shared, global_pair, state, key_from_numpy(key_data),
                               hparams_from(cfg), index_of(round_index))
    site_state.store(context, state, round_index, run_name, int(cfg.get("kept-round", 0)))
    local_record = array_records.pair_to_record(state.params) if send_model else None
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
    from fedmix_jax.flower import array_records

    site = _local_site(context, shared)
    arrays = msg.content.array_records.get(GLOBAL_RECORD)
    if arrays is not None:
        params1 = array_records.record_to_model(arrays, site.template_pair(shared).model1)
    else:   # local learning: the site evaluates its own model 1
        state = site_state.newest(context, site.template_state(shared),
                                  str(cfg.get("run-name", "run")))
        if state is None:
            raise RuntimeError("no local model to evaluate")
        params1 = state.params.model1
    scores = dict(site.evaluate(shared, params1))
    scores["round"] = round_index
    return Message(RecordDict({EVAL_RECORD: MetricRecord(scores)}), reply_to=msg)

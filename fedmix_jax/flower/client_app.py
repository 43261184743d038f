"""The Flower ClientApp: one hospital's side of a FedMix round.

It answers ``query.info`` (the site's declaration), ``train`` (the site function on its own data
from the broadcast pair: replies with its local pair and the scalars the weights need, never a
sample) and ``evaluate`` (global model 1's figures on its val / test splits). Node config keys
and records: docs/across_sites.md.
"""

from __future__ import annotations

import threading

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

# No JAX at import time: JAX is imported with the site's data, at its first message.
from fedmix_jax.flower import site_state
from fedmix_jax.flower.protocol import (CONFIG_RECORD, EVAL_RECORD, GLOBAL_RECORD, INFO_RECORD,
                                        LOCAL_RECORD, REPORT_RECORD, SITE_RECORD)

_sites: dict = {}
_lock = threading.Lock()


def _local_site(context: Context, shared_json: str | None):
    """The node's :class:`LocalSite`, built once per process and node (data loaded once)."""
    from fedmix_jax.flower.local_site import LocalSite, config_from_json, data_key, load_site_data

    node = dict(context.node_config)
    # Keyed by what decides the data: a run with other data settings loads the site anew.
    key = (context.node_id, data_key(node, shared_json))
    with _lock:
        if key not in _sites:
            shared = config_from_json(shared_json) if shared_json else None
            _sites[key] = LocalSite(load_site_data(node, shared))
        return _sites[key]


app = ClientApp()


@app.query("info")
def info(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records.get(CONFIG_RECORD)
    site = _local_site(context, None if cfg is None else cfg.get("config-json"))
    return Message(RecordDict({INFO_RECORD: ConfigRecord(dict(site.data.info()))}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The round of the site: the local pair (when the strategy aggregates) and the scalars."""
    from fedmix_jax.config import HParams
    from fedmix_jax.flower import array_records
    from fedmix_jax.flower.round_core import key_from_numpy, round_index

    cfg = msg.content.config_records[CONFIG_RECORD]
    shared = str(cfg["config-json"])
    r = int(cfg["round"])
    run_name = str(cfg.get("run-name", "run"))
    site = _local_site(context, shared)
    global_pair = array_records.record_to_pair(msg.content.array_records[GLOBAL_RECORD],
                                               site.template_pair(shared))
    state = site_state.restore(context, site.template_state(shared), r, run_name)
    hparams = HParams.create(lam=float(cfg["lam"]), beta=float(cfg["beta"]),
                             learning_rate=float(cfg["learning-rate"]))
    state, report = site.train(shared, global_pair, state, key_from_numpy(cfg["site-key"]),
                               hparams, round_index(r))
    site_state.store(context, state, r, run_name, int(cfg.get("kept-round", 0)))
    content = RecordDict()
    if bool(cfg.get("send-model", True)):
        content[LOCAL_RECORD] = array_records.pair_to_record(state.params)
    scalars = {k: np.asarray(v).item() for k, v in report.items()}
    content[REPORT_RECORD] = MetricRecord(scalars | {"round": r, "site-index": int(site.data.index),
                                                     "num-examples": int(scalars["num_usable"])})
    content[SITE_RECORD] = ConfigRecord({"site-name": str(site.data.name)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[CONFIG_RECORD]
    shared = str(cfg["config-json"])
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
    scores["round"] = int(cfg["round"])
    return Message(RecordDict({EVAL_RECORD: MetricRecord(scores)}), reply_to=msg)

"""FedMix across sites on Flower: records, reply validation, and the in-process equivalence.

Offline and fast: the ServerApp and the ClientApps run in this process over
:class:`fedmix_jax.flower.simulation.LocalGrid` (the transport is a function call; every FedMix
code path is the deployment's). Tiny model (U-Net width 4, depth 2), 16 px images.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

flwr = pytest.importorskip("flwr")

from flwr.app import (Array, ArrayRecord, ConfigRecord, Message, MetricRecord,  # noqa: E402
                      RecordDict)

from fedmix_jax.flower import round_core, array_records  # noqa: E402
from fedmix_jax.flower.simulation import LocalGrid, run_local, synthetic_sites  # noqa: E402
from fedmix_jax.flower.strategy import FedMixStrategy, Site  # noqa: E402
from fedmix_jax.flower.validation import LOCAL_RECORD, REPORT_RECORD, SITE_RECORD  # noqa: E402

OVERRIDES = ("model.width=4 model.depth=2 data.image_size=16 data.num_clients=3 "
             "data.train_sizes='(8,12,6)' data.levels=\"('box','pixel','box')\" "
             "data.val_size=4 data.test_size=4 train.batch_size=4")


def _run_config(tmp_path, rounds=2, name="run", extra=""):
    return {"config": "configs/synthetic.py", "workdir": str(tmp_path / name),
            "overrides": f"num_rounds={rounds} {OVERRIDES} {extra}", "round-timeout": 600.0}


def _in_process(rounds: int, extra: str = ""):
    """The reference: make_round_fn(executor='loop') on the same config."""
    from fedmix_jax.config import build_model, build_round_config
    from fedmix_jax.data.synthetic import synthetic_federation_from_config
    from fedmix_jax.compiled_round import init_state, make_round_fn
    from fedmix_jax.flower.server_app import load_config

    config = load_config("configs/synthetic.py",
                         f"num_rounds={rounds} {OVERRIDES} {extra} train.executor=loop")
    fed = synthetic_federation_from_config(config.data)
    rc = build_round_config(config)
    model = build_model(config, fed.num_classes)
    state = init_state(model, jax.random.key(int(config.seed)), fed.train.images.shape[2:],
                       fed.num_clients, rc)
    round_fn = make_round_fn(model, rc)
    train = jax.device_put(fed.train)
    metrics = []
    for _ in range(rounds):
        state, m = round_fn(state, train)
        metrics.append(jax.device_get(m))
    return state, metrics


def _in_process_evaluation(params1) -> dict:
    """``{"val", "test"}``: the main job's record figures of ``params1`` on the same data."""
    from fedmix_jax.config import build_model
    from fedmix_jax.data.synthetic import synthetic_federation_from_config
    from fedmix_jax.evaluation import evaluate
    from fedmix_jax.flower.server_app import load_config
    from fedmix_jax.records import eval_record

    config = load_config("configs/synthetic.py", f"num_rounds=2 {OVERRIDES}")
    fed = synthetic_federation_from_config(config.data)
    model = build_model(config, fed.num_classes)
    return {split: eval_record(evaluate(model, params1, getattr(fed, split)))
            for split in ("val", "test")}


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------------------------------------
# records


def _tiny_pair():
    from fedmix_jax.config import RoundConfig
    from fedmix_jax.models import UNet

    model = UNet(width=4, num_classes=1, depth=2)
    return round_core.initial_server_state(model, 0, (16, 16, 3), RoundConfig())


def test_records_round_trip_pair_and_site_state():
    from fedmix_jax.config import RoundConfig

    pair, key = _tiny_pair()
    rec = array_records.pair_to_record(pair)
    keys = list(rec.keys())
    assert keys == ["model1", "model2"]           # one packed float32 vector per model
    assert {k: (tuple(rec[k].shape), rec[k].dtype) for k in keys} == array_records.pair_spec(pair)
    assert rec["model1"].shape[0] == sum(x.size for x in jax.tree.leaves(pair.model1))
    back = array_records.record_to_pair(rec, jax.eval_shape(lambda: pair))
    assert _max_diff(pair, back) == 0.0
    assert all(isinstance(v, Array) and v.stype == "numpy.ndarray" for v in rec.values())
    # A site state: Adam moments, 0-d counters and the injected learning rate survive.
    state = round_core.initial_site_state(pair, RoundConfig())
    srec = array_records.tree_to_record(state, "state")
    sback = array_records.record_to_tree(srec, jax.eval_shape(lambda: state), "state")
    assert jax.tree.structure(sback) == jax.tree.structure(state)
    assert _max_diff(state, sback) == 0.0
    # Keys cross as raw uint32 data and come back as the same typed key.
    raw = round_core.key_to_numpy(key)
    assert np.array_equal(round_core.key_to_numpy(round_core.key_from_numpy(raw)),
                          round_core.key_to_numpy(key))
    with pytest.raises(ValueError):
        bad = array_records.pair_to_record(pair)
        del bad[keys[0]]
        array_records.record_to_pair(bad, pair)


# ------------------------------------------------------------------------------------------------
# the strategy on hand-made replies


def _reply(node, msg, arrays: dict | None, report: dict, name: str):
    content = RecordDict()
    if arrays is not None:
        rec = ArrayRecord()
        for k, v in arrays.items():
            rec[k] = Array(np.asarray(v, order="C"))
        content[LOCAL_RECORD] = rec
    content[REPORT_RECORD] = MetricRecord(report)
    content[SITE_RECORD] = ConfigRecord({"site-name": name})
    reply = Message(content, reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def _report(**kw):
    """A plausible report with every SiteReport field (counts below the declared size 10)."""
    d = {k: (0.5 if typ is float else 2) for k, typ in array_records.REPORT_FIELDS.items()}
    d.update(num_usable=5, num_weak=4, num_selected_weak=2)
    d.update(kw)
    return d


def _strategy(min_sites=1):
    from fedmix_jax.config import HParams
    from fedmix_jax.strategies import get_strategy

    pair, key = _tiny_pair()
    pair = jax.device_get(pair)
    sites = [Site(node_id=n, index=i, name=f"s{i}", num_train=10)
             for i, n in enumerate((71, 13, 42, 5, 99, 8, 61, 3))]
    strat = FedMixStrategy(get_strategy("fedmix"), sites, pair, key,
                           HParams.create(10.0, 3.0, 1e-3), "{}", min_sites=min_sites)
    return strat, pair, sites


def test_strategy_rejects_bad_replies_and_renormalises():
    LocalGrid({})  # sets the process's task identity for Message()
    strat, pair, sites = _strategy()
    arrays = array_records.pair_to_record(pair)
    msgs = list(strat.configure_train(3, arrays, ConfigRecord(), None))
    assert [m.metadata.dst_node_id for m in msgs] == [s.node_id for s in sites]
    keys = [np.asarray(m.content["fedmix"]["site-key"]) for m in msgs]
    assert len({tuple(k) for k in keys}) == len(sites)             # one key per site
    for m in msgs:
        m.metadata.__dict__["_message_id"] = f"id-{m.metadata.dst_node_id}"
    spec = array_records.pair_spec(pair)
    base = {k: v.numpy() for k, v in array_records.pair_to_record(pair).items()}

    def good(i, scale):
        return {k: v + scale for k, v in base.items()}

    def rep(n=5, loss=0.5, r=3, **kw):
        d = _report(num_usable=n, loss1=loss, loss2=loss, round=r)
        d.update(kw)
        return d

    k0 = next(iter(spec))
    wrong_key = dict(good(2, 0.0))
    wrong_key["model3"] = wrong_key.pop(k0)
    wrong_shape = dict(good(3, 0.0))
    wrong_shape[k0] = np.zeros((3,) + base[k0].shape, base[k0].dtype)
    wrong_dtype = dict(good(4, 0.0))
    wrong_dtype[k0] = base[k0].astype(np.float64)
    non_finite = dict(good(5, 0.0))
    non_finite[k0] = np.full_like(base[k0], np.nan)
    replies = [
        _reply(sites[0].node_id, msgs[0], good(0, 1.0), rep(n=6, loss=0.4), "s0"),   # good
        _reply(sites[1].node_id, msgs[1], good(1, 2.0), rep(n=3, loss=0.8), "s1"),   # good
        _reply(sites[2].node_id, msgs[2], wrong_key, rep(), "s2"),
        _reply(sites[3].node_id, msgs[3], wrong_shape, rep(), "s3"),
        _reply(sites[4].node_id, msgs[4], wrong_dtype, rep(), "s4"),
        _reply(sites[5].node_id, msgs[5], non_finite, rep(), "s5"),
        _reply(sites[6].node_id, msgs[6], good(6, 0.0), rep(n=11), "s6"),            # > size
        # sites[7]: a reply for another round
        _reply(sites[7].node_id, msgs[7], good(7, 0.0), rep(r=2), "s7"),
    ]
    new, metrics = strat.aggregate_train(3, replies)
    out = strat.last_round
    assert out.accepted == [True, True] + [False] * 6
    reasons = out.rejected
    assert "wrong array keys" in reasons["s2"]
    assert "got float32[3," in reasons["s3"]
    assert "float64" in reasons["s4"]
    assert "non-finite" in reasons["s5"]
    assert "declared size" in reasons["s6"]
    assert "round 2" in reasons["s7"]
    w = np.asarray(out.weights)
    assert np.all(w[2:] == 0) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    # The weights are the strategy's over the accepted sites only (renormalised).
    from fedmix_jax.aggregation import fedmix_weights

    ref = np.asarray(fedmix_weights(jnp.array([6, 3]), jnp.array([0.4, 0.8]), 10.0, 3.0))
    np.testing.assert_allclose(w[:2], ref, rtol=1e-6)
    agg = array_records.record_to_pair(new, pair)
    expect = jax.tree.map(lambda x: x + (w[0] * 1.0 + w[1] * 2.0), array_records._as_pair(pair))
    assert _max_diff(agg, expect) < 1e-5
    assert metrics["num-accepted"] == 2


def test_strategy_error_and_missing_replies_and_min_sites():
    LocalGrid({})
    strat, pair, sites = _strategy(min_sites=3)
    arrays = array_records.pair_to_record(pair)
    msgs = list(strat.configure_train(1, arrays, ConfigRecord(), None))
    for m in msgs:
        m.metadata.__dict__["_message_id"] = f"id-{m.metadata.dst_node_id}"
    from flwr.app import Error

    base = {k: v.numpy() for k, v in array_records.pair_to_record(pair).items()}
    ok = _report(round=1)
    err = Message(Error(code=0, reason="boom"), reply_to=msgs[1])
    err.metadata.__dict__["_src_node_id"] = sites[1].node_id
    replies = [_reply(sites[0].node_id, msgs[0], base, ok, "s0"), err,
               _reply(sites[2].node_id, msgs[2], base, ok, "someone-else"),
               _reply(sites[3].node_id, msgs[3], base, dict(ok, loss1=-1.0), "s3"),
               _reply(12345, msgs[4], base, ok, "s4")]                    # unregistered node
    key_before = strat.key
    new, _ = strat.aggregate_train(1, replies)
    out = strat.last_round
    assert new is None and not out.applied                     # 1 accepted < min_sites 3
    assert "boom" in out.rejected["s1"]
    assert "someone-else" in out.rejected["s2"]
    assert "outside the Dice loss range" in out.rejected["s3"]
    assert "no reply" in out.rejected["s4"] and "no reply" in out.rejected["s7"]
    assert not np.array_equal(round_core.key_to_numpy(strat.key), round_core.key_to_numpy(key_before))


# ------------------------------------------------------------------------------------------------
# simulation == in-process round


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flower")
    summary, pair, grid = run_local(3, _run_config(tmp, rounds=2))
    ref_state, ref_metrics = _in_process(2)
    return summary, pair, grid, ref_state, ref_metrics, tmp


def test_simulation_equals_in_process_loop_round(two_rounds):
    summary, pair, grid, ref_state, ref_metrics, tmp = two_rounds
    diff = _max_diff(pair, ref_state.global_params)
    # Measured bit-identical on CPU; the bound is the stated float tolerance.
    assert diff <= 1e-6, diff
    from fedmix_jax.records import read_metrics

    recs = read_metrics(os.path.join(summary["workdir"], "metrics.jsonl"))
    assert [r["round"] for r in recs] == [1, 2]
    for rec, m in zip(recs, ref_metrics):
        np.testing.assert_array_equal(rec["counts"], np.asarray(m.reports.num_usable))
        np.testing.assert_array_equal(rec["selected_weak"], np.asarray(m.reports.num_selected_weak))
        np.testing.assert_allclose(rec["loss1"], np.asarray(m.reports.loss1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rec["weights"], np.asarray(m.weights), rtol=1e-6, atol=1e-7)
        assert all(rec["accepted"]) and "val_mean_dice" in rec
    assert summary["client_names"] == ["site_a_dim", "site_b_hairy", "site_c_clean"]
    # Each evaluation carries the main job's figures (array_records.EVAL_FIGURES: Dice, IoU, HD95,
    # dice_present, false-positive rate, per site and mean), equal to the in-process evaluation
    # of the same global model 1.
    for split, ref in _in_process_evaluation(ref_state.global_params.model1).items():
        for k, v in ref.items():
            got = recs[-1][f"{split}_{k}"]
            np.testing.assert_allclose(np.asarray(got, float), np.asarray(v, float), rtol=1e-5,
                                       atol=1e-6, err_msg=f"{split}_{k}")
    assert summary["best"]["val"].keys() == ref.keys()
    assert os.path.exists(os.path.join(summary["workdir"], "summary.json"))


def test_only_the_model_pair_and_scalars_leave_a_site(two_rounds):
    summary, pair, grid, *_ = two_rounds
    spec = list(array_records.pair_spec(pair))
    allowed_report = set(array_records.REPORT_FIELDS) | {"round", "site-index", "num-examples"}
    kinds = {}
    for reply in grid.replies:
        kind = reply.metadata.message_type
        kinds[kind] = kinds.get(kind, 0) + 1
        c = reply.content
        if kind == "train":
            assert set(c.array_records) == {LOCAL_RECORD}
            assert list(c.array_records[LOCAL_RECORD].keys()) == spec     # the pair, nothing else
            assert set(c.metric_records) == {REPORT_RECORD}
            assert set(c.metric_records[REPORT_RECORD]) == allowed_report
            scalars = c.metric_records[REPORT_RECORD].values()
            assert all(isinstance(v, (int, float)) for v in scalars)
            assert set(c.config_records) == {SITE_RECORD}
            assert set(c.config_records[SITE_RECORD]) == {"site-name"}
        elif kind == "evaluate":
            assert not c.array_records and set(c.metric_records) == {"eval"}
            # Scalars, and the per-class figures: one mean per class (1 class here), never a
            # per-image value.
            assert all(isinstance(v, (int, float)) or (
                isinstance(v, list) and len(v) == 1 and isinstance(v[0], float))
                for v in c.metric_records["eval"].values())
        else:
            assert kind == "query.info" and not c.array_records and not c.metric_records
            info = c.config_records["info"]
            assert all(isinstance(v, (int, str)) or (isinstance(v, list) and len(v) <= 4)
                       for v in info.values())
    assert kinds == {"query.info": 3, "train": 6, "evaluate": 6}


def test_resume_after_server_restart_equals_uninterrupted(two_rounds, tmp_path):
    _, pair, *_ , ref_state, _, _ = two_rounds
    cfg1 = _run_config(tmp_path, rounds=1, name="resume")
    s1, _, grid = run_local(3, cfg1)
    assert s1["rounds_completed"] == 1
    # The server restarts (same workdir, more rounds); the sites kept their state.
    cfg2 = _run_config(tmp_path, rounds=2, name="resume")
    s2, pair2, _ = run_local(3, cfg2, grid=grid)
    assert s2["resumed_from"] == 1
    assert _max_diff(pair2, ref_state.global_params) <= 1e-6


@pytest.mark.parametrize("where", ["node context", "state-dir after a SuperNode restart"])
def test_server_crash_mid_round_resumes_bit_identical(two_rounds, tmp_path, monkeypatch, caplog,
                                                      where):
    """The ServerApp dies in round 2 after the sites trained it (their state is already at round
    2); resumed from its checkpoint of round 1 it sends round 2 again, and each site starts it
    from its kept state of round 1 (in its node context, or from ``state-dir`` when the SuperNode
    restarted too): the run ends bit-identical to an uninterrupted one, no fresh Adam moments."""
    from fedmix_jax.flower.simulation import LocalGrid, synthetic_sites
    from fedmix_jax.flower.strategy import FedMixStrategy

    _, _, _, ref_state, _, _ = two_rounds
    cfg = _run_config(tmp_path, rounds=2, name="crash", extra="checkpoint_every=1")
    node = {"state-dir": str(tmp_path / "site_state")} if "state-dir" in where else {}
    aggregate = FedMixStrategy.aggregate_train

    def dies_in_round_2(self, server_round, replies):
        replies = list(replies)          # the sites have trained and kept round 2's state
        if server_round == 2:
            raise KeyboardInterrupt("kill -9 of the ServerApp")
        return aggregate(self, server_round, replies)

    monkeypatch.setattr(FedMixStrategy, "aggregate_train", dies_in_round_2)
    grid = LocalGrid(synthetic_sites(3, **node))
    with pytest.raises(KeyboardInterrupt):
        run_local(3, cfg, grid=grid)
    monkeypatch.setattr(FedMixStrategy, "aggregate_train", aggregate)
    if node:
        grid = LocalGrid(synthetic_sites(3, **node))        # the SuperNodes restarted too
        assert sorted(os.listdir(node["state-dir"])) == [
            f"crash.{i}.r{r}.npz" for i in range(3) for r in (1, 2)]
    with caplog.at_level("WARNING", logger="fedmix_jax.flower"):
        summary, pair, _ = run_local(3, cfg, grid=grid)
    assert summary["resumed_from"] == 1 and summary["rounds_completed"] == 2
    assert "fresh Adam moments" not in caplog.text
    assert _max_diff(pair, ref_state.global_params) == 0.0
    if node:     # only the states from the oldest checkpoint kept on (rounds 1 and 2) remain
        assert sorted(os.listdir(node["state-dir"])) == [
            f"crash.{i}.r{r}.npz" for i in range(3) for r in (1, 2)]


def test_server_workdir_is_locked_verified_and_rebuilt(two_rounds, tmp_path):
    """The server's workdir behaves as the main job's: a second server is refused, a damaged
    newest checkpoint is set aside for the previous one, metrics.jsonl is rebuilt."""
    from fedmix_jax import rundir
    from fedmix_jax.errors import WorkdirLockedError
    from fedmix_jax.records import read_metrics

    cfg = _run_config(tmp_path, rounds=2, name="wd", extra="checkpoint_every=1 keep_checkpoints=2")
    wd = cfg["workdir"]
    with rundir.WorkdirLock(wd):
        with pytest.raises(WorkdirLockedError, match=str(os.getpid())):
            run_local(3, cfg)
    s1, _, grid = run_local(3, cfg)
    assert s1["rounds_completed"] == 2
    ckpt = os.path.join(wd, rundir.CHECKPOINT_DIR, "2", "state")
    victim = max((os.path.join(r, f) for r, _, fs in os.walk(ckpt) for f in fs),
                 key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    metrics = os.path.join(wd, rundir.METRICS_FILE)
    text = open(metrics).read()
    open(metrics, "w").write(text[: len(text) - 40])          # round 2's line cut mid-way
    s2, _, _ = run_local(3, cfg, grid=grid)
    assert s2["resumed_from"] == 1 and s2["rounds_completed"] == 2
    assert [r["round"] for r in read_metrics(metrics)] == [1, 2]
    moved = os.listdir(os.path.join(wd, rundir.DAMAGED_DIR))
    assert any(m.startswith("checkpoint-2-") for m in moved), moved
    from fedmix_jax.errors import ConfigError      # the in-process job's field is refused here
    with pytest.raises(ConfigError, match="Flower mode"):
        run_local(3, _run_config(tmp_path, name="ft", extra="fine_tune_epochs=1"), grid=grid)
    assert not os.path.exists(tmp_path / "ft")


def test_flower_waits_are_capped_only_on_the_pinned_version(monkeypatch):
    import flwr.supernode.start_client_internal as loop

    from fedmix_jax.flower import latency

    monkeypatch.setattr(loop, "time", loop.time)        # restored after the test
    for module, attr in latency._PULL_FUNCTIONS:
        mod = __import__(module, fromlist=[attr])
        monkeypatch.setattr(mod, attr, getattr(mod, attr))
    patched = latency.cap_object_pulls(0.05)
    assert len(patched) == 3
    fn = loop.pull_objects
    assert fn.keywords == {"initial_backoff": 0.05, "backoff_cap": 0.2,
                           "max_tries_per_object": None}
    latency.cap_object_pulls(0.1)                       # re-capping wraps the original once
    assert loop.pull_objects.func is fn.func
    assert loop.pull_objects.keywords["initial_backoff"] == 0.1
    latency.cap_supernode_sleeps(0.01)
    import time

    t0 = time.perf_counter()
    loop.time.sleep(3)                                  # Flower's idle sleep, capped
    assert time.perf_counter() - t0 < 1.0 and loop.time.perf_counter is time.perf_counter
    latency.cap_supernode_sleeps(5.0, local_cap=0.01)   # a ClientApp in the node's process:
    t0 = time.perf_counter()                           # its reply checks read memory
    loop.time.sleep(0.5)
    assert time.perf_counter() - t0 < 0.3 and loop.time.cap == 5.0
    from fedmix_jax.flower import supernode

    assert supernode.main(["--clientapp-in-process", "--isolation", "subprocess"]) == 2
    # --poll-interval 0 keeps Flower's own waits (what the caps save is measured against it).
    import importlib
    import sys

    cli = importlib.import_module("flwr.supernode.cli")
    calls = []
    monkeypatch.setattr(supernode, "cap_supernode_sleeps", lambda *a, **k: calls.append("sleep"))
    monkeypatch.setattr(supernode, "cap_object_pulls", lambda *a, **k: calls.append("pulls"))
    monkeypatch.setattr(cli, "flower_supernode", lambda: None)
    monkeypatch.setattr(importlib.import_module("flwr.supercore.logger"),
                        "update_console_handler", lambda **k: None)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    assert supernode.main(["--poll-interval", "0"]) == 0 and calls == []
    assert supernode.main(["--poll-interval", "0.2"]) == 0 and calls == ["sleep", "pulls"]
    with pytest.raises(ValueError):
        latency.cap_object_pulls(0)
    monkeypatch.setattr(flwr, "__version__", "1.99.0")
    with pytest.raises(RuntimeError, match="1.99.0"):
        latency.cap_supernode_sleeps(0.2)


def test_state_kept_in_a_long_running_process_equals_context_state(two_rounds, tmp_path,
                                                                    monkeypatch):
    """The ClientApp inside the SuperNode's process (``keep_state_in_process``, as
    ``in_process_runtime.serve_tasks`` sets it) keeps the site state in its memory, not in the
    Context that travels with every message: same numbers, and the contexts stay free of the
    state."""
    from fedmix_jax.flower import site_state

    _, _, _, ref_state, _, _ = two_rounds
    monkeypatch.setattr(site_state, "_kept_states", {})
    site_state.keep_state_in_process()
    monkeypatch.setattr(site_state, "_keep_in_process", True)     # undone after the test
    summary, pair, grid = run_local(3, _run_config(tmp_path, rounds=2, name="kept"))
    assert _max_diff(pair, ref_state.global_params) <= 1e-6
    assert len(site_state._kept_states) == 3
    assert all(not any(k.startswith(site_state.STATE_RECORD) for k in c.state.array_records)
               for c in grid.contexts.values())


def test_silent_site_does_not_stall_the_round(two_rounds, tmp_path):
    import threading
    import time

    release = threading.Event()

    def intercept(node, msg, reply):
        if msg.metadata.message_type == "train" and node == silent:
            release.wait(120.0)      # answers long after the round's timeout
        return reply

    sites = synthetic_sites(3)
    silent = list(sites)[1]
    grid = LocalGrid(sites, intercept=intercept)
    # two_rounds compiled the programs in this process: the other sites answer in seconds.
    cfg = dict(_run_config(tmp_path, rounds=1), **{"round-timeout": 20.0})
    t0 = time.time()
    try:
        summary, _, _ = run_local(3, cfg, grid=grid)
    finally:
        release.set()
        grid.close()
    from fedmix_jax.records import read_metrics

    rec = read_metrics(os.path.join(summary["workdir"], "metrics.jsonl"))[0]
    assert rec["accepted"][1] is False and rec["applied"]
    assert "no reply" in rec["rejected"]["site_b_hairy"]
    assert time.time() - t0 < 110


def test_in_process_runtime_serves_a_supernode_task(monkeypatch):
    """``--clientapp-in-process``: the ClientApp loop calls the SuperNode's Runtime API handlers on
    the node's own state (no HTTP). Against Flower's real node state: the task is acquired, the
    message (with its arrays) and the context reach the ClientApp, the reply is stored for the
    SuperNode to send with its objects, the task is finished, and a call with a wrong token is
    refused."""
    from flwr.app import Context
    from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullTaskInputRequest  # noqa: E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.error import FlowerError
    from flwr.supercore.fab import Fab
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supernode.nodestate import NodeStateFactory
    from flwr.supernode.start_client_internal import _insert_message

    from fedmix_jax.flower.in_process_runtime import InProcessRuntime, run_task

    state = NodeStateFactory(objectstore_factory=ObjectStoreFactory()).state()
    state.set_node_id(7)
    import hashlib

    run = Run.create_empty(5)
    run.fab_hash = hashlib.sha256(b"fab").hexdigest()
    run.primary_task_type, run.series_id = TaskType.CLIENT_APP, 3
    state.store_run(run)
    state.store_fab(Fab(run.fab_hash, b"fab", {}))
    state.set_run_series_context(3, Context(run_id=5, node_id=7, node_config={"site-name": "a"},
                                            state=RecordDict(), run_config={}, series_id=3))
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 5), ("_node_id", 0), ("_task_id", 1)):   # the server's
        monkeypatch.setattr(TaskIdentity, attr, value)                      # (restored after)
    pair = np.arange(12, dtype=np.float32).reshape(3, 4)
    msg = Message(RecordDict({"pair": ArrayRecord([pair])}), dst_node_id=7, message_type="train")
    msg.metadata.__dict__["_run_id"] = 5
    assert state.create_task(task_type=TaskType.CLIENT_APP, run_id=5, fab_hash=run.fab_hash)
    _insert_message(msg, state, state.object_store)

    seen = {}

    def client_app(message, context):
        seen["pair"] = message.content.array_records["pair"].to_numpy_ndarrays()[0]
        seen["site"] = context.node_config["site-name"]
        return Message(RecordDict({"pair": ArrayRecord([2 * seen["pair"]])}), reply_to=message)

    node_api = InProcessRuntime(state)
    acquired = node_api.AcquireTask(AcquireTaskRequest(
        supported_task_types=[str(TaskType.CLIENT_APP)]))
    assert acquired.token
    with pytest.raises(FlowerError):
        node_api.with_token("not-the-token").PullTaskInput(PullTaskInputRequest())
    assert run_task(node_api.with_token(acquired.token), client_app)
    np.testing.assert_array_equal(seen["pair"], pair)
    assert seen["site"] == "a"
    [reply] = state.get_messages_legacy(is_reply=True)
    tree = state.object_store.get_object_tree(reply.metadata.message_id)
    assert tree.object_id == reply.metadata.message_id
    assert all(state.object_store.get(t.object_id) not in (None, b"")     # ready to send
               for t in _object_tree_nodes(tree))
    assert not node_api.AcquireTask(AcquireTaskRequest(
        supported_task_types=[str(TaskType.CLIENT_APP)])).token             # task finished


def _object_tree_nodes(tree):
    yield tree
    for child in tree.children:
        yield from _object_tree_nodes(child)


def test_fedst_leaves_its_warm_up_on_flower_as_in_process(tmp_path):
    """The round index reaches every site and the server's weights: FedST with a 1-round warm-up
    over 3 rounds equals the in-process job (round 1 weighs the pixel site alone and trains only
    pixel samples; rounds 2-3 self-train the weak sites and give them weight)."""
    extra = "strategy=fedst train.warmup_rounds=1"
    ref_state, ref_metrics = _in_process(3, extra)
    summary, pair, _ = run_local(3, _run_config(tmp_path, rounds=3, name="fedst", extra=extra))
    assert _max_diff(pair, ref_state.global_params) <= 1e-6
    from fedmix_jax.records import read_metrics

    recs = read_metrics(os.path.join(summary["workdir"], "metrics.jsonl"))
    for rec, m in zip(recs, ref_metrics):
        np.testing.assert_array_equal(rec["counts"], np.asarray(m.reports.num_usable))
        np.testing.assert_allclose(rec["weights"], np.asarray(m.weights), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rec["loss1"], np.asarray(m.reports.loss1), rtol=1e-6, atol=1e-7)
    w = [np.asarray(r["weights"]) for r in recs]
    np.testing.assert_allclose(w[0], [0.0, 1.0, 0.0])              # warm-up: pixel site only
    np.testing.assert_allclose(w[1], [0.05, 0.9, 0.05], rtol=1e-6)  # after it: 0.9 / shared 0.1
    assert recs[1]["counts"][0] > recs[0]["counts"][0] == 0         # weak site a self-trains


def test_hostile_sites_are_left_out_of_a_flower_run(two_rounds, tmp_path, caplog):
    """End to end over LocalGrid: site c declares 10^12 training samples (excluded when it
    joins), site b reports a NaN loss in its train reply (rejected in the round); the run goes on
    with the others and never crashes."""
    def intercept(node, msg, reply):
        kind = msg.metadata.message_type
        if kind == "query.info" and node == nodes[2]:
            reply.content.config_records["info"]["num-train"] = 10**12
        if kind == "train" and node == nodes[1]:
            reply.content.metric_records[REPORT_RECORD]["loss1"] = math.nan
        return reply

    sites = synthetic_sites(3)
    nodes = list(sites)
    grid = LocalGrid(sites, intercept=intercept)
    cfg = dict(_run_config(tmp_path, rounds=1, name="hostile"), **{"num-sites": 3})
    with caplog.at_level("WARNING", logger="fedmix_jax.flower"):
        summary, pair, _ = run_local(3, cfg, grid=grid)
    assert summary["client_names"] == ["site_a_dim", "site_b_hairy"]
    assert f"node {nodes[2]} excluded: bad declaration: num-train 1000000000000" in caplog.text
    from fedmix_jax.records import read_metrics

    rec = read_metrics(os.path.join(summary["workdir"], "metrics.jsonl"))[0]
    assert rec["accepted"] == [True, False] and rec["applied"]
    assert "loss1: non-finite" in rec["rejected"]["site_b_hairy"]
    assert rec["weights"] == [1.0, 0.0]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(pair))

"""Checkpoints and exact resume: an interrupted run ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from fedmix_jax import train
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.errors import ConfigMismatchError
from fedmix_jax.records import read_metrics
from fedmix_jax.rundir import CHECKPOINT_DIR, METRICS_FILE, config_differences

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_main import tiny_config  # noqa: E402

TIMING_KEYS = ("round_time_s", "eval_time_s")


def _strip_times(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _final(workdir, step):
    """(state, best params, extra) of checkpoint ``step`` as NumPy trees."""
    cfg = tiny_config()
    from fedmix_jax.data.synthetic import synthetic_federation_from_config
    from fedmix_jax.compiled_round import init_state

    fed = synthetic_federation_from_config(cfg.data)
    model = train.build_model(cfg, fed.num_classes)
    target = init_state(model, jax.random.PRNGKey(0), fed.train.images.shape[2:],
                        fed.num_clients, train.build_round_config(cfg))
    with Checkpointer(os.path.join(workdir, CHECKPOINT_DIR)) as ck:
        state, best, extra = ck.restore(step, target, target.global_params[0])
    return jax.device_get(state), jax.device_get(best), extra


def _assert_equal_trees(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def federation():
    from fedmix_jax.data.synthetic import synthetic_federation_from_config

    return synthetic_federation_from_config(tiny_config().data)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, federation):
    wd = str(tmp_path_factory.mktemp("full") / "run")
    train.train_and_evaluate(tiny_config(num_rounds=4, checkpoint_every=2), wd, quiet=True,
                             federation=federation, write_plots=False)
    return wd


def test_resume_with_more_rounds_is_bit_identical(uninterrupted, federation, tmp_path):
    wd = str(tmp_path / "grown")
    train.train_and_evaluate(tiny_config(num_rounds=2, checkpoint_every=2), wd, quiet=True,
                             federation=federation, write_plots=False)
    summary = train.train_and_evaluate(tiny_config(num_rounds=4, checkpoint_every=2), wd,
                                       quiet=True, federation=federation, write_plots=False)
    assert summary["resumed_from"] == 2
    a, b = _final(uninterrupted, 4), _final(wd, 4)
    _assert_equal_trees(a[0], b[0])          # FedState: params, Adam states, round, key
    _assert_equal_trees(a[1], b[1])          # the params selected by validation
    assert a[2]["best"] == b[2]["best"]
    assert _strip_times(read_metrics(os.path.join(uninterrupted, METRICS_FILE))) \
        == _strip_times(read_metrics(os.path.join(wd, METRICS_FILE)))


def test_interrupted_run_resumes_bit_identical(uninterrupted, federation, tmp_path,
                                               monkeypatch):
    """Ctrl-C in round 4: lines 1..3 and checkpoint 2 exist; the rerun drops line 3 and redoes
    rounds 3 and 4, ending exactly where the uninterrupted run ends."""
    real = train.make_round_fn

    def interrupt_in_round_4(model, config):
        round_fn = real(model, config)

        def wrapped(state, data):
            if int(state.round) == 3:
                raise KeyboardInterrupt
            return round_fn(state, data)
        return wrapped

    wd = str(tmp_path / "interrupted")
    cfg = tiny_config(num_rounds=4, checkpoint_every=2)
    monkeypatch.setattr(train, "make_round_fn", interrupt_in_round_4)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(cfg, wd, quiet=True, federation=federation, write_plots=False)
    monkeypatch.undo()
    metrics = os.path.join(wd, METRICS_FILE)
    assert [r["round"] for r in read_metrics(metrics)] == [1, 2, 3]
    assert Checkpointer(os.path.join(wd, CHECKPOINT_DIR)).all_steps() == [2]
    inode = os.stat(metrics).st_ino

    train.train_and_evaluate(cfg, wd, quiet=True, federation=federation, write_plots=False)
    assert os.stat(metrics).st_ino != inode        # replaced atomically, not truncated in place
    a, b = _final(uninterrupted, 4), _final(wd, 4)
    _assert_equal_trees(a[0], b[0])
    _assert_equal_trees(a[1], b[1])
    assert a[2]["best"] == b[2]["best"]
    assert _strip_times(read_metrics(os.path.join(uninterrupted, METRICS_FILE))) \
        == _strip_times(read_metrics(metrics))


def test_checkpointer_roundtrip_keeps_last_and_ignores_tmp(tmp_path):
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "k": np.array([1, 2], np.uint32)}
    best = {"w": np.ones((3,), np.float32)}
    with Checkpointer(str(tmp_path / "ck"), max_to_keep=2) as ck:
        for step in (1, 2, 3):
            ck.save(step, jax.tree.map(lambda x: x + step, tree), best, {"round": step})
    # a torn save (orbax's temporary folder) is not a checkpoint
    os.makedirs(tmp_path / "ck" / "4.orbax-checkpoint-tmp-123")
    with Checkpointer(str(tmp_path / "ck"), max_to_keep=2) as ck:
        assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
        state, b, extra = ck.restore(3, tree, best)
        assert extra == {"round": 3}
        assert np.array_equal(np.asarray(state["a"]), tree["a"] + 3)
        assert np.asarray(state["k"]).dtype == np.uint32
        assert ck.read_extra(2) == {"round": 2}


def test_config_change_on_resume(uninterrupted, federation):
    with pytest.raises(ConfigMismatchError, match="train.lam"):
        cfg = tiny_config(num_rounds=5)
        cfg.train.lam = 2.0
        train.train_and_evaluate(cfg, uninterrupted, quiet=True, federation=federation,
                                 write_plots=False)
    diffs = config_differences({"num_rounds": 4, "a": {"b": 1}},
                                     {"num_rounds": 9, "a": {"b": 1}})
    assert diffs == []                          # num_rounds may change


def test_remove_temporaries_waits_out_a_late_writer(tmp_path):
    """After a failed save, a write still in flight can recreate the temporary folder after it
    was removed: ``settle_s`` removes until none reappears (the job's exit path uses it)."""
    import threading
    import time

    from fedmix_jax.checkpointing import remove_temporaries

    tmp = tmp_path / "3.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp"
    keep = tmp_path / "2" / "state"
    tmp.mkdir(parents=True)
    keep.mkdir(parents=True)
    late = threading.Timer(0.15, lambda: tmp.mkdir(parents=True, exist_ok=True))
    late.start()
    t0 = time.monotonic()
    removed = remove_temporaries(str(tmp_path), settle_s=0.3)
    late.join()
    assert not (tmp_path / "3.orbax-checkpoint-tmp").exists() and keep.is_dir()
    assert len(removed) == 2 and time.monotonic() - t0 < 5     # removed twice, then settled
    assert remove_temporaries(str(tmp_path / "missing")) == []


def test_late_read_errors_of_a_damaged_checkpoint_are_not_printed(tmp_path, caplog):
    """After a damaged checkpoint was reported, asyncio's "never retrieved" records of its other
    pending reads are dropped; such records about anything else, and other asyncio records, are
    kept."""
    import logging

    from fedmix_jax.errors import silence_late_read_errors

    damaged = str(tmp_path / "checkpoints")
    silence_late_read_errors(damaged)
    logger = logging.getLogger("asyncio")

    def emit(msg, exc):
        try:
            raise exc
        except ValueError:
            logger.error(msg, exc_info=True)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        caplog.clear()
        emit("Task exception was never retrieved", ValueError(f'reading "{damaged}/12/state/"'))
        assert not caplog.records
        emit("Task exception was never retrieved", ValueError('reading "/elsewhere/state/"'))
        emit("Event loop is closed", ValueError(f'reading "{damaged}/12/state/"'))
        assert len(caplog.records) == 2

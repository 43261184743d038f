"""Faults in-process: damaged checkpoints and metrics, a full disk, out of memory, Ctrl-C.

Every recovering test resumes into a run that must end bit-identical to the uninterrupted
reference (4 rounds, a checkpoint every round): nothing is lost, nothing is trusted blindly.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fedmix_jax import checkpointing, records, rundir, train
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.errors import ConfigError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_checkpointing import _assert_equal_trees, _final, _strip_times  # noqa: E402
from test_main import SYNTHETIC, TINY, run_main, tiny_config  # noqa: E402

ROUNDS = 4
ARGS = [f"--config.num_rounds={ROUNDS}", "--config.checkpoint_every=1",
        "--config.keep_checkpoints=3", *TINY]


def _cfg(rounds=ROUNDS):
    return tiny_config(num_rounds=rounds, checkpoint_every=1, keep_checkpoints=3)


@pytest.fixture(scope="module")
def federation():
    from fedmix_jax.data.synthetic import synthetic_federation_from_config

    return synthetic_federation_from_config(tiny_config().data)


def _run(wd, federation, rounds=ROUNDS):
    return train.train_and_evaluate(_cfg(rounds), wd, quiet=True, federation=federation,
                                    write_plots=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, federation):
    wd = str(tmp_path_factory.mktemp("ref") / "run")
    _run(wd, federation)
    return wd


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory, federation):
    """A run stopped after round 3: checkpoints 1, 2, 3 and metrics lines 1..3."""
    wd = str(tmp_path_factory.mktemp("base") / "run")
    _run(wd, federation, rounds=3)
    return wd


@pytest.fixture
def copy_of(tmp_path):
    def make(src):
        dst = str(tmp_path / "run")
        shutil.copytree(src, dst)
        return dst
    return make


def _metrics(wd):
    return records.read_metrics(os.path.join(wd, rundir.METRICS_FILE))


def assert_same_as_reference(wd, reference):
    a, b = _final(reference, ROUNDS), _final(wd, ROUNDS)
    _assert_equal_trees(a[0], b[0])
    _assert_equal_trees(a[1], b[1])
    assert a[2]["best"] == b[2]["best"]
    recs = _metrics(wd)
    assert [r["round"] for r in recs] == list(range(1, ROUNDS + 1))
    assert _strip_times(recs) == _strip_times(_metrics(reference))
    with open(os.path.join(wd, rundir.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["final"]["round"] == summary["rounds_completed"] == ROUNDS


@pytest.fixture
def caplog():
    """The absl log records of the test (absl's logger does not propagate under main)."""
    import logging

    class Records(logging.Handler):
        records: list = []

        def emit(self, record):
            self.records.append(record)

    handler = Records()
    handler.records = []
    logger = logging.getLogger("absl")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def _files(path):
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)


def _largest(path):
    return max(_files(path), key=os.path.getsize)


def _flip(path, where=0.5):
    data = bytearray(open(path, "rb").read())
    i = int(len(data) * where)
    data[i] ^= 0x10
    open(path, "wb").write(bytes(data))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


# --------------------------------------------------------------------------- damaged checkpoints

DAMAGES = {
    "flipped byte in an array file": lambda ck: _flip(_largest(os.path.join(ck, "state"))),
    "truncated array file": lambda ck: _truncate(_largest(os.path.join(ck, "state"))),
    "missing JSON record": lambda ck: os.remove(os.path.join(ck, "extra", "metadata")),
    "missing array manifest": lambda ck: os.remove(os.path.join(ck, "state", "manifest.ocdbt")),
    "flipped byte in the JSON record": lambda ck: _flip(os.path.join(ck, "extra", "metadata"),
                                                        0.3),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(damage, three_rounds, copy_of,
                                                              reference, federation, caplog):
    wd = copy_of(three_rounds)
    DAMAGES[damage](os.path.join(wd, rundir.CHECKPOINT_DIR, "3"))
    summary = _run(wd, federation)
    assert summary["resumed_from"] == 2
    warned = [w for w in _warnings(caplog) if "checkpoint 3" in w]
    assert len(warned) == 1 and "damaged" in warned[0] and "\n" not in warned[0], warned
    moved = os.listdir(os.path.join(wd, rundir.DAMAGED_DIR))
    assert len(moved) == 1 and moved[0].startswith("checkpoint-3-")
    assert_same_as_reference(wd, reference)


def test_no_intact_checkpoint_starts_from_round_0(three_rounds, copy_of, reference, federation,
                                                  caplog):
    wd = copy_of(three_rounds)
    for step in (1, 2, 3):
        _flip(_largest(os.path.join(wd, rundir.CHECKPOINT_DIR, str(step), "state")))
    summary = _run(wd, federation)
    assert summary["resumed_from"] == 0
    assert any("no intact checkpoint" in w for w in _warnings(caplog))
    assert len(os.listdir(os.path.join(wd, rundir.DAMAGED_DIR))) == 3
    assert_same_as_reference(wd, reference)


def test_any_damage_to_any_file_is_caught_or_harmless(tmp_path):
    """Each file of the newest checkpoint flipped, truncated or deleted in turn: the restored
    arrays are always exactly the saved ones (of the newest or, if damaged, the previous)."""
    tree = {"a": np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32),
            "k": np.array([3, 4], np.uint32), "n": {"b": np.arange(12, dtype=np.int32)}}
    best = {"w": np.linspace(0, 1, 7, dtype=np.float32)}
    base = tmp_path / "base" / "ck"
    with Checkpointer(str(base), max_to_keep=3) as ck:
        for step in (1, 2):
            ck.save(step, jax.tree.map(lambda x: x + step, tree), best, {"round": step})
    names = [os.path.relpath(p, base / "2") for p in _files(base / "2")]
    outcomes = {"newest": 0, "previous": 0}
    for name in names:
        for how in ("flip", "truncate", "delete"):
            work = tmp_path / f"w-{len(outcomes)}-{how}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base.parent, work)
            path = work / "ck" / "2" / name
            {"flip": _flip, "truncate": _truncate, "delete": os.remove}[how](str(path))
            with Checkpointer(str(work / "ck"), max_to_keep=3) as ck:
                found = ck.restore_newest(tree, best)
            assert found is not None, (name, how)
            step, state, b, extra = found
            assert extra == {"round": step}
            for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(tree)):
                assert np.array_equal(np.asarray(got), want + step), (name, how)
            outcomes["newest" if step == 2 else "previous"] += 1
    assert outcomes["previous"] > 0 and outcomes["newest"] + outcomes["previous"] == \
        3 * len(names)


def test_checkpoint_of_another_shape_is_refused_not_discarded(three_rounds, copy_of, capsys):
    wd = copy_of(three_rounds)
    os.remove(os.path.join(wd, rundir.CONFIG_FILE))         # only the checkpoint knows
    code = run_main(SYNTHETIC, wd, *ARGS, "--config.model.width=8")
    err = capsys.readouterr().err
    assert code == 2 and "model.width: 4 -> 8" in err and "Traceback" not in err
    assert Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR)).all_steps() == [1, 2, 3]
    assert not os.path.exists(os.path.join(wd, rundir.DAMAGED_DIR))


def test_stale_temporaries_are_removed_on_start(three_rounds, copy_of, federation, reference):
    wd = copy_of(three_rounds)
    ckdir = os.path.join(wd, rundir.CHECKPOINT_DIR)
    stale = [os.path.join(ckdir, "4.orbax-checkpoint-tmp-1234"),
             os.path.join(ckdir, "3", "state.orbax-checkpoint-tmp-99"),
             os.path.join(wd, "metrics.jsonl.tmp-4321")]
    os.makedirs(stale[0])
    os.makedirs(stale[1])
    open(stale[2], "w").write('{"round": 9')
    _run(wd, federation)
    assert not any(os.path.exists(p) for p in stale)
    assert_same_as_reference(wd, reference)


# ------------------------------------------------------------------------------ damaged metrics


def _edit_lines(wd, fn):
    path = os.path.join(wd, rundir.METRICS_FILE)
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "w") as f:
        f.write("".join(fn(lines)))


def _changed_number(lines):
    rec = json.loads(lines[1])
    rec["loss1"][0] += 1.0
    return [lines[0], json.dumps(rec) + "\n"] + lines[2:]


METRICS_DAMAGES = {
    "cut mid-line": lambda wd: _edit_lines(wd, lambda ls: ls[:1] + [ls[1][: len(ls[1]) // 2]]),
    "garbled record": lambda wd: _edit_lines(wd, lambda ls: [ls[0], "{\"round\": 2, xx\n"]
                                             + ls[2:]),
    "changed number": lambda wd: _edit_lines(wd, _changed_number),
    "missing round": lambda wd: _edit_lines(wd, lambda ls: [ls[0]] + ls[2:]),
    "duplicated round": lambda wd: _edit_lines(wd, lambda ls: ls[:2] + [ls[1]] + ls[2:]),
    "deleted file": lambda wd: os.remove(os.path.join(wd, rundir.METRICS_FILE)),
    "not UTF-8": lambda wd: open(os.path.join(wd, rundir.METRICS_FILE), "ab").write(b"\xff\xfe"),
}


@pytest.mark.parametrize("damage", list(METRICS_DAMAGES))
def test_damaged_metrics_are_rebuilt_from_the_checkpoint(damage, three_rounds, copy_of,
                                                         reference, federation, caplog):
    wd = copy_of(three_rounds)
    METRICS_DAMAGES[damage](wd)
    summary = _run(wd, federation)
    assert summary["resumed_from"] == 3
    warned = [w for w in _warnings(caplog) if rundir.METRICS_FILE in w]
    if damage == "not UTF-8":   # bytes after round 3's line: the tail of later rounds, dropped
        assert warned == []
    else:
        assert len(warned) == 1 and "rebuilt from the checkpoint of round 3" in warned[0]
    assert_same_as_reference(wd, reference)
    if warned and damage != "deleted file":
        kept = os.listdir(os.path.join(wd, rundir.DAMAGED_DIR))
        assert [k.startswith(rundir.METRICS_FILE) for k in kept] == [True]


def test_damaged_metrics_rebuilt_when_nothing_is_left_to_train(three_rounds, copy_of,
                                                               federation, caplog):
    wd = copy_of(three_rounds)
    before = _metrics(wd)
    _edit_lines(wd, lambda ls: ls[:1] + [ls[1][:20]])
    summary = _run(wd, federation, rounds=3)
    assert _metrics(wd) == before
    assert summary["rounds_completed"] == summary["final"]["round"] == 3
    assert {"dice", "iou", "mean_dice", "mean_iou"} <= set(summary["final"]["test"])
    assert summary["final"]["test"] == {k: before[-1][f"test_{k}"]
                                        for k in summary["final"]["test"]}


# ------------------------------------------------------------------------------- a full disk

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class _FullDisk:
    """A file whose write stores the first ``room`` characters, then fails with ENOSPC."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, text):
        self.f.write(text[:self.room])
        self.f.flush()
        raise ENOSPC

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_while_appending_metrics(tmp_path, monkeypatch, capsys, reference):
    appends = []

    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if str(path).endswith(rundir.METRICS_FILE) and mode == "a":
            appends.append(path)
            if len(appends) == 3:                     # the line of round 3
                return _FullDisk(f, 40)
        return f

    monkeypatch.setattr(records, "open", fake_open, raising=False)
    wd = str(tmp_path / "run")
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "metrics.jsonl" in line
    assert Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR)).all_steps() == [1, 2]
    assert [r["round"] for r in _metrics(wd)] == [1, 2]        # intact (+ the torn tail)
    monkeypatch.undo()
    assert run_main(SYNTHETIC, wd, *ARGS) == 0
    assert_same_as_reference(wd, reference)


@pytest.mark.parametrize("when", ["at save", "in the background"])
def test_disk_full_while_writing_a_checkpoint(when, tmp_path, monkeypatch, capsys, reference):
    real_save = ocp.CheckpointManager.save
    real_wait = ocp.CheckpointManager.wait_until_finished
    failing = {}

    def save(self, step, *args, **kwargs):
        if step == 3:
            os.makedirs(os.path.join(str(self.directory), "3.orbax-checkpoint-tmp"))
            if when == "at save":
                raise ENOSPC
            failing["step"] = 3
            return True
        return real_save(self, step, *args, **kwargs)

    def wait(self):
        if failing:
            raise ValueError('OUT_OF_RANGE: Error writing "a/0.0" in OCDBT database: Failed '
                             "writing: No space left on device [os_error_code='28']")
        return real_wait(self)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
    wd = str(tmp_path / "run")
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "checkpoint of round 3" in line and "No space left on device" in line
    assert "round 2 (intact)" in line
    failing.clear()
    monkeypatch.undo()
    ckdir = os.path.join(wd, rundir.CHECKPOINT_DIR)
    assert sorted(os.listdir(ckdir)) == ["1", "2"]                # no temporary folder
    assert [r["round"] for r in _metrics(wd)][:2] == [1, 2]
    assert run_main(SYNTHETIC, wd, *ARGS) == 0
    assert_same_as_reference(wd, reference)


def test_disk_full_while_writing_the_summary(tmp_path, monkeypatch, capsys, reference):
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f, 100) if f"{rundir.SUMMARY_FILE}.tmp-" in str(path) else f

    monkeypatch.setattr(rundir, "open", fake_open, raising=False)
    wd = str(tmp_path / "run")
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "summary.json" in line and "No space left on device" in line
    assert not [n for n in os.listdir(wd) if ".tmp-" in n]
    monkeypatch.undo()
    assert run_main(SYNTHETIC, wd, *ARGS) == 0
    assert_same_as_reference(wd, reference)


# ------------------------------------------------------------------------------ out of memory


def _oom(*_, **__):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                     "allocate 68719476736 bytes.")


def test_out_of_memory_in_the_first_round(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "make_round_fn", lambda model, config: _oom)
    wd = str(tmp_path / "run")
    assert run_main(SYNTHETIC, wd, *ARGS, "--config.train.executor=vmap") == 2
    line = _one_error_line(capsys.readouterr().err)
    for part in ("out of memory in round 1", "--config.train.batch_size (now 8)",
                 "--config.train.inference_chunk", "--config.train.executor=map",
                 "--config.train.client_group (clients vectorised together; now all)"):
        assert part in line, line
    assert _metrics(wd) == []
    assert Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR)).all_steps() == []


def test_out_of_memory_in_evaluation(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "evaluate", _oom)
    assert run_main(SYNTHETIC, str(tmp_path / "run"), *ARGS) == 2
    assert "out of memory evaluating round 1" in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_a_checkpoint_names_the_one_kept(tmp_path, monkeypatch, caplog):
    """Ctrl-C inside the save of round 3 (orbax's temporary folder already made): the message
    names checkpoint 2, which exists and restores; no temporary folder is left."""
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 3:
            os.makedirs(os.path.join(str(self.directory), "3.orbax-checkpoint-tmp"))
            raise KeyboardInterrupt
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    wd = str(tmp_path / "run")
    assert run_main(SYNTHETIC, wd, *ARGS) == 130
    monkeypatch.undo()
    ckdir = os.path.join(wd, rundir.CHECKPOINT_DIR)
    said = [w for w in _warnings(caplog) if "interrupted" in w]
    assert len(said) == 1 and f"round 2 ({os.path.join(ckdir, '2')})" in said[0], said
    assert sorted(os.listdir(ckdir)) == ["1", "2"]
    with Checkpointer(ckdir) as ck:
        assert ck.read_extra(2)["round"] == 2


def test_checkpoint_records_are_sealed(three_rounds):
    with Checkpointer(os.path.join(three_rounds, rundir.CHECKPOINT_DIR)) as ck:
        extra = ck.read_extra(3)
    assert [r["round"] for r in extra["history"]] == [1, 2, 3]
    assert extra["history"] == _metrics(three_rounds)
    with open(os.path.join(three_rounds, rundir.CHECKPOINT_DIR, "3", "extra", "metadata")) as f:
        stored = json.load(f)
    assert stored["format"] == checkpointing.FORMAT and len(stored["sha256"]) == 64
    assert {"state", "best"} <= set(stored["integrity"])


def test_round_1_that_trains_nothing_stops_the_run(tmp_path, monkeypatch, federation, caplog):
    """No pixel masks anywhere (check_can_learn warns) and round 1 makes no step: refused."""
    real = train.make_round_fn

    def idle(model, config):
        round_fn = real(model, config)

        def wrapped(state, data, *args):
            state, m = round_fn(state, data, *args)
            return state, m.replace(reports=m.reports.replace(steps=0 * m.reports.steps))
        return wrapped

    monkeypatch.setattr(train, "make_round_fn", idle)
    cfg = _cfg()
    cfg.data.levels = ("box", "box", "box", "box")
    fed = dataclasses.replace(federation, train=federation.train.replace(
        levels=np.full_like(np.asarray(federation.train.levels), 1)))   # 1: box
    wd = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="round 1 trained nothing"):
        train.train_and_evaluate(cfg, wd, quiet=True, federation=fed, write_plots=False)
    assert any("no client has pixel masks" in w for w in _warnings(caplog))
    assert _metrics(wd) == []
    assert Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR)).all_steps() == []

"""Hostile run folders: links and special files where the job writes are refused in one line
(exit 2) and nothing they point to is changed; renamed / resealed checkpoints are set aside."""

from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fedmix_jax import rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.errors import WorkdirError
from fedmix_jax.records import check_checkpoint_record

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_main import SYNTHETIC, TINY, run_main  # noqa: E402
from hang_alarm import alarm_fixture  # noqa: E402

ARGS = ["--config.num_rounds=1", *TINY]


alarm = alarm_fixture(120)


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _victim(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    return victim


@pytest.mark.parametrize("name", [".lock", "config.json", "metrics.jsonl", "summary.json"])
def test_file_links_are_refused_and_targets_untouched(tmp_path, capsys, name):
    wd, victim = tmp_path / "run", _victim(tmp_path)
    wd.mkdir()
    os.symlink(victim, wd / name)
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    line = _error_line(capsys)
    assert "symbolic link" in line and name in line
    assert victim.read_text() == "keep me\n"


def test_lock_is_opened_without_following_a_link(tmp_path):
    """The lock alone (a link swapped in after the job's check): O_NOFOLLOW refuses it."""
    wd, victim = tmp_path / "run", _victim(tmp_path)
    wd.mkdir()
    os.symlink(victim, wd / ".lock")
    with pytest.raises(WorkdirError, match="symbolic link"):
        rundir.WorkdirLock(str(wd)).acquire()
    assert victim.read_text() == "keep me\n"
    os.remove(wd / ".lock")
    os.mkfifo(wd / ".lock")
    with pytest.raises(WorkdirError, match="FIFO"):
        rundir.WorkdirLock(str(wd)).acquire()


def test_atomic_write_does_not_follow_a_planted_temporary(tmp_path):
    victim = _victim(tmp_path)
    target = tmp_path / "summary.json"
    os.symlink(victim, f"{target}.tmp-{os.getpid()}")
    with pytest.raises(WorkdirError):
        rundir.atomic_write_text(str(target), "{}")
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("where", ["checkpoints", "checkpoints/5", "damaged"])
def test_checkpoint_folder_links_are_refused(tmp_path, capsys, where):
    wd, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (wd / "checkpoints").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    if where == "checkpoints":
        os.rmdir(wd / "checkpoints")
    os.symlink(elsewhere, wd / where)
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    line = _error_line(capsys)
    assert "symbolic link" in line and where.split("/")[-1] in line
    assert os.listdir(elsewhere) == ["keep"]


def test_metrics_fifo_is_refused_without_hanging(tmp_path, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    os.mkfifo(wd / "metrics.jsonl")
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    assert "FIFO" in _error_line(capsys)


def test_dangling_workdir_link_is_named(tmp_path, capsys):
    wd = tmp_path / "run"
    os.symlink(tmp_path / "gone", wd)
    assert run_main(SYNTHETIC, wd, *ARGS) == 2
    line = _error_line(capsys)
    assert "dangling symbolic link" in line and "is a file" not in line


def _tree(v):
    return {"w": jnp.full((3,), float(v), jnp.float32)}


def test_renamed_or_resealed_checkpoints_are_set_aside(tmp_path):
    """Folder 4 renamed to 6 (its record says round 4) is set aside with a warning and round 2
    is resumed, so the next saves of rounds 3..6 cannot collide; a record without ``best`` too."""
    d = str(tmp_path / "ck")
    with Checkpointer(d, max_to_keep=None, async_save=False) as ck:
        for r in (2, 4):
            ck.save(r, _tree(r), _tree(r), {"round": r, "best": {"round": r}})
    os.rename(os.path.join(d, "4"), os.path.join(d, "6"))
    with Checkpointer(d, max_to_keep=None, async_save=False) as ck:
        step, state, _, extra = ck.restore_newest(_tree(0), _tree(0),
                                                  check=check_checkpoint_record)
        assert step == 2 and extra["round"] == 2
        np.testing.assert_array_equal(np.asarray(state["w"]), 2.0)
        assert ck.all_steps() == [2]
        for r in (3, 4, 5, 6):   # no StepAlreadyExistsError
            ck.save(r, _tree(r), _tree(r), {"round": r, "best": {"round": r}})
    assert [n for n in os.listdir(tmp_path / "damaged") if n.startswith("checkpoint-6")]
    with pytest.raises(Exception, match="best-validation tracker"):
        check_checkpoint_record(3, {"round": 3})
    with pytest.raises(Exception, match="not 3"):
        check_checkpoint_record(3, {"round": "3", "best": {"round": 1}})


def test_ctrl_c_in_the_synchronous_part_of_a_save_leaves_no_temporary(tmp_path, monkeypatch):
    d = str(tmp_path / "ck")
    ck = Checkpointer(d, max_to_keep=None)
    ck.save(1, _tree(1), _tree(1), {"round": 1, "best": {"round": 1}})
    ck.wait_until_finished()

    def interrupted(self, step, *args, **kwargs):   # orbax made its temporary folder, then ^C
        os.makedirs(os.path.join(d, f"{step}.orbax-checkpoint-tmp-1234", "state"))
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ocp.CheckpointManager, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            ck.save(2, _tree(2), _tree(2), {"round": 2, "best": {"round": 2}})
    ck.close(raise_errors=False)
    assert sorted(os.listdir(d)) == ["1"]

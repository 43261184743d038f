"""One run per workdir: the lock refuses a second run (naming the holder's PID); a lock left by a
dead process never blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fedmix_jax import compare, rundir
from fedmix_jax.errors import WorkdirLockedError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_main import REPO, SYNTHETIC, TINY, run_main  # noqa: E402

HOLD = textwrap.dedent("""
    import sys, time
    from fedmix_jax.rundir import WorkdirLock
    lock = WorkdirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of ``tmp_path/run`` (killed at the end)."""
    wd = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, wd], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield wd, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_second_run_is_refused_with_the_holders_pid(holder, capsys):
    wd, proc = holder
    code = run_main(SYNTHETIC, wd, "--config.num_rounds=1", *TINY)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"in use by another run (PID {proc.pid}" in err
    assert sorted(os.listdir(wd)) == [rundir.LOCK_FILE]        # nothing written


def test_lock_of_a_killed_process_does_not_block(holder, capsys):
    wd, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(os.path.join(wd, rundir.LOCK_FILE)) as f:
        assert json.load(f)["pid"] == proc.pid                 # the stale lock file is there
    assert run_main(SYNTHETIC, wd, "--config.num_rounds=1", *TINY) == 0
    with open(os.path.join(wd, rundir.LOCK_FILE)) as f:
        assert json.load(f)["pid"] == os.getpid()


def test_lock_in_the_same_process_and_garbage_lock_file(tmp_path):
    wd = str(tmp_path / "run")
    os.makedirs(wd)
    with open(os.path.join(wd, rundir.LOCK_FILE), "w") as f:
        f.write("not json")                                     # no holder: not a problem
    with rundir.WorkdirLock(wd):
        with pytest.raises(WorkdirLockedError) as info:
            rundir.WorkdirLock(wd).acquire()
        assert info.value.pid == os.getpid()
    with rundir.WorkdirLock(wd):                                 # released: free again
        pass


def test_comparison_workdir_is_locked(holder, capsys):
    wd, proc = holder
    code = compare.main(["c", f"--config={SYNTHETIC}", "--config.num_rounds=1", *TINY,
                         "--strategies=fedmix", "--seeds=0", f"--workdir={wd}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"PID {proc.pid}" in err and "Traceback" not in err

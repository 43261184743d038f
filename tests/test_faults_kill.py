"""Fault injection: ``kill -9`` a real training process at random points, resume, compare.

One uninterrupted run of ``python -m fedmix_jax.main`` (12 rounds, a checkpoint every round) is the
reference. A second run in another workdir is started and killed with SIGKILL again and again --
while a checkpoint is being written (orbax's temporary folder exists), right after a metrics line
was appended, or at a random moment (start-up included) -- and then rerun to the end. Its final
checkpoint (every array of the state and of the selected params) must be bit-identical to the
reference's, ``metrics.jsonl`` must hold rounds 1..12 once each with the reference's numbers, and
no temporary folder or damaged checkpoint may be left. The subprocesses share a persistent XLA
compilation cache, so only the first one compiles.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fedmix_jax import rundir
from fedmix_jax.records import read_metrics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_checkpointing import _assert_equal_trees, _final, _strip_times  # noqa: E402
from test_main import REPO, SYNTHETIC, TINY  # noqa: E402

ROUNDS = 12          # enough rounds left for every kill, also when the compiled programs are cached
KILLS = 6
SEED = 20251128
TMP_MARK = ".orbax-checkpoint-tmp"

pytestmark = pytest.mark.slow


def _command(workdir):
    return [sys.executable, "-m", "fedmix_jax.main", f"--config={SYNTHETIC}", *TINY,
            f"--config.num_rounds={ROUNDS}", "--config.checkpoint_every=1",
            "--config.keep_checkpoints=2", "--quiet", f"--workdir={workdir}"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("xla_cache"))
    e = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _start(workdir, env, log):
    return subprocess.Popen(_command(workdir), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def _tmp_dirs(workdir):
    out = []
    for root, dirs, files in os.walk(workdir):
        out += [os.path.join(root, d) for d in dirs if TMP_MARK in d]
        out += [os.path.join(root, f) for f in files if ".tmp-" in f]
    return out


def _lines(workdir):
    try:
        with open(os.path.join(workdir, rundir.METRICS_FILE), "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def _wait_for(proc, predicate, timeout=120.0, poll=0.001):
    """Poll until ``predicate()`` holds (True) or the process ends / time runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(poll)
    return False


def _kill_once(workdir, env, log, kind, rng):
    """Start the run, SIGKILL it at a point of ``kind``; returns what happened."""
    ckdir = os.path.join(workdir, rundir.CHECKPOINT_DIR)
    proc = _start(workdir, env, log)
    if kind == "checkpoint write":
        def writing():
            try:
                return any(TMP_MARK in n for n in os.listdir(ckdir))
            except OSError:
                return False
        hit = _wait_for(proc, writing)
        if hit:
            time.sleep(rng.uniform(0.0, 0.02))
    elif kind == "after a metrics line":
        target = _lines(workdir) + rng.randint(1, 2)
        hit = _wait_for(proc, lambda: _lines(workdir) >= target)
        if hit:
            time.sleep(rng.uniform(0.0, 0.15))
    else:  # a random moment, start-up (imports, data, tracing) included
        _wait_for(proc, lambda: False, timeout=rng.uniform(0.5, 4.0))
    if proc.poll() is not None:         # the run ended before the kill point
        return {"kind": kind, "killed": False, "rc": proc.returncode}
    mid_write = bool(_tmp_dirs(ckdir))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"kind": kind, "killed": True, "mid_write": mid_write or bool(_tmp_dirs(ckdir)),
            "lines": _lines(workdir)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """The uninterrupted run (it also fills the compilation cache)."""
    ref = str(tmp_path_factory.mktemp("reference") / "run")
    res = subprocess.run(_command(ref), cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return ref


def assert_same_as(wd, ref):
    a, b = _final(ref, ROUNDS), _final(wd, ROUNDS)
    _assert_equal_trees(a[0], b[0])          # the whole federated state, bit for bit
    _assert_equal_trees(a[1], b[1])          # the params selected by validation
    assert a[2]["best"] == b[2]["best"]
    recs = read_metrics(os.path.join(wd, rundir.METRICS_FILE))
    assert [r["round"] for r in recs] == list(range(1, ROUNDS + 1))   # none lost or duplicated
    assert _strip_times(recs) == _strip_times(read_metrics(os.path.join(ref,
                                                                        rundir.METRICS_FILE)))
    assert _strip_times(b[2]["history"]) == _strip_times(recs)
    with open(os.path.join(wd, rundir.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["rounds_completed"] == summary["final"]["round"] == ROUNDS
    assert _tmp_dirs(wd) == []


def test_sigkill_at_random_points_resumes_bit_identical(tmp_path, env, reference):
    log = open(tmp_path / "runs.log", "wb")
    wd = str(tmp_path / "killed")
    rng = random.Random(SEED)
    kinds = ["checkpoint write", "after a metrics line", "random moment"]
    trials = []
    for k in range(KILLS):
        trials.append(_kill_once(wd, env, log, kinds[k % len(kinds)], rng))
        if not trials[-1]["killed"]:
            break
    final = subprocess.run(_command(wd), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    report = json.dumps(trials, indent=1)
    assert final.returncode == 0, (tmp_path / "runs.log").read_text()[-3000:]
    injected = [t for t in trials if t["killed"]]
    print(f"\nfaults injected: {len(injected)} SIGKILLs "
          f"({sum(t.get('mid_write', False) for t in injected)} during a checkpoint write); "
          f"survived: all; rounds lost or duplicated: 0\n{report}")
    assert len(injected) >= KILLS - 1, report
    assert sum(t.get("mid_write", False) for t in injected) >= 1, report
    assert_same_as(wd, reference)
    assert not os.path.exists(os.path.join(wd, rundir.DAMAGED_DIR))


def test_truncated_checkpoint_from_the_command_line(tmp_path, env, reference):
    """The newest checkpoint with a truncated array file: one warning line naming it, no
    traceback (TensorStore's late callbacks included), resume from the previous one."""
    wd = str(tmp_path / "run")
    shutil.copytree(reference, wd)
    state = os.path.join(wd, rundir.CHECKPOINT_DIR, str(ROUNDS), "state")
    files = [os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    res = subprocess.run(_command(wd), cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Event loop" not in res.stderr, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if ln.startswith("W")]
    assert len(warned) == 1 and f"checkpoint {ROUNDS} is damaged" in warned[0], res.stderr
    assert f"resuming from the checkpoint of round {ROUNDS - 1}" in res.stderr
    assert_same_as(wd, reference)


def test_real_write_failure_ends_in_one_line(tmp_path, env, reference):
    """A file system that refuses the checkpoint's array file (here: a file size limit, EFBIG,
    raised inside TensorStore's background writer): exit 2, one line, no traceback, no
    temporary folder left."""
    wd = str(tmp_path / "run")
    limited = ["bash", "-c", "trap '' XFSZ; ulimit -f 40; exec \"$@\"", "bash"]  # 40 KiB
    res = subprocess.run(limited + _command(wd), cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "checkpoint of round 1" in errors[0] and "File too large" in errors[0]
    assert _tmp_dirs(wd) == []
    assert read_metrics(os.path.join(wd, rundir.METRICS_FILE))[0]["round"] == 1

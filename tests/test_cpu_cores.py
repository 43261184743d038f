"""``train.cpu_devices``: a CPU's cores as JAX devices, the clients side by side on them.

The device count is fixed when JAX starts, so the end-to-end case runs in a fresh process: the
main job's command line with ``--config.train.cpu_devices=3`` (3 CPU devices whatever this
machine's core count, 4 clients: one device holds two) must run the ``sharded`` executor and give
the numbers of the same job on one device (``executor=map``) within float tolerance.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from fedmix_jax import cpu_cores
from fedmix_jax.config import build_round_config
from fedmix_jax.errors import ConfigError

from test_main import REPO, SYNTHETIC, TINY, tiny_config


def test_usable_cores_is_the_affinity():
    assert cpu_cores.usable_cores() == len(os.sched_getaffinity(0))


def test_default_asks_nothing_and_keeps_the_executor():
    cfg = tiny_config()
    assert cfg.train.cpu_devices == 1
    assert cpu_cores.cpu_devices_from_config(cfg) == 1
    rc = build_round_config(cfg)
    assert cpu_cores.executor_for_devices(rc, cfg, 4) is rc


def test_late_request_warns_and_keeps_the_devices(caplog, monkeypatch):
    import jax

    jax.devices()                                     # the backends have started
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    have = len(jax.devices("cpu"))
    with caplog.at_level(logging.WARNING):
        assert cpu_cores.use_cpu_cores(have + 1) == have
    assert "already started" in caplog.text and f"Going on with {have}" in caplog.text
    cfg = tiny_config()
    cfg.train.cpu_devices = 0
    rc = build_round_config(cfg)
    # One device here: nothing to spread the clients over, the executor stays.
    if len(jax.devices()) == 1:
        assert cpu_cores.executor_for_devices(rc, cfg, 4) is rc


def test_negative_setting_is_a_config_error():
    cfg = tiny_config()
    cfg.train.cpu_devices = -1
    with pytest.raises(ConfigError, match="train.cpu_devices"):
        cpu_cores.cpu_devices_from_config(cfg)


def test_explicit_executor_is_kept(monkeypatch):
    cfg = tiny_config()
    cfg.train.cpu_devices = 0
    cfg.train.executor = "loop"
    rc = build_round_config(cfg)
    monkeypatch.setattr(cpu_cores.jax, "devices", lambda *a: [object()] * 4)
    assert cpu_cores.executor_for_devices(rc, cfg, 4) is rc
    cfg.train.executor = "auto"
    rc = build_round_config(cfg)
    out = cpu_cores.executor_for_devices(rc, cfg, 3)
    assert (out.executor, out.num_devices) == ("sharded", 3)      # min(devices, clients)
    assert cpu_cores.executor_for_devices(rc, cfg, 1) is rc        # one client: nothing to split


_SCRIPT = r"""
import json, sys
from fedmix_jax import main
root = sys.argv[1]
args = sys.argv[2:]
for name, extra in (("cores", ["--config.train.cpu_devices=3"]),
                    ("one", ["--config.train.cpu_devices=3", "--config.train.executor=map"])):
    code = main.main(["fedmix_jax.main", "--config=" + args[0], *args[1:], *extra,
                      "--workdir=" + root + "/" + name, "--quiet"])
    assert code == 0, (name, code)
import jax
print(json.dumps({"devices": len(jax.devices())}))
"""


def test_cores_as_devices_match_one_device_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env["XLA_FLAGS"] = ""
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), SYNTHETIC,
                          "--config.num_rounds=2", *TINY], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"devices": 3}
    summaries = {n: json.load(open(tmp_path / n / "summary.json")) for n in ("cores", "one")}
    assert summaries["cores"]["timing"]["executor"] == "sharded"
    assert summaries["one"]["timing"]["executor"] == "map"
    assert "4 clients on 3 CPU devices" in res.stderr
    for split in ("val", "test"):
        a, b = (summaries[n]["final"][split]["dice"] for n in ("cores", "one"))
        assert a == pytest.approx(b, abs=2e-3), split

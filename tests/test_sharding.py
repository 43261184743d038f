"""The client axis across devices: helpers, and the sharded round against one device.

The multi-device comparison runs in a subprocess with ``XLA_FLAGS=
--xla_force_host_platform_device_count=4`` (the flag must be set before JAX initialises): the
``sharded`` round over 4 CPU devices must give the numbers of the single-device ``loop`` round,
with 4 clients (one per device) and with 3 (padded with one non-participating client).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedmix_jax as fm
from fedmix_jax.config import EXECUTORS
from fedmix_jax import sharding
from fedmix_jax.data.federation import FederatedSplit

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_padded_count():
    assert sharding.padded_count(3, 4) == 4
    assert sharding.padded_count(4, 4) == 4
    assert sharding.padded_count(5, 4) == 8
    assert sharding.padded_count(7, 1) == 7
    with pytest.raises(ValueError):
        sharding.padded_count(0, 4)


def test_pad_clients_zeros_gives_non_participating_clients():
    split = FederatedSplit(images=np.ones((3, 2, 4, 4, 1), np.float32),
                           masks=np.ones((3, 2, 4, 4, 1), np.float32),
                           boxes=np.ones((3, 2, 4, 4, 1), np.float32),
                           image_labels=np.ones((3, 2, 1), np.float32),
                           levels=np.ones((3, 2), np.int32), valid=np.ones((3, 2), bool))
    padded = sharding.pad_clients(split, 4)
    assert padded.images.shape == (4, 2, 4, 4, 1) and padded.valid.shape == (4, 2)
    assert not np.asarray(padded.valid[3]).any() and np.asarray(padded.valid[:3]).all()
    np.testing.assert_array_equal(padded.images[:3], split.images)
    edge = sharding.pad_clients({"w": jnp.arange(6.0).reshape(3, 2)}, 5, mode="edge")["w"]
    np.testing.assert_array_equal(edge, [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    with pytest.raises(ValueError):
        sharding.pad_clients(split, 2)


def test_client_mesh_and_placement_on_available_devices():
    mesh = sharding.client_mesh()
    assert mesh.axis_names == (sharding.CLIENT_AXIS,) and mesh.size == len(jax.devices())
    placed = sharding.shard_clients({"x": np.zeros((mesh.size * 2, 3))}, mesh)
    assert placed["x"].sharding.is_equivalent_to(sharding.client_sharding(mesh), 2)
    with pytest.raises(ValueError, match="only"):
        sharding.client_mesh(len(jax.devices()) + 1)


def test_sharded_executor_is_accepted():
    assert "sharded" in EXECUTORS
    cfg = fm.RoundConfig(executor="sharded", num_devices=1)
    assert cfg.num_devices == 1
    with pytest.raises(ValueError):
        fm.RoundConfig(executor="sharded", num_devices=0)


_SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from test_round import LENIENT, MODEL, SIZE, make_client
import fedmix_jax as fm
from fedmix_jax import sharding
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, stack_clients

assert len(jax.devices()) == 4, jax.devices()
rng = np.random.default_rng(0)
clients = [make_client(rng, 9, BOX), make_client(rng, 6, PIXEL), make_client(rng, 11, IMAGE),
           make_client(rng, 7, BOX)]

def run(executor, num_clients, rounds=2):
    split = stack_clients(clients[:num_clients])
    cfg = fm.RoundConfig(strategy=fm.get_strategy("fedmix", LENIENT), batch_size=4, crop=(12, 12),
                        executor=executor)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), num_clients, cfg)
    round_fn = fm.make_round_fn(MODEL, cfg)
    if round_fn.mesh is not None:
        train = sharding.shard_clients(split, round_fn.mesh)
        devices = len(round_fn.mesh.devices.flat)
    else:
        train, devices = jax.device_put(split), 1
    metrics = []
    for _ in range(rounds):
        state, m = round_fn(state, train)
        r = m.reports
        metrics.append({{k: np.asarray(v).tolist() for k, v in
                        (("loss1", r.loss1), ("loss2", r.loss2), ("counts", r.num_usable),
                         ("weak", r.num_weak), ("selected_weak", r.num_selected_weak),
                         ("steps", r.steps), ("weights", m.weights))}})
    leaves = lambda t: [np.asarray(x).ravel() for x in jax.tree.leaves(t)]
    flat = lambda t: np.concatenate(leaves(t)).tolist()
    return dict(metrics=metrics, devices=devices,
                global_params=flat(state.global_params), client_params=flat(state.client_params),
                opt_state=flat(state.opt_state), round=int(state.round),
                client_shape=list(jax.tree.leaves(state.client_params)[0].shape))

out = {{}}
for c in (4, 3):
    out[str(c)] = dict(loop=run("loop", c), sharded=run("sharded", c))
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_device_runs():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    script = _SCRIPT.format(tests=str(REPO / "tests"))
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("num_clients", [4, 3])
def test_sharded_round_on_4_devices_matches_one_device(four_device_runs, num_clients):
    runs = four_device_runs[str(num_clients)]
    single, sharded = runs["loop"], runs["sharded"]
    assert single["devices"] == 1 and sharded["devices"] == 4
    # the padded (non-participating) client of the 3-client run is sliced off every output
    assert sharded["client_shape"][0] == num_clients == single["client_shape"][0]
    assert sharded["round"] == single["round"] == 2
    for a, b in zip(single["metrics"], sharded["metrics"]):
        assert len(b["weights"]) == num_clients
        for k in ("counts", "weak", "selected_weak", "steps"):
            assert a[k] == b[k], k
        assert sum(a["selected_weak"]) > 0               # the pseudo-label path carried numbers
        for k in ("loss1", "loss2", "weights"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(sum(b["weights"]), 1.0, rtol=1e-6)
    # Parameters: Adam turns rounding in near-zero gradients into steps of up to lr (1e-3), so
    # the bound is one step; nearly all parameters agree to float rounding.
    for key in ("global_params", "client_params", "opt_state"):
        diff = np.abs(np.asarray(single[key]) - np.asarray(sharded[key]))
        assert diff.max() < 2e-3 and np.median(diff) < 1e-6, (key, diff.max(), np.median(diff))

"""The client-axis backends on a toy site function, against a NumPy reference.

The compiled FedMix round under each executor is compared in tests/test_round.py (one device)
and tests/test_sharding.py (4 devices); here the backends' own bookkeeping is checked exactly:
grouping, padding with non-participating clients and slicing them off.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmix_jax import client_backends, sharding


def site_fn(shared, client):
    """A toy site: its state grows by ``shared`` times its data's valid sum; its key's first
    word and the count of valid samples are reported."""
    site, data, key = client
    count = jnp.sum(data["valid"])
    new = jax.tree.map(lambda s: s + shared * jnp.sum(data["x"] * data["valid"]), site)
    return new, dict(count=count, key=jax.random.key_data(key).ravel()[0])


def clients(num, rng):
    sites = dict(w=rng.normal(size=(num, 3)).astype(np.float32))
    data = dict(x=rng.normal(size=(num, 5)).astype(np.float32),
                valid=rng.random((num, 5)) < 0.7)
    keys = jax.random.split(jax.random.key(0), num)
    return sites, data, keys


def reference(shared, cl):
    sites, data, keys = cl
    s = (data["x"] * data["valid"]).sum(1, keepdims=True)
    return (dict(w=sites["w"] + shared * s),
            dict(count=data["valid"].sum(1), key=np.asarray(jax.random.key_data(keys))[:, 0]))


@pytest.mark.parametrize("num_clients, group", [(5, 2), (6, 3), (4, 1), (3, 3), (3, 8)])
def test_grouped_clients_equal_the_reference(num_clients, group):
    cl = clients(num_clients, np.random.default_rng(num_clients + group))
    backend = jax.jit(lambda shared, c: client_backends.grouped_clients(group)(site_fn, shared, c))
    (sites, reports), (ref_sites, ref_reports) = backend(0.5, cl), reference(0.5, cl)
    assert sites["w"].shape == (num_clients, 3)          # padded clients sliced off
    np.testing.assert_allclose(sites["w"], ref_sites["w"], rtol=1e-6)
    np.testing.assert_array_equal(reports["count"], ref_reports["count"])
    np.testing.assert_array_equal(reports["key"], ref_reports["key"])


def test_padding_adds_non_participating_clients():
    cl = clients(3, np.random.default_rng(0))
    sites, data, keys = client_backends._pad_client_axis(cl, 4)
    assert not np.asarray(data["valid"][3]).any()                  # no valid sample
    np.testing.assert_array_equal(sites["w"][3], cl[0]["w"][2])    # a copy of the last state
    np.testing.assert_array_equal(jax.random.key_data(keys[3]), jax.random.key_data(keys[2]))
    assert client_backends._pad_client_axis(cl, 3) is cl


def test_sharded_clients_in_groups_on_one_device():
    mesh = sharding.client_mesh(1)
    cl = clients(5, np.random.default_rng(1))
    for group in (1, 2):
        backend = jax.jit(lambda shared, c, g=group: client_backends.sharded_clients(mesh, g)(
            site_fn, shared, c))
        sites, reports = backend(2.0, cl)
        ref_sites, ref_reports = reference(2.0, cl)
        np.testing.assert_allclose(sites["w"], ref_sites["w"], rtol=1e-6)
        np.testing.assert_array_equal(reports["count"], ref_reports["count"])


def test_group_below_one_is_an_error():
    with pytest.raises(ValueError, match="needs >= 1 client"):
        client_backends.grouped_clients(0)

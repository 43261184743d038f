"""The compact device layout (issue 14, item 1: padding reduced where it is large): a split's
clients' rows concatenated, read one client's window at a time. The same round and the same
evaluation as the padded split, bit for bit."""

from __future__ import annotations

import types

import chex
import jax
import numpy as np
import pytest

from fedmix_jax import executors
import fedmix_jax as fm
from fedmix_jax.data.compact import (CompactSplit, client_counts, client_window, compact_split,
                                     padded_rows, put_compact)
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, pack_split_labels, stack_clients
from fedmix_jax.evaluation import evaluate
from test_memory import MODEL, SIZE, make_client_u8


def _split(sizes, levels, seed=0):
    rng = np.random.default_rng(seed)
    return stack_clients([make_client_u8(rng, n, lv) for n, lv in zip(sizes, levels)])


def _assert_same(a, b):
    chex.assert_trees_all_equal(a, b)


def test_layout_on_random_splits():
    """Offsets / lengths from a NumPy reference, the rows round-trip, each client's window is
    its padded row (valid rows equal, valid mask equal), gaps and empty clients included."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        sizes = list(rng.integers(0, 9, size=int(rng.integers(1, 6))))
        split = _split(sizes, [PIXEL] * len(sizes), seed)
        valid = np.asarray(split.valid).copy()
        if valid.any():                       # a gap: an invalid sample between valid ones
            c = int(np.argmax(valid.sum(1)))
            valid[c, 0] = valid[c, 0] and valid[c].sum() < 2
        split = split.replace(valid=valid)
        cs = compact_split(split)
        lengths = [int(np.flatnonzero(v).max()) + 1 if v.any() else 0 for v in valid]
        np.testing.assert_array_equal(cs.lengths, lengths)
        order = np.argsort(lengths, kind="stable")
        expect = np.zeros(len(sizes), int)
        expect[order] = np.concatenate([[0], np.cumsum(np.asarray(lengths)[order])[:-1]])
        np.testing.assert_array_equal(cs.offsets, expect)
        n = split.max_samples
        assert cs.images.shape[0] == max(sum(lengths), int((expect + n).max()))
        if n == max(lengths, default=0):      # the largest client last: no rows after it
            assert cs.images.shape[0] == sum(lengths)
        _assert_same(cs.padded(), split)
        np.testing.assert_array_equal(np.asarray(client_counts(cs)), valid.sum(1))
        np.testing.assert_array_equal(cs.counts(), valid.sum(1))
        for c in range(len(sizes)):
            w = jax.jit(client_window)(cs, cs.offsets[c], cs.lengths[c])
            np.testing.assert_array_equal(w.valid, valid[c])
            for f in ("images", "masks", "boxes", "image_labels", "levels"):
                np.testing.assert_array_equal(np.asarray(getattr(w, f))[valid[c]],
                                              np.asarray(getattr(split, f))[c][valid[c]])


def test_compact_keeps_dtypes_and_packing():
    split = pack_split_labels(_split([5, 3], [PIXEL, BOX]))
    cs = put_compact(split)
    assert isinstance(cs, CompactSplit) and isinstance(cs.images, jax.Array)
    assert cs.masks.dtype == np.uint8 and cs.masks.shape[1:] == split.masks.shape[2:]
    assert cs.images.shape[0] == 8               # 8 rows instead of 2 x 5
    np.testing.assert_array_equal(padded_rows(np.asarray(cs.masks), cs.offsets, cs.lengths, 5),
                                  split.masks)
    assert compact_split(cs).max_samples == 5          # already compact: kept as it is
    with pytest.raises(ValueError, match=r"valid \[C, N\]"):
        compact_split(jax.tree.map(lambda x: x[0], split))     # one site's [N, ...] rows


@pytest.fixture(scope="module")
def splits():
    # Uneven clients (padding 11 x 3 = 33 rows for 26 samples), weak and pixel levels.
    u8 = _split([9, 6, 11], [BOX, PIXEL, IMAGE])
    return u8, compact_split(u8)


def test_grouped_backend_reads_each_clients_window():
    """The client-axis bookkeeping with a compact split (the round itself, bit for bit against
    the padded split, is in tests/test_memory.py): groups of 2 over 3 clients pad the last group
    with a client of no rows, which reads nothing and is sliced off."""
    u8 = _split([4, 0, 7], [PIXEL, PIXEL, BOX])
    cs = compact_split(u8)
    from fedmix_jax.data.compact import ClientRows
    from fedmix_jax.client_backends import grouped_clients

    def toy_site(pool, client):     # (site, rows, key) as the round's site function gets them
        _, rows, _ = client
        w = client_window(pool, rows.offsets, rows.lengths)
        return (w.valid.sum(), (w.images.astype(np.int32).sum(axis=(1, 2, 3)) * w.valid).sum())

    clients = (np.zeros(3, np.float32), ClientRows(offsets=cs.offsets, lengths=cs.lengths),
               jax.random.split(jax.random.key(0), 3))
    count, total = jax.jit(lambda pool, c: grouped_clients(2)(toy_site, pool, c))(cs, clients)
    valid = np.asarray(u8.valid)
    np.testing.assert_array_equal(count, valid.sum(1))
    np.testing.assert_array_equal(
        total, (u8.images.astype(np.int64).sum(axis=(2, 3, 4)) * valid).sum(1))


def test_evaluation_bit_identical_to_padded(splits):
    u8, cs = splits
    params = fm.init_state(MODEL, jax.random.PRNGKey(3), (SIZE, SIZE, 1), 3,
                          fm.RoundConfig(strategy=fm.get_strategy("fedmix"))).client_params[0]
    dev = jax.device_put(cs)
    for per_client in (False, True):
        p = params if per_client else jax.tree.map(lambda x: x[0], params)
        a = evaluate(MODEL, p, u8, per_client_params=per_client, chunk_size=5)
        b = evaluate(MODEL, p, dev, per_client_params=per_client, chunk_size=5)
        # on the host, in blocks (the streamed job's held-out splits): 2 x 3 rows at a time
        c = evaluate(MODEL, p, cs, per_client_params=per_client, chunk_size=5, block_size=2)
        assert a.keys() == b.keys() == c.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            np.testing.assert_array_equal(a[k], c[k], err_msg=k)


def test_where_compact_applies_and_sharded_refuses(splits):
    def compact_applies(executor, client_group, num_clients):
        return executors.for_config(types.SimpleNamespace(
            executor=executor, client_group=client_group)).reads_clients_in_turn(num_clients)

    assert compact_applies("map", 0, 4) and compact_applies("loop", 0, 4)
    assert compact_applies("vmap", 2, 4) and not compact_applies("vmap", 4, 4)
    assert not compact_applies("vmap", 0, 4) and not compact_applies("sharded", 1, 4)
    cfg = fm.RoundConfig(strategy=fm.get_strategy("fedmix"), executor="sharded", num_devices=1)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    with pytest.raises(TypeError, match="padded FederatedSplit"):
        fm.make_round_fn(MODEL, cfg)(state, splits[1])


def test_compact_layout_benchmark_smoke():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import compact_layout

    out = compact_layout.main(["--sizes", "3,1", "--image_size", "16", "--width", "2",
                               "--chunk", "2", "--repeats", "1"])
    assert out["layouts"]["compact"]["rows"] == 4 < out["layouts"]["padded"]["rows"] == 6
    assert out["layouts"]["compact"]["bytes"] < out["layouts"]["padded"]["bytes"]


# ------------------------------------------------------------ handing the host arrays over

def _federation(seed=0):
    from fedmix_jax.data.federation import Federation

    splits = [_split(sizes, [PIXEL, BOX, IMAGE, PIXEL], seed + i)
              for i, sizes in enumerate(([5, 2, 7, 0], [2, 1, 3, 1], [3, 2, 4, 1]))]
    return Federation(client_names=list("abcd"), class_names=["lesion"], train=splits[0],
                      val=splits[1], test=splits[2])


def _map_config(executor="map"):
    import types

    return types.SimpleNamespace(executor=executor, client_group=0)


@pytest.mark.parametrize("executor,compact", [("map", True), ("map", False), ("vmap", True)])
def test_take_host_arrays_places_the_same_and_frees_the_host_arrays(executor, compact):
    """The job's placing (issue 14: on the CPU backend the device's arrays are host memory):
    handing the loaded arrays over places exactly what place_data places, leaves the host
    dict empty, and no loaded pixel array outlives it (weak references die without a full
    collection) except as the device's own buffer. The federation the job keeps has the shapes
    and the metadata, no pixels."""
    import weakref

    from fedmix_jax import placement

    expected = placement.place_data(_federation(), None, _map_config(executor), compact)
    fed = _federation()
    weak = [weakref.ref(getattr(getattr(fed, s), f)) for s in ("train", "val", "test")
            for f in ("images", "masks", "boxes")]
    test_images = np.array(fed.test.images)
    host, pixel_free, plot = placement.take_host_arrays(fed)
    meta = {s: (getattr(fed, s).levels, getattr(fed, s).valid, getattr(fed, s).images.shape)
            for s in ("train", "val", "test")}
    del fed
    placed = placement.place_splits(host, None, _map_config(executor), compact)
    assert host == {}
    # The CPU backend may alias a 64-byte-aligned host array instead of copying it: then it is
    # the device's own buffer. Any other loaded array still alive would be a second copy.
    buffers = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(placed)}
    alive = [r() for r in weak if r() is not None]
    assert not [a.shape for a in alive if a.ctypes.data not in buffers]
    _assert_same(placed, expected)
    assert isinstance(placed[0], CompactSplit) == (compact and executor == "map")
    assert all(isinstance(p, CompactSplit) == compact for p in placed[1:])
    for s, (levels, valid, shape) in meta.items():
        split = getattr(pixel_free, s)
        np.testing.assert_array_equal(split.levels, levels)
        np.testing.assert_array_equal(split.valid, valid)
        assert split.images.shape == shape and split.images.dtype == np.uint8
        for f in ("images", "masks", "boxes"):       # no memory behind the shapes
            assert not any(getattr(split, f).strides)
    # the prediction plot's samples: copies of the first PLOT_SAMPLES of every client
    np.testing.assert_array_equal(plot.images, test_images[:, :placement.PLOT_SAMPLES])
    assert plot.images.base is None


def test_place_data_leaves_the_federation_unchanged():
    """The non-consuming entry (a federation shared by several runs, e.g. the compare command)."""
    from fedmix_jax import placement

    fed = _federation(3)
    before = jax.tree.map(np.copy, (fed.train, fed.val, fed.test))
    placement.place_data(fed, None, _map_config(), True)
    _assert_same((fed.train, fed.val, fed.test), before)


def test_held_out_on_host_consumes():
    from fedmix_jax import placement

    fed = _federation(5)
    host = placement.host_arrays(fed, ("val", "test"))
    val, test = placement.held_out_on_host(host, compact=True)
    assert host == {}
    _assert_same(val.padded(), fed.val)
    _assert_same(test.padded(), fed.test)
    val, test = placement.held_out_on_host(placement.host_arrays(fed, ("val", "test")))
    _assert_same((val, test), (fed.val, fed.test))

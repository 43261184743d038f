"""Storage dtypes (issue 14, item 1): uint8 images / masks / boxes are normalised inside the
compiled code, batch by batch, and give bit-identical results to their float32 ``k / 255`` copy."""

from __future__ import annotations

import os
import sys

import chex
import jax
import numpy as np
import pytest

import fedmix_jax as fm
from fedmix_jax.data.federation import (BOX, IMAGE, PIXEL, FederatedSplit, float_images,
                                        float_labels, gathered_labels, labels_packed,
                                        pack_labels, pack_split_labels, stack_clients,
                                        unpack_labels, unpack_split_labels)
from fedmix_jax.evaluation import evaluate
from fedmix_jax.models import UNet
from fedmix_jax.pseudo_labels import SelectionConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = UNet(width=4, depth=2)
SIZE = 32
# Lenient selection: a fresh model selects weak samples, so the pseudo-label targets train.
LENIENT = SelectionConfig(agreement=0.0, box_fit=0.0, reject_empty=False)


def make_client_u8(rng, n, level):
    """One client as the real loader returns it: uint8 images (0..255), uint8 {0, 1} masks."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    boxes = np.zeros_like(masks)
    for i in range(n):
        cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(3, 8)
        masks[i, ..., 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        ys, xs = np.nonzero(masks[i, ..., 0])
        boxes[i, max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3] = 1
    images = np.clip(60 + 120 * masks + rng.normal(0, 25, masks.shape), 0, 255).astype(np.uint8)
    return dict(images=images, masks=masks, boxes=boxes,
                image_labels=masks.max(axis=(1, 2)).astype(np.float32),
                levels=np.full(n, level, np.int32))


def as_float32(split: FederatedSplit) -> FederatedSplit:
    """The same values stored as float32 (images k / 255 as the loader computed them before)."""
    return split.replace(images=split.images.astype(np.float32) * (1.0 / 255.0),
                         masks=split.masks.astype(np.float32),
                         boxes=split.boxes.astype(np.float32))


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    u8 = stack_clients([make_client_u8(rng, 9, BOX), make_client_u8(rng, 6, PIXEL),
                        make_client_u8(rng, 11, IMAGE)])
    return u8, as_float32(u8)


def test_float_images_is_the_loaders_formula():
    k = np.arange(256, dtype=np.uint8)
    old = k.astype(np.float32) * (1.0 / 255.0)          # the loader's conversion before uint8
    np.testing.assert_array_equal(float_images(k), old)
    np.testing.assert_array_equal(np.asarray(jax.jit(float_images)(k)), old)   # and compiled
    assert float_images(k)[0] == 0.0 and float_images(k)[-1] == 1.0
    f = np.linspace(0, 1, 7, dtype=np.float32)
    assert float_images(f) is f and float_labels(f) is f                 # float32: unchanged
    np.testing.assert_array_equal(float_labels(np.array([0, 1], np.uint8)), [0.0, 1.0])
    np.testing.assert_array_equal(float_labels(np.array([False, True])), [0.0, 1.0])
    assert float_labels(np.array([0, 1], np.uint8)).dtype == np.float32


def test_stack_clients_keeps_dtypes(splits):
    u8, _ = splits
    assert u8.images.dtype == u8.masks.dtype == u8.boxes.dtype == np.uint8
    assert u8.image_labels.dtype == np.float32 and u8.levels.dtype == np.int32
    rng = np.random.default_rng(1)
    c = make_client_u8(rng, 3, PIXEL)
    f64 = dict(c, images=c["images"] / 255.0, masks=c["masks"].astype(np.float64))
    s = stack_clients([f64])
    assert s.images.dtype == s.masks.dtype == np.float32         # other floats: float32, as before
    assert stack_clients([dict(c, masks=c["masks"] > 0)]).masks.dtype == bool
    with pytest.raises(ValueError, match="one dtype"):          # uint8 k/255 vs float: refused
        stack_clients([c, dict(c, images=float_images(c["images"]))])
    # A generator (one client at a time: the loader's path) gives the same split.
    clients = [make_client_u8(rng, n, PIXEL) for n in (4, 0, 2)]
    clients[1] = {k: v[:0] for k, v in clients[1].items()}
    a = stack_clients(clients)
    b = stack_clients((d for d in clients), num_samples=4, num_clients=3)
    chex.assert_trees_all_equal(a, b, strict=True)      # dtypes too
    with pytest.raises(ValueError, match="num_samples and num_clients"):
        stack_clients(d for d in clients)
    with pytest.raises(ValueError, match="more than num_samples"):
        stack_clients((d for d in clients), num_samples=3, num_clients=3)


def _run(split, strategy, executor, rounds=2):
    cfg = fm.RoundConfig(strategy=fm.get_strategy(strategy, LENIENT), batch_size=4, crop=(24, 24),
                        executor=executor, inference_chunk=4)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), split.num_clients, cfg)
    round_fn = fm.make_round_fn(MODEL, cfg)
    dev = jax.device_put(split)
    metrics = []
    for _ in range(rounds):
        state, m = round_fn(state, dev)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def u8_run(splits):
    return _run(splits[0], "fedmix", "map")


def test_uint8_round_and_evaluation_bit_identical_to_float32(splits, u8_run):
    """FedMix (pseudo-labels of both models, box refinement, cross targets), two rounds."""
    u8, f32 = splits
    state_u8, m_u8 = u8_run
    state_f32, m_f32 = _run(f32, "fedmix", "map")
    assert sum(int(m.reports.num_selected_weak.sum()) for m in m_u8) > 0  # pseudo-labels ran
    chex.assert_trees_all_equal((state_u8, m_u8), (state_f32, m_f32))
    ev_u8 = evaluate(MODEL, state_u8.global_params[0], u8, chunk_size=5)
    ev_f32 = evaluate(MODEL, state_f32.global_params[0], f32, chunk_size=5)
    assert ev_u8.keys() == ev_f32.keys()
    for k in ev_u8:
        np.testing.assert_array_equal(ev_u8[k], ev_f32[k], err_msg=k)


def test_compact_round_bit_identical_to_padded(splits, u8_run):
    """The compact device layout (no padding to the largest client; tests/test_compact.py): the
    same two FedMix rounds, bit for bit, although the rows past each client's samples hold the
    next client's samples instead of zeros (all masked by ``valid``). The clients are uneven:
    26 rows instead of 3 x 11."""
    from fedmix_jax.data.compact import compact_split

    u8, _ = splits
    compact = compact_split(u8)
    assert compact.images.shape[0] == int(u8.valid.sum()) < u8.valid.size
    state_p, m_p = u8_run
    state_c, m_c = _run(compact, "fedmix", "map")
    assert sum(int(m.reports.num_selected_weak.sum()) for m in m_p) > 0   # pseudo-labels ran
    chex.assert_trees_all_equal((state_p, m_p), (state_c, m_c))


def test_pack_labels_round_trip():
    for width in (1, 7, 8, 13, 32):
        x = (np.random.default_rng(width).random((2, 3, 5, width, 2)) < 0.4).astype(np.uint8)
        p = pack_labels(x)
        assert p.dtype == np.uint8 and p.shape == (2, 3, 5, -(-width // 8), 2)
        np.testing.assert_array_equal(unpack_labels(p, width), x)
        np.testing.assert_array_equal(np.asarray(jax.jit(
            lambda a, w=width: unpack_labels(a, w))(p)), x)
        if width > 1:     # 1 px wide: packed and unpacked have the same shape (never packed)
            np.testing.assert_array_equal(gathered_labels(p, width), x.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, K\]"):
        pack_labels(np.zeros((4, 4)))


def test_packed_labels_round_and_evaluation_bit_identical(splits, u8_run):
    """Masks and boxes bit-packed (8 pixels per byte): the same two FedMix rounds and the same
    evaluation, bit for bit; an eighth of the masks' and boxes' bytes."""
    u8, _ = splits
    packed = pack_split_labels(u8)
    assert labels_packed(packed) and not labels_packed(u8)
    assert pack_split_labels(packed) is packed and unpack_split_labels(u8) is u8
    assert packed.masks.shape == u8.masks.shape[:3] + (SIZE // 8, 1)
    assert packed.masks.nbytes * 8 == u8.masks.nbytes == packed.boxes.nbytes * 8
    np.testing.assert_array_equal(unpack_split_labels(packed).boxes, u8.boxes)
    state_u8, m_u8 = u8_run
    state_p, m_p = _run(packed, "fedmix", "map")
    chex.assert_trees_all_equal((state_u8, m_u8), (state_p, m_p))
    ev_u8 = evaluate(MODEL, state_u8.global_params[0], u8, chunk_size=5)
    ev_p = evaluate(MODEL, state_u8.global_params[0], packed, chunk_size=5)
    for k in ev_u8:
        np.testing.assert_array_equal(ev_u8[k], ev_p[k], err_msg=k)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        pack_split_labels(u8.replace(masks=u8.masks * 2))
    narrow = u8.replace(images=u8.images[..., :1, :], masks=u8.masks[..., :1, :],
                        boxes=u8.boxes[..., :1, :])
    assert pack_split_labels(narrow) is narrow        # 1 px wide: nothing to gain, kept as is


def test_the_site_never_converts_a_whole_split(splits):
    """The uint8 round's program holds no float32 array of more than one batch / chunk of
    images (4 here): no f32 copy of a site's [N, H, W, ...] images, masks, boxes or targets."""
    import re

    u8, _ = splits
    cfg = fm.RoundConfig(strategy=fm.get_strategy("fedmix", LENIENT), batch_size=4,
                        crop=(24, 24), executor="map", inference_chunk=4)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), u8.num_clients, cfg)
    program = fm.make_round_fn(MODEL, cfg).jitted[0]
    text = program.lower(state, jax.device_put(u8), cfg.hparams()).as_text()
    shapes = re.findall(r"tensor<([0-9x]+)x(u8|ui8|f32)>", text)
    full = [dims for dims, t in shapes
            if t == "f32" and dims.endswith(f"{SIZE}x{SIZE}x1")
            and np.prod([int(d) for d in dims.split("x")[:-3]]) > 4]
    assert any(t != "f32" and dims == f"{u8.max_samples}x{SIZE}x{SIZE}x1" for dims, t in shapes)
    assert not full, sorted(set(full))


def test_memory_benchmark_smoke(tmp_path):
    sys.path.insert(0, REPO)
    from benchmarks import memory

    out = memory.main(["--out_dir", str(tmp_path), "--num_images", "24", "--width", "60",
                       "--height", "45", "--image_size", "32", "--channels", "1,3"])
    for ch in (1, 3):
        r = out[ch]
        assert r["images_dtype"] == "uint8"
        assert r["valid_samples"] == sum(memory.client_sizes(24))
        assert r["after_bytes"] * 3 < r["before_bytes"]         # uint8 vs float32 (4x less)
        assert r["padded_samples"] >= r["valid_samples"]
        # on the device without padding: the valid rows (+ zero rows where a window needs them)
        assert r["valid_samples"] <= r["compact_rows"] < r["padded_samples"]
        assert r["compact_bytes"] < r["after_bytes"]
        assert 0 < r["rss_after_placed_kib"] <= r["rss_peak_placed_kib"]
    # bit-packed masks and boxes (config.data.pack_labels): 4 bytes per 32 px row, K = 1
    packed = memory.main(["--out_dir", str(tmp_path), "--image_size", "32", "--channels", "3",
                          "--pack_labels"])[3]
    rows = packed["splits"]["train"]["arrays"]
    assert packed["pack_labels"] and rows["masks"]["per_sample"] == rows["boxes"]["per_sample"]
    assert rows["masks"]["per_sample"] == 32 * 4 == out[3]["splits"]["train"]["arrays"][
        "masks"]["per_sample"] // 8
    assert packed["after_bytes"] == out[3]["after_bytes"] - 2 * 7 * 32 * 32 // 8 * packed[
        "padded_samples"]

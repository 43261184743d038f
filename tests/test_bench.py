"""Smoke run of the benchmark (tiny sizes) and the pieces it relies on.

No timing is asserted anywhere: speed is measured by ``python -m fedmix_jax.bench``, never
tested. These tests check that the benchmark runs, that its JSON is well formed with every
section, that the sequential baseline computes the same round as the compiled one, and that the
CPU-oriented rewrites of the U-Net's convolution and GroupNorm give the gradients of the plain
formulations.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmix_jax import bench
from fedmix_jax.models import conv2d_same, group_norm

TINY = ["--clients", "2", "--train_per_client", "5", "--image_size", "16", "--width", "4",
        "--batch_size", "4", "--repeats", "2", "--warmup", "0", "--executors", "map"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    args = bench.parse_args(TINY + ["--json", str(path), "--profile", "--sweep",
                                    "--sweep_clients", "3", "--sweep_sizes", "32",
                                    "--sweep_repeats", "1", "--dtypes", "float32,bfloat16",
                                    "--dice_rounds", "2", "--dice_train_per_client", "4"])
    data = bench.run(args, log=lambda *a: None)
    with open(path) as f:
        written = json.load(f)
    return data, written


def test_bench_json_has_every_section(tiny_run):
    data, written = tiny_run
    assert not written.get("errors"), written.get("errors")
    for key in ("environment", "config", "matmul_peak", "rounds", "baseline_check", "parts",
                "profile", "sweep", "mixed_precision", "load_before", "load_after",
                "memory_end"):
        assert key in written, key
    env = written["environment"]
    assert env["backend"] == jax.default_backend() and env["devices"] >= 1
    assert written["matmul_peak"]["gflops"] > 0
    for name in ("map", "baseline"):
        row = written["rounds"][name]
        assert row["seconds"]["n"] == 2 and row["seconds"]["median"] > 0
        for k in ("client_images_per_s", "compile_s", "speedup_vs_baseline", "memory"):
            assert k in row, (name, k)
        assert row["memory"]["host"]["rss_peak_mb"] > 0
    parts = written["parts"]
    for part in ("pseudo_labels", "local_training", "aggregation"):
        for who in ("round", "baseline"):
            assert parts[f"{part}_{who}"]["seconds"]["median"] > 0
        assert parts[f"{part}_speedup"] > 0
    step = parts["train_step"]
    assert step["flops"] > 0 and 0 < step["fraction_of_matmul_peak"]
    prof = written["profile"]
    assert prof["rows"] and any(r["category"].startswith("convolution") for r in prof["rows"])
    assert prof["total_gflop_hlo"] > 0
    (row,) = written["sweep"]["rows"][:1]
    assert row["clients"] == 3 and row["seconds"]["median"] > 0
    assert {r["image_size"] for r in written["sweep"]["rows"]} == {16, 32}
    assert set(written["mixed_precision"]) == {"float32", "bfloat16"}
    assert all(0 <= r["mean_dice"] <= 1 for r in written["mixed_precision"].values())
    # the text tables render from the JSON alone
    table = bench.format_tables(written)
    assert "baseline" in table and "client-img/s" in table and "sweep" in table


def test_baseline_computes_the_same_round(tiny_run):
    check = tiny_run[1]["baseline_check"]
    assert check["between"] == ["map", "baseline"]
    assert check["agree"], check


def test_failing_section_keeps_the_others(tmp_path, monkeypatch):
    path = tmp_path / "out.json"

    def boom(*a, **k):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(bench, "time_parts", boom)
    args = bench.parse_args(TINY + ["--json", str(path), "--no_baseline"])
    bench.run(args, log=lambda *a: None)
    with open(path) as f:
        written = json.load(f)
    assert written["rounds"]["map"]["seconds"]["n"] == 2
    assert [e["section"] for e in written["errors"]] == ["parts"]
    assert "planted failure" in written["errors"][0]["error"]


def test_section_merges_into_existing_json(tmp_path):
    path = tmp_path / "merged.json"
    path.write_text(json.dumps({"earlier": {"x": 1}}))
    res = bench.Results(str(path), section="later")
    res.set("value", np.float32(2.5))
    res.set("nan", float("nan"))
    merged = json.loads(path.read_text())
    assert merged == {"earlier": {"x": 1}, "later": {"value": 2.5, "nan": None}}


def test_hlo_categories_count_convolution_flops():
    x = jnp.ones((2, 8, 8, 3))
    k = jnp.ones((3, 3, 3, 5))
    f = jax.jit(lambda x, k: conv2d_same(x, k, 1))
    table = bench.hlo_categories(f.lower(x, k).compile().as_text())
    total = sum(r["flops"] for r in table.values())
    assert total == 2 * 2 * 8 * 8 * 5 * 9 * 3
    assert any(r["category"] == "convolution fwd" for r in table.values())


@pytest.mark.parametrize("shape,kernel", [((2, 9, 7, 3), 3), ((1, 5, 6, 4), 1)])
def test_conv2d_same_gradients_match_autodiff(shape, kernel):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    k = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, shape[-1], 5))
    g = jax.random.normal(jax.random.PRNGKey(2), shape[:3] + (5,))
    pad = kernel // 2

    def plain(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_array_equal(conv2d_same(x, k, pad), plain(x, k))
    ours = jax.grad(lambda x, k: jnp.sum(conv2d_same(x, k, pad) * g), argnums=(0, 1))(x, k)
    ref = jax.grad(lambda x, k: jnp.sum(plain(x, k) * g), argnums=(0, 1))(x, k)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # the same inside a loop (where XLA:CPU would not canonicalise autodiff's convolutions)
    looped = jax.jit(lambda x, k: jax.lax.scan(
        lambda c, _: (c, jax.grad(lambda kk: jnp.sum(conv2d_same(x, kk, pad) * g))(k)),
        0, None, length=2)[1][0])(x, k)
    np.testing.assert_allclose(looped, ref[1], rtol=1e-5, atol=1e-5)


def test_group_norm_matches_flax_values_and_gradients():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 8)) * 3 + 2
    scale = jax.random.normal(jax.random.PRNGKey(1), (8,))
    bias = jax.random.normal(jax.random.PRNGKey(2), (8,))
    g = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    ref_mod = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False)

    def ref(x, s, b):
        return ref_mod.apply({"params": {"scale": s, "bias": b}}, x)

    np.testing.assert_allclose(group_norm(x, scale, bias, 4), ref(x, scale, bias),
                               rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda *a: jnp.sum(group_norm(*a, 4) * g), argnums=(0, 1, 2))(x, scale, bias)
    theirs = jax.grad(lambda *a: jnp.sum(ref(*a) * g), argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

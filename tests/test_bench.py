"""Smoke run of the benchmark (benchmarks/bench.py) at tiny sizes, and its pieces.

No timing is asserted anywhere: speed is measured by ``python benchmarks/bench.py``, never
tested. These tests check that the benchmark runs, that its JSON is well formed with every
section, that the sequential baseline (built from the site function's pieces) computes the same
round as the compiled one, and that the PyTorch baseline is skipped cleanly without torch.
The U-Net's XLA:CPU workarounds are tested in tests/test_models.py.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import bench, harness, op_profile, tables, torch_baseline  # noqa: E402

# depth 1, width 2, 16 px: the smallest U-Net that runs every part of the round (compiles fast).
# The paper's selection rules, so that the dtypes section (float32 here) reuses the round compiled
# for the round table; the sweep's point (2 clients, 16 px) is the same program too.
TINY = ["--clients", "2", "--train_per_client", "5", "--image_size", "16", "--width", "2",
        "--depth", "1", "--batch_size", "4", "--repeats", "2", "--warmup", "0",
        "--executors", "map", "--compilation_cache", "off", "--matmul_sizes", "256",
        "--selection", "reference"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    args = bench.parse_args(TINY + ["--json", str(path), "--profile", "--sweep",
                                    "--sweep_clients", "2", "--sweep_sizes", "16",
                                    "--sweep_repeats", "1", "--dtypes", "float32", "--conv_floor",
                                    "--dice_rounds", "2", "--dice_train_per_client", "5"])
    data = bench.run(args, log=lambda *a: None)
    with open(path) as f:
        written = json.load(f)
    return data, written


def test_bench_json_has_every_section(tiny_run):
    data, written = tiny_run
    assert not written.get("errors"), written.get("errors")
    for key in ("environment", "config", "matmul_peak", "rounds", "baseline_check", "parts",
                "profile", "sweep", "mixed_precision", "load_before", "load_after",
                "memory_end", "torch", "round_work", "conv_floor"):
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
    assert prof["rows"] and any(r["category"] == "convolution" for r in prof["rows"]), prof
    assert prof["gflop"] > 0
    (row,) = written["sweep"]["rows"]
    assert row["clients"] == 2 and row["seconds"]["median"] > 0
    assert set(written["mixed_precision"]) == {"float32"}
    assert all(0 <= r["mean_dice"] <= 1 for r in written["mixed_precision"].values())
    # the text tables render from the JSON alone
    table = tables.format_tables(written)
    assert "baseline" in table and "client-img/s" in table and "sweep" in table
    assert "opcode" in table


def test_conv_floor_counts_the_rounds_work(tiny_run):
    """The floor is the round's own work (both models' local steps: at most 2 per client at 5
    images and batch 4, fewer when the paper's selection drops samples; the weak clients' images
    through both models) timed on one core, split over the cores; the table reads each round
    against it."""
    written = tiny_run[1]
    work, floor = written["round_work"], written["conv_floor"]
    train = bench.make_federation(bench.parse_args(TINY)).train
    weak = int(np.sum(np.asarray(train.valid) & (np.asarray(train.levels) != 0)))
    steps = work["model_steps"]
    assert 0 < steps <= 2 * 2 * 2 and steps % 2 == 0 and work["forward_images"] == 2 * weak
    assert (floor["model_steps"], floor["forward_images"]) == (steps, 2 * weak)
    assert floor["step_s"] > 0 and floor["image_forward_s"] > 0
    assert floor["one_core_s"] == pytest.approx(steps * floor["step_s"]
                                                + 2 * weak * floor["image_forward_s"])
    assert floor["floor_s"] == pytest.approx(floor["one_core_s"] / floor["cores"])
    assert "round median / floor: map" in tables.format_tables(written)


def test_conv_floor_layers_are_the_unets_convolutions():
    """conv_layers lists every kernel of the U-Net, in order, with the side it runs at (odd
    sides floor at each pool, as the model)."""
    from benchmarks.conv_floor import conv_layers
    from fedmix_jax.models import UNet, init_unet

    for width, depth, side, cin in ((4, 4, 37, 3), (2, 1, 16, 1)):
        params = init_unet(jax.random.key(0), UNet(width=width, depth=depth),
                           (1, side, side, cin))
        blocks = ["inc"] + [f"down{i}" for i in range(1, depth + 1)] + [
            f"up{j}" for j in range(1, depth + 1)]
        kernels = [params[b][c]["kernel"].shape for b in blocks for c in ("conv1", "conv2")]
        kernels.append(params["outc"]["kernel"].shape)
        layers = conv_layers(width, depth, side, cin)
        assert [(k, k, ci, co) for _, ci, co, k in layers] == [tuple(s) for s in kernels]
        sides = [side // 2 ** i for i in range(depth + 1)]
        expected = [sides[0]] * 2 + [s for s in sides[1:] for _ in (0, 1)] + [
            s for s in sides[-2::-1] for _ in (0, 1)] + [side]
        assert [s for s, *_ in layers] == expected


def test_baseline_computes_the_same_round(tiny_run):
    check = tiny_run[1]["baseline_check"]
    assert check["between"] == ["map", "baseline"]
    assert check["agree"], check


def test_torch_row_is_timed_or_skipped(tiny_run):
    written = tiny_run[1]
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch is not importable" in written["torch"]["skipped"]
        assert "torch" not in written["rounds"]
        assert "PyTorch baseline: skipped" in tables.format_tables(written)
    else:
        assert written["rounds"]["torch"]["seconds"]["n"] == 2
        check = written["torch_check"]
        assert check["counts_equal"] and check["steps_equal"], check


def test_failing_section_keeps_the_others(tmp_path, monkeypatch):
    path = tmp_path / "out.json"

    def boom(*a, **k):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(bench.sections, "time_parts", boom)
    args = bench.parse_args(TINY + ["--json", str(path), "--nobaseline", "--notorch"])
    bench.run(args, log=lambda *a: None)
    with open(path) as f:
        written = json.load(f)
    assert written["rounds"]["map"]["seconds"]["n"] == 2
    assert [e["section"] for e in written["errors"]] == ["parts"]
    assert "planted failure" in written["errors"][0]["error"]


def test_section_merges_into_existing_json(tmp_path):
    path = tmp_path / "merged.json"
    path.write_text(json.dumps({"earlier": {"x": 1}}))
    res = harness.Results(str(path), section="later")
    res.set("value", np.float32(2.5))
    res.set("nan", float("nan"))
    merged = json.loads(path.read_text())
    assert merged == {"earlier": {"x": 1}, "later": {"value": 2.5, "nan": None}}


def test_cost_analysis_counts_convolution_flops():
    from fedmix_jax.xla_cpu import conv2d_same

    x = jnp.ones((2, 8, 8, 3))
    k = jnp.ones((3, 3, 3, 5))
    compiled = jax.jit(lambda x, k: conv2d_same(x, k, 1)).lower(x, k).compile()
    # 2 * outputs * taps * Cin, less the taps that fall on the zero padding (XLA counts those out)
    naive = 2 * 2 * 8 * 8 * 5 * 9 * 3
    assert 0.8 * naive <= harness.cost_flops(compiled) <= naive
    assert "convolution" in op_profile.entry_opcodes(compiled).values()


def test_bad_flag_is_an_error():
    with pytest.raises(bench.flags.Error):
        bench.parse_args(["--clients", "x"])
    with pytest.raises(bench.flags.Error):
        bench.parse_args(["stray"])


def test_torch_variant_without_torch_is_a_message(monkeypatch):
    monkeypatch.setattr(torch_baseline, "_import_torch", lambda: None)
    msg = torch_baseline.variant(None, None, None, None, None)
    assert isinstance(msg, str) and "pip install torch" in msg


def test_script_runs_from_the_repository_root(tmp_path):
    # `python benchmarks/bench.py --help` imports everything and exits 0.
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--train_per_client" in out.stdout


def test_vs_torch_is_against_the_fastest_torch_variant():
    rows = {"map": dict(first_call_s=3.0, times=[1.0, 1.0]),
            "torch": dict(first_call_s=9.0, times=[8.0, 8.0]),
            "torch_1t": dict(first_call_s=5.0, times=[2.0, 2.0])}
    res = harness.summarize_rounds(rows, images_per_round=4)
    assert res["map"]["speedup_vs_torch"] == pytest.approx(2.0)
    assert res["map"]["torch_reference"] == "torch_1t"
    assert res["map"]["speedup_vs_torch_1t"] == pytest.approx(2.0)
    assert bench.parse_args(["--torch_threads", "default,1"]).torch_threads == ["default", "1"]


def test_client_scaling_runs(tmp_path):
    from benchmarks import client_scaling

    fv = client_scaling.parse_args(TINY[:-2] + ["--scaling_clients", "1,2", "--repeats", "1",
                                                "--json", str(tmp_path / "s.json")])
    data = client_scaling.run(fv, log=lambda *a: None)
    rows = data["rows"]
    assert [r["clients"] for r in rows] == [1, 2] and rows[0]["relative"] == 1.0
    assert all(r["seconds"]["median"] > 0 for r in rows)
    assert "s / client" in client_scaling.format_table(data)


def test_dtype_dice_pairs_the_seeds():
    """benchmarks/dtype_dice.py: each dtype's Dice over seeds, and its difference from the first
    dtype taken seed by seed (the runs of one seed share their initial parameters)."""
    from benchmarks.dtype_dice import paired_summary

    def runs(dice):
        return dict(runs=[dict(seed=s, dice=d) for s, d in zip((0, 1, 2), dice)])

    res = paired_summary({"float32": runs([0.70, 0.60, 0.65]),
                          "bfloat16": runs([0.69, 0.62, 0.65])}, "float32")
    assert res["float32"]["mean"] == pytest.approx(0.65)
    assert res["float32"]["diff_mean"] == 0.0
    bf = res["bfloat16"]
    assert bf["mean"] == pytest.approx(np.mean([0.69, 0.62, 0.65]))
    assert bf["diff_mean"] == pytest.approx(np.mean([-0.01, 0.02, 0.0]))
    assert bf["diff_std"] == pytest.approx(np.std([-0.01, 0.02, 0.0]))
    assert bf["diff_max_abs"] == pytest.approx(0.02)

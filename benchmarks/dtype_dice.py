"""Test Dice per computation dtype over several seeds: is bfloat16 as accurate as float32?

    python benchmarks/dtype_dice.py                       # configs/synthetic.py, seeds 0,1,2
    python benchmarks/dtype_dice.py --dtypes float32,bfloat16 --seeds 0,1,2,3 --rounds 16 \\
        --json dtype_dice.json
    python benchmarks/dtype_dice.py --config configs/synthetic.py --image_size 224 --width 64 \\
        --batch_size 16 --rounds 8       # the paper's size, on an accelerator

Each run is the main job's training of ``--config`` (``model.dtype`` set per row: the U-Net
computes in that dtype, its parameters, Adam and the losses stay float32), validating global
model 1 every round; it reports the test figures of the best-validation round. The seeds are the
models' (the federation is the config's, the same for every run), and a seed starts from the
same initial parameters in every dtype, so the per-seed difference is paired. Prints per seed
and mean ± std over seeds, the paired difference, and the median round time per dtype (the
first, compiling round left out).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

if __package__ in (None, ""):   # run as a script: import from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("config", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs", "synthetic.py"), "config file (get_config())")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "computation dtypes to compare")
flags.DEFINE_list("seeds", ["0", "1", "2"], "model seeds (the data stays the config's)")
flags.DEFINE_integer("rounds", 0, "rounds per run (0: the config's num_rounds)")
flags.DEFINE_integer("width", 0, "U-Net width (0: the config's)")
flags.DEFINE_integer("image_size", 0, "image size (0: the config's)")
flags.DEFINE_integer("batch_size", 0, "local batch size (0: the config's)")
flags.DEFINE_string("json", None, "write the results here (after every dtype)")


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def paired_summary(results: dict, base: str) -> dict:
    """Mean ± std of each dtype's test Dice over seeds, and of its per-seed difference from
    ``base`` (same seeds, same initial parameters)."""
    out = {}
    ref = {r["seed"]: r["dice"] for r in results[base]["runs"]}
    for dt, res in results.items():
        dice = np.array([r["dice"] for r in res["runs"]])
        diff = np.array([r["dice"] - ref[r["seed"]] for r in res["runs"] if r["seed"] in ref])
        out[dt] = dict(mean=float(dice.mean()), std=float(dice.std()),
                       diff_mean=float(diff.mean()) if diff.size else None,
                       diff_std=float(diff.std()) if diff.size else None,
                       diff_max_abs=float(np.abs(diff).max()) if diff.size else None)
    return out


def _write(results: dict, **extra) -> None:
    """The results so far to ``--json`` (a run cut short keeps its finished runs)."""
    import jax

    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(dict(results=results, backend=jax.default_backend(),
                           device=str(jax.devices()[0].device_kind), **extra), f, indent=1)


def main(argv):
    del argv
    import jax

    from benchmarks.seeded_runs import run_variant
    from fedmix_jax import compilation_cache
    from fedmix_jax.data.sources import load_federation

    compilation_cache.enable("default")
    seeds = [int(s) for s in FLAGS.seeds]
    results = {}
    for dt in FLAGS.dtypes:
        cfg = load_config(FLAGS.config)
        cfg.model.dtype = dt
        if FLAGS.width:
            cfg.model.width = FLAGS.width
        if FLAGS.image_size:
            cfg.data.image_size = FLAGS.image_size
        if FLAGS.batch_size:
            cfg.train.batch_size = FLAGS.batch_size
        rounds = FLAGS.rounds or int(cfg.num_rounds)
        federation = load_federation(cfg.data, verbose=False)
        times, runs = [], []
        t0 = time.time()
        for seed in seeds:      # one compiled round per dtype; the JSON after every run
            runs += run_variant(cfg, federation, [seed], rounds, round_times=times)
            later = times[1:] or times          # the first round compiles
            results[dt] = dict(runs=runs, rounds=rounds, seconds=time.time() - t0,
                               round_s_median=float(np.median(later)))
            _write(results)
        print(f"{dt}: {len(seeds)} seeds x {rounds} rounds in {time.time() - t0:.0f} s "
              f"(round {results[dt]['round_s_median']:.3f} s), best-val test Dice "
              + ", ".join(f"seed {r['seed']} {r['dice']:.4f}" for r in runs), flush=True)
    base = FLAGS.dtypes[0]
    summary = paired_summary(results, base)
    print(f"\nbackend {jax.default_backend()} ({jax.devices()[0].device_kind}), config "
          f"{os.path.basename(FLAGS.config)}, seeds {FLAGS.seeds}")
    print(f"| dtype | test Dice per seed | mean ± std | minus {base}, paired: mean ± std "
          "(max abs) | round s |")
    print("|---|---|---|---|---|")
    for dt, res in results.items():
        s = summary[dt]
        per_seed = " / ".join(f"{r['dice']:.4f}" for r in res["runs"])
        diff = ("-" if dt == base else
                f"{s['diff_mean']:+.4f} ± {s['diff_std']:.4f} ({s['diff_max_abs']:.4f})")
        print(f"| {dt} | {per_seed} | {s['mean']:.4f} ± {s['std']:.4f} | {diff} | "
              f"{res['round_s_median']:.3f} |")
    _write(results, summary=summary)


if __name__ == "__main__":
    app.run(main)

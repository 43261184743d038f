"""Strategies x seeds on the multi-class synthetic federation, one compiled round per strategy.

    python benchmarks/multiclass_strategies.py --strategies fedmix,fedavg_pixel,fedst --seeds 0,1,2

Each run trains ``--rounds`` rounds of ``configs/synthetic_multiclass.py`` (with ``--width`` and
``--image_size``), validates global model 1 every round and reports the test figures of the
best-validation round: mean Dice (per class, averaged), Dice on the images that contain each class,
HD95 (px), per-class Dice. Prints mean ± std over seeds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

import numpy as np
from absl import app, flags

from fedmix_jax.data.sources import load_federation
from seeded_runs import run_variant

FLAGS = flags.FLAGS
flags.DEFINE_string("strategies", "fedmix,fedavg_pixel,fedst", "strategies to compare")
flags.DEFINE_string("seeds", "0,1,2", "model seeds (the data stays fixed)")
flags.DEFINE_integer("rounds", 12, "rounds per run")
flags.DEFINE_integer("width", 8, "U-Net width")
flags.DEFINE_integer("image_size", 48, "image size")
flags.DEFINE_string("json", None, "write the results here")


def config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                        "synthetic_multiclass.py")
    spec = importlib.util.spec_from_file_location("synthetic_multiclass", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv):
    del argv
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    results = {}
    for strategy in FLAGS.strategies.split(","):
        cfg = config()
        cfg.strategy, cfg.num_rounds = strategy, FLAGS.rounds
        cfg.model.width, cfg.data.image_size = FLAGS.width, FLAGS.image_size
        federation = load_federation(cfg.data, verbose=False)
        t0 = time.time()
        results[strategy] = run_variant(cfg, federation, seeds, FLAGS.rounds, hd95=True)
        print(f"{strategy}: {time.time() - t0:.0f} s", flush=True)
        if FLAGS.json:
            with open(FLAGS.json, "w") as f:
                json.dump(results, f, indent=1)
    cell = lambda runs, k: "{:.3f} ± {:.3f}".format(  # noqa: E731
        np.mean([r[k] for r in runs]), np.std([r[k] for r in runs]))
    print("| strategy | mean Dice | Dice, images with the class | HD95 px | Dice per class |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        per_class = " / ".join(f"{v:.3f}" for v in np.mean([r["dice_per_class"] for r in runs], 0))
        print(f"| {name} | {cell(runs, 'dice')} | {cell(runs, 'dice_lesion')} | "
              f"{cell(runs, 'hd95')} | {per_class} |")


if __name__ == "__main__":
    app.run(main)

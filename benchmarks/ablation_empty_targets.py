"""Ablation: lesion-free images (issue "empty targets"), reference behaviour vs each fix vs both.

Variants (fedmix-spec.md, deliberate differences 6 and 7):

* ``reference`` — empty-box samples rejected by ``reject_empty``, soft Dice on empty targets;
* ``empty_boxes`` — empty-box samples selected with an empty target (``empty_boxes_negative``);
* ``bce`` — BCE toward background on empty targets (``empty_target_loss='bce'``);
* ``both`` — the two together.

For each federation, variant and seed the FedMix run trains ``--rounds`` rounds, validates global
model 1 every round and reports the test figures of the best-validation round: mean Dice, Dice on
images with lesions, false-positive rate on lesion-free images. Prints a mean ± std table per
federation and writes JSON. One compiled round per (federation, variant): the seeds reuse it.

    python benchmarks/ablation_empty_targets.py --seeds 0,1,2 --json ablation.json
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
flags.DEFINE_string("seeds", "0,1,2", "comma-separated model seeds (the data stays fixed)")
flags.DEFINE_integer("rounds", 12, "rounds per run")
flags.DEFINE_integer("width", 8, "U-Net width")
flags.DEFINE_integer("image_size", 48, "synthetic image size")
flags.DEFINE_string("variants", "reference,empty_boxes,bce,both", "variants to run")
flags.DEFINE_string("federations", "default,with_image_client", "federations to run")
flags.DEFINE_string("json", None, "write the results here")

VARIANTS = {
    "reference": dict(empty_boxes_negative=False, empty_target_loss="dice"),
    "empty_boxes": dict(empty_boxes_negative=True, empty_target_loss="dice"),
    "bce": dict(empty_boxes_negative=False, empty_target_loss="bce"),
    "both": dict(empty_boxes_negative=True, empty_target_loss="bce"),
}
FEDERATIONS = {
    "default": ("box", "box", "pixel", "box"),
    "with_image_client": ("image", "box", "pixel", "box"),
}


def base_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                        "synthetic.py")
    spec = importlib.util.spec_from_file_location("synthetic_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def table(results: dict) -> str:
    lines = []
    for fed, variants in results.items():
        lines += [f"\n{fed}: levels {FEDERATIONS[fed]}",
                  "| variant | test Dice | Dice on lesion images | FP rate on lesion-free |",
                  "|---|---|---|---|"]
        for name, runs in variants.items():
            cell = lambda k: "{:.3f} ± {:.3f}".format(  # noqa: E731
                np.mean([r[k] for r in runs]), np.std([r[k] for r in runs]))
            lines.append(f"| {name} | {cell('dice')} | {cell('dice_lesion')} | "
                         f"{cell('fp_rate')} |")
    return "\n".join(lines)


def main(argv):
    del argv
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    results: dict = {}
    for fed_name in FLAGS.federations.split(","):
        for variant in FLAGS.variants.split(","):
            config = base_config()
            config.model.width = FLAGS.width
            config.data.image_size = FLAGS.image_size
            config.data.levels = FEDERATIONS[fed_name]
            config.selection.empty_boxes_negative = VARIANTS[variant]["empty_boxes_negative"]
            config.train.empty_target_loss = VARIANTS[variant]["empty_target_loss"]
            federation = load_federation(config.data, verbose=False)
            t0 = time.time()
            runs = run_variant(config, federation, seeds, FLAGS.rounds)
            results.setdefault(fed_name, {})[variant] = runs
            print(f"{fed_name} / {variant}: {time.time() - t0:.0f} s, test Dice "
                  + ", ".join(f"{r['dice']:.3f}" for r in runs)
                  + "; FP rate " + ", ".join(f"{r['fp_rate']:.3f}" for r in runs), flush=True)
            if FLAGS.json:
                with open(FLAGS.json, "w") as f:
                    json.dump(dict(flags=dict(seeds=seeds, rounds=FLAGS.rounds,
                                              width=FLAGS.width, image_size=FLAGS.image_size),
                                   results=results), f, indent=1)
    print(table(results))


if __name__ == "__main__":
    app.run(main)

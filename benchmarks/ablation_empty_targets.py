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

import jax
import numpy as np
from absl import app, flags


import fedmix_jax as fm
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.data.sources import load_federation
from fedmix_jax.evaluation import evaluate

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


def run_variant(config, federation, seeds, rounds):
    """Best-validation test figures of each seed: list of dicts."""
    model = build_model(config, federation.num_classes)
    round_config = build_round_config(config)
    round_fn = fm.make_round_fn(model, round_config)
    train = jax.device_put(federation.train)
    image_shape = federation.train.images.shape[2:]
    out = []
    for seed in seeds:
        state = fm.init_state(model, jax.random.PRNGKey(seed), image_shape,
                              federation.num_clients, round_config)
        best = (-1.0, None)
        for _ in range(rounds):
            state, _ = round_fn(state, train)
            params = state.global_params[0]
            val = evaluate(model, params, federation.val, hd95=False)["mean_dice"]
            if val > best[0]:
                test = evaluate(model, params, federation.test, hd95=False)
                best = (val, dict(round=int(state.round), val_dice=float(val),
                                  dice=float(test["mean_dice"]),
                                  dice_lesion=float(test["mean_dice_present"]),
                                  fp_rate=float(test["mean_false_positive_rate"]),
                                  fp_rate_per_client=[float(x) for x in
                                                      test["false_positive_rate"]]))
        out.append(dict(seed=seed, **best[1]))
    return out


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

"""Per-class Dice and HD95 of several strategies x seeds on the multi-class synthetic federation.

    python benchmarks/multiclass_demo.py --strategies fedmix,fedavg_pixel,fedavg_full --seeds 0,1,2

Runs ``configs/synthetic_multiclass.py`` (or ``--config``) through ``train.train_and_evaluate``
once per (strategy, seed) and reports the test metrics of the round with the best mean validation
Dice: mean Dice, per-class Dice, Dice over the images that contain each class (``dice_present``), pooled
Dice and HD95 (means over clients), per-client Dice, as mean ± std over seeds. The per-class figures are read from the job's own ``evaluate`` calls (the summary does not
carry them yet). ``--tiny`` is a seconds-long smoke size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np

from fedmix_jax import evaluation, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
    spec = importlib.util.spec_from_file_location("demo_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def run_one(config_path, strategy, seed, tiny, workdir):
    cfg = _load(config_path)
    cfg.strategy, cfg.seed = strategy, seed
    if tiny:
        cfg.model.width, cfg.model.depth, cfg.num_rounds = 4, 2, 2
        cfg.data.image_size, cfg.data.train_sizes = 32, (16, 16, 8)
        cfg.data.val_size = cfg.data.test_size = 8
    seen = []
    real = evaluation.evaluate

    def spy(*a, **k):
        out = real(*a, **k)
        seen.append(out)
        return out

    patched = [m for n, m in list(sys.modules.items())
               if n.startswith("fedmix_jax") and getattr(m, "evaluate", None) is real]
    for m in patched:
        m.evaluate = spy
    try:
        t0 = time.time()
        summary = train.train_and_evaluate(cfg, workdir, quiet=True, write_plots=False)
        secs = time.time() - t0
    finally:
        for m in patched:
            m.evaluate = real
    r = summary["best"]["round"]
    every = int(cfg.eval_every)
    evals = [rr for rr in range(1, int(cfg.num_rounds) + 1)
             if rr % every == 0 or rr == int(cfg.num_rounds)]
    i = evals.index(r)
    val, test = seen[2 * i], seen[2 * i + 1]
    assert abs(float(test["mean_dice"]) - summary["best"]["test"]["mean_dice"]) < 1e-6
    return dict(strategy=strategy, seed=seed, best_round=r, seconds=secs,
                client_names=summary["client_names"], class_names=summary["class_names"],
                mean_dice=float(test["mean_dice"]), dice=test["dice"].tolist(),
                mean_dice_per_class=test["mean_dice_per_class"].tolist(),
                mean_hd95=float(test["mean_hd95"]),
                mean_hd95_per_class=test["mean_hd95_per_class"].tolist(),
                hd95=test["hd95"].tolist(), pooled_dice=float(test["mean_pooled_dice"]),
                mean_dice_present=float(test["mean_dice_present"]),
                mean_dice_present_per_class=test["mean_dice_present_per_class"].tolist(),
                val_mean_dice=float(val["mean_dice"]))


def _ms(xs):
    xs = np.asarray(xs, float)
    return f"{xs.mean():.3f} ± {xs.std(ddof=1) if xs.size > 1 else 0.0:.3f}"


def table(runs):
    first = runs[0]
    cls, clients = first["class_names"], first["client_names"]
    head = (["strategy", "mean Dice"] + [f"Dice {c}" for c in cls]
            + ["Dice, images with the class", "pooled Dice", "HD95 px"]
            + [f"HD95 {c}" for c in cls] + [f"Dice {c}" for c in clients])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == s]
        row = [f"{s} (n={len(rs)})", _ms([r["mean_dice"] for r in rs])]
        row += [_ms([r["mean_dice_per_class"][k] for r in rs]) for k in range(len(cls))]
        row += [_ms([r["mean_dice_present"] for r in rs]), _ms([r["pooled_dice"] for r in rs])]
        row += [_ms([r["mean_hd95"] for r in rs])]
        row += [_ms([r["mean_hd95_per_class"][k] for r in rs]) for k in range(len(cls))]
        row += [_ms([r["dice"][c] for r in rs]) for c in range(len(clients))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic_multiclass.py"))
    p.add_argument("--strategies", default="fedmix,fedavg_pixel")
    p.add_argument("--seeds", default="0")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in a.strategies.split(","):
            for seed in (int(v) for v in a.seeds.split(",")):
                r = run_one(a.config, s, seed, a.tiny, os.path.join(tmp, f"{s}_{seed}"))
                runs.append(r)
                print(f"{s} seed {seed}: mean Dice {r['mean_dice']:.4f} per class "
                      f"{np.round(r['mean_dice_per_class'], 4).tolist()} present "
                      f"{r['mean_dice_present']:.4f} HD95 "
                      f"{r['mean_hd95']:.2f} (round {r['best_round']}, {r['seconds']:.0f} s)",
                      flush=True)
                if a.out:
                    with open(a.out, "w") as f:
                        json.dump(runs, f, indent=1)
    print(table(runs))


if __name__ == "__main__":
    main()

r"""Do weak labels make the model better at segmenting lesions? One command, paired by seed.

    python benchmarks/efficacy.py --tasks binary,multiclass --data_seeds 1,2,3 --seeds 0,1,2 \
        --json efficacy.json

For each task (``binary``: ``configs/synthetic.py``; ``multiclass``:
``configs/synthetic_multiclass.py``, each at its own default size and round budget), each data
seed (``config.data.seed``: a different federation) and each training seed, every strategy trains
from the same initialisation and is scored on the test split at its best-validation round
(``--select_by``: by mean validation Dice, the default, or ``lesion_balanced``,
:mod:`fedmix_jax.round_selection`; ``--every_round`` records every round's figures too):

* mean Dice (per class, averaged; absent-class images score 1, so a model that predicts nothing
  scores well on lesion-free images),
* **Dice on the images that contain a lesion** (per class, over the images with that class),
  and its minimum over classes (a class never predicted shows as ~0),
* the **false-positive rate** on lesion-free images (share with any predicted foreground pixel),
* HD95 (px),
* the **share of the pixel -> full gap recovered** on lesion-image Dice,
  ``(x - fedavg_pixel) / (fedavg_full - fedavg_pixel)``, computed per (data seed, training seed)
  pair, then mean ± std.

Strategies with pseudo-labels also record, per round, the pseudo-label diagnostics of
:mod:`fedmix_jax.diagnostics` (pooled over clients): how many weak samples are selected, how many
of those hold a lesion, their Dice against the true masks, precision / recall of the selection and
the predicted / true area. The JSON holds everything (written after every run, so a cut-short
benchmark keeps its finished runs); the tables are printed at the end.

``--set weak.tightness_inset=3`` (repeatable) overrides config fields of every run; tune on data
seed 0 only, report on the others. ``--local_models`` also scores the sites' local models (each
site's model 1 after its local epoch, on its own test split, at the round where their mean
validation Dice is highest: what a site that keeps its own fine-tuned copy would deploy) and
prints their tables after the global model's, the gap against the baselines' local models; and
each site's consensus model (:mod:`fedmix_jax.consensus`: its local copy's mask on the images where
it and the global model both mark a lesion, nothing on the others; at its own best validation
round), the gap against the baselines' consensus models and against their global models; and the
same consensus models with each site's mask threshold chosen on its own validation split
(``consensus_tuned``). ``--fine_tune_epochs 8`` adds ``consensus_finetuned``: each site keeps
training its copy for up to 8 more local epochs on its own data and its consensus model takes the
fine-tuned copy's mask (epoch and threshold chosen on the site's validation split) on the images
all three models mark (:mod:`fedmix_jax.fine_tuning`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fedmix_jax.data.sources import load_federation  # noqa: E402
from fedmix_jax.round_selection import SELECT_ROUND_BY  # noqa: E402
from seeded_runs import run_variant  # noqa: E402

FLAGS = flags.FLAGS
CONFIGS = {"binary": "synthetic.py", "multiclass": "synthetic_multiclass.py"}
FIGURES = ("dice", "dice_lesion", "min_class_dice_lesion", "fp_rate", "hd95")
LOCAL_KINDS = ("local", "consensus", "consensus_tuned", "consensus_finetuned")     # --local_models: each site's models


def load_config(task: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                        CONFIGS[task])
    spec = importlib.util.spec_from_file_location(f"cfg_{task}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def apply_overrides(config, overrides):
    for item in overrides:
        key, value = item.split("=", 1)
        *groups, field = key.split(".")
        node = config
        for g in groups:
            node = node[g]
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        node[field] = value


def gap_recovered(x: float, pixel: float, full: float) -> float:
    """(x - pixel) / (full - pixel); NaN when the gap is not positive."""
    return (x - pixel) / (full - pixel) if full > pixel else float("nan")


def _ms(values) -> str:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if a.size == 0:
        return "n/a"
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.3f}"


def tables(results: dict, strategies, baselines: dict | None = None) -> str:
    """Markdown tables: per task, every data seed pooled (mean ± sample std over all runs) and
    per data seed, with the gap recovered paired by (data seed, seed) against the fedavg_pixel /
    fedavg_full runs of ``baselines`` (default: of ``results``)."""
    baselines = results if baselines is None else baselines
    lines = []
    for task, by_data in results.items():
        lines.append(f"\n### {task}\n")
        lines.append("| data seed | strategy | mean Dice | Dice, lesion images | min class Dice, "
                     "lesion images | FP rate, lesion-free | HD95 px | gap recovered |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for data_seed in list(by_data) + ["all"]:
            seeds_here = list(by_data) if data_seed == "all" else [data_seed]
            for s in strategies:
                runs, gaps = [], []
                for ds in seeds_here:
                    per, base = by_data[ds], baselines.get(task, {}).get(ds, {})
                    for i, r in enumerate(per.get(s, [])):
                        runs.append(r)
                        pix, full = base.get("fedavg_pixel", []), base.get("fedavg_full", [])
                        if i < len(pix) and i < len(full):
                            gaps.append(gap_recovered(r["dice_lesion"], pix[i]["dice_lesion"],
                                                      full[i]["dice_lesion"]))
                if not runs:
                    continue
                cells = [_ms([r.get(k) for r in runs]) for k in FIGURES]
                lines.append(f"| {data_seed} | {s} | " + " | ".join(cells) + f" | {_ms(gaps)} |")
    return "\n".join(lines)


DIAG = ("sel", "sel_lesion", "dice", "dice_all", "precision", "recall", "area")


def diagnostics_table(results: dict, strategies) -> str:
    """Pseudo-label diagnostics per task, strategy and weak level: the mean over every data seed
    and training seed of the first, a middle and the last recorded round (selected / with a
    lesion as shares of the level's samples)."""
    lines = []
    for task, by_data in results.items():
        rows = []
        for s in strategies:
            runs = [r for per in by_data.values() for r in per.get(s, []) if r.get("pseudo_labels")]
            if not runs:
                continue
            rounds = [d["round"] for d in runs[0]["pseudo_labels"]]
            for lvl in ("box", "image", "none"):
                if f"pl_{lvl}_n" not in runs[0]["pseudo_labels"][0]:
                    continue
                for idx in sorted({0, len(rounds) // 2, len(rounds) - 1}):
                    cells = []
                    for key in DIAG:
                        vals = []
                        for r in runs:    # runs merged from other files may log other rounds
                            d = next((e for e in r["pseudo_labels"]
                                      if e["round"] == rounds[idx]), None)
                            if d is None:
                                continue
                            v = d.get(f"pl_{lvl}_{key}")
                            if v is not None and key in ("sel", "sel_lesion"):
                                v = v / max(d[f"pl_{lvl}_n"], 1)
                            vals.append(v)
                        cells.append(_ms(vals))
                    rows.append(f"| {s} | {lvl} | {rounds[idx]} | " + " | ".join(cells) + " |")
        if rows:
            lines += [f"\n### {task}: pseudo-labels vs the true masks\n",
                      "| strategy | level | round | selected | selected with a lesion | Dice, "
                      "selected | Dice, all with a lesion | precision | recall | area pred/true |",
                      "|---|---|---|---|---|---|---|---|---|---|"] + rows
    return "\n".join(lines)


def local_results(results: dict, key: str = "local") -> dict:
    """``results`` with each run replaced by its ``key`` figures (``local``: the local models';
    ``consensus``: the consensus models'; runs without: left out; empty when no run has them)."""
    out: dict = {}
    for task, by_data in results.items():
        for ds, by_strategy in by_data.items():
            for s, runs in by_strategy.items():
                if runs and all(key in r for r in runs):
                    out.setdefault(task, {}).setdefault(ds, {})[s] = [r[key] for r in runs]
    return out


def print_tables(results: dict, strategies) -> None:
    """The global model's tables, the local and consensus models' (if recorded), the
    diagnostics."""
    print(tables(results, strategies))
    if local := local_results(results):
        print("\nLocal models (each site's model 1 after its local epoch, on its own test split; "
              "gap against the local models of fedavg_pixel / fedavg_full):")
        print(tables(local, strategies))
    for key, what in (("consensus", "each site's local mask where its local and the global "
                       "model both mark a lesion"),
                      ("consensus_tuned", "the same, each site's mask threshold chosen on its own "
                       "validation split"),
                      ("consensus_finetuned", "the same, the mask of each site's copy fine-tuned "
                       "for the epochs it chose on its validation split, marked only where all "
                       "three models mark")):
        if kind := local_results(results, key):
            print(f"\nConsensus models ({what}; gap against the same models of fedavg_pixel / "
                  "fedavg_full):")
            print(tables(kind, strategies))
            print("\nThe same, gap against the global models of fedavg_pixel / fedavg_full:")
            print(tables(kind, strategies, baselines=results))
    print(diagnostics_table(results, strategies))


def merged(paths) -> dict:
    """The results of several JSON files of this script, merged task > data seed > strategy."""
    results: dict = {}
    for path in paths:
        with open(path) as f:
            for task, by_data in json.load(f)["results"].items():
                for ds, by_strategy in by_data.items():
                    results.setdefault(task, {}).setdefault(ds, {}).update(by_strategy)
    return results


def define_flags() -> None:
    """The command's flags (defined only when it runs as a script, so that importing the module
    for its tables -- tests, other scripts -- adds no absl flag)."""
    flags.DEFINE_string("tasks", "binary,multiclass", "binary and/or multiclass")
    flags.DEFINE_string("strategies", "fedmix,fedmix_plus,fedavg_pixel,fedavg_full",
                        "strategies (fedavg_pixel and fedavg_full are needed for the gap)")
    flags.DEFINE_string("data_seeds", "1,2,3", "federations (config.data.seed); 0 is for tuning")
    flags.DEFINE_string("seeds", "0,1,2", "training seeds (model init, order, augmentation)")
    flags.DEFINE_integer("rounds", 0, "rounds per run (0: the config's num_rounds)")
    flags.DEFINE_multi_string("set", [], "config overrides for every run, e.g. weak.emptiness=0")
    flags.DEFINE_string("json", None, "write the results here (after every run)")
    flags.DEFINE_integer("diagnostics_every", 4, "pseudo-label diagnostics every k rounds "
                         "(and round 1); 0: none")
    flags.DEFINE_bool("local_models", False, "also score each site's local model (its model 1 "
                      "after its local epoch, on its own test split, at the round of the best "
                      "mean local validation Dice) and each site's consensus model "
                      "(fedmix_jax.consensus), and print their tables too")
    flags.DEFINE_integer("fine_tune_epochs", 0, "with --local_models: each site also fine-tunes "
                         "its copy for up to this many more local epochs and uses it for its "
                         "consensus model's mask (fedmix_jax.fine_tuning); 0: off")
    flags.DEFINE_enum("select_by", "mean_dice", list(SELECT_ROUND_BY),
                      "which round each model is scored at: the best validation mean Dice, or "
                      "lesion_balanced, (Dice on lesion images + 1 - FP rate) / 2 "
                      "(fedmix_jax.round_selection)")
    flags.DEFINE_bool("every_round", False, "also record the global model's validation and test "
                      "figures at every round (JSON key rounds), to compare selection rules")
    flags.DEFINE_string("merge", None, "comma-separated JSON files of earlier runs: print their "
                        "tables together (later files add strategies / data seeds), train nothing")


def main(argv):
    del argv
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    strategies = FLAGS.strategies.split(",")
    if FLAGS.merge:
        print_tables(merged(FLAGS.merge.split(",")), strategies)
        return
    results: dict = {}
    t_all = time.time()
    for task in FLAGS.tasks.split(","):
        results[task] = {}
        for data_seed in FLAGS.data_seeds.split(","):
            results[task][data_seed] = {}
            for strategy in strategies:
                cfg = load_config(task)
                cfg.strategy = strategy
                cfg.data.seed = int(data_seed)
                apply_overrides(cfg, FLAGS.set)
                rounds = FLAGS.rounds or int(cfg.num_rounds)
                federation = load_federation(cfg.data, verbose=False)
                t0 = time.time()
                runs = results[task][data_seed][strategy] = []
                for seed in seeds:      # the compiled round is cached: one compile per strategy
                    run, = run_variant(cfg, federation, [seed], rounds, hd95=True,
                                       diagnostics=FLAGS.diagnostics_every,
                                       local=FLAGS.local_models,
                                       fine_tune_epochs=FLAGS.fine_tune_epochs,
                                       select_by=FLAGS.select_by,
                                       every_round=FLAGS.every_round)
                    for r in (run, *(run.get(k, {}) for k in LOCAL_KINDS)):
                        if r:
                            r["min_class_dice_lesion"] = float(np.min(r["dice_lesion_per_class"]))
                    runs.append(run)
                    extra = "".join(f", {k} {run[k]['dice_lesion']:.3f} / FP "
                                    f"{run[k]['fp_rate']:.3f}"
                                    for k in LOCAL_KINDS if k in run)
                    print(f"  {task} data seed {data_seed} {strategy} seed {seed}: lesion Dice "
                          f"{run['dice_lesion']:.3f}, FP {run['fp_rate']:.3f}{extra} "
                          f"({time.time() - t0:.0f} s)", flush=True)
                    if FLAGS.json:      # after every run: a cut-short benchmark keeps its runs
                        with open(FLAGS.json + ".tmp", "w") as f:
                            json.dump({"overrides": FLAGS.set, "seeds": seeds,
                                       "select_by": FLAGS.select_by,
                                       "results": results}, f, indent=1)
                        os.replace(FLAGS.json + ".tmp", FLAGS.json)
                print(f"{task} data seed {data_seed} {strategy}: "
                      f"lesion Dice {_ms([r['dice_lesion'] for r in runs])}, "
                      f"FP {_ms([r['fp_rate'] for r in runs])} ({time.time() - t0:.0f} s)",
                      flush=True)
    print_tables(results, strategies)
    print(f"\ntotal {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)

"""The thirteenth pass's multi-class table: every model chosen at the round with the best
validation (Dice on lesion images + 1 - FP rate) / 2 (``--select_by lesion_balanced``), against
the same runs chosen by mean validation Dice (the default; session12).

Inputs here: ``mc_d*_s*.json`` (fedmix_plus, ``--local_models --fine_tune_epochs 8 --select_by
lesion_balanced --every_round``) and ``mcbase_*.json`` (fedavg_pixel and fedavg_full,
``--select_by lesion_balanced --every_round``). Every run records its global model's validation
and test figures at every round, so its global model can be chosen by either rule afterwards
(:func:`fedmix_jax.round_selection.selection_score`, the first round on ties, as online); the
consensus models were chosen online by lesion_balanced. The session12 runs of the same
(data seed, training seed) were chosen by mean validation Dice.

    python mc_table.py   (in this folder; run from the repository with fedmix_jax importable)
"""
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", ".."))
from fedmix_jax.round_selection import selection_score  # noqa: E402

load = lambda f: json.load(open(f))["results"]["multiclass"]  # noqa: E731


def runs_of(pattern):
    out = {}
    for f in sorted(glob.glob(os.path.join(HERE, pattern))):
        for ds, v in load(f).items():
            for strategy, rs in v.items():
                for r in rs:
                    out[(strategy, ds, r["seed"])] = r
    return out


new = {**runs_of("mcbase_*.json"), **runs_of("mc_d*_s*.json")}
old = {**runs_of("../session12/mcbase_*.json"), **runs_of("../session12/mc_d*_s*.json")}
old.update({k: v for k, v in runs_of("../session10/mc_ds1.json").items() if k not in old})


def chosen(run, select_by):
    """The global model's test figures at the round ``select_by`` picks (from ``rounds``)."""
    best, pick = -np.inf, None
    for r in run["rounds"]:
        score = selection_score({"mean_dice": r["val_mean_dice"],
                                 "mean_dice_present": r["val_dice_lesion"],
                                 "mean_false_positive_rate": r["val_fp_rate"]}, select_by)
        if np.isfinite(score) and score > best:
            best, pick = score, r
    return pick


def gap(x, px, fu):
    return (x - px) / (fu - px)


def ms(a):
    a = np.asarray(a, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0:.3f}"


pairs = sorted({(ds, s) for (st, ds, s) in new if st == "fedmix_plus"
                and ("fedavg_pixel", ds, s) in new and ("fedavg_full", ds, s) in new})
print(f"{len(pairs)} (data seed, training seed) pairs with fedmix_plus and both baselines: "
      f"{pairs}\n")

print("Baselines, global model: Dice on lesion images / FP rate (round) chosen by mean validation "
      "Dice | by lesion_balanced; session12's run (mean Dice) beside it")
for ds, s in pairs:
    for st in ("fedavg_pixel", "fedavg_full"):
        r = new[(st, ds, s)]
        a, b = chosen(r, "mean_dice"), chosen(r, "lesion_balanced")
        o = old.get((st, ds, s))
        print(f"  {ds} {s} {st:12s}: {a['dice_lesion']:.3f} / {a['fp_rate']:.2f} ({a['round']}) | "
              f"{b['dice_lesion']:.3f} / {b['fp_rate']:.2f} ({b['round']})"
              + (f"; session12 {o['dice_lesion']:.3f} (round {o['round']})" if o else ""))

print("\nfedmix_plus per run: global model by mean Dice | by lesion_balanced; consensus with site "
      "thresholds and fine-tuned consensus (lesion_balanced, online); session12's fine-tuned "
      "consensus (mean Dice). Gap vs the global baselines chosen by the same rule.")
rows = []
for ds, s in pairs:
    p = new[("fedmix_plus", ds, s)]
    base = {rule: [chosen(new[(st, ds, s)], rule)["dice_lesion"]
                   for st in ("fedavg_pixel", "fedavg_full")]
            for rule in ("mean_dice", "lesion_balanced")}
    ga, gb = chosen(p, "mean_dice"), chosen(p, "lesion_balanced")
    ct, cf = p["consensus_tuned"], p["consensus_finetuned"]
    o = old.get(("fedmix_plus", ds, s), {}).get("consensus_finetuned")
    rows.append(dict(ds=ds, s=s, base=base, glob_md=ga, glob_lb=gb, ct=ct, cf=cf, old=o))
    lb = base["lesion_balanced"]
    print(f"  {ds} {s}: global {ga['dice_lesion']:.3f} / {ga['fp_rate']:.2f} ({ga['round']}) | "
          f"{gb['dice_lesion']:.3f} / {gb['fp_rate']:.2f} ({gb['round']}, "
          f"{gap(gb['dice_lesion'], *lb):+.0%}); consensus_tuned {ct['dice_lesion']:.3f} / "
          f"{ct['fp_rate']:.2f} ({ct['round']}); consensus_finetuned {cf['dice_lesion']:.3f} / "
          f"{cf['fp_rate']:.2f} ({gap(cf['dice_lesion'], *lb):+.0%}), sites "
          f"{' / '.join(f'{x:.2f}' for x in cf['dice_lesion_per_client'])}, min class "
          f"{min(cf['dice_lesion_per_class']):.2f}, epochs {cf['epochs']}"
          + (f"; session12 {o['dice_lesion']:.3f} / {o['fp_rate']:.2f} (round {o['round']})"
             if o else "")
          + f"; pixel {lb[0]:.3f}, full {lb[1]:.3f}")

if rows:
    print("\n| model (round by lesion_balanced) | runs | Dice, lesion images (a / b / c) | min class "
          "Dice, lesion images | FP rate | gap vs global baselines (lesion_balanced), mean ± std "
          "| median |")
    print("|---|---|---|---|---|---|---|")
    for name, key in (("fedavg_pixel, global", None), ("fedavg_full, global", None),
                      ("fedmix_plus, global", "glob_lb"), ("fedmix_plus, consensus, site "
                                                           "thresholds", "ct"),
                      ("fedmix_plus, consensus, fine-tuned mask", "cf")):
        if key is None:
            st = name.split(",")[0]
            ms_ = [chosen(new[(st, r['ds'], r['s'])], "lesion_balanced") for r in rows]
            print(f"| {name} | {len(ms_)} | {ms([m['dice_lesion'] for m in ms_])} "
                  f"({' / '.join(f'{x:.2f}' for x in np.mean([m['dice_lesion_per_client'] for m in ms_], 0))}) "
                  f"| {ms([min(m['dice_lesion_per_class']) for m in ms_])} "
                  f"| {ms([m['fp_rate'] for m in ms_])} | | |")
            continue
        ms_ = [r[key] for r in rows]
        g = [gap(r[key]["dice_lesion"], *r["base"]["lesion_balanced"]) for r in rows]
        print(f"| {name} | {len(ms_)} | {ms([m['dice_lesion'] for m in ms_])} "
              f"({' / '.join(f'{x:.2f}' for x in np.mean([m['dice_lesion_per_client'] for m in ms_], 0))}) "
              f"| {ms([min(m['dice_lesion_per_class']) for m in ms_])} "
              f"| {ms([m['fp_rate'] for m in ms_])} | {ms(g)} | {np.median(g):+.0%} |")

    print("\nfine-tuned consensus per data seed, pooled over its training seeds (gap = (mean - "
          "mean pixel) / (mean full - mean pixel), baselines by lesion_balanced):")
    for ds in sorted({r["ds"] for r in rows}):
        rs = [r for r in rows if r["ds"] == ds]
        x = np.mean([r["cf"]["dice_lesion"] for r in rs])
        px = np.mean([r["base"]["lesion_balanced"][0] for r in rs])
        fu = np.mean([r["base"]["lesion_balanced"][1] for r in rs])
        print(f"  data seed {ds} ({len(rs)} runs): {x:.3f}, FP "
              f"{np.mean([r['cf']['fp_rate'] for r in rs]):.3f}, pooled gap {gap(x, px, fu):+.0%} "
              f"(pixel {px:.3f}, full {fu:.3f})")

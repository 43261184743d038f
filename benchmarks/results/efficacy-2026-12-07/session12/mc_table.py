"""The twelfth pass's multi-class table: fedmix_plus's global and consensus models, with each site's
fine-tuned copy's mask (consensus_finetuned), on the held-out multi-class federations (mc_d*_s*.json
here), against the global models of fedavg_pixel / fedavg_full of the same (data seed, training
seed) run with the same code: mcbase_*.json here, and ../session10/mc_ds1.json for data seed 1,
training seed 0. Where neither has a pair, the older runs (../../efficacy-2026-12-06/mc_base.json,
session3/mc_ds{2,3}.json, an earlier version of the code: their figures differ) are used and the
line says so.

    python mc_table.py   (in this folder)
"""
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OLD = os.path.join(HERE, "..", "..", "efficacy-2026-12-06")
load = lambda f: json.load(open(f))["results"]["multiclass"]  # noqa: E731
base = {"1": load(os.path.join(OLD, "mc_base.json"))["1"],
        "2": load(os.path.join(OLD, "session3", "mc_ds2.json"))["2"],
        "3": load(os.path.join(OLD, "session3", "mc_ds3.json"))["3"]}
current = {"1": {k: list(v) for k, v in
                 load(os.path.join(HERE, "..", "session10", "mc_ds1.json"))["1"].items()}}
for f in sorted(glob.glob(os.path.join(HERE, "mcbase_*.json"))):
    for ds, v in load(f).items():
        for k, rs in v.items():
            current.setdefault(ds, {}).setdefault(k, []).extend(rs)
earlier_plus = {ds: base[ds].get("fedmix_plus") for ds in ("2", "3")}
plus = {}
for f in sorted(glob.glob(os.path.join(HERE, "mc_d*_s*.json"))):
    for ds, v in load(f).items():
        plus.setdefault(ds, []).extend(v["fedmix_plus"])
KINDS = ("global", "consensus", "consensus_tuned", "consensus_finetuned")
pick = lambda r, k: r if k == "global" else r.get(k)  # noqa: E731


def ms(a):
    a = np.asarray(a, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0:.3f}"


def baseline(ds, seed, strategy, old=False):
    """The baseline's run of (data seed, training seed): this code's where it exists."""
    for source in ((base,) if old else (current, base)):
        run = next((r for r in source.get(ds, {}).get(strategy, []) if r["seed"] == seed), None)
        if run is not None:
            return run["dice_lesion"]


def is_current(ds, seed):
    return all(any(r["seed"] == seed for r in current.get(ds, {}).get(s, []))
               for s in ("fedavg_pixel", "fedavg_full"))


def gap(x, ds, seed, old=False):
    px, fu = (baseline(ds, seed, s, old) for s in ("fedavg_pixel", "fedavg_full"))
    return (x - px) / (fu - px)


print("| model | runs | Dice, lesion images (a / b / c) | per class (1 / 2 / 3) | min class Dice, "
      "lesion images | FP rate | mean Dice | gap vs global baselines (same seed) |")
print("|---|---|---|---|---|---|---|---|")
for kind in KINDS:
    runs = [(ds, pick(r, kind), r["seed"]) for ds, rs in sorted(plus.items()) for r in rs]
    if not runs or any(r is None for _, r, _ in runs):
        continue
    les = [r["dice_lesion"] for _, r, _ in runs]
    site = np.mean([r["dice_lesion_per_client"] for _, r, _ in runs], 0)
    cls = np.mean([r["dice_lesion_per_class"] for _, r, _ in runs], 0)
    print(f"| {kind} | {len(runs)} | {ms(les)} ({' / '.join(f'{x:.2f}' for x in site)}) "
          f"| {' / '.join(f'{x:.2f}' for x in cls)} "
          f"| {ms([min(r['dice_lesion_per_class']) for _, r, _ in runs])} "
          f"| {ms([r['fp_rate'] for _, r, _ in runs])} | {ms([r['dice'] for _, r, _ in runs])} "
          f"| {ms([gap(r['dice_lesion'], ds, s) for ds, r, s in runs])} |")
print("\nfine-tuned consensus per data seed (mean over its training seeds): Dice on lesion images, "
      "FP rate, gap; pooled gap = (mean - mean pixel) / (mean full - mean pixel); median gap")
for ds, rs in sorted(plus.items()):
    f = [r["consensus_finetuned"] for r in rs]
    px = np.mean([baseline(ds, r["seed"], "fedavg_pixel") for r in rs])
    fu = np.mean([baseline(ds, r["seed"], "fedavg_full") for r in rs])
    les = np.mean([x["dice_lesion"] for x in f])
    print(f"  data seed {ds} ({len(rs)} runs): {les:.3f}, FP {np.mean([x['fp_rate'] for x in f]):.3f}, "
          f"pooled gap {(les - px) / (fu - px):+.0%} (pixel {px:.3f}, full {fu:.3f})")
allruns = [(ds, r) for ds, rs in plus.items() for r in rs]
g = [gap(r["consensus_finetuned"]["dice_lesion"], ds, r["seed"]) for ds, r in allruns]
print(f"  all {len(allruns)} runs: median gap {np.median(g):+.0%}; runs with gap >= 50 %: "
      f"{sum(x >= 0.5 for x in g)}; runs with every class predicted (min class Dice on lesion "
      f"images > 0.05): {sum(min(r['consensus_finetuned']['dice_lesion_per_class']) > 0.05 for _, r in allruns)}")

print("\nper run (data seed, training seed): Dice on lesion images / FP rate, gap, of the global "
      "model, the consensus with site thresholds and the fine-tuned consensus; the baselines")
for ds, rs in sorted(plus.items()):
    for r in sorted(rs, key=lambda r: r["seed"]):
        s = r["seed"]
        parts = []
        for kind in ("global", "consensus_tuned", "consensus_finetuned"):
            m = pick(r, kind)
            if m:
                parts.append(f"{kind} {m['dice_lesion']:.3f} / {m['fp_rate']:.2f} "
                             f"({gap(m['dice_lesion'], ds, s):+.0%})")
        f = r.get("consensus_finetuned") or {}
        print(f"  {ds} {s}: " + "; ".join(parts)
              + f"; sites {' / '.join(f'{x:.2f}' for x in f.get('dice_lesion_per_client', []))}"
              + f", epochs {f.get('epochs')}, thresholds {f.get('thresholds')}; pixel "
              f"{baseline(ds, s, 'fedavg_pixel'):.3f}, full {baseline(ds, s, 'fedavg_full'):.3f}")
        if not is_current(ds, s):
            print("    (baselines of the earlier code: no run of this code yet)")
        elif f:
            print(f"    against the earlier code's baselines (pixel "
                  f"{baseline(ds, s, 'fedavg_pixel', True):.3f}, full "
                  f"{baseline(ds, s, 'fedavg_full', True):.3f}): fine-tuned consensus gap "
                  f"{gap(f['dice_lesion'], ds, s, True):+.0%}")
        old = earlier_plus.get(ds)
        if old:
            o = next((x for x in old if x["seed"] == s), None)
            if o:
                print(f"    the same run's global model in session3: {o['dice_lesion']:.3f} / "
                      f"{o['fp_rate']:.2f} (round {o['round']}; now round {r['round']})")

print("\nbaselines of this code (global model; consensus with site thresholds, no fine-tuning), "
      "per (data seed, training seed): Dice on lesion images / FP rate")
for ds, v in sorted(current.items()):
    for s in ("fedavg_pixel", "fedavg_full"):
        for r in sorted(v.get(s, []), key=lambda r: r["seed"]):
            t = r.get("consensus_tuned")
            print(f"  {ds} {r['seed']} {s}: global {r['dice_lesion']:.3f} / {r['fp_rate']:.2f}"
                  + (f"; consensus_tuned {t['dice_lesion']:.3f} / {t['fp_rate']:.2f}" if t else ""))

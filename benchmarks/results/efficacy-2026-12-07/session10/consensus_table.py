"""The tenth pass's table: global, local, consensus and consensus_tuned (each site's mask threshold
chosen on its validation split) models of fedmix_plus (9 held-out runs) and
of the baselines (training seed 0), gap recovered against the baselines' global models and against
the baselines' models of the same kind (paired by data seed; the baselines ran training seed 0).

    python consensus_table.py   (in this folder)
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
load = lambda f: json.load(open(os.path.join(HERE, f)))["results"]["binary"]  # noqa: E731
plus = {}
for f in ("plus_s0.json", "plus_s1.json", "plus_s2.json"):
    for ds, v in load(f).items():
        plus.setdefault(ds, []).extend(v["fedmix_plus"])
base = load("base.json")
KINDS = ("global", "local", "consensus", "consensus_tuned")
pick = lambda r, k: r if k == "global" else r[k]  # noqa: E731
if not all("consensus_tuned" in r for rs in plus.values() for r in rs):
    KINDS = KINDS[:3]


def ms(a):
    a = np.asarray(a, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0:.3f}"


def row(name, runs_by_ds, kind):
    runs = [(ds, pick(r, kind)) for ds, rs in runs_by_ds.items() for r in rs]
    les = [r["dice_lesion"] for _, r in runs]
    fp = [r["fp_rate"] for _, r in runs]
    site_les = np.mean([r["dice_lesion_per_client"] for _, r in runs], 0)
    site_fp = np.mean([r["fp_rate_per_client"] for _, r in runs], 0)
    gap = lambda b: [(r["dice_lesion"] - pick(base[ds]["fedavg_pixel"][0], b)["dice_lesion"]) /  # noqa
                     (pick(base[ds]["fedavg_full"][0], b)["dice_lesion"]
                      - pick(base[ds]["fedavg_pixel"][0], b)["dice_lesion"]) for ds, r in runs]
    low = sum(f <= 0.10 for f in fp)
    print(f"| {name} | {kind} | {len(runs)} | {ms(les)} ({' / '.join(f'{x:.2f}' for x in site_les)}) "
          f"| {ms(fp)} ({' / '.join(f'{x:.2f}' for x in site_fp)}) | {low} of {len(runs)} "
          f"| {ms([r['dice'] for _, r in runs])} | {ms(gap('global'))} | {ms(gap(kind))} |")


print("| strategy | model | runs | Dice, lesion images (a / b / c / d) | FP rate (a / b / c / d) "
      "| runs with FP ≤ 0.10 | mean Dice | gap vs global baselines | gap vs baselines' same model |")
print("|---|---|---|---|---|---|---|---|---|")
for kind in KINDS:
    row("fedmix_plus", plus, kind)
for s in ("fedavg_pixel", "fedavg_full"):
    for kind in KINDS:
        row(s, {ds: v[s] for ds, v in base.items()}, kind)
print("\nfedmix_plus per run (data seed, training seed): global / consensus / consensus_tuned Dice "
      "on lesion images, FP rate; gap vs global baselines; each site's chosen threshold")
for ds, rs in plus.items():
    px, fu = base[ds]["fedavg_pixel"][0]["dice_lesion"], base[ds]["fedavg_full"][0]["dice_lesion"]
    for r in rs:
        c = r["consensus"]
        t = r.get("consensus_tuned")
        tuned = (f", tuned {t['dice_lesion']:.3f}, gap {(t['dice_lesion'] - px) / (fu - px):.2f}, "
                 f"thresholds {t['thresholds']}") if t else ""
        print(f"  {ds} {r['seed']}: global {r['dice_lesion']:.3f} / {r['fp_rate']:.3f}, consensus "
              f"{c['dice_lesion']:.3f} / {c['fp_rate']:.3f} (round {c['round']}), gap "
              f"{(c['dice_lesion'] - px) / (fu - px):.2f}{tuned}")

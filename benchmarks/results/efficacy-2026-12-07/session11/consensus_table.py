"""The eleventh pass's table: the global, local and consensus models of fedmix_plus (9 held-out runs,
data seeds 1-3 x training seeds 0-2) with each site's fine-tuned copy's mask (consensus_finetuned), against
the baselines' models (training seed 0; session10/base.json, and base_ft.json where it exists), gap
recovered against the baselines' global models and against their models of the same kind (paired by
data seed).

    python consensus_table.py   (in this folder)
"""
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
load = lambda f: json.load(open(f))["results"]["binary"]  # noqa: E731
plus = {}
for f in sorted(glob.glob(os.path.join(HERE, "plus_*.json"))):
    for ds, v in load(f).items():
        plus.setdefault(ds, []).extend(v["fedmix_plus"])
for rs in plus.values():
    rs.sort(key=lambda r: r["seed"])
plus = dict(sorted(plus.items()))
ft_path = os.path.join(HERE, "base_ft.json")
base = load(ft_path if os.path.exists(ft_path) else
            os.path.join(HERE, "..", "session10", "base.json"))
KINDS = ("global", "local", "consensus", "consensus_tuned", "consensus_finetuned")
pick = lambda r, k: r if k == "global" else r.get(k)  # noqa: E731


def ms(a):
    a = np.asarray(a, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if a.size > 1 else 0:.3f}"


def gap(x, ds, kind):
    px, fu = (pick(base[ds][s][0], kind) for s in ("fedavg_pixel", "fedavg_full"))
    if px is None or fu is None:
        return None
    return (x - px["dice_lesion"]) / (fu["dice_lesion"] - px["dice_lesion"])


def row(name, runs_by_ds, kind):
    runs = [(ds, pick(r, kind)) for ds, rs in runs_by_ds.items() for r in rs]
    if any(r is None for _, r in runs):
        return
    les = [r["dice_lesion"] for _, r in runs]
    fp = [r["fp_rate"] for _, r in runs]
    site_les = np.mean([r["dice_lesion_per_client"] for _, r in runs], 0)
    site_fp = np.mean([r["fp_rate_per_client"] for _, r in runs], 0)
    g_glob = [gap(r["dice_lesion"], ds, "global") for ds, r in runs]
    g_same = [gap(r["dice_lesion"], ds, kind) for ds, r in runs]
    low = sum(f <= 0.10 for f in fp)
    both = sum(f <= 0.10 and g >= 0.70 for f, g in zip(fp, g_glob))
    same = ms(g_same) if None not in g_same else "–"
    print(f"| {name} | {kind} | {len(runs)} | {ms(les)} ({' / '.join(f'{x:.2f}' for x in site_les)}) "
          f"| {ms(fp)} ({' / '.join(f'{x:.2f}' for x in site_fp)}) | {low} of {len(runs)} "
          f"| {ms([r['dice'] for _, r in runs])} | {ms(g_glob)} | {same} | {both} of {len(runs)} |")


print("| strategy | model | runs | Dice, lesion images (a / b / c / d) | FP rate (a / b / c / d) "
      "| runs with FP ≤ 0.10 | mean Dice | gap vs global baselines | gap vs baselines' same model "
      "| runs with gap ≥ 70 % and FP ≤ 0.10 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for kind in KINDS:
    row("fedmix_plus", plus, kind)
for s in ("fedavg_pixel", "fedavg_full"):
    for kind in KINDS:
        row(s, {ds: v[s] for ds, v in base.items()}, kind)
print("\nfedmix_plus per run (data seed, training seed): consensus_tuned and consensus_finetuned Dice on "
      "lesion images / FP rate, gap vs global baselines; each site's chosen epochs and thresholds")
for ds, rs in plus.items():
    for r in rs:
        t, f = r["consensus_tuned"], r.get("consensus_finetuned")
        line = (f"  {ds} {r['seed']}: tuned {t['dice_lesion']:.3f} / {t['fp_rate']:.3f}, gap "
                f"{gap(t['dice_lesion'], ds, 'global'):.2f}")
        if f:
            line += (f"; finetuned {f['dice_lesion']:.3f} / {f['fp_rate']:.3f}, gap "
                     f"{gap(f['dice_lesion'], ds, 'global'):.2f}, per site "
                     f"{' / '.join(f'{x:.2f}' for x in f['dice_lesion_per_client'])}, epochs "
                     f"{f['epochs']}, thresholds {f['thresholds']}")
        print(line)

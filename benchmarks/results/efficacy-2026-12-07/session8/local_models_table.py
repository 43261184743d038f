import json, glob, numpy as np
runs = {}
for f in glob.glob('benchmarks/results/efficacy-2026-12-07/session8/*_local*.json'):
    d = json.load(open(f))['results']['binary']
    for ds in d:
        for s, rs in d[ds].items():
            for r in rs:
                runs[(s, ds, r['seed'])] = r
def ms(v): v = np.asarray(v, float); return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0:.3f}"
keys = sorted(k for k in runs if k[0] == 'fedmix_plus')
print('n fedmix_plus runs', len(keys), keys)
for which in ('global', 'local'):
    get = lambda r: r if which == 'global' else r['local']
    for s in ('fedmix_plus', 'fedavg_pixel', 'fedavg_full'):
        ks = [k for k in runs if k[0] == s]
        if s == 'fedmix_plus': ks = keys
        rs = [get(runs[k]) for k in ks]
        if not rs: continue
        per = np.mean([r['dice_lesion_per_client'] for r in rs], axis=0)
        fpc = np.mean([r['fp_rate_per_client'] for r in rs], axis=0)
        print(f"{which:6s} {s:12s} n={len(rs)} lesion {ms([r['dice_lesion'] for r in rs])} ({' / '.join(f'{v:.2f}' for v in per)}) FP {ms([r['fp_rate'] for r in rs])} ({' / '.join(f'{v:.2f}' for v in fpc)}) mean {ms([r['dice'] for r in rs])}")
# paired local - global for fedmix_plus, gap vs global baselines of the same (ds, seed 0) -- baselines only seed 0 here
d = [runs[k]['local']['dice_lesion'] - runs[k]['dice_lesion'] for k in keys]
print('fedmix_plus local - global, lesion:', ms(d), 'FP', ms([runs[k]['local']['fp_rate'] - runs[k]['fp_rate'] for k in keys]))
for k in keys:
    px, fu = runs.get(('fedavg_pixel', k[1], 0)), runs.get(('fedavg_full', k[1], 0))
    g = lambda x, a, b: (x - a) / (b - a)
    if px and fu:
        print(k, 'global', round(runs[k]['dice_lesion'], 3), 'local', round(runs[k]['local']['dice_lesion'], 3),
              'gap vs global baselines (seed 0): global %.2f local %.2f' % (g(runs[k]['dice_lesion'], px['dice_lesion'], fu['dice_lesion']), g(runs[k]['local']['dice_lesion'], px['dice_lesion'], fu['dice_lesion'])),
              'local vs local baselines: %.2f' % g(runs[k]['local']['dice_lesion'], px['local']['dice_lesion'], fu['local']['dice_lesion']),
              'FP global %.2f local %.2f' % (runs[k]['fp_rate'], runs[k]['local']['fp_rate']), 'local FP/client', [round(x, 2) for x in runs[k]['local']['fp_rate_per_client']])
print()
print("| strategy | model | runs | Dice, lesion images (a / b / c / d) | FP rate (a / b / c / d) | mean Dice |")
print("|---|---|---|---|---|---|")
for s in ('fedmix_plus', 'fedavg_pixel', 'fedavg_full'):
    for which in ('global', 'local'):
        get = lambda r: r if which == 'global' else r['local']
        ks = keys if s == 'fedmix_plus' else sorted(k for k in runs if k[0] == s)
        rs = [get(runs[k]) for k in ks]
        per = np.mean([r['dice_lesion_per_client'] for r in rs], axis=0)
        fpc = np.mean([r['fp_rate_per_client'] for r in rs], axis=0)
        print(f"| {s} | {which} | {len(rs)} | {ms([r['dice_lesion'] for r in rs])} ({' / '.join(f'{v:.2f}' for v in per)}) | {ms([r['fp_rate'] for r in rs])} ({' / '.join(f'{v:.2f}' for v in fpc)}) | {ms([r['dice'] for r in rs])} |")
g = lambda x, a, b: (x - a) / (b - a)
s0 = [k for k in keys if k[2] == 0]
for label, f in (("global vs global baselines", lambda k: g(runs[k]['dice_lesion'], runs[('fedavg_pixel', k[1], 0)]['dice_lesion'], runs[('fedavg_full', k[1], 0)]['dice_lesion'])),
                 ("local vs global baselines", lambda k: g(runs[k]['local']['dice_lesion'], runs[('fedavg_pixel', k[1], 0)]['dice_lesion'], runs[('fedavg_full', k[1], 0)]['dice_lesion'])),
                 ("local vs local baselines", lambda k: g(runs[k]['local']['dice_lesion'], runs[('fedavg_pixel', k[1], 0)]['local']['dice_lesion'], runs[('fedavg_full', k[1], 0)]['local']['dice_lesion']))):
    print(f"gap recovered, training seed 0 ({len(s0)} runs), {label}: {ms([f(k) for k in s0])}")
ups = sum(runs[k]['local']['dice_lesion'] > runs[k]['dice_lesion'] for k in keys)
print(f"local above global in {ups} of {len(keys)} runs; local FP <= 0.10 in {sum(runs[k]['local']['fp_rate'] <= 0.10 for k in keys)} runs")

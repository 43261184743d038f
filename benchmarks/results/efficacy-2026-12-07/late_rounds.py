# Best-validation and last-4-round test figures of metrics.jsonl files, e.g. (from the repository root):
#   python benchmarks/results/efficacy-2026-12-07/late_rounds.py "default=benchmarks/results/efficacy-2026-12-06/session6/plus_ds0_s0_metrics.jsonl,benchmarks/results/efficacy-2026-12-06/session6/var_def_s*_metrics.jsonl" "appearance=benchmarks/results/efficacy-2026-12-07/appearance1_ds0_s*_metrics.jsonl"
import json, glob, statistics as st, sys
def load(path):
    rows=[json.loads(l) for l in open(path)]
    rows=[r for r in rows if 'test_mean_dice_present' in r]
    best=max(rows, key=lambda r: r['val_mean_dice'])
    last=rows[-4:]; fp=lambda r: r.get('test_mean_false_positive_rate')
    per=lambda r: [round(r.get(k),2) for k in sorted(r) if k.startswith('test_dice_present_site') or k.startswith('test_site')][:4]
    site=[round(st.mean(r['test_dice_present'][i] for r in last),3) for i in range(len(last[0]['test_dice_present']))]
    return dict(site_last4=site, n=len(rows), best_round=best['round'], best=best['test_mean_dice_present'], best_fp=fp(best), best_mean=best['test_mean_dice'],
                last4=st.mean(r['test_mean_dice_present'] for r in last), last4_fp=st.mean(fp(r) for r in last),
                last4_mean=st.mean(r['test_mean_dice'] for r in last),
                sd=st.stdev(r['test_mean_dice_present'] for r in rows[7:]) if len(rows)>8 else float('nan'))
for arg in sys.argv[1:]:
    name, pats = arg.split('=',1)
    files=sorted(f for p in pats.split(',') for f in glob.glob(p))
    res=[]
    for f in files:
        try: r=load(f); res.append(r); print(name, f, {k:(round(v,3) if isinstance(v,float) else v) for k,v in r.items() if k not in ('n',)})
        except Exception as e: print(name, f, 'error', e)
    if res:
        print('  ', name, '  '.join(f"{k} {st.mean([r[k] for r in res]):.3f}±{(st.stdev([r[k] for r in res]) if len(res)>1 else 0):.3f}" for k in ('best','best_fp','best_mean','last4','last4_fp','last4_mean','sd')))

# Best-validation and last-4-round test figures of the session6 runs; run in this folder.
import json, glob, statistics as st, sys
def load(w):
    rows=[json.loads(l) for l in open(w+'_metrics.jsonl')]
    rows=[r for r in rows if 'test_mean_dice_present' in r]
    best=max(rows, key=lambda r: r['val_mean_dice'])
    last=rows[-4:]
    fp=lambda r: r.get('test_mean_false_positive_rate')
    return dict(best_round=best['round'], best=best['test_mean_dice_present'], best_fp=fp(best), best_mean=best['test_mean_dice'],
                last4=st.mean(r['test_mean_dice_present'] for r in last), last4_fp=st.mean(fp(r) for r in last),
                sd=st.stdev(r['test_mean_dice_present'] for r in rows[7:]))
for name, ws in [('default', ['plus_ds0_s0','var_def_s1','var_def_s2']), ('beta1', [f'var_b1_s{s}' for s in range(3)]), ('lam0', [f'var_l0_s{s}' for s in range(3)])]:
    res=[]
    for w in ws:
        try: r=load(w); res.append(r); print(name, w.split('/')[-1], {k:(round(v,3) if isinstance(v,float) else v) for k,v in r.items()})
        except Exception as e: print(name, w, 'missing', e)
    if res:
        for k in ('best','best_fp','last4','last4_fp','sd'):
            v=[r[k] for r in res]; print('  ',k, round(st.mean(v),3), '±', round(st.stdev(v),3) if len(v)>1 else '')

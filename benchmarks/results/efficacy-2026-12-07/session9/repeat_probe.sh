#!/bin/bash
# probe.sh COMMIT ROUNDS -> prints the metrics lines of a fedavg_pixel run (data seed 1, training seed 0)
set -e
c=$1; r=${2:-1}
wt=/tmp/s9/bis/wt_$c
[ -d $wt ] || git -C /work/main worktree add -q --detach $wt $c
cd $wt
out=/tmp/s9/bis/run_${c}_$r
rm -rf $out
FEDMIX_JAX_CACHE_DIR=/tmp/s9/bis/cache_$c /work/main/.venv/bin/python -c "import fedmix_jax,sys; assert fedmix_jax.__file__.startswith('$wt'), fedmix_jax.__file__" 
FEDMIX_JAX_CACHE_DIR=/tmp/s9/bis/cache_$c /work/main/.venv/bin/python -m fedmix_jax.main --config configs/synthetic.py \
  --config.strategy=fedavg_pixel --config.data.seed=1 --config.num_rounds=$r --workdir $out > $out.log 2>&1 || { tail -5 $out.log; exit 1; }
python3 -c "
import json
for l in open('$out/metrics.jsonl'):
    d=json.loads(l); print('$c', d['round'], repr(d.get('val_mean_dice')), repr(d.get('loss1')))
" 2>/dev/null || head -c 600 $out/metrics.jsonl

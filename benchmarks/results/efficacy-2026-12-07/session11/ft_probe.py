"""Eleventh pass, tuning federation (data seed 0) only: each site fine-tunes its local pair for E = 1..E_MAX
more local epochs (a round at the site from its own pair, nothing aggregated); prints per E the local model's
and the two-model consensus's (global + fine-tuned copy, per-site threshold chosen on val) test figures.

    python -m fedmix_jax.main --config configs/synthetic.py --config.strategy=fedmix_plus \
        --config.seed=S --config.checkpoint_every=1 --config.keep_checkpoints=4 --workdir WD   (ninth pass)
    E_MAX=8 python ft_probe.py WD 14        (output: ft_probe_d0.txt, S = 0, 1)
"""
import json, os, sys, time
import numpy as np
import jax, jax.numpy as jnp, ml_collections
from fedmix_jax import init_state, rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.consensus import ConsensusModel, choose_mask_thresholds
from fedmix_jax.data.sources import load_federation
from fedmix_jax.evaluation import evaluate
from fedmix_jax.round import broadcast, client_rows, client_data
from fedmix_jax.site import SiteState, site_round

E_MAX = int(os.environ.get("E_MAX", 3))
wd = sys.argv[1]
steps = [int(s) for s in sys.argv[2:]]
config = ml_collections.ConfigDict(json.load(open(os.path.join(wd, rundir.CONFIG_FILE))))
fed = load_federation(config.data, verbose=False)
model = build_model(config, fed.num_classes)
rc = build_round_config(config)
hp = rc.hparams()
C = fed.num_clients
state = init_state(model, jax.random.PRNGKey(int(config.seed)), tuple(fed.train.images.shape[2:]), C, rc)
ck = Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR), max_to_keep=None, async_save=False)
rows, pool = client_rows(fed.train)


@jax.jit
def fine_tune(params, opt_state, key, round_index):
    def one(client):
        site, r, k = client
        return site_round(model, rc, site.params, site, client_data(pool, r), k, hp, round_index)
    sites, _ = jax.lax.map(one, (SiteState(params, opt_state), rows, jax.random.split(key, C)))
    return sites.params, sites.opt_state


def score(g, loc):
    gb = broadcast(g, C)
    r = evaluate(model, loc, fed.test, per_client_params=True, hd95=False)
    thr = choose_mask_thresholds(model, gb, loc, fed.val)
    rc_ = evaluate(ConsensusModel(model), (gb, loc, jnp.asarray(thr)), fed.test, per_client_params=True, hd95=False)
    rv = evaluate(ConsensusModel(model), (gb, loc, jnp.asarray(thr)), fed.val, per_client_params=True, hd95=False)
    f = lambda x: [round(float(v), 3) for v in np.asarray(x)]
    return {"local": [round(float(r["mean_dice_present"]), 3), round(float(r["mean_false_positive_rate"]), 3), f(r["dice_present"])],
            "cons": [round(float(rc_["mean_dice_present"]), 3), round(float(rc_["mean_false_positive_rate"]), 3), f(rc_["dice_present"]), f(rc_["false_positive_rate"])],
            "cons_val": [round(float(rv["mean_dice_present"]), 3), f(rv["dice_present"]), f(rv["false_positive_rate"]), f(rv["dice"])], "cons_test_dice": f(rc_["dice"]), "thr": thr.tolist()}


for step in (steps or ck.all_steps()):
    st, _, _ = ck.restore(step, state, state.global_params[0])
    g = st.global_params[0]
    params, opt = st.client_params, st.opt_state
    key = jax.random.PRNGKey(1000 + step)
    for e in range(E_MAX + 1):
        t0 = time.time()
        if e:
            key, k = jax.random.split(key)
            params, opt = fine_tune(params, opt, k, jnp.int32(step))
        out = score(g, params[0])
        print(os.path.basename(wd), step, "E", e, json.dumps(out), f"({time.time()-t0:.0f}s)", flush=True)

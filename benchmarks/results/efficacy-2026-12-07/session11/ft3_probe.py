"""Eleventh pass, tuning federation (data seed 0): the same fine-tuned copies as ft_probe.py (same keys), in a
three-model consensus (global, the round copy, the fine-tuned copy must all mark; the fine-tuned copy's mask),
against the two-model one. Output ft3_probe_d0.txt (stopped after E = 2: the lesion Dice equals the two-model
consensus's, the FP rate the round copy's).

    python ft3_probe.py WD 14
"""
import dataclasses, json, os, sys, time
import numpy as np
import jax, jax.numpy as jnp, ml_collections
from fedmix_jax import init_state, rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.consensus import marks_any, _logit
from fedmix_jax.data.sources import load_federation
from fedmix_jax.evaluation import evaluate
from fedmix_jax.round import broadcast, client_rows, client_data
from fedmix_jax.site import SiteState, site_round

E_MAX = int(os.environ.get("E_MAX", 8))
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


@dataclasses.dataclass(frozen=True)
class Three:
    model: object
    def apply(self, variables, x):
        *ps, mt = variables["params"]
        ls = [self.model.apply({"params": p}, x) for p in ps]
        agree = marks_any(ls[0])
        for l in ls[1:]:
            agree = agree & marks_any(l)
        mask = ls[-1] + (_logit(jnp.float32(0.5)) - _logit(mt))
        low = ls[0]
        for l in ls[1:]:
            low = jnp.minimum(low, l)
        return jnp.where(agree[:, None, None, :], mask, low)


@jax.jit
def fine_tune(params, opt_state, key, round_index):
    def one(client):
        site, r, k = client
        return site_round(model, rc, site.params, site, client_data(pool, r), k, hp, round_index)
    sites, _ = jax.lax.map(one, (SiteState(params, opt_state), rows, jax.random.split(key, C)))
    return sites.params, sites.opt_state

THR = (0.5, 0.4, 0.3, 0.2, 0.1)
def score(g, loc0, loc):
    gb = broadcast(g, C)
    f = lambda x: [round(float(v), 3) for v in np.asarray(x)]
    out = {}
    for name, ps in (("two", (gb, loc)), ("three", (gb, loc0, loc))):
        res = {}
        for t in THR:
            mt = jnp.full((C,), t, jnp.float32)
            for sp in ("val", "test"):
                r = evaluate(Three(model), (*ps, mt), getattr(fed, sp), per_client_params=True, hd95=False)
                res[(t, sp)] = r
        val = np.stack([np.nan_to_num(np.asarray(res[(t, "val")]["dice_present"]), nan=-1) for t in THR])
        best = val.argmax(0)
        pick = lambda key, sp: np.array([np.asarray(res[(THR[b], sp)][key])[c] for c, b in enumerate(best)])
        out[name] = dict(test_les=f(pick("dice_present", "test")), test_fp=f(pick("false_positive_rate", "test")),
                         val_les=f(pick("dice_present", "val")), val_mean=f(pick("dice", "val")), thr=[THR[b] for b in best])
    return out


for step in (steps or ck.all_steps()):
    st, _, _ = ck.restore(step, state, state.global_params[0])
    g = st.global_params[0]
    params, opt = st.client_params, st.opt_state
    loc0 = params[0]
    key = jax.random.PRNGKey(1000 + step)
    for e in range(E_MAX + 1):
        t0 = time.time()
        if e:
            key, k = jax.random.split(key)
            params, opt = fine_tune(params, opt, k, jnp.int32(step))
        out = score(g, loc0, params[0])
        print(os.path.basename(wd), step, "E", e, json.dumps(out), f"({time.time()-t0:.0f}s)", flush=True)

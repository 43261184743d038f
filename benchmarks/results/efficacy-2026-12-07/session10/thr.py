"""Consensus with a per-site mask threshold on agreed images, chosen on the site's validation split
(Dice on lesion images). Gate stays at 0.5."""
import dataclasses, json, os, sys
import numpy as np
import jax, jax.numpy as jnp, ml_collections
from fedmix_jax import init_state, rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.consensus import marks_any
from fedmix_jax.data.sources import load_federation
from fedmix_jax.evaluation import evaluate
from fedmix_jax.round import broadcast


@dataclasses.dataclass(frozen=True)
class Shifted:
    model: object

    def apply(self, variables, x):
        g, loc, shift = variables["params"]
        lg, ll = self.model.apply({"params": g}, x), self.model.apply({"params": loc}, x)
        agree = marks_any(lg) & marks_any(ll)
        return jnp.where(agree[:, None, None, :], ll + shift, jnp.minimum(lg, ll))


THR = [0.5, 0.4, 0.3, 0.2, 0.1]
for wd in sys.argv[1:]:
    config = ml_collections.ConfigDict(json.load(open(os.path.join(wd, rundir.CONFIG_FILE))))
    fed = load_federation(config.data, verbose=False)
    model = build_model(config, fed.num_classes)
    rc = build_round_config(config)
    state = init_state(model, jax.random.PRNGKey(int(config.seed)),
                       tuple(fed.train.images.shape[2:]), fed.num_clients, rc)
    ck = Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR), max_to_keep=None, async_save=False)
    C = fed.num_clients
    for step in ck.all_steps():
        st, _, _ = ck.restore(step, state, state.global_params[0])
        g, loc = broadcast(st.global_params[0], C), st.client_params[0]
        res = {}
        for t in THR:
            shift = jnp.full((C,), -np.log(t / (1 - t)), jnp.float32)
            for split in ("val", "test"):
                r = evaluate(Shifted(model), (g, loc, shift), getattr(fed, split), per_client_params=True, hd95=False)
                res[(t, split)] = (np.asarray(r["dice_present"]), np.asarray(r["false_positive_rate"]))
        val = np.stack([res[(t, "val")][0] for t in THR])      # [T, C]
        best = val.argmax(0)
        test_d = np.stack([res[(t, "test")][0] for t in THR])
        test_fp = np.stack([res[(t, "test")][1] for t in THR])
        pick_d = test_d[best, np.arange(C)]
        pick_fp = test_fp[best, np.arange(C)]
        out = {f"t{t}": [round(float(test_d[i].mean()), 3), round(float(test_fp[i].mean()), 3), [round(float(x), 2) for x in test_d[i]]] for i, t in enumerate(THR)}
        out["per_site"] = [round(float(pick_d.mean()), 3), round(float(pick_fp.mean()), 3), [THR[b] for b in best], [round(float(x), 2) for x in pick_d]]
        print(os.path.basename(wd), step, json.dumps(out), flush=True)

"""Model 1 vs model 2 vs the pair's mean probability, on kept checkpoints of finished runs."""
import json, os, sys, dataclasses
import jax, jax.numpy as jnp, ml_collections
from fedmix_jax import init_state, rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.data.sources import load_federation
from fedmix_jax.evaluation import evaluate

@dataclasses.dataclass(frozen=True)
class Pair:
    model: object
    mode: str = "mean"
    tta: bool = False
    def prob(self, p, x):
        if not self.tta:
            return jax.nn.sigmoid(self.model.apply({"params": p}, x))
        out = 0.0
        for ax in ((), (1,), (2,), (1, 2)):
            xf = jnp.flip(x, ax) if ax else x
            y = jax.nn.sigmoid(self.model.apply({"params": p}, xf))
            out = out + (jnp.flip(y, ax) if ax else y)
        return out / 4
    def apply(self, variables, x):
        ps = variables["params"]
        if self.mode == "one":
            p = self.prob(ps, x)
        else:
            a, b = self.prob(ps[0], x), self.prob(ps[1], x)
            p = (a + b) / 2 if self.mode == "mean" else jnp.minimum(a, b)
        p = jnp.clip(p, 1e-6, 1 - 1e-6)
        return jnp.log(p) - jnp.log1p(-p)

fed_cache = {}
for wd in sys.argv[1:]:
    config = ml_collections.ConfigDict(json.load(open(os.path.join(wd, rundir.CONFIG_FILE))))
    key = json.dumps(config.data.to_dict(), sort_keys=True)
    if key not in fed_cache:
        fed_cache[key] = load_federation(config.data, verbose=False)
    fed = fed_cache[key]
    model = build_model(config, fed.num_classes)
    rc = build_round_config(config)
    state = init_state(model, jax.random.PRNGKey(int(config.seed)),
                       tuple(fed.train.images.shape[2:]), fed.num_clients, rc)
    ck = Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR), max_to_keep=None, async_save=False)
    for step in ck.all_steps():
        st, _, extra = ck.restore(step, state, state.global_params[0])
        g = st.global_params
        row = {}
        for name, m, p in (("m1", model, g[0]), ("m2", model, g[1]), ("mean", Pair(model), tuple(g)),
                           ("min", Pair(model, "min"), tuple(g))):
            for split in ("val", "test"):
                r = evaluate(m, p, getattr(fed, split), hd95=False)
                row[f"{split}_{name}"] = (float(r["mean_dice_present"]), float(r["mean_false_positive_rate"]), float(r["mean_dice"]))
        print(wd, step, json.dumps({k: [round(x, 3) for x in v] for k, v in row.items()}), flush=True)

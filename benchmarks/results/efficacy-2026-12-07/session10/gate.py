"""Each site's model: global, local (model 1 after its local epoch), and test-time combinations of the two
that a site can compute alone: pixelwise min (intersection), image-level AND gate (the local mask, kept only
where the global model also marks a lesion in the image).

    python gate.py WORKDIR [WORKDIR ...]
"""
import dataclasses, json, os, sys
import jax, jax.numpy as jnp, ml_collections
from fedmix_jax import init_state, rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.data.sources import load_federation
from fedmix_jax.evaluation import evaluate
from fedmix_jax.round import broadcast


@dataclasses.dataclass(frozen=True)
class Combine:
    model: object
    how: str

    def apply(self, variables, x):
        a, b = variables["params"]          # a: global, b: local
        la = self.model.apply({"params": a}, x)
        lb = self.model.apply({"params": b}, x)
        if self.how == "min":
            return jnp.minimum(la, lb)
        axes = tuple(range(1, la.ndim))
        fire_a = jnp.max(la, axis=axes, keepdims=True) > 0
        fire_b = jnp.max(lb, axis=axes, keepdims=True) > 0
        if self.how == "gate_local":
            return jnp.where(fire_a & fire_b, lb, -20.0)
        if self.how == "gate_global":
            return jnp.where(fire_a & fire_b, la, -20.0)
        raise ValueError(self.how)


for wd in sys.argv[1:]:
    config = ml_collections.ConfigDict(json.load(open(os.path.join(wd, rundir.CONFIG_FILE))))
    fed = load_federation(config.data, verbose=False)
    model = build_model(config, fed.num_classes)
    rc = build_round_config(config)
    state = init_state(model, jax.random.PRNGKey(int(config.seed)),
                       tuple(fed.train.images.shape[2:]), fed.num_clients, rc)
    ck = Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR), max_to_keep=None, async_save=False)
    for step in ck.all_steps():
        st, _, _ = ck.restore(step, state, state.global_params[0])
        g, loc = st.global_params[0], st.client_params[0]
        both = (broadcast(g, fed.num_clients), loc)
        row = {}
        for name, m, p, per in (("global", model, g, False), ("local", model, loc, True),
                                ("min", Combine(model, "min"), both, True),
                                ("gate_local", Combine(model, "gate_local"), both, True),
                                ("gate_global", Combine(model, "gate_global"), both, True)):
            for split in ("val", "test"):
                r = evaluate(m, p, getattr(fed, split), per_client_params=per, hd95=False)
                row[f"{split}_{name}"] = [round(float(r["mean_dice_present"]), 3),
                                          round(float(r["mean_false_positive_rate"]), 3),
                                          [round(float(x), 2) for x in r["false_positive_rate"]],
                                          [round(float(x), 2) for x in r["dice_present"]]]
        print(os.path.basename(wd), step, json.dumps(row), flush=True)

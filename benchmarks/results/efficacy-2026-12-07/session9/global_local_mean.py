"""Each site's model: the global model, its local model (model 1 after its local epoch), and the
mean of the two models' probabilities, on kept checkpoints of finished main-job runs.

    python global_local_mean.py WORKDIR [WORKDIR ...]
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
class MeanOfTwo:
    """Logits of the mean probability of two param sets ``(a, b)``."""
    model: object

    def apply(self, variables, x):
        a, b = variables["params"]
        p = (jax.nn.sigmoid(self.model.apply({"params": a}, x)) +
             jax.nn.sigmoid(self.model.apply({"params": b}, x))) / 2
        p = jnp.clip(p, 1e-6, 1 - 1e-6)
        return jnp.log(p) - jnp.log1p(-p)


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
                                ("mean", MeanOfTwo(model), both, True)):
            for split in ("val", "test"):
                r = evaluate(m, p, getattr(fed, split), per_client_params=per, hd95=False)
                row[f"{split}_{name}"] = [round(float(r["mean_dice_present"]), 3),
                                          round(float(r["mean_false_positive_rate"]), 3),
                                          [round(float(x), 2) for x in r["false_positive_rate"]],
                                          [round(float(x), 2) for x in r["dice_present"]]]
        print(wd, step, json.dumps(row), flush=True)

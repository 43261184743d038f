"""Global model 1 against each site's local model 1 (newest checkpoint of a finished main-job
run): FP rate on the lesion-free images and Dice on the lesion images, training and test split.
usage: python local_vs_global.py WORKDIR (a prototype of the eighth pass, not part of the package)"""
import json, os, sys
import jax, jax.numpy as jnp, numpy as np, ml_collections
from fedmix_jax import init_state, rundir
from fedmix_jax.checkpointing import Checkpointer
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.data.sources import load_federation
from fedmix_jax.data.federation import float_images
wd = sys.argv[1]
config = ml_collections.ConfigDict(json.load(open(os.path.join(wd, rundir.CONFIG_FILE))))
fed = load_federation(config.data, verbose=False)
model = build_model(config, fed.num_classes); rc = build_round_config(config)
state = init_state(model, jax.random.PRNGKey(0), tuple(fed.train.images.shape[2:]), fed.num_clients, rc)
ck = Checkpointer(os.path.join(wd, rundir.CHECKPOINT_DIR), max_to_keep=None, async_save=False)
step = ck.all_steps()[-1]
st, _, _ = ck.restore(step, state, state.global_params[0])
prob = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x)))
print(wd, "round", step)
for c, name in enumerate(fed.client_names):
    local = jax.tree.map(lambda a: a[c], st.client_params[0])
    for split in ("train", "test"):
        sp = getattr(fed, split)
        v = np.asarray(sp.valid[c]); x = jnp.asarray(float_images(np.asarray(sp.images[c])[v])); m = np.asarray(sp.masks[c])[v][..., 0] > 0
        free = ~m.reshape(len(m), -1).any(1)
        out = []
        for nm, p in (("global", st.global_params[0]), ("local", local)):
            pr = np.asarray(prob(p, x))[..., 0] > 0.5
            fp = pr[free].reshape(free.sum(), -1).any(1).mean()
            inter = (pr & m).sum((1, 2)); d = 2 * inter / np.maximum(pr.sum((1, 2)) + m.sum((1, 2)), 1)
            out.append(f"{nm} FP {fp:.2f} lesionDice {d[~free].mean():.3f}")
        print(f"{name:14s} {split:5s} n_free {free.sum():2d}  " + "  |  ".join(out))

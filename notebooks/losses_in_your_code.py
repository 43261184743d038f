# ---
# jupyter:
#   colab:
#     provenance: []
#     toc_visible: true
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: accelerator,colab,kernelspec,language_info,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # fedmix_jax's losses, pseudo-labels and aggregation in your own JAX code
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/<OWNER>/fedmix_jax/blob/main/notebooks/losses_in_your_code.ipynb)
#
# Everything in `fedmix_jax.losses`, `fedmix_jax.pseudo_labels` and `fedmix_jax.aggregation` is a
# pure function of arrays: jittable, differentiable, vmappable, with documented shapes. This
# notebook uses them from code that knows nothing else about fedmix_jax — a small Flax conv net of
# its own (not our U-Net), its own data and its own optax training loop:
#
# 1. the soft Dice loss inside your `jax.jit` / `jax.grad` training step;
# 2. `jax.vmap` of that step over a batch of independent tasks (one model per task);
# 3. pseudo-label selection on arbitrary predictions;
# 4. the FedMix mixed-supervision loss with cross pseudo-supervision of two models;
# 5. `fedmix_weights` / `weighted_average` on an arbitrary pytree, ending in a small federated loop
#    for your model.
#
# Conventions: arrays are NHWC, one sigmoid channel per class — `logits`, `targets` `[B, H, W, K]`;
# per-sample values `[B]`; client/task quantities `[C]`, stacked pytrees with leaves `[C, ...]`.

# %% tags=["parameters"]
# Parameters (papermill-style: tests/test_notebooks.py overrides them with tiny values).
IMAGE_SIZE = 32     # px
BATCH_SIZE = 32     # images per training step
STEPS = 150         # training steps of each example
FEATURES = 16       # channels of the toy conv net
NUM_TASKS = 4       # independent tasks trained side by side with vmap
FED_ROUNDS = 10     # rounds of the small federated loop in section 5
LOCAL_STEPS = 10    # local steps per client and round in that loop
SEED = 0

# %% [markdown]
# ## Install
#
# In Colab (or any environment without fedmix_jax) the next cell installs the package: from the
# repository in `REPO_URL` (**replace `<OWNER>`** with the GitHub owner of the repository you opened
# this notebook from), or, when the notebook runs inside a clone of the repository, from that clone
# (`pip install -e`). When `fedmix_jax` is already importable it does nothing. Colab's preinstalled
# JAX (with GPU or TPU support) is kept; if pip replaces it, restart the runtime
# (*Runtime → Restart session*) and run the notebook again.
#
# The cell also turns on JAX's persistent compilation cache (`fedmix_jax.compilation_cache`), so a
# second run of the notebook does not wait for XLA to compile the same programs again.

# %%
# Install fedmix_jax if it is not importable yet (a no-op in CI and in a dev environment).
REPO_URL = "https://github.com/<OWNER>/fedmix_jax"  # <-- EDIT: replace <OWNER> (Colab only)

import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("fedmix_jax") is None:
    checkout = next((d for d in (os.getcwd(), os.path.dirname(os.getcwd()))
                     if os.path.isfile(os.path.join(d, "pyproject.toml"))
                     and os.path.isdir(os.path.join(d, "fedmix_jax"))), None)
    if checkout:  # Jupyter started inside a clone of the repository
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", checkout])
        sys.path.insert(0, checkout)  # importable now, without restarting the kernel
    else:         # Colab, or any environment without a clone
        if "<OWNER>" in REPO_URL:
            raise ValueError("set REPO_URL in this cell: replace <OWNER> with the GitHub owner "
                             "of the fedmix_jax repository")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"])
    importlib.invalidate_caches()

import fedmix_jax

print("fedmix_jax", fedmix_jax.__version__, "from", os.path.dirname(fedmix_jax.__file__))

# JAX's persistent compilation cache: running this notebook again (or the main job with the same
# sizes) loads the compiled programs from disk instead of compiling them. Location:
# $FEDMIX_JAX_CACHE_DIR, else ~/.cache/fedmix_jax/jax_cache; FEDMIX_JAX_CACHE_DIR=off turns it off.
from fedmix_jax import compilation_cache

print("JAX compilation cache:", compilation_cache.enable())

# %% [markdown]
# ## Your data and your model
#
# A toy task written in plain JAX: dark disks on a noisy background, with their masks. The model is
# a three-layer dilated conv net in Flax that outputs one logit per pixel.

# %%
# %matplotlib inline
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from fedmix_jax.aggregation import fedavg_weights, fedmix_weights, weighted_average
from fedmix_jax.losses import (dice_coefficient, dice_loss, dice_loss_per_sample,
                               mixed_supervision_loss)
from fedmix_jax.pseudo_labels import (SelectionConfig, pseudo_labels_from_logits,
                                      select_pseudo_labels)

np.set_printoptions(precision=3, suppress=True)
print(f"jax {jax.__version__} on {jax.default_backend()}")


@functools.partial(jax.jit, static_argnames=("n", "size"))
def make_batch(key, n, size=IMAGE_SIZE, radius=(0.15, 0.3), noise=0.15):
    """Images [n, S, S, 1] in [0, 1] and masks [n, S, S, 1]: one dark disk per image."""
    kc, kr, kn = jax.random.split(key, 3)
    centre = jax.random.uniform(kc, (n, 1, 1, 2), minval=0.3, maxval=0.7) * size
    r = jax.random.uniform(kr, (n, 1, 1), minval=radius[0], maxval=radius[1]) * size
    yy, xx = jnp.mgrid[0:size, 0:size] + 0.5
    inside = (yy - centre[..., 0]) ** 2 + (xx - centre[..., 1]) ** 2 < r ** 2
    masks = inside.astype(jnp.float32)[..., None]
    images = 0.7 - 0.4 * masks + noise * jax.random.normal(kn, masks.shape)
    return jnp.clip(images, 0, 1), masks


def boxes_of(masks):
    """Tight box masks [n, S, S, 1] of masks [n, S, S, 1] (one lesion per image here)."""
    rows = jnp.any(masks > 0, axis=2, keepdims=True)     # [n, S, 1, 1]
    cols = jnp.any(masks > 0, axis=1, keepdims=True)     # [n, 1, S, 1]

    def between(m, axis):  # True from the first to the last True along the axis
        backward = jnp.flip(jnp.cumsum(jnp.flip(m, axis), axis), axis)
        return (jnp.cumsum(m, axis) > 0) & (backward > 0)

    return (between(rows, 1) & between(cols, 2)).astype(jnp.float32)


class TinySegNet(nn.Module):
    """Your own segmentation model: [B, H, W, 1] images -> [B, H, W, 1] logits."""

    features: int = 16

    @nn.compact
    def __call__(self, x):
        for dilation in (1, 2, 4):
            x = nn.relu(nn.Conv(self.features, (3, 3), kernel_dilation=dilation)(x))
        return nn.Conv(1, (1, 1))(x)


model = TinySegNet(FEATURES)
init = jax.jit(lambda key: model.init(key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1)))["params"])
key = jax.random.PRNGKey(SEED)
x_test, y_test = make_batch(jax.random.PRNGKey(SEED + 1000), BATCH_SIZE)  # held-out images
fig, axes = plt.subplots(1, 6, figsize=(12, 2))
for ax, img, m in zip(axes, x_test, y_test):
    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    ax.contour(m[..., 0], levels=[0.5], colors="lime")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 1. The Dice loss in your `jit` / `grad` training step
#
# `dice_loss(logits, targets, weights=None)` is `1 − dice(sigmoid(logits), targets)` per sample,
# averaged over the batch, with `dice(a, b) = (2·Σab + ε) / (Σa + Σb + ε)`, `ε = 1e-4`, the sums over
# all pixels and channels of one sample. `dice_coefficient` scores binarised predictions.

# %%
optimizer = optax.adam(1e-2)


@jax.jit
def train_step(params, opt_state, x, y):
    def loss_fn(p):
        return dice_loss(model.apply({"params": p}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@jax.jit
def test_dice(params, x, y):
    pred = (model.apply({"params": params}, x) > 0).astype(jnp.float32)
    return jnp.mean(dice_coefficient(pred, y))


key, k_init = jax.random.split(key)
params = init(k_init)
opt_state = optimizer.init(params)
losses = []
for step in range(STEPS):
    key, k_batch = jax.random.split(key)
    params, opt_state, loss = train_step(params, opt_state, *make_batch(k_batch, BATCH_SIZE))
    losses.append(float(loss))
print(f"Dice loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
      f"test Dice of the binarised prediction: {float(test_dice(params, x_test, y_test)):.3f}")
plt.figure(figsize=(5, 3))
plt.plot(losses)
plt.xlabel("step")
plt.ylabel("dice_loss")
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# Per-sample `weights` decide which samples count: a weight-0 sample contributes nothing, not even
# a gradient, and an all-zero batch gives loss 0 with zero gradients (never NaN). This is how
# padding and unselected pseudo-labels are masked out in fixed-shape code. Two empty maps agree
# perfectly (Dice 1 through ε).

# %%
logits = model.apply({"params": params}, x_test[:4])
weights = jnp.array([1.0, 1.0, 0.0, 0.0])
grad_logits = jax.grad(lambda z: dice_loss(z, y_test[:4], weights))(logits)
print("per-sample loss:      ", np.asarray(dice_loss_per_sample(logits, y_test[:4])))
print(f"weighted batch loss:   {float(dice_loss(logits, y_test[:4], weights)):.4f}")
print("|grad| per sample:    ", np.asarray(jnp.abs(grad_logits).sum(axis=(1, 2, 3))))
print("all weights 0 -> loss ", float(dice_loss(logits, y_test[:4], jnp.zeros(4))))
empty = jnp.zeros((1, 8, 8, 1))
print("dice(empty, empty) =  ", float(dice_coefficient(empty, empty)[0]))

# %% [markdown]
# ## 2. `vmap` over a batch of tasks
#
# The losses have no hidden state, so a whole training step can be vmapped: here `NUM_TASKS`
# independent models (different initialisations, different lesion sizes) train side by side in one
# compiled program — exactly how fedmix_jax treats clients, as an array axis. Their parameters are
# one pytree with leaves `[T, ...]`.

# %%
task_radius = jnp.linspace(0.12, 0.32, NUM_TASKS)   # task t: disks of about this radius


def task_batch(key, radius):
    return make_batch(key, BATCH_SIZE, radius=(radius - 0.03, radius + 0.03))


task_batches = jax.jit(jax.vmap(task_batch))        # one batch per task: [T, B, H, W, 1]

key, k_init = jax.random.split(key)
task_params = jax.jit(jax.vmap(init))(jax.random.split(k_init, NUM_TASKS))  # leaves [T, ...]
task_opt = jax.jit(jax.vmap(optimizer.init))(task_params)
train_tasks = jax.jit(jax.vmap(train_step))          # every argument gets a leading task axis
print("a stacked kernel:", jax.tree.leaves(task_params)[0].shape)

for step in range(STEPS):
    key, k_batch = jax.random.split(key)
    x, y = task_batches(jax.random.split(k_batch, NUM_TASKS), task_radius)
    task_params, task_opt, task_loss = train_tasks(task_params, task_opt, x, y)
print("final loss per task:", np.asarray(task_loss))

x_tasks, y_tasks = task_batches(jax.random.split(jax.random.PRNGKey(2000), NUM_TASKS),
                                task_radius)                     # held-out images per task
own = jax.jit(jax.vmap(test_dice))(task_params, x_tasks, y_tasks)
print("test Dice per task (own model):", np.asarray(own))

# %% [markdown]
# ## 3. Pseudo-label selection on arbitrary predictions
#
# `select_pseudo_labels(p1, p2, boxes, image_labels, levels, valid, config)` takes two binarised
# predictions `[B, H, W, K]` of the same images (FedMix: the two global models), refines them with
# the weak labels (box samples: `p ← p · B`), and selects a weak sample when the two agree,
# `dice(p1, p2) ≥ τ = 0.9`; a box sample must also fill its box, `dice(p1·B, B) ≥ 0.5`. The
# switches of `SelectionConfig` cover the fixes over the reference: `reject_empty` (two *empty*
# predictions agree perfectly — reject them) and `use_image_labels` (an image labelled "no lesion"
# is usable with an empty pseudo-label). `SelectionConfig.reference()` is the reference's behaviour.
# Levels: `0` pixel, `1` box, `2` image, `3` none. Hand-made cases:

# %%
S = 16
yy, xx = np.mgrid[0:S, 0:S]


def disk(cy, cx, r):
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).astype(np.float32)


def rect(y0, x0, y1, x1):
    out = np.zeros((S, S), np.float32)
    out[y0:y1 + 1, x0:x1 + 1] = 1
    return out


full = np.ones((S, S), np.float32)
zero = np.zeros((S, S), np.float32)
box = rect(3, 3, 12, 12)
cases = [  # (description, p1, p2, box mask, image label, level)
    ("box: models agree, fill the box", disk(8, 8, 4.5), disk(8, 8, 4.5), box, 1, 1),
    ("box: models disagree", disk(8, 8, 4.5), disk(5, 11, 2), box, 1, 1),
    ("box: agree, but a dot in a big box", disk(8, 8, 1), disk(8, 8, 1), box, 1, 1),
    ("box: both empty", zero, zero, box, 1, 1),
    ("image 'lesion': agree, non-empty", disk(8, 8, 4), disk(8, 8, 4), full, 1, 2),
    ("image 'no lesion': predictions differ", disk(8, 8, 3), zero, full, 0, 2),
    ("unlabelled: both empty", zero, zero, full, 0, 3),
    ("pixel: always usable", zero, disk(8, 8, 4), full, 1, 0),
]
as_batch = lambda i: jnp.asarray(np.stack([c[i] for c in cases])[..., None])  # noqa: E731
p1, p2, boxes = as_batch(1), as_batch(2), as_batch(3)
case_labels = jnp.asarray([[c[4]] for c in cases], jnp.float32)
case_levels = jnp.asarray([c[5] for c in cases], jnp.int32)
case_valid = jnp.ones(len(cases), bool)

select = jax.jit(select_pseudo_labels, static_argnames="config")
ours = select(p1, p2, boxes, case_labels, case_levels, case_valid, config=SelectionConfig())
ref = select(p1, p2, boxes, case_labels, case_levels, case_valid,
             config=SelectionConfig.reference())
print(f"{'case':<40}{'agree':>7}{'box fit':>9}{'selected':>10}{'reference':>11}")
for i, case in enumerate(cases):
    print(f"{case[0]:<40}{float(ours.agreement[i]):>7.2f}{float(ours.box_fit[i]):>9.2f}"
          f"{str(bool(ours.selected[i])):>10}{str(bool(ref.selected[i])):>11}")

# %% [markdown]
# From logits, `pseudo_labels_from_logits` binarises `sigmoid > 0.5` first. Below: two task models
# from section 2 predict on task 0's test images treated as box-labelled samples; the refined
# pseudo-labels (inside the box) and the selection come back as arrays, ready for a masked loss.

# %%
x_weak, y_weak = x_tasks[0], y_tasks[0]
boxes_weak = boxes_of(y_weak)
apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
second = min(1, NUM_TASKS - 1)
logits_a = apply(jax.tree.map(lambda a: a[0], task_params), x_weak)
logits_b = apply(jax.tree.map(lambda a: a[second], task_params), x_weak)
n = x_weak.shape[0]
pl = pseudo_labels_from_logits(logits_a, logits_b, boxes_weak, jnp.ones((n, 1)),
                               jnp.ones(n, jnp.int32), jnp.ones(n, bool))
print(f"selected {int(pl.selected.sum())} of {n}; agreement "
      f"{np.asarray(pl.agreement[:8])} ...")
fig, axes = plt.subplots(1, 6, figsize=(12, 2.3))
for i, ax in enumerate(axes[:min(6, n)]):
    ax.imshow(x_weak[i, ..., 0], cmap="gray", vmin=0, vmax=1)
    ax.contour(boxes_weak[i, ..., 0], levels=[0.5], colors="yellow", linestyles="dashed")
    for pseudo, colour in ((pl.pseudo1, "red"), (pl.pseudo2, "cyan")):
        if pseudo[i].any():
            ax.contour(pseudo[i, ..., 0], levels=[0.5], colors=colour)
    ax.set_title(f"{'selected' if pl.selected[i] else 'rejected'} "
                 f"({float(pl.agreement[i]):.2f})", fontsize=8)
    ax.axis("off")
plt.suptitle("yellow: box, red / cyan: refined pseudo-labels of the two models", fontsize=9)
plt.show()

# %% [markdown]
# ## 4. The mixed-supervision loss: two models, cross pseudo-supervision
#
# `mixed_supervision_loss(logits1, logits2, masks, pseudo1, pseudo2, levels, selected, valid)`
# returns the losses of model 1 and model 2: pixel samples train both on the ground truth; a
# selected weak sample trains model 1 on model 2's pseudo-label and model 2 on model 1's; anything
# else is masked out. Below, a training step of your two models on batches where only the first
# quarter has masks and the rest only boxes. The pseudo-labels come from the current models under
# `stop_gradient` (FedMix takes them from the global models of the round).

# %%
n_pixel = max(1, BATCH_SIZE // 4)
levels = jnp.where(jnp.arange(BATCH_SIZE) < n_pixel, 0, 1).astype(jnp.int32)  # pixel, then box


@jax.jit
def mixed_step(pair, opt_pair, x, masks):
    boxes = boxes_of(masks)
    image_labels = jnp.ones((x.shape[0], 1))
    valid = jnp.ones(x.shape[0], bool)
    frozen = jax.lax.stop_gradient(pair)
    pl = pseudo_labels_from_logits(model.apply({"params": frozen[0]}, x),
                                   model.apply({"params": frozen[1]}, x),
                                   boxes, image_labels, levels, valid)

    def loss_fn(pair):
        l1, l2 = mixed_supervision_loss(model.apply({"params": pair[0]}, x),
                                        model.apply({"params": pair[1]}, x),
                                        masks, pl.pseudo1, pl.pseudo2, levels, pl.selected,
                                        valid)
        return l1 + l2, (l1, l2)

    (_, (l1, l2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(pair)
    updates = [optimizer.update(g, o, p) for g, o, p in zip(grads, opt_pair, pair)]
    pair = tuple(optax.apply_updates(p, u) for p, (u, _) in zip(pair, updates))
    opt_pair = tuple(o for _, o in updates)
    n_weak_selected = jnp.sum(pl.selected & (levels != 0))
    return pair, opt_pair, l1, l2, n_weak_selected


key, k1, k2 = jax.random.split(key, 3)
pair = (init(k1), init(k2))
opt_pair = (optimizer.init(pair[0]), optimizer.init(pair[1]))
log = []
for step in range(STEPS):
    key, k_batch = jax.random.split(key)
    x, masks = make_batch(k_batch, BATCH_SIZE)
    pair, opt_pair, l1, l2, n_sel = mixed_step(pair, opt_pair, x, masks)
    log.append((float(l1), float(l2), int(n_sel)))
log = np.array(log)
print(f"model 1 loss {log[0, 0]:.3f} -> {log[-1, 0]:.3f}; weak samples selected in the last "
      f"step: {int(log[-1, 2])} of {BATCH_SIZE - n_pixel}")
print(f"test Dice: model 1 {float(test_dice(pair[0], x_test, y_test)):.3f}, "
      f"model 2 {float(test_dice(pair[1], x_test, y_test)):.3f}")
fig, ax = plt.subplots(1, 2, figsize=(10, 3))
ax[0].plot(log[:, 0], label="model 1")
ax[0].plot(log[:, 1], label="model 2")
ax[0].set_title("mixed-supervision loss")
ax[0].legend()
ax[1].plot(log[:, 2])
ax[1].set_title(f"selected box samples per step (of {BATCH_SIZE - n_pixel})")
for a in ax:
    a.set_xlabel("step")
    a.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Aggregation on any pytree
#
# `fedmix_weights(counts, losses, lam, beta)` maps per-client usable-sample counts `n_i` and
# training losses `ℓ_i` (`[C]` each) to weights `w_i = (d_i + λ·s_i) / Σ_j (d_j + λ·s_j)` with
# `d_i = n_i / Σ n_j` and `s_i = ℓ_i^β / Σ ℓ_j^β`; `λ = 0` is FedAvg by counts. A client with
# `n_i = 0` gets weight 0. `weighted_average(stacked_tree, weights)` is `Σ_i w_i · x_i` over the
# leading axis of every leaf of any pytree. Both jit.

# %%
counts = jnp.array([100.0, 300.0, 50.0, 0.0])
client_losses = jnp.array([0.20, 0.10, 0.40, 0.90])   # the last client trained on nothing
for lam in (0.0, 1.0, 10.0):
    print(f"lam={lam:>4}: weights {np.asarray(fedmix_weights(counts, client_losses, lam, 3.0))}")
print("fedavg:     weights", np.asarray(fedavg_weights(counts)))

lams = np.linspace(0, 20, 41)
w = np.array([fedmix_weights(counts, client_losses, float(lam), 3.0) for lam in lams])
plt.figure(figsize=(5, 3))
for c in range(len(counts)):
    plt.plot(lams, w[:, c], label=f"n={int(counts[c])}, loss={float(client_losses[c]):.2f}")
plt.xlabel("lambda")
plt.ylabel("weight")
plt.legend(fontsize=7)
plt.grid(alpha=0.3)
plt.show()

tree = {"dense": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.arange(4.0)},
        "scale": jnp.ones((4, 3))}   # any pytree whose leaves have a leading axis of 4
print(jax.jit(weighted_average)(tree, jnp.array([0.5, 0.5, 0.0, 0.0])))


# %% [markdown]
# With these two functions, federated averaging of *your* model is a few lines: the tasks of
# section 2 become clients that start every round from the global model (broadcast), train
# `LOCAL_STEPS` steps side by side (the vmapped step), and report a count and a loss; the server
# turns those `[T]` numbers into weights and averages the stacked parameters. Each client keeps its
# Adam state across rounds, as in FedMix.

# %%
def broadcast(tree, n=NUM_TASKS):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), tree)


key, k_init = jax.random.split(key)
global_params = init(k_init)
client_opt = jax.jit(jax.vmap(optimizer.init))(broadcast(global_params))
client_counts = jnp.full((NUM_TASKS,), float(LOCAL_STEPS * BATCH_SIZE))  # samples per round
dice_per_task = jax.jit(jax.vmap(test_dice, in_axes=(None, 0, 0)))  # one model, T test sets

for rnd in range(1, FED_ROUNDS + 1):
    client_params = broadcast(global_params)                       # 1. broadcast
    loss_sum = jnp.zeros(NUM_TASKS)
    for _ in range(LOCAL_STEPS):                                   # 2. local steps, vmapped
        key, k_batch = jax.random.split(key)
        x, y = task_batches(jax.random.split(k_batch, NUM_TASKS), task_radius)
        client_params, client_opt, loss = train_tasks(client_params, client_opt, x, y)
        loss_sum += loss
    weights = fedmix_weights(client_counts, loss_sum / LOCAL_STEPS, 10.0, 3.0)  # 3. weights
    global_params = weighted_average(client_params, weights)       # 4. aggregate the pytree
    if rnd == 1 or rnd == FED_ROUNDS or rnd % max(1, FED_ROUNDS // 5) == 0:
        print(f"round {rnd:3d}: weights {np.asarray(weights)}, global model's test Dice per "
              f"task {np.asarray(dice_per_task(global_params, x_tasks, y_tasks))}")

# %% [markdown]
# The full FedMix round — two models, pseudo-labels from the global pair, masked fixed-shape local
# epochs, adaptive weights, any executor — is `fedmix_jax.compiled_round.make_round_fn`; see
# [`quickstart.ipynb`](quickstart.ipynb).

"""Generate the notebooks of this folder (stored without outputs).

    python notebooks/_build_notebooks.py          # rewrites notebooks/*.ipynb

The notebooks are the product (see notebooks/README.md); this script is their source, so that a
change is a readable diff of Python and Markdown. Edit the cells here and rerun it;
``tests/test_notebooks.py`` checks that the committed notebooks are exactly what this script
writes, that they carry no outputs, and executes each one with tiny sizes.

Conventions, for every notebook:
* the first code cell is tagged ``parameters`` (papermill's convention) and only assigns
  constants (sizes, paths); the test appends tiny overrides to it;
* the second code cell installs fedmix_jax when it is not importable (Colab) and is a no-op
  otherwise;
* cell ids are fixed (``<notebook>-<index>``) so regenerating gives identical files.
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
COLAB = ("https://colab.research.google.com/github/<OWNER>/fedmix_jax/blob/main/notebooks/"
         "{name}.ipynb")
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def badge(name: str) -> str:
    return f"[![Open In Colab]({BADGE})]({COLAB.format(name=name)})"


INSTALL_MD = """\
## Install

In Colab (or any environment without fedmix_jax) the next cell installs the package: from the
repository in `REPO_URL` (**replace `<OWNER>`** with the GitHub owner of the repository you opened
this notebook from), or, when the notebook runs inside a clone of the repository, from that clone
(`pip install -e`). When `fedmix_jax` is already importable it does nothing. Colab's preinstalled
JAX (with GPU or TPU support) is kept; if pip replaces it, restart the runtime
(*Runtime → Restart session*) and run the notebook again."""

INSTALL_CODE = '''\
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

print("fedmix_jax", fedmix_jax.__version__, "from", os.path.dirname(fedmix_jax.__file__))'''


# ------------------------------------------------------------------------------------------------
# quickstart.ipynb

QUICKSTART = [
    ("md", f"""\
# FedMix quickstart: mixed supervision on a synthetic federation (CPU, GPU or TPU)

{badge("quickstart")}

Four simulated hospitals train one lesion-segmentation U-Net without sharing images. Each has its
own acquisition domain (brightness, blur, noise, hairs, ...). Only the small client
`site_c_clean` has **pixel masks**; the three others only have **bounding boxes** — the paper's
skin setting `[B, B, L, B]`.

This notebook trains, on the same data, from the same initial weights:

* **FedMix** — two U-Nets, pseudo-labels of the box clients refined by their boxes and selected
  where the two models agree, cross pseudo-supervision, and adaptive aggregation weights;
* **FedAvg (pixel clients only)** — the lower bound: only the client with masks trains.

Then it shows the validation Dice per round of both, FedMix's aggregation weights and
pseudo-label selection per round, and predictions on test images.

**Runtime.** In Colab pick *Runtime → Change runtime type → GPU or TPU*; the notebook detects the
backend and the number of devices, and on several devices (a TPU's cores) it shards the clients
across them. The defaults (25 rounds at 64 px, as `configs/synthetic.py`) take minutes on a GPU;
on a laptop CPU roughly ten minutes for both runs — lower `ROUNDS` for a quicker look."""),
    ("params", """\
# Parameters (papermill-style: tests/test_notebooks.py overrides them with tiny values).
ROUNDS = 25                       # communication rounds, one local epoch each
IMAGE_SIZE = 64                   # px (square)
TRAIN_SIZES = (96, 128, 24, 112)  # train images per client; site_c_clean (masks) is the small one
VAL_SIZE = 24                     # validation images per client (curves, model selection)
TEST_SIZE = 48                    # test images per client (reported numbers)
WIDTH = 16                        # U-Net base width (paper: 64)
DEPTH = 4                         # U-Net down/up blocks (paper: 4)
BATCH_SIZE = 8                    # local batch size (paper: 16)
LAM, BETA = 10.0, 3.0             # FedMix weighting w_i ~ d_i + LAM * s_i, s_i ~ loss_i ** BETA
SEED = 0                          # model initialisation and round keys
EXECUTOR = "auto"                 # client axis: auto | vmap | map | loop | sharded
NUM_PREVIEW = 4                   # images per client in the figures"""),
    ("md", INSTALL_MD),
    ("code", INSTALL_CODE),
    ("md", """\
## Backend, devices and how the client axis runs

fedmix_jax keeps the clients on an **array axis**: every client's parameters, optimizer state and
data are stacked along a leading axis `C`. How that axis executes is a choice (`executor`):

* `vmap` — all clients vectorised in one compiled program (the default on GPU/TPU);
* `loop` — a Python loop over one compiled per-client update (the default on CPU, where XLA runs
  a vmapped convolution over different weights slowly);
* `sharded` — the client axis split over the devices of a mesh (`shard_map`), each device
  training its block of clients; used here when there are several devices (a TPU's cores).

`default_executor()` is the package's per-platform default."""),
    ("code", """\
%matplotlib inline
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from matplotlib.ticker import MaxNLocator

from fedmix_jax import federated as F
from fedmix_jax.data.synthetic import make_synthetic_federation, preview_grid
from fedmix_jax.evaluation import evaluate
from fedmix_jax.models import UNet, count_params

np.set_printoptions(precision=3, suppress=True)
backend = jax.default_backend()
devices = jax.devices()
print(f"jax {jax.__version__}: backend {backend!r}, {len(devices)} device(s): "
      f"{devices[0].device_kind}")

NUM_CLIENTS = len(TRAIN_SIZES)
if EXECUTOR != "auto":
    executor = EXECUTOR
elif len(devices) > 1 and "sharded" in F.EXECUTORS:
    executor = "sharded"              # e.g. a TPU's cores: each device trains a block of clients
else:
    executor = F.default_executor()   # vmap on GPU/TPU, loop on CPU
round_kwargs = {}
if executor == "sharded":
    # The largest device count that divides the clients: every device holds whole clients.
    round_kwargs["num_devices"] = max(d for d in range(1, len(devices) + 1)
                                      if NUM_CLIENTS % d == 0)
print(f"client-axis executor: {executor!r}", round_kwargs or "")"""),
    ("md", """\
## The synthetic federation

`make_synthetic_federation` draws dermoscopy-like images with lesion masks, boxes (1–9 px noisy
margins, drawn once per sample) and image labels; nothing is downloaded. Every split is a set of
padded arrays with a leading client axis — `images [C, N, H, W, 1]`, `masks`/`boxes
[C, N, H, W, K]`, `levels [C, N]`, `valid [C, N]` — so one compiled round serves any mix of
clients and supervision levels. In the grid: red = mask, yellow dashed = box. The box clients
never see their masks in training (validation and test always have masks, for evaluation)."""),
    ("code", """\
fed = make_synthetic_federation(num_clients=NUM_CLIENTS, image_size=IMAGE_SIZE,
                                train_sizes=TRAIN_SIZES, val_size=VAL_SIZE, test_size=TEST_SIZE,
                                levels=("box", "box", "pixel", "box"))
print(fed.summary())
print("train images:", fed.train.images.shape, " masks:", fed.train.masks.shape)

preview_path = preview_grid(fed, os.path.join(tempfile.mkdtemp(), "preview.png"),
                            per_client=min(6, min(TRAIN_SIZES)))
display(Image(filename=preview_path))"""),
    ("md", """\
## One FedMix round is one compiled function

`RoundConfig` holds the static settings (strategy, batch size, λ, β, executor, ...);
`init_state` initialises model 1 and model 2 from independent keys, and every client's Adam
state; `make_round_fn` returns `round_fn(state, train) -> (state, metrics)`, which does a whole
round: broadcast, pseudo-labels of the global models, one local epoch per client, aggregation
weights and the weighted average. `metrics` holds per-client numbers `[C]`: the usable sample
count `n_i`, the training loss `ℓ_i`, the selected weak samples and the aggregation weight `w_i`.

The helper below runs a strategy for `ROUNDS` rounds, evaluates global model 1 on the validation
split after each round and keeps the best-validation parameters (as `train_and_evaluate` does).
Both runs start from the same seed, so the same initial models."""),
    ("code", """\
model = UNet(width=WIDTH, depth=DEPTH, num_classes=fed.num_classes)
image_shape = tuple(fed.train.images.shape[2:])
val = jax.device_put(fed.val)
test = jax.device_put(fed.test)


def place_clients(split, round_fn):
    \"\"\"Put a split on the device(s) once; with the sharded executor, split it by client.\"\"\"
    mesh = getattr(round_fn, "mesh", None)      # the sharded executor's device mesh
    if mesh is None:
        return jax.device_put(split)
    from fedmix_jax.sharding import shard_clients
    return shard_clients(split, mesh)           # [C, ...] leaves split over the devices


def place_state(state, round_fn):
    \"\"\"With the sharded executor, lay the initial state out as the round returns it (clients
    split, global models replicated), so round 2 does not compile again for new layouts.\"\"\"
    mesh = getattr(round_fn, "mesh", None)
    if mesh is None:
        return state
    from fedmix_jax.sharding import replicated_sharding, shard_clients
    replicated = lambda tree: jax.device_put(tree, replicated_sharding(mesh))  # noqa: E731
    return state.replace(global_params=replicated(state.global_params),
                         client_params=shard_clients(state.client_params, mesh),
                         opt_state=shard_clients(state.opt_state, mesh),
                         round=replicated(state.round), key=replicated(state.key))


def run(strategy_name):
    config = F.RoundConfig(strategy=F.get_strategy(strategy_name), batch_size=BATCH_SIZE,
                           lam=LAM, beta=BETA, executor=executor, **round_kwargs)
    round_fn = F.make_round_fn(model, config)
    train = place_clients(fed.train, round_fn)
    state = F.init_state(model, jax.random.PRNGKey(SEED), image_shape, fed.num_clients, config)
    state = place_state(state, round_fn)
    print(f"{strategy_name}: U-Net width {WIDTH}, depth {DEPTH}, "
          f"{count_params(state.global_params[0]):,} parameters per model")
    history, best, best_params = [], -1.0, None
    for r in range(1, ROUNDS + 1):
        t0 = time.perf_counter()
        state, metrics = round_fn(state, train)
        m = jax.device_get(metrics)          # only the [C] metrics come to the host
        seconds = time.perf_counter() - t0
        ev = evaluate(model, state.global_params[0], val)
        history.append(dict(
            round=r, seconds=seconds, val_dice=ev["dice"], val_mean_dice=float(ev["mean_dice"]),
            weights=np.asarray(m.weights), counts=np.asarray(m.counts),
            loss1=np.asarray(m.loss1), weak=np.asarray(m.weak),
            selection_rate=np.asarray(m.selected_weak) / np.maximum(np.asarray(m.weak), 1)))
        if ev["mean_dice"] > best:           # model selection on validation, never on test
            best = float(ev["mean_dice"])
            best_params = jax.tree.map(jnp.copy, state.global_params[0])
        if r == 1 or r == ROUNDS or r % max(1, ROUNDS // 5) == 0:
            print(f"{strategy_name:>12} round {r:3d}/{ROUNDS}: val Dice {ev['mean_dice']:.3f}, "
                  f"weights {np.asarray(m.weights)}, {seconds:.2f} s"
                  + (" (includes compilation)" if r == 1 else ""))
    print(f"{strategy_name:>12} data sharding: {jax.tree.leaves(train)[0].sharding}")
    return dict(history=history, best_params=best_params, best_val=best)"""),
    ("md", """\
## Train FedMix and the FedAvg lower bound

The first round of each strategy includes tracing and XLA compilation; later rounds reuse the
compiled program. In early rounds the two untrained models rarely agree, so few box samples are
selected and FedMix behaves like the lower bound; as the models improve, more pseudo-labels pass
the agreement (Dice ≥ 0.9) and box-fit (≥ 0.5) tests and the box clients join in."""),
    ("code", """\
results = {}
for name in ("fedmix", "fedavg_pixel"):
    results[name] = run(name)"""),
    ("md", """\
## Validation Dice per round

Mean validation Dice of global model 1 over the four clients (thick), and per client (thin)."""),
    ("code", """\
STYLES = {"fedmix": ("FedMix", "tab:red", "-"), "fedavg_pixel": ("FedAvg, pixel client only",
                                                                   "tab:blue", "--")}
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, res in results.items():
    label, colour, ls = STYLES[name]
    rounds = [h["round"] for h in res["history"]]
    axes[0].plot(rounds, [h["val_mean_dice"] for h in res["history"]], color=colour, ls=ls,
                 lw=2.5, marker="o", ms=3, label=label)
    per_client = np.array([h["val_dice"] for h in res["history"]])
    for c, client in enumerate(fed.client_names):
        axes[1].plot(rounds, per_client[:, c], color=plt.cm.tab10(c), ls=ls, lw=1.2,
                     label=f"{client} ({label.split(',')[0]})")
axes[0].set_title("mean validation Dice of global model 1")
axes[1].set_title("per client (solid: FedMix, dashed: FedAvg)")
for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
axes[0].legend()
axes[1].legend(fontsize=7, ncol=2)
plt.tight_layout()
plt.show()
for name, res in results.items():
    print(f"{STYLES[name][0]:>26}: best mean validation Dice {res['best_val']:.3f}")"""),
    ("md", """\
## Aggregation weights per round

FedMix weighs client *i* by `w_i ∝ d_i + λ·s_i` with `d_i = n_i / Σ n_j` (its share of usable
samples: masks plus selected pseudo-labels) and `s_i = ℓ_i^β / Σ ℓ_j^β` (its share of the
sharpened training loss): a client with a higher loss still has more to teach the federation.
A box client whose pseudo-labels are all rejected trains on nothing and gets weight 0. FedAvg
(pixel clients only) puts all the weight on the client with masks."""),
    ("code", """\
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for ax, name in zip(axes[:2], ("fedmix", "fedavg_pixel")):
    hist = results[name]["history"]
    rounds = [h["round"] for h in hist]
    weights = np.array([h["weights"] for h in hist])
    ax.stackplot(rounds, weights.T, labels=fed.client_names,
                 colors=[plt.cm.tab10(c) for c in range(fed.num_clients)], alpha=0.85)
    ax.set_title(f"aggregation weights: {STYLES[name][0]}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("weight $w_i$ (stacked)")
    ax.set_ylim(0, 1)
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=fed.num_clients, fontsize=8)
hist = results["fedmix"]["history"]
rate = np.array([h["selection_rate"] for h in hist])
for c, client in enumerate(fed.client_names):
    if hist[0]["weak"][c] > 0:
        axes[2].plot([h["round"] for h in hist], rate[:, c], color=plt.cm.tab10(c), marker=".",
                     label=client)
axes[2].set_title("FedMix: selected fraction of box samples")
axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
axes[2].set_xlabel("round")
axes[2].set_ylim(-0.02, 1.02)
axes[2].grid(alpha=0.3)
plt.tight_layout(rect=(0, 0.07, 1, 1))
plt.show()"""),
    ("md", """\
## Predictions on test images

The best-validation global model 1 of each strategy on the first test images of every client:
green = ground truth, red = FedMix, cyan dashed = FedAvg (pixel client only); the titles give the
per-image Dice of FedMix / FedAvg."""),
    ("code", """\
predict = jax.jit(lambda params, x: model.apply({"params": params}, x))
k = max(1, min(NUM_PREVIEW, TEST_SIZE))
images = np.asarray(fed.test.images[:, :k])
masks = np.asarray(fed.test.masks[:, :k, ..., 0])
preds = {name: np.asarray(predict(res["best_params"], images.reshape((-1,) + image_shape)) > 0)
         .reshape(masks.shape + (-1,))[..., 0] for name, res in results.items()}


def dice(a, b):
    return (2 * (a * b).sum() + 1e-4) / (a.sum() + b.sum() + 1e-4)


fig, axes = plt.subplots(fed.num_clients, k, figsize=(2.3 * k, 2.4 * fed.num_clients),
                         squeeze=False)
for c in range(fed.num_clients):
    for j in range(k):
        ax = axes[c, j]
        ax.imshow(images[c, j, ..., 0], cmap="gray", vmin=0, vmax=1)
        for arr, colour, ls in ((masks[c, j], "lime", "solid"),
                                (preds["fedmix"][c, j], "red", "solid"),
                                (preds["fedavg_pixel"][c, j], "cyan", "dashed")):
            if arr.any():
                ax.contour(arr, levels=[0.5], colors=colour, linestyles=ls, linewidths=1.2)
        ax.set_title(f"{dice(preds['fedmix'][c, j], masks[c, j]):.2f} / "
                     f"{dice(preds['fedavg_pixel'][c, j], masks[c, j]):.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_ylabel(fed.client_names[c], fontsize=8)
plt.suptitle("green: ground truth, red: FedMix, cyan dashed: FedAvg (pixel client only)")
plt.tight_layout()
plt.show()"""),
    ("md", """\
## Test Dice of the selected models

Each strategy's best-validation model on every client's test split (Dice of the binarised
prediction per image, averaged per client; the mean is over clients)."""),
    ("code", """\
print(f"{'client':<16}" + "".join(f"{STYLES[n][0].split(',')[0]:>10}" for n in results))
scores = {n: evaluate(model, res["best_params"], test) for n, res in results.items()}
for c, client in enumerate(fed.client_names):
    print(f"{client:<16}" + "".join(f"{scores[n]['dice'][c]:>10.3f}" for n in results))
print(f"{'mean':<16}" + "".join(f"{scores[n]['mean_dice']:>10.3f}" for n in results))"""),
    ("md", """\
## Next

* The same run from a shell, with checkpoints, resume, `metrics.jsonl` and plots:
  `python -m fedmix_jax.main --config configs/synthetic.py` (and
  `--config.strategy=fedavg_pixel`); `fedmix_jax.train.train_and_evaluate(config, workdir)` from
  Python.
* [`losses_in_your_code.ipynb`](losses_in_your_code.ipynb): the Dice and mixed-supervision
  losses, pseudo-label selection and aggregation inside your own JAX code.
* [`ham10000.ipynb`](ham10000.ipynb): the real skin-lesion data set."""),
]


# ------------------------------------------------------------------------------------------------
# losses_in_your_code.ipynb

LOSSES = [
    ("md", f"""\
# fedmix_jax's losses, pseudo-labels and aggregation in your own JAX code

{badge("losses_in_your_code")}

Everything in `fedmix_jax.losses`, `fedmix_jax.pseudo_labels` and `fedmix_jax.aggregation` is a
pure function of arrays: jittable, differentiable, vmappable, with documented shapes. This
notebook uses them from code that knows nothing else about fedmix_jax — a small Flax conv net of
its own (not our U-Net), its own data and its own optax training loop:

1. the soft Dice loss inside your `jax.jit` / `jax.grad` training step;
2. `jax.vmap` of that step over a batch of independent tasks (one model per task);
3. pseudo-label selection on arbitrary predictions;
4. the FedMix mixed-supervision loss with cross pseudo-supervision of two models;
5. `fedmix_weights` / `weighted_average` on an arbitrary pytree, ending in a small federated loop
   for your model.

Conventions: arrays are NHWC, one sigmoid channel per class — `logits`, `targets` `[B, H, W, K]`;
per-sample values `[B]`; client/task quantities `[C]`, stacked pytrees with leaves `[C, ...]`."""),
    ("params", """\
# Parameters (papermill-style: tests/test_notebooks.py overrides them with tiny values).
IMAGE_SIZE = 32     # px
BATCH_SIZE = 32     # images per training step
STEPS = 150         # training steps of each example
FEATURES = 16       # channels of the toy conv net
NUM_TASKS = 4       # independent tasks trained side by side with vmap
FED_ROUNDS = 10     # rounds of the small federated loop in section 5
LOCAL_STEPS = 10    # local steps per client and round in that loop
SEED = 0"""),
    ("md", INSTALL_MD),
    ("code", INSTALL_CODE),
    ("md", """\
## Your data and your model

A toy task written in plain JAX: dark disks on a noisy background, with their masks. The model is
a three-layer dilated conv net in Flax that outputs one logit per pixel."""),
    ("code", """\
%matplotlib inline
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
    \"\"\"Images [n, S, S, 1] in [0, 1] and masks [n, S, S, 1]: one dark disk per image.\"\"\"
    kc, kr, kn = jax.random.split(key, 3)
    centre = jax.random.uniform(kc, (n, 1, 1, 2), minval=0.3, maxval=0.7) * size
    r = jax.random.uniform(kr, (n, 1, 1), minval=radius[0], maxval=radius[1]) * size
    yy, xx = jnp.mgrid[0:size, 0:size] + 0.5
    inside = (yy - centre[..., 0]) ** 2 + (xx - centre[..., 1]) ** 2 < r ** 2
    masks = inside.astype(jnp.float32)[..., None]
    images = 0.7 - 0.4 * masks + noise * jax.random.normal(kn, masks.shape)
    return jnp.clip(images, 0, 1), masks


def boxes_of(masks):
    \"\"\"Tight box masks [n, S, S, 1] of masks [n, S, S, 1] (one lesion per image here).\"\"\"
    rows = jnp.any(masks > 0, axis=2, keepdims=True)     # [n, S, 1, 1]
    cols = jnp.any(masks > 0, axis=1, keepdims=True)     # [n, 1, S, 1]

    def between(m, axis):  # True from the first to the last True along the axis
        backward = jnp.flip(jnp.cumsum(jnp.flip(m, axis), axis), axis)
        return (jnp.cumsum(m, axis) > 0) & (backward > 0)

    return (between(rows, 1) & between(cols, 2)).astype(jnp.float32)


class TinySegNet(nn.Module):
    \"\"\"Your own segmentation model: [B, H, W, 1] images -> [B, H, W, 1] logits.\"\"\"

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
plt.show()"""),
    ("md", """\
## 1. The Dice loss in your `jit` / `grad` training step

`dice_loss(logits, targets, weights=None)` is `1 − dice(sigmoid(logits), targets)` per sample,
averaged over the batch, with `dice(a, b) = (2·Σab + ε) / (Σa + Σb + ε)`, `ε = 1e-4`, the sums over
all pixels and channels of one sample. `dice_coefficient` scores binarised predictions."""),
    ("code", """\
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
plt.show()"""),
    ("md", """\
Per-sample `weights` decide which samples count: a weight-0 sample contributes nothing, not even
a gradient, and an all-zero batch gives loss 0 with zero gradients (never NaN). This is how
padding and unselected pseudo-labels are masked out in fixed-shape code. Two empty maps agree
perfectly (Dice 1 through ε)."""),
    ("code", """\
logits = model.apply({"params": params}, x_test[:4])
weights = jnp.array([1.0, 1.0, 0.0, 0.0])
grad_logits = jax.grad(lambda z: dice_loss(z, y_test[:4], weights))(logits)
print("per-sample loss:      ", np.asarray(dice_loss_per_sample(logits, y_test[:4])))
print(f"weighted batch loss:   {float(dice_loss(logits, y_test[:4], weights)):.4f}")
print("|grad| per sample:    ", np.asarray(jnp.abs(grad_logits).sum(axis=(1, 2, 3))))
print("all weights 0 -> loss ", float(dice_loss(logits, y_test[:4], jnp.zeros(4))))
empty = jnp.zeros((1, 8, 8, 1))
print("dice(empty, empty) =  ", float(dice_coefficient(empty, empty)[0]))"""),
    ("md", """\
## 2. `vmap` over a batch of tasks

The losses have no hidden state, so a whole training step can be vmapped: here `NUM_TASKS`
independent models (different initialisations, different lesion sizes) train side by side in one
compiled program — exactly how fedmix_jax treats clients, as an array axis. Their parameters are
one pytree with leaves `[T, ...]`."""),
    ("code", """\
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
print("test Dice per task (own model):", np.asarray(own))"""),
    ("md", """\
## 3. Pseudo-label selection on arbitrary predictions

`select_pseudo_labels(p1, p2, boxes, image_labels, levels, valid, config)` takes two binarised
predictions `[B, H, W, K]` of the same images (FedMix: the two global models), refines them with
the weak labels (box samples: `p ← p · B`), and selects a weak sample when the two agree,
`dice(p1, p2) ≥ τ = 0.9`; a box sample must also fill its box, `dice(p1·B, B) ≥ 0.5`. The
switches of `SelectionConfig` cover the fixes over the reference: `reject_empty` (two *empty*
predictions agree perfectly — reject them) and `use_image_labels` (an image labelled "no lesion"
is usable with an empty pseudo-label). `SelectionConfig.reference()` is the reference's behaviour.
Levels: `0` pixel, `1` box, `2` image, `3` none. Hand-made cases:"""),
    ("code", """\
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
          f"{str(bool(ours.selected[i])):>10}{str(bool(ref.selected[i])):>11}")"""),
    ("md", """\
From logits, `pseudo_labels_from_logits` binarises `sigmoid > 0.5` first. Below: two task models
from section 2 predict on task 0's test images treated as box-labelled samples; the refined
pseudo-labels (inside the box) and the selection come back as arrays, ready for a masked loss."""),
    ("code", """\
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
plt.show()"""),
    ("md", """\
## 4. The mixed-supervision loss: two models, cross pseudo-supervision

`mixed_supervision_loss(logits1, logits2, masks, pseudo1, pseudo2, levels, selected, valid)`
returns the losses of model 1 and model 2: pixel samples train both on the ground truth; a
selected weak sample trains model 1 on model 2's pseudo-label and model 2 on model 1's; anything
else is masked out. Below, a training step of your two models on batches where only the first
quarter has masks and the rest only boxes. The pseudo-labels come from the current models under
`stop_gradient` (FedMix takes them from the global models of the round)."""),
    ("code", """\
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
plt.show()"""),
    ("md", """\
## 5. Aggregation on any pytree

`fedmix_weights(counts, losses, lam, beta)` maps per-client usable-sample counts `n_i` and
training losses `ℓ_i` (`[C]` each) to weights `w_i = (d_i + λ·s_i) / Σ_j (d_j + λ·s_j)` with
`d_i = n_i / Σ n_j` and `s_i = ℓ_i^β / Σ ℓ_j^β`; `λ = 0` is FedAvg by counts. A client with
`n_i = 0` gets weight 0. `weighted_average(stacked_tree, weights)` is `Σ_i w_i · x_i` over the
leading axis of every leaf of any pytree. Both jit."""),
    ("code", """\
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
print(jax.jit(weighted_average)(tree, jnp.array([0.5, 0.5, 0.0, 0.0])))"""),
    ("md", """\
With these two functions, federated averaging of *your* model is a few lines: the tasks of
section 2 become clients that start every round from the global model (broadcast), train
`LOCAL_STEPS` steps side by side (the vmapped step), and report a count and a loss; the server
turns those `[T]` numbers into weights and averages the stacked parameters. Each client keeps its
Adam state across rounds, as in FedMix."""),
    ("code", """\
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
              f"task {np.asarray(dice_per_task(global_params, x_tasks, y_tasks))}")"""),
    ("md", """\
The full FedMix round — two models, pseudo-labels from the global pair, masked fixed-shape local
epochs, adaptive weights, any executor — is `fedmix_jax.federated.make_round_fn`; see
[`quickstart.ipynb`](quickstart.ipynb)."""),
]


# ------------------------------------------------------------------------------------------------
# ham10000.ipynb

HAM = [
    ("md", f"""\
# FedMix on HAM10000 (real skin-lesion images)

{badge("ham10000")}

The paper's skin experiment: HAM10000 dermoscopy images with the lesion masks of Tschandl et al.,
split into **four clients by acquisition source** — `rosendahl`, `vidir_modern`, `vienna_dias`,
`vidir_molemax` — in the setting `[B, B, L, B]`: `vienna_dias` trains on pixel masks, the other
three only on bounding boxes derived from the masks (1–9 px noisy margin, drawn once).

This notebook: where to get the data, building the dataset cache (from a shell and from Python), a
look at the four clients, and a FedMix run with the settings of `configs/isic.py` — **scaled down
by default** so that it finishes in minutes on a Colab GPU. The paper's scale, `PAPER_SCALE =
True` below (or the command at the end): images resized to **256 px** and randomly cropped to
**224** for training, U-Net **width 64** (17.3 M parameters), **300 rounds** of one local epoch,
**batch 16**, Adam lr 1e-3 with L2 1e-4, **λ = 10, β = 3** — hours on a GPU."""),
    ("params", """\
# Parameters (papermill-style: tests/test_notebooks.py overrides them with tiny values).
DATA_DIR = "/content/HAM10000"    # the unzipped download (see "Get the data")
CACHE_DIR = "~/fedmix_data"       # where the decoded dataset is cached (built once)
WORKDIR = "runs/ham10000_fedmix"  # checkpoints, metrics.jsonl, plots; rerunning resumes here
PAPER_SCALE = False               # True: configs/isic.py unchanged (256 px, 224 crops, width 64,
                                  # 300 rounds, batch 16, lambda 10, beta 3) - needs a GPU/TPU
# The scaled-down run (ignored when PAPER_SCALE is True):
IMAGE_SIZE = 64                   # resize to IMAGE_SIZE px (paper: 256)
CROP = 56                         # random train crop (paper: 224); 0 = none
WIDTH = 16                        # U-Net base width (paper: 64)
DEPTH = 4                         # U-Net down/up blocks (paper: 4)
ROUNDS = 20                       # communication rounds (paper: 300)
BATCH_SIZE = 16                   # local batch size (paper: 16)
MAX_PER_CLIENT = 600              # cap on each client's images (train+val+test); 0 = all
PREVIEW_PER_CLIENT = 6            # images per client in the preview"""),
    ("md", INSTALL_MD),
    ("code", INSTALL_CODE),
    ("md", """\
## Get the data

fedmix_jax downloads nothing; you fetch the files once and point `DATA_DIR` at them.

* **Images and metadata** — *The HAM10000 dataset* (Tschandl, Rosendahl & Kittler, Sci. Data
  5:180161, 2018) on the Harvard Dataverse,
  doi:[10.7910/DVN/DBW86T](https://doi.org/10.7910/DVN/DBW86T): `HAM10000_images_part_1.zip`,
  `HAM10000_images_part_2.zip` and `HAM10000_metadata` (the Dataverse `.tab` or the original
  `.csv`; both are read). The same 10,015 images are the ISIC 2018
  challenge (task 3) training set in the [ISIC archive](https://www.isic-archive.com).
* **Lesion masks** — `HAM10000_segmentations_lesion_tschandl.zip`, in the same Dataverse data set
  (binary masks `ISIC_XXXXXXX_segmentation.png`, one per image).
* **Licence and registration** — the data set is distributed under **CC BY-NC 4.0**
  (non-commercial use, with attribution: cite the paper above); at the time of writing the
  Dataverse files download without an account after accepting the terms of use, while the ISIC
  archive asks you to accept its terms. Check the data set page for the current terms before
  you download, and cite the FedMix paper (arXiv 2205.01840) for the method.

Unzip everything into `DATA_DIR` (files are found by name anywhere below it):

```
DATA_DIR/
  HAM10000_metadata.csv          lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
  HAM10000_images_part_1/ISIC_0024306.jpg ...
  HAM10000_images_part_2/ISIC_0029306.jpg ...
  HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png ...
```

On Colab, upload the zips to Google Drive once; then, in a cell, mount Drive and unzip onto the
runtime's local disk (the one-time build reads that much faster than Drive):

```
from google.colab import drive
drive.mount("/content/drive")
!mkdir -p /content/HAM10000
!cd /content/HAM10000 && for z in /content/drive/MyDrive/HAM10000/*.zip; do unzip -q -o "$z"; done
```

No data at hand but want to see the pipeline run?
`fedmix_jax.data.real.make_fixture.make_ham10000(DATA_DIR, num_images=200)` writes a *fake* tree
in this layout (synthetic pixels, real file names and CSV); its numbers mean nothing."""),
    ("code", """\
import glob

DATA_DIR = os.path.abspath(os.path.expanduser(DATA_DIR))
CACHE_DIR = os.path.abspath(os.path.expanduser(CACHE_DIR))
found = {kind: len(glob.glob(os.path.join(DATA_DIR, "**", pattern), recursive=True))
         for kind, pattern in (("images", "ISIC_*[0-9].jpg"),
                               ("masks", "ISIC_*_segmentation.png"),
                               ("metadata", "HAM10000_metadata*"))}
print(DATA_DIR, found)
if not all(found.values()):
    raise FileNotFoundError(f"HAM10000 is missing or incomplete under {DATA_DIR} (found "
                            f"{found}): see 'Get the data' above, then set DATA_DIR")"""),
    ("md", """\
## The run's configuration: `configs/isic.py`

The training configs are `ml_collections` files; `configs/isic.py` holds the paper's settings.
We load it and, unless `PAPER_SCALE`, scale it down with the parameters above. On several
devices (a TPU's cores) the clients are split across them (`sharded` executor)."""),
    ("code", """\
import importlib.util
import shlex

import jax

from fedmix_jax import federated as F


def find_repo_file(relative):
    \"\"\"A file of the repository (configs/ is not part of the pip package).\"\"\"
    roots = [os.getcwd(), os.path.dirname(os.getcwd()),
             os.path.dirname(os.path.dirname(os.path.abspath(fedmix_jax.__file__)))]
    for root in roots:
        if os.path.isfile(os.path.join(root, relative)):
            return os.path.join(root, relative)
    clone = os.path.abspath("fedmix_jax_repo")   # pip-installed from git (Colab): fetch the repo
    if not os.path.isdir(clone):
        subprocess.check_call(["git", "clone", "-q", "--depth", "1", REPO_URL, clone])
    return os.path.join(clone, relative)


spec = importlib.util.spec_from_file_location("isic_config", find_repo_file("configs/isic.py"))
isic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(isic)
config = isic.get_config()
config.data.data_dir = DATA_DIR
config.data.cache_dir = CACHE_DIR
if not PAPER_SCALE:
    config.data.image_size = IMAGE_SIZE
    config.data.max_per_client = MAX_PER_CLIENT
    config.train.crop = (CROP, CROP) if CROP else None
    config.model.width, config.model.depth = WIDTH, DEPTH
    config.num_rounds = ROUNDS
    config.train.batch_size = BATCH_SIZE
if jax.device_count() > 1 and "sharded" in F.EXECUTORS:   # e.g. a TPU: one client block per core
    config.train.executor = "sharded"
    config.train.num_devices = max(d for d in range(1, jax.device_count() + 1)
                                   if len(config.data.clients) % d == 0)
print(f"{jax.device_count()} {jax.default_backend()} device(s); client axis: "
      f"{config.train.executor}")
print(config.data)"""),
    ("md", """\
## Build the dataset cache

The first use decodes every JPEG and mask once, converts to grayscale (as the paper), resizes to
`config.data.image_size`, derives the boxes, splits each client 70/10/20 into
train/validation/test by `lesion_id` (images of one lesion never straddle splits), and writes
TFDS `array_record` files under `CACHE_DIR` (TensorFlow is not needed). Later runs read the
cache; the cap `max_per_client` is applied when reading, so one cache serves every cap.

From a shell — e.g. once on a login node, before training — with the same options as the config:

```
python -m fedmix_jax.data.real.build --dataset ham10000 --manual_dir DATA_DIR \\
    --data_dir CACHE_DIR --image_size 256 --channels 1
```"""),
    ("code", """\
build_cmd = [sys.executable, "-m", "fedmix_jax.data.real.build", "--dataset", "ham10000",
             "--manual_dir", DATA_DIR, "--data_dir", CACHE_DIR,
             "--image_size", str(config.data.image_size), "--channels", str(config.data.channels),
             "--seed", str(config.data.seed), "--val_fraction", str(config.data.val_fraction),
             "--test_fraction", str(config.data.test_fraction)]
print("$", shlex.join(build_cmd))
done = subprocess.run(build_cmd, capture_output=True, text=True)
print(done.stdout)
if done.returncode:
    print(done.stderr[-5000:])
    raise RuntimeError(f"the build failed (exit code {done.returncode}); see its message above")
print("\\n".join(line for line in done.stderr.splitlines() if line.startswith("[fedmix_jax]")))"""),
    ("md", """\
From Python, `load_federation_from_config(config.data)` does the same: it builds the cache when
needed (here it is already built, so it only reads) and returns the federation — padded arrays
with a leading client axis, as for the synthetic data."""),
    ("code", """\
from fedmix_jax.data.real import load_federation_from_config

fed = load_federation_from_config(config.data, verbose=False)
print(fed.summary())
print("train arrays:", fed.train.images.shape, fed.train.masks.shape)"""),
    ("md", """\
## The four clients

A few training images per client with their mask (red) and box (yellow, dashed). The level in
each row title is what the client trains on: only `vienna_dias` uses its masks; the others see
the boxes only. The sources differ visibly (devices, magnification, colour calibration) — the
non-IID setting FedMix is designed for."""),
    ("code", """\
%matplotlib inline
import tempfile

from IPython.display import Image, display

from fedmix_jax.data.synthetic import preview_grid

k = max(1, min(PREVIEW_PER_CLIENT, int(fed.train.counts().min())))
display(Image(filename=preview_grid(fed, os.path.join(tempfile.mkdtemp(), "clients.png"),
                                    per_client=k)))"""),
    ("md", """\
## Train FedMix with the `configs/isic.py` settings

`train_and_evaluate(config, workdir)` is what `python -m fedmix_jax.main` runs: it trains for
`config.num_rounds` rounds, evaluates global model 1 on validation and test after every round,
reports the test numbers of the round with the best **validation** Dice, and writes
`metrics.jsonl`, `summary.json`, checkpoints and plots to `WORKDIR`. Rerunning the cell resumes
from the last checkpoint (`num_rounds` may grow); a changed setting in the same `WORKDIR` is
refused — use a new one. Below, the settings that differ from the paper's."""),
    ("code", """\
from fedmix_jax.train import config_differences, config_to_dict, format_summary, \\
    train_and_evaluate

paper = isic.get_config()
paper.data.data_dir, paper.data.cache_dir = config.data.data_dir, config.data.cache_dir
diffs = config_differences(config_to_dict(paper), config_to_dict(config), ignore=())
print("settings that differ from configs/isic.py (paper scale):")
print("\\n".join(diffs) if diffs else "  none: paper scale")

WORKDIR = os.path.abspath(os.path.expanduser(WORKDIR))
summary = train_and_evaluate(config, WORKDIR, quiet=True, federation=fed)
print(format_summary(summary))"""),
    ("md", """\
## Curves and predictions

The plots `train_and_evaluate` wrote: validation Dice per client and round, the aggregation
weights, the pseudo-label selection rate of the box clients, and test predictions of the
selected model (green: ground truth, red: prediction, yellow dashed: box)."""),
    ("code", """\
for png in ("val_dice.png", "weights.png", "selection_rate.png", "predictions.png"):
    path = os.path.join(WORKDIR, png)
    if os.path.exists(path):
        display(Image(filename=path))"""),
    ("md", """\
## At the paper's scale, from a shell

```
python -m fedmix_jax.main --config configs/isic.py --config.data.data_dir=/data/HAM10000 \\
    --workdir runs/isic-fedmix
python -m fedmix_jax.main --config configs/isic.py --config.data.data_dir=/data/HAM10000 \\
    --config.strategy=fedavg_pixel --workdir runs/isic-fedavg_pixel
```

`configs/isic.py` holds the paper's numbers: 256 px resized, 224 × 224 random crops and flips,
width 64, 300 rounds, batch 16, λ = 10, β = 3, grayscale, `[B, B, L, B]`. Any field can be
overridden with `--config.<field>=<value>`; an interrupted run resumes from its workdir."""),
]


NOTEBOOKS = {
    "quickstart": (QUICKSTART, "GPU"),
    "losses_in_your_code": (LOSSES, None),
    "ham10000": (HAM, "GPU"),
}


def build(name: str) -> nbformat.NotebookNode:
    cells_spec, accelerator = NOTEBOOKS[name]
    cells = []
    for i, (kind, source) in enumerate(cells_spec):
        cell_id = f"{name.replace('_', '-')}-{i:02d}"
        if kind == "md":
            cell = new_markdown_cell(source, id=cell_id)
        else:
            cell = new_code_cell(source, id=cell_id)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
    }
    if accelerator:
        metadata["accelerator"] = accelerator
    nb = new_notebook(cells=cells, metadata=metadata)
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The exact file content of ``notebooks/<name>.ipynb``."""
    return nbformat.writes(build(name)) + "\n"


def main(argv=None) -> int:
    names = (argv if argv else None) or list(NOTEBOOKS)
    for name in names:
        path = os.path.join(HERE, f"{name}.ipynb")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(name))
        print("wrote", os.path.relpath(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

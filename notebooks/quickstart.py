# ---
# jupyter:
#   accelerator: GPU
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
# # FedMix quickstart: mixed supervision on a synthetic federation (CPU, GPU or TPU)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/<OWNER>/fedmix_jax/blob/main/notebooks/quickstart.ipynb)
#
# Four simulated hospitals train one lesion-segmentation U-Net without sharing images. Each has its
# own acquisition domain (brightness, blur, noise, hairs, ...). Only the small client
# `site_c_clean` has **pixel masks**; the three others only have **bounding boxes** — the paper's
# skin setting `[B, B, L, B]`.
#
# This notebook trains, on the same data, from the same initial weights:
#
# * **FedMix** — two U-Nets, pseudo-labels of the box clients refined by their boxes and selected
#   where the two models agree, cross pseudo-supervision, and adaptive aggregation weights;
# * **FedAvg (pixel clients only)** — the lower bound: only the client with masks trains.
#
# Then it shows the validation Dice per round of both, FedMix's aggregation weights and
# pseudo-label selection per round, and predictions on test images.
#
# **Runtime.** In Colab pick *Runtime → Change runtime type → GPU or TPU*; the notebook detects the
# backend and the number of devices, and on several devices (a TPU's cores) it shards the clients
# across them. The defaults (25 rounds at 64 px, as `configs/synthetic.py`) take minutes on a GPU;
# on a laptop CPU roughly ten minutes for both runs — lower `ROUNDS` for a quicker look.

# %% tags=["parameters"]
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
NUM_PREVIEW = 4                   # images per client in the figures

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
# ## Backend, devices and how the client axis runs
#
# fedmix_jax keeps the clients on an **array axis**: every client's parameters, optimizer state and
# data are stacked along a leading axis `C`. How that axis executes is a choice (`executor`):
#
# * `vmap` — all clients vectorised in one compiled program (the default on GPU/TPU);
# * `loop` — a Python loop over one compiled per-client update (the default on CPU, where XLA runs
#   a vmapped convolution over different weights slowly);
# * `sharded` — the client axis split over the devices of a mesh (`shard_map`), each device
#   training its block of clients; used here when there are several devices (a TPU's cores).
#
# `default_executor()` is the package's per-platform default.

# %%
# %matplotlib inline
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from matplotlib.ticker import MaxNLocator

import fedmix_jax as fm
from fedmix_jax.config import EXECUTORS
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
elif len(devices) > 1 and "sharded" in EXECUTORS:
    executor = "sharded"              # e.g. a TPU's cores: each device trains a block of clients
else:
    executor = fm.default_executor()   # vmap on GPU/TPU, loop on CPU
round_kwargs = {}
if executor == "sharded":
    # The largest device count that divides the clients: every device holds whole clients.
    round_kwargs["num_devices"] = max(d for d in range(1, len(devices) + 1)
                                      if NUM_CLIENTS % d == 0)
print(f"client-axis executor: {executor!r}", round_kwargs or "")

# %% [markdown]
# ## The synthetic federation
#
# `make_synthetic_federation` draws dermoscopy-like images with lesion masks, boxes (1–9 px noisy
# margins, drawn once per sample) and image labels; nothing is downloaded. Every split is a set of
# padded arrays with a leading client axis — `images [C, N, H, W, 1]`, `masks`/`boxes
# [C, N, H, W, K]`, `levels [C, N]`, `valid [C, N]` — so one compiled round serves any mix of
# clients and supervision levels. In the grid: red = mask, yellow dashed = box. The box clients
# never see their masks in training (validation and test always have masks, for evaluation).

# %%
fed = make_synthetic_federation(num_clients=NUM_CLIENTS, image_size=IMAGE_SIZE,
                                train_sizes=TRAIN_SIZES, val_size=VAL_SIZE, test_size=TEST_SIZE,
                                levels=("box", "box", "pixel", "box"))
print(fed.summary())
print("train images:", fed.train.images.shape, " masks:", fed.train.masks.shape)

preview_path = preview_grid(fed, os.path.join(tempfile.mkdtemp(), "preview.png"),
                            per_client=min(6, min(TRAIN_SIZES)))
display(Image(filename=preview_path))

# %% [markdown]
# ## One FedMix round is one compiled function
#
# `RoundConfig` holds the static settings (strategy, batch size, λ, β, executor, ...);
# `init_state` initialises model 1 and model 2 from independent keys, and every client's Adam
# state; `make_round_fn` returns `round_fn(state, train) -> (state, metrics)`, which does a whole
# round: broadcast, pseudo-labels of the global models, one local epoch per client, aggregation
# weights and the weighted average. `metrics` holds per-client numbers `[C]`: the usable sample
# count `n_i`, the training loss `ℓ_i`, the selected weak samples and the aggregation weight `w_i`.
#
# The helper below runs a strategy for `ROUNDS` rounds, evaluates global model 1 on the validation
# split after each round and keeps the best-validation parameters (as `train_and_evaluate` does).
# Both runs start from the same seed, so the same initial models.

# %%
model = UNet(width=WIDTH, depth=DEPTH, num_classes=fed.num_classes)
image_shape = tuple(fed.train.images.shape[2:])
val = jax.device_put(fed.val)
test = jax.device_put(fed.test)


def place_clients(split, round_fn):
    """Put a split on the device(s) once; with the sharded executor, split it by client."""
    mesh = getattr(round_fn, "mesh", None)      # the sharded executor's device mesh
    if mesh is None:
        return jax.device_put(split)
    from fedmix_jax.sharding import shard_clients
    return shard_clients(split, mesh)           # [C, ...] leaves split over the devices


def place_state(state, round_fn):
    """With the sharded executor, lay the initial state out as the round returns it (clients
    split, global models replicated), so round 2 does not compile again for new layouts."""
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
    config = fm.RoundConfig(strategy=fm.get_strategy(strategy_name), batch_size=BATCH_SIZE,
                           lam=LAM, beta=BETA, executor=executor, **round_kwargs)
    round_fn = fm.make_round_fn(model, config)
    train = place_clients(fed.train, round_fn)
    state = fm.init_state(model, jax.random.PRNGKey(SEED), image_shape, fed.num_clients, config)
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
            weights=np.asarray(m.weights), counts=np.asarray(m.reports.num_usable),
            loss1=np.asarray(m.reports.loss1), weak=np.asarray(m.reports.num_weak),
            selection_rate=(np.asarray(m.reports.num_selected_weak)
                            / np.maximum(np.asarray(m.reports.num_weak), 1))))
        if ev["mean_dice"] > best:           # model selection on validation, never on test
            best = float(ev["mean_dice"])
            best_params = jax.tree.map(jnp.copy, state.global_params[0])
        if r == 1 or r == ROUNDS or r % max(1, ROUNDS // 5) == 0:
            print(f"{strategy_name:>12} round {r:3d}/{ROUNDS}: val Dice {ev['mean_dice']:.3f}, "
                  f"weights {np.asarray(m.weights)}, {seconds:.2f} s"
                  + (" (includes compilation)" if r == 1 else ""))
    print(f"{strategy_name:>12} data sharding: {jax.tree.leaves(train)[0].sharding}")
    return dict(history=history, best_params=best_params, best_val=best)


# %% [markdown]
# ## Train FedMix and the FedAvg lower bound
#
# The first round of each strategy includes tracing and XLA compilation; later rounds reuse the
# compiled program. In early rounds the two untrained models rarely agree, so few box samples are
# selected and FedMix behaves like the lower bound; as the models improve, more pseudo-labels pass
# the agreement (Dice ≥ 0.9) and box-fit (≥ 0.5) tests and the box clients join in.

# %%
results = {}
for name in ("fedmix", "fedavg_pixel"):
    results[name] = run(name)

# %% [markdown]
# ## Validation Dice per round
#
# Mean validation Dice of global model 1 over the four clients (thick), and per client (thin).

# %%
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
    print(f"{STYLES[name][0]:>26}: best mean validation Dice {res['best_val']:.3f}")

# %% [markdown]
# ## Aggregation weights per round
#
# FedMix weighs client *i* by `w_i ∝ d_i + λ·s_i` with `d_i = n_i / Σ n_j` (its share of usable
# samples: masks plus selected pseudo-labels) and `s_i = ℓ_i^β / Σ ℓ_j^β` (its share of the
# sharpened training loss): a client with a higher loss still has more to teach the federation.
# A box client whose pseudo-labels are all rejected trains on nothing and gets weight 0. FedAvg
# (pixel clients only) puts all the weight on the client with masks.

# %%
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
plt.show()

# %% [markdown]
# ## Predictions on test images
#
# The best-validation global model 1 of each strategy on the first test images of every client:
# green = ground truth, red = FedMix, cyan dashed = FedAvg (pixel client only); the titles give the
# per-image Dice of FedMix / FedAvg.

# %%
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
plt.show()

# %% [markdown]
# ## Test Dice of the selected models
#
# Each strategy's best-validation model on every client's test split (Dice of the binarised
# prediction per image, averaged per client; the mean is over clients).

# %%
print(f"{'client':<16}" + "".join(f"{STYLES[n][0].split(',')[0]:>10}" for n in results))
scores = {n: evaluate(model, res["best_params"], test) for n, res in results.items()}
for c, client in enumerate(fed.client_names):
    print(f"{client:<16}" + "".join(f"{scores[n]['dice'][c]:>10.3f}" for n in results))
print(f"{'mean':<16}" + "".join(f"{scores[n]['mean_dice']:>10.3f}" for n in results))

# %% [markdown]
# ## Next
#
# * The same run from a shell, with checkpoints, resume, `metrics.jsonl` and plots:
#   `python -m fedmix_jax.main --config configs/synthetic.py` (and
#   `--config.strategy=fedavg_pixel`); `fedmix_jax.train.train_and_evaluate(config, workdir)` from
#   Python.
# * [`losses_in_your_code.ipynb`](losses_in_your_code.ipynb): the Dice and mixed-supervision
#   losses, pseudo-label selection and aggregation inside your own JAX code.
# * [`ham10000.ipynb`](ham10000.ipynb): the real skin-lesion data set.

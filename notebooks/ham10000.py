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
# # FedMix on HAM10000 (real skin-lesion images)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/<OWNER>/fedmix_jax/blob/main/notebooks/ham10000.ipynb)
#
# The paper's skin experiment: HAM10000 dermoscopy images with the lesion masks of Tschandl et al.,
# split into **four clients by acquisition source** — `rosendahl`, `vidir_modern`, `vienna_dias`,
# `vidir_molemax` — in the setting `[B, B, L, B]`: `vienna_dias` trains on pixel masks, the other
# three only on bounding boxes derived from the masks (1–9 px noisy margin, drawn once).
#
# This notebook: where to get the data, building the dataset cache (from a shell and from Python), a
# look at the four clients, and a FedMix run with the settings of `configs/isic.py` — **scaled down
# by default** so that it finishes in minutes on a Colab GPU. The paper's scale, `PAPER_SCALE =
# True` below (or the command at the end): images resized to **256 px** and randomly cropped to
# **224** for training, U-Net **width 64** (17.3 M parameters), **300 rounds** of one local epoch,
# **batch 16**, Adam lr 1e-3 with L2 1e-4, **λ = 10, β = 3** — hours on a GPU.

# %% tags=["parameters"]
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
PREVIEW_PER_CLIENT = 6            # images per client in the preview

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
# ## Get the data
#
# fedmix_jax downloads nothing; you fetch the files once and point `DATA_DIR` at them.
#
# * **Images and metadata** — *The HAM10000 dataset* (Tschandl, Rosendahl & Kittler, Sci. Data
#   5:180161, 2018) on the Harvard Dataverse,
#   doi:[10.7910/DVN/DBW86T](https://doi.org/10.7910/DVN/DBW86T): `HAM10000_images_part_1.zip`,
#   `HAM10000_images_part_2.zip` and `HAM10000_metadata` (the Dataverse `.tab` or the original
#   `.csv`; both are read). The same 10,015 images are the ISIC 2018
#   challenge (task 3) training set in the [ISIC archive](https://www.isic-archive.com).
# * **Lesion masks** — `HAM10000_segmentations_lesion_tschandl.zip`, in the same Dataverse data set
#   (binary masks `ISIC_XXXXXXX_segmentation.png`, one per image).
# * **Licence and registration** — the data set is distributed under **CC BY-NC 4.0**
#   (non-commercial use, with attribution: cite the paper above); at the time of writing the
#   Dataverse files download without an account after accepting the terms of use, while the ISIC
#   archive asks you to accept its terms. Check the data set page for the current terms before
#   you download, and cite the FedMix paper (arXiv 2205.01840) for the method.
#
# Unzip everything into `DATA_DIR` (files are found by name anywhere below it):
#
# ```
# DATA_DIR/
#   HAM10000_metadata.csv          lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
#   HAM10000_images_part_1/ISIC_0024306.jpg ...
#   HAM10000_images_part_2/ISIC_0029306.jpg ...
#   HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png ...
# ```
#
# On Colab, upload the zips to Google Drive once; then, in a cell, mount Drive and unzip onto the
# runtime's local disk (the one-time build reads that much faster than Drive):
#
# ```
# from google.colab import drive
# drive.mount("/content/drive")
# !mkdir -p /content/HAM10000
# !cd /content/HAM10000 && for z in /content/drive/MyDrive/HAM10000/*.zip; do unzip -q -o "$z"; done
# ```
#
# No data at hand but want to see the pipeline run?
# `fedmix_jax.data.real.make_fixture.make_ham10000(DATA_DIR, num_images=200)` writes a *fake* tree
# in this layout (synthetic pixels, real file names and CSV); its numbers mean nothing.

# %%
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
                            f"{found}): see 'Get the data' above, then set DATA_DIR")

# %% [markdown]
# ## The run's configuration: `configs/isic.py`
#
# The training configs are `ml_collections` files; `configs/isic.py` holds the paper's settings.
# We load it and, unless `PAPER_SCALE`, scale it down with the parameters above. On several
# devices (a TPU's cores) the clients are split across them (`sharded` executor).

# %%
import importlib.util
import shlex

import jax

from fedmix_jax.config import EXECUTORS


def find_repo_file(relative):
    """A file of the repository (configs/ is not part of the pip package)."""
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
if jax.device_count() > 1 and "sharded" in EXECUTORS:   # e.g. a TPU: one client block per core
    config.train.executor = "sharded"
    config.train.num_devices = max(d for d in range(1, jax.device_count() + 1)
                                   if len(config.data.clients) % d == 0)
print(f"{jax.device_count()} {jax.default_backend()} device(s); client axis: "
      f"{config.train.executor}")
print(config.data)

# %% [markdown]
# ## Build the dataset cache
#
# The first use decodes every JPEG and mask once, converts to grayscale (as the paper), resizes to
# `config.data.image_size`, derives the boxes, splits each client 70/10/20 into
# train/validation/test by `lesion_id` (images of one lesion never straddle splits), and writes
# TFDS `array_record` files under `CACHE_DIR` (TensorFlow is not needed). Later runs read the
# cache; the cap `max_per_client` is applied when reading, so one cache serves every cap.
#
# From a shell — e.g. once on a login node, before training — with the same options as the config:
#
# ```
# python -m fedmix_jax.data.real.build --dataset ham10000 --manual_dir DATA_DIR \
#     --cache_dir CACHE_DIR --image_size 256 --channels 1
# ```

# %%
build_cmd = [sys.executable, "-m", "fedmix_jax.data.real.build", "--dataset", "ham10000",
             "--manual_dir", DATA_DIR, "--cache_dir", CACHE_DIR,
             "--image_size", str(config.data.image_size), "--channels", str(config.data.channels),
             "--seed", str(config.data.seed), "--val_fraction", str(config.data.val_fraction),
             "--test_fraction", str(config.data.test_fraction)]
print("$", shlex.join(build_cmd))
done = subprocess.run(build_cmd, capture_output=True, text=True)
print(done.stdout)
if done.returncode:
    print(done.stderr[-5000:])
    raise RuntimeError(f"the build failed (exit code {done.returncode}); see its message above")
print("\n".join(line for line in done.stderr.splitlines() if line.startswith("[fedmix_jax]")))

# %% [markdown]
# From Python, `load_federation_from_config(config.data)` does the same: it builds the cache when
# needed (here it is already built, so it only reads) and returns the federation — padded arrays
# with a leading client axis, as for the synthetic data.

# %%
from fedmix_jax.data.real import load_federation_from_config

fed = load_federation_from_config(config.data, verbose=False)
print(fed.summary())
print("train arrays:", fed.train.images.shape, fed.train.masks.shape)

# %% [markdown]
# ## The four clients
#
# A few training images per client with their mask (red) and box (yellow, dashed). The level in
# each row title is what the client trains on: only `vienna_dias` uses its masks; the others see
# the boxes only. The sources differ visibly (devices, magnification, colour calibration) — the
# non-IID setting FedMix is designed for.

# %%
# %matplotlib inline
import tempfile

from IPython.display import Image, display

from fedmix_jax.data.synthetic import preview_grid

k = max(1, min(PREVIEW_PER_CLIENT, int(fed.train.counts().min())))
display(Image(filename=preview_grid(fed, os.path.join(tempfile.mkdtemp(), "clients.png"),
                                    per_client=k)))

# %% [markdown]
# ## Train FedMix with the `configs/isic.py` settings
#
# `train_and_evaluate(config, workdir)` is what `python -m fedmix_jax.main` runs: it trains for
# `config.num_rounds` rounds, evaluates global model 1 on validation and test after every round,
# reports the test numbers of the round with the best **validation** Dice, and writes
# `metrics.jsonl`, `summary.json`, checkpoints and plots to `WORKDIR`. Rerunning the cell resumes
# from the last checkpoint (`num_rounds` may grow); a changed setting in the same `WORKDIR` is
# refused — use a new one. Below, the settings that differ from the paper's.

# %%
from fedmix_jax.rundir import config_differences, config_to_dict
from fedmix_jax.summary import format_summary
from fedmix_jax.train import train_and_evaluate

paper = isic.get_config()
paper.data.data_dir, paper.data.cache_dir = config.data.data_dir, config.data.cache_dir
diffs = config_differences(config_to_dict(paper), config_to_dict(config), ignore=())
print("settings that differ from configs/isic.py (paper scale):")
print("\n".join(diffs) if diffs else "  none: paper scale")

WORKDIR = os.path.abspath(os.path.expanduser(WORKDIR))
summary = train_and_evaluate(config, WORKDIR, quiet=True, federation=fed)
print(format_summary(summary))

# %% [markdown]
# ## Curves and predictions
#
# The plots `train_and_evaluate` wrote: validation Dice per client and round, the aggregation
# weights, the pseudo-label selection rate of the box clients, and test predictions of the
# selected model (green: ground truth, red: prediction, yellow dashed: box).

# %%
for png in ("val_dice.png", "weights.png", "selection_rate.png", "predictions.png"):
    path = os.path.join(WORKDIR, png)
    if os.path.exists(path):
        display(Image(filename=path))

# %% [markdown]
# ## At the paper's scale, from a shell
#
# ```
# python -m fedmix_jax.main --config configs/isic.py --config.data.data_dir=/data/HAM10000 \
#     --workdir runs/isic-fedmix
# python -m fedmix_jax.main --config configs/isic.py --config.data.data_dir=/data/HAM10000 \
#     --config.strategy=fedavg_pixel --workdir runs/isic-fedavg_pixel
# ```
#
# `configs/isic.py` holds the paper's numbers: 256 px resized, 224 × 224 random crops and flips,
# width 64, 300 rounds, batch 16, λ = 10, β = 3, grayscale, `[B, B, L, B]`. Any field can be
# overridden with `--config.<field>=<value>`; an interrupted run resumes from its workdir.

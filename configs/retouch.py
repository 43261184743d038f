"""FedMix on RETOUCH (retinal OCT fluid, 3 classes), the paper's multi-class setting [I, B, L].

    python -m fedmix_jax.main --config configs/retouch.py --config.data.data_dir=/data/RETOUCH

Three clients, one per OCT vendor, in the reference's order: cirrus (image-level labels: which of
IRF / SRF / PED occur in the B-scan), topcon (one box mask per class) and spectralis (pixel masks).
Every B-scan is a 2D sample, resized to 224 px and randomly cropped to 200 for training; one
sigmoid output per class (irf, srf, ped); lambda = 2, beta = 3, Adam lr 1.5e-3 with weight decay
1e-5, batch 16, 150 rounds (fedmix-spec.md). Splits are by volume: 20 % of each vendor's B-scans
(whole volumes: 5 of the 24 / 24 / 22 training-set volumes) for test, 10 % of the rest for
validation. As the reference's RETOUCH notebooks: B-scans without fluid are dropped from every
split (``data.drop_empty_slices``; ``=False`` keeps them), horizontal flips only, FedST / FedRGD
warm up for 100 of the 150 rounds (docs/reproducing_paper.md lists what still differs).
Nothing is downloaded: ``data_dir`` must hold the extracted training set
(``RETOUCH-TrainingSet-{Cirrus,Spectralis,Topcon}/TRAINxxx/{oct,reference}.mhd`` + ``.raw``; the
expected tree is printed when it is missing). Reading needs SimpleITK (``pip install SimpleITK``).
The first run decodes every volume once into ``data.cache_dir``.

Evaluation reports per-class Dice and HD95 (pixels at 224 px) and their means over the classes.

Smoke run on a generated fixture (seconds)::

    python -m fedmix_jax.data.real.retouch_fixture --out /tmp/retouch_fake --volumes 4
    python -m fedmix_jax.main --config configs/retouch.py \\
        --config.data.data_dir=/tmp/retouch_fake --config.data.cache_dir=/tmp/retouch_cache --config.num_rounds=2 --config.model.width=4 \\
        --config.model.depth=2 --config.data.image_size=32 --config.train.crop='(28,28)' \\
        --config.train.batch_size=4
"""

import ml_collections

from fedmix_jax.config_defaults import (add_streaming_fields, run_config, selection_config,
                                        train_config)

# ------------------------------------------------------------------------------------------------
# The paper's numbers.
NUM_ROUNDS = 150
IMAGE_SIZE = 224
CROP = (200, 200)
WIDTH = 64                  # 17.3 M parameters, as the reference
BATCH_SIZE = 16
LEARNING_RATE = 1.5e-3
WEIGHT_DECAY = 1e-5
LAM, BETA = 2.0, 3.0
WARMUP_ROUNDS = 100         # FedST / FedRGD: warm-up on the pixel client (reference: 100 of 150)
# ------------------------------------------------------------------------------------------------


def get_config() -> ml_collections.ConfigDict:
    config = run_config(NUM_ROUNDS, checkpoint_every=10, keep_checkpoints=3, width=WIDTH)
    config.eval_local_models = True  # the paper's RETOUCH table: each vendor's local model

    config.data = ml_collections.ConfigDict()
    config.data.name = "retouch"
    config.data.data_dir = ""        # REQUIRED: the extracted training set (--config.data.data_dir)
    config.data.cache_dir = "~/fedmix_data"  # decoded array_record cache (built on first use)
    config.data.image_size = IMAGE_SIZE  # B-scans are resized to this square size
    config.data.channels = 1         # OCT is grayscale
    config.data.clients = ("cirrus", "topcon", "spectralis")  # the reference's order
    config.data.levels = ("image", "box", "pixel")  # per client: pixel|box|image|none
    config.data.seed = 0             # split (by volume) and box-margin seed
    config.data.box_mode = "component"  # component: a box per fluid region | enclosing: one per
                                        # class (the reference)
    config.data.drop_empty_slices = True  # leave out B-scans without fluid (the reference)
    config.data.val_fraction = 0.1   # of each vendor's remaining B-scans, whole volumes
    config.data.test_fraction = 0.2  # of each vendor's B-scans, whole volumes (5 volumes each)
    config.data.on_bad_input = "fail"  # fail | skip (log, count and skip bad volumes)
    config.data.max_per_client = 0   # 0 = all B-scans; else cap each client's total (quick runs)
    config.data.rebuild = False      # force rebuilding the cache
    add_streaming_fields(config.data)  # device_data_budget_gb, stream_block_steps

    config.train = train_config(BATCH_SIZE, CROP, LAM, BETA, learning_rate=LEARNING_RATE)
    config.train.weight_decay = WEIGHT_DECAY
    config.train.warmup_rounds = WARMUP_ROUNDS
    config.train.vflip = False       # horizontal flips only, as the reference's RETOUCH notebooks
    config.selection = selection_config()

    return config

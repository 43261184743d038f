"""Multi-class demo: FedMix on a 3-client, 3-class synthetic federation [I, B, L] (no download).

    python -m fedmix_jax.main --config configs/synthetic_multiclass.py
    python -m fedmix_jax.main --config configs/synthetic_multiclass.py \\
        --config.strategy=fedavg_pixel

The multi-class counterpart of ``configs/synthetic.py`` and of the paper's RETOUCH setting
(``configs/retouch.py``): three "hospitals" with their own acquisition domains
(``fedmix_jax/data/synthetic.py``), each holding lesions of three classes that differ in shape,
texture and contrast -- ``nodular`` (round, smooth, dark core, strongest contrast), ``irregular``
(jagged rim, strongly textured, lowest contrast) and ``elongated`` (eccentric ellipses) -- with one
sigmoid output per class. Supervision as the paper's multi-class setting:

=================  ========  =================================================================
client             level     what it trains on
=================  ========  =================================================================
``site_a_dim``     image     which classes occur in each image (``image_labels`` [N, 3]);
                             pseudo-labels are zeroed on absent classes
``site_b_hairy``   box       one box mask per class (``boxes`` [N, H, W, 3])
``site_c_clean``   pixel     per-class masks (the small client)
=================  ========  =================================================================

lambda = 2, beta = 3 as the paper's multi-class (OCT) setting. Evaluation reports per-class Dice,
their mean over classes and per-class HD95 (``fedmix_jax/evaluation.py``).

Smoke run (seconds, for CI)::

    python -m fedmix_jax.main --config configs/synthetic_multiclass.py --config.num_rounds=2 \\
        --config.model.width=4 --config.model.depth=2 --config.data.image_size=32 \\
        --config.data.train_sizes='(16,16,8)' --config.data.val_size=8 --config.data.test_size=8
"""

import ml_collections

from fedmix_jax.config_defaults import (add_streaming_fields, run_config, selection_config,
                                        train_config)

# ------------------------------------------------------------------------------------------------
# The demo's numbers, in one place (CPU-friendly, as configs/synthetic.py).
NUM_ROUNDS = 20
IMAGE_SIZE = 64
NUM_CLASSES = 3                      # nodular, irregular, elongated
LEVELS = ("image", "box", "pixel")   # site_a_dim, site_b_hairy, site_c_clean
TRAIN_SIZES = (128, 128, 32)         # the pixel-labelled client is the small one
VAL_SIZE = 24
TEST_SIZE = 48
WIDTH = 16
DEPTH = 4
BATCH_SIZE = 8
CROP = None
LEARNING_RATE = 1e-3
LAM, BETA = 2.0, 3.0                 # the paper's multi-class (OCT) setting
# ------------------------------------------------------------------------------------------------


def get_config() -> ml_collections.ConfigDict:
    config = run_config(NUM_ROUNDS, checkpoint_every=5, keep_checkpoints=2, width=WIDTH,
                        depth=DEPTH)

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic"
    config.data.num_clients = 3      # site_a_dim, site_b_hairy, site_c_clean
    config.data.image_size = IMAGE_SIZE
    config.data.train_sizes = TRAIN_SIZES
    config.data.val_size = VAL_SIZE  # per client (model selection)
    config.data.test_size = TEST_SIZE  # per client (reported numbers)
    config.data.levels = LEVELS      # per client: pixel|box|image|none
    config.data.lesion_free_fraction = 0.15
    config.data.num_classes = NUM_CLASSES  # 2..8 lesion types; output channels follow
    config.data.box_margin = (1, 9)  # px per box side, drawn once per sample
    config.data.seed = 0             # the data set itself (kept fixed when comparing seeds)
    add_streaming_fields(config.data)  # device_data_budget_gb, stream_block_steps

    config.train = train_config(BATCH_SIZE, CROP, LAM, BETA, learning_rate=LEARNING_RATE)
    config.selection = selection_config()
    config.diagnostics = True        # pseudo-label quality vs the true masks (pl_* in metrics)
    # fedmix_plus's tightness prior counts only the box lines at least this far inside a box:
    # the boxes above are drawn up to 9 px wider than their lesion on each side.
    config.weak.tightness_inset = 9

    return config

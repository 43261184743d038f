"""FedMix on breast ultrasound (BUSI + BUSIS + UDIAT), the paper's setting [I, B, L].

    python -m fedmix_jax.main --config configs/breast.py --config.data.data_dir=/data/breast_us

Three clients, one per source: busi (image-level labels: lesion present / normal), busis (boxes)
and udiat (pixel masks). Images are grayscale, resized to 256 px and randomly cropped to 224 for
training; lambda = 10, beta = 1.5 (fedmix-spec.md). Nothing is downloaded: ``data_dir`` must hold
``Dataset_BUSI_with_GT/``, ``BUSIS/`` and ``UDIAT/`` (the expected tree is printed when it is
missing). The first run decodes everything once into ``data.cache_dir``.
"""

import ml_collections

from fedmix_jax.config_defaults import (add_streaming_fields, run_config, selection_config,
                                        train_config)

# ------------------------------------------------------------------------------------------------
# The paper's numbers.
NUM_ROUNDS = 300
IMAGE_SIZE = 256
CROP = (224, 224)
WIDTH = 64                  # 17.3 M parameters, as the reference
BATCH_SIZE = 16
LAM, BETA = 10.0, 1.5
WARMUP_ROUNDS = 150         # FedST / FedRGD: warm-up on the pixel client (reference: 150 of 300)
# ------------------------------------------------------------------------------------------------


def get_config() -> ml_collections.ConfigDict:
    config = run_config(NUM_ROUNDS, checkpoint_every=10, keep_checkpoints=3, width=WIDTH)

    config.data = ml_collections.ConfigDict()
    config.data.name = "breast"
    config.data.data_dir = ""        # REQUIRED: the manual download (set --config.data.data_dir)
    config.data.cache_dir = "~/fedmix_data"  # decoded array_record cache (built on first use)
    config.data.image_size = IMAGE_SIZE  # images are resized to this square size
    config.data.channels = 1         # 1 = grayscale (as the paper), 3 = RGB
    config.data.clients = ("busi", "busis", "udiat")
    config.data.levels = ("image", "box", "pixel")  # per client: pixel|box|image|none
    config.data.seed = 0             # split and box-margin seed
    config.data.box_mode = "component"  # component: a box per lesion | enclosing: one (reference)
    config.data.val_fraction = 0.1   # of each client's images (model selection)
    config.data.test_fraction = 0.2  # of each client's images (reported numbers)
    config.data.on_bad_input = "fail"  # fail | skip (log, count and skip bad files)
    config.data.max_per_client = 0   # 0 = all images; else cap each client's total (quick runs)
    config.data.rebuild = False      # force rebuilding the cache
    add_streaming_fields(config.data)  # device_data_budget_gb, stream_block_steps

    config.train = train_config(BATCH_SIZE, CROP, LAM, BETA, learning_rate=1e-3)
    config.train.warmup_rounds = WARMUP_ROUNDS
    config.selection = selection_config()

    return config

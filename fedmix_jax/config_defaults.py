"""The config groups every ``configs/*.py`` shares: ``train`` and ``selection``.

Each config file calls these with its own numbers, so the fields, their defaults and their
comments live in one place (``configs/*.py`` are loaded by path and cannot import each other).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def train_config(batch_size: int, crop, lam: float, beta: float,
                 learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
    """``config.train``: local training, Adam, FedMix weighting and the client-axis executor."""
    train = ml_collections.ConfigDict()
    train.batch_size = batch_size
    train.crop = config_dict.placeholder(tuple)  # (h, w) random crop, or None
    train.crop = crop
    train.hflip = True               # random horizontal flips
    train.vflip = True               # random vertical flips
    train.learning_rate = learning_rate  # torch-style Adam (L2 added to the gradient)
    train.weight_decay = 1e-4
    train.b1 = 0.9
    train.b2 = 0.999
    train.adam_eps = 1e-8
    train.lam = lam                  # FedMix weighting: w ~ d_i + lam * s_i
    train.beta = beta                # s_i ~ loss_i ** beta
    # How the client axis runs: auto (default_executor(): map) | vmap | map | loop | sharded
    # (sharded: clients split over the devices of a 1-D mesh; num_devices None = all devices).
    train.executor = "auto"
    train.num_devices = config_dict.placeholder(int)
    train.inference_chunk = 16       # images per compiled chunk (pseudo-labels, evaluation)
    return train


def selection_config() -> ml_collections.ConfigDict:
    """``config.selection``: pseudo-label rules (fedmix-spec.md); the fixes are on by default."""
    selection = ml_collections.ConfigDict()
    selection.threshold = 0.5        # binarise sigmoid outputs
    selection.agreement = 0.9        # tau: min dice(p1, p2) to select a weak sample
    selection.box_fit = 0.5          # box samples: min dice(p1 * B, B)
    selection.refine = True          # multiply by the box / the multi-class image label
    selection.reject_empty = True    # fix: reject empty agreed pseudo-labels (reference: False)
    selection.use_image_labels = True  # fix: use binary image labels (reference: False)
    return selection

"""fedmix_jax: FedMix (mixed-supervision federated segmentation) in JAX/Flax.

The stable public names (``__all__``) are importable from the package (``import fedmix_jax as fm``;
``fm.RoundConfig``, ``fm.init_state``, ``fm.make_round_fn``, ``fm.round_step``...). Details and an
example: docs/api.md.
"""

from fedmix_jax.aggregation import fedavg_weights, fedmix_weights, weighted_average
from fedmix_jax.config import HParams, RoundConfig, default_executor
from fedmix_jax.client_backends import LoopClients, map_clients, sharded_clients, vmap_clients
from fedmix_jax.compiled_round import init_state, make_round_fn
from fedmix_jax.losses import (bce_loss, box_tightness_loss_per_sample, dice_coefficient,
                               dice_loss, empty_aware_loss_per_sample, mil_image_loss_per_sample,
                               mixed_supervision_loss, outside_region_bce_per_sample,
                               weak_label_regions)
from fedmix_jax.models import UNet
from fedmix_jax.pseudo_labels import PseudoLabels, SelectionConfig, pseudo_labels_from_logits
from fedmix_jax.round import FedState, RoundMetrics, round_step
from fedmix_jax.site import ModelPair, SiteReport, SiteState, site_round
from fedmix_jax.strategies import STRATEGY_NAMES, Strategy, get_strategy, register_strategy
from fedmix_jax.weak_objective import WeakSupervision, weak_supervision_loss_per_sample

__version__ = "0.2.0"

__all__ = [
    "FedState", "HParams", "LoopClients", "ModelPair", "PseudoLabels", "RoundConfig",
    "RoundMetrics", "STRATEGY_NAMES", "SelectionConfig", "SiteReport", "SiteState", "Strategy",
    "UNet", "WeakSupervision", "bce_loss", "box_tightness_loss_per_sample", "default_executor",
    "dice_coefficient", "dice_loss", "empty_aware_loss_per_sample", "fedavg_weights",
    "fedmix_weights", "get_strategy", "init_state", "make_round_fn", "map_clients",
    "mil_image_loss_per_sample", "mixed_supervision_loss", "outside_region_bce_per_sample",
    "pseudo_labels_from_logits", "register_strategy", "round_step", "sharded_clients",
    "site_round", "vmap_clients", "weak_label_regions", "weak_supervision_loss_per_sample",
    "weighted_average",
]

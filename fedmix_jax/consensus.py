"""A site's consensus model: the federation's global model and the site's own fine-tuned copy
(its model 1 after its local epoch) must agree that an image holds a lesion of a class before the
site's copy segments it.

Why (docs/weak_supervision.md, tenth pass): the two models make *different* false positives. The
global model marks lesion-free images of the site whose artefacts the other sites never see
(site_b_hairy's hairs), which one local epoch on that site's data removes; the local copy, in
turn, marks some lesion-free images of the sites whose local epoch it is tuned to least. On
images with a lesion both models fire, and the local copy's mask is the better one (it fits the
site's own lesion boundaries). So, per image and class, the consensus model outputs the local
copy's logits where both models mark at least one pixel, and otherwise the pixelwise minimum of
the two (below the threshold everywhere, since one of the two marks nothing): its binary
prediction is the local mask on agreed images and empty on the others.

Everything runs at the site: the global model is the one the site receives every round, the local
copy never leaves it. Pure and jittable; shapes in each docstring.
"""

from __future__ import annotations

__all__ = ["ConsensusModel", "choose_mask_thresholds", "consensus_dice_per_threshold",
           "consensus_logits", "marks_any"]

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _logit(p):
    return jnp.log(p) - jnp.log1p(-p)


def marks_any(logits: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Whether each image marks at least one pixel of each class: [B, H, W, K] -> bool [B, K].

    A pixel is marked where ``sigmoid(logit) > threshold`` (what evaluation counts)."""
    return jnp.max(logits.astype(jnp.float32), axis=(1, 2)) > _logit(jnp.float32(threshold))


def consensus_logits(global_logits: jax.Array, local_logits: jax.Array,
                     threshold: float = 0.5, mask_threshold=None,
                     mask_logits: jax.Array | None = None) -> jax.Array:
    """The consensus of a site's global and local models: [B, H, W, K] x 2 -> [B, H, W, K].

    Image b, class k: where both models mark a pixel of class k (:func:`marks_any` at
    ``threshold``), ``local_logits[b, ..., k]``, shifted with ``mask_threshold`` (a scalar, may
    be traced; None: ``threshold``) so that ``sigmoid(out) > threshold`` exactly where
    ``sigmoid(local) > mask_threshold``: whether an image holds a lesion is decided at
    ``threshold``, how far its mask extends at ``mask_threshold``. Elsewhere
    ``min(global_logits, local_logits)`` pixelwise, which marks nothing. Float32 out.

    ``mask_logits`` [B, H, W, K] (a third model, e.g. the local copy fine-tuned further at the
    site, :mod:`fedmix_jax.fine_tuning`): it must mark the image and class too, and its logits
    give the mask instead of ``local_logits``'s; so the images marked are a subset of the
    two-model consensus's, whatever the third model does elsewhere."""
    g = global_logits.astype(jnp.float32)
    loc = local_logits.astype(jnp.float32)
    agree = marks_any(g, threshold) & marks_any(loc, threshold)
    low = jnp.minimum(g, loc)
    mask = loc
    if mask_logits is not None:
        mask = mask_logits.astype(jnp.float32)
        agree = agree & marks_any(mask, threshold)
        low = jnp.minimum(low, mask)
    if mask_threshold is not None:
        mt = jnp.asarray(mask_threshold, jnp.float32)
        mask = mask + (_logit(jnp.float32(threshold)) - _logit(mt))
    return jnp.where(agree[:, None, None, :], mask, low)


@dataclasses.dataclass(frozen=True)
class ConsensusModel:
    """A segmentation module's consensus of two parameter sets, usable wherever a Flax module's
    ``apply({"params": p}, x)`` is: ``p = (global_params, local_params)``.

    With :func:`fedmix_jax.evaluation.evaluate` and ``per_client_params=True``, pass
    ``(broadcast(global_params, C), client_params)`` (leaves [C, ...] each) to score every site's
    consensus model on its own images; ``(global, local, mask_threshold)`` adds each site's
    threshold of its masks on agreed images (``mask_threshold`` [C] with per-client params, a
    scalar otherwise; :func:`choose_mask_thresholds`); ``(global, local, mask_threshold,
    mask_params)`` adds the model whose mask counts (:func:`consensus_logits`'s ``mask_logits``;
    :func:`fedmix_jax.fine_tuning.fine_tuned_consensus`). ``threshold`` must be the one the
    predictions are binarised at (evaluation: 0.5)."""

    model: nn.Module
    threshold: float = 0.5

    def apply(self, variables: dict, x: jax.Array) -> jax.Array:
        """Consensus logits of images [B, H, W, channels] -> [B, H, W, K]."""
        global_params, local_params, *rest = variables["params"]
        mask_threshold = rest[0] if rest else None
        mask_logits = self.model.apply({"params": rest[1]}, x) if len(rest) > 1 else None
        return consensus_logits(self.model.apply({"params": global_params}, x),
                                self.model.apply({"params": local_params}, x), self.threshold,
                                mask_threshold, mask_logits)


def consensus_dice_per_threshold(model: nn.Module, global_params, local_params, split,
                                 candidates=(0.5, 0.4, 0.3, 0.2, 0.1), mask_params=None
                                 ) -> np.ndarray:
    """Each site's Dice on the lesion images of its own ``split`` for each candidate mask
    threshold of its consensus model: float64 [T, C] (-inf at a site with no lesion image).
    Params: leaves [C, ...] each (``mask_params``: optional, see :class:`ConsensusModel`)."""
    from fedmix_jax.evaluation import evaluate     # evaluation imports nothing of this module

    c = split.num_clients
    extra = () if mask_params is None else (mask_params,)
    rows = []
    for t in candidates:
        mt = jnp.full((c,), t, jnp.float32)
        dice = evaluate(ConsensusModel(model), (global_params, local_params, mt, *extra), split,
                        per_client_params=True, hd95=False)["dice_present"]
        rows.append(np.nan_to_num(np.asarray(dice, float), nan=-np.inf))
    return np.stack(rows)


def choose_mask_thresholds(model: nn.Module, global_params, local_params, split,
                           candidates=(0.5, 0.4, 0.3, 0.2, 0.1), mask_params=None) -> np.ndarray:
    """Each site's mask threshold: the candidate with the highest Dice on the lesion images of its
    own ``split`` (its validation split; the first candidate on ties and at sites with no lesion
    image), for its consensus model. ``global_params`` / ``local_params`` (/ ``mask_params``,
    optional: the model whose mask counts, :class:`ConsensusModel`): leaves [C, ...] each.
    Returns float32 [C]. Only the site's own images and masks are read, so each site can run
    this alone; the thresholds add no false positive (the lesion decision stays at 0.5; a
    candidate above it can only empty an agreed image)."""
    dice = consensus_dice_per_threshold(model, global_params, local_params, split, candidates,
                                        mask_params)
    return np.asarray(candidates, np.float32)[np.argmax(dice, axis=0)]

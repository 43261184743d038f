"""A site's fine-tuned copy for deployment: more local epochs at the site, from its own pair.

After the federation has trained, each site may keep training its own copy (the pair it holds
after its last round's local epoch) on its own training data, with the objective of its rounds
(:func:`fedmix_jax.site.site_round` with the site's own pair in place of the global one: its
pseudo-labels come from that pair; nothing is aggregated, nothing leaves the site). Its lesion
masks then fit the site's own lesion boundaries better (docs/weak_supervision.md, eleventh pass:
the pixel site's mask gains most, the box sites' extent some), but its lesion *decision* is not
better: more epochs on a site's weak labels also mark more of its lesion-free images, and a
site's validation split is too small to see it. So :func:`fine_tuned_consensus` uses the
fine-tuned copy only for the mask: in the site's :class:`~fedmix_jax.consensus.ConsensusModel`
an image and class are marked only where the global model, the site's round copy *and* the
fine-tuned copy all mark them (a subset of the two-model consensus's images), and there the
fine-tuned copy's mask counts. The number of epochs and the mask threshold are each site's own
choice, by Dice on the lesion images of its validation split.

Shapes: ``params`` a :class:`~fedmix_jax.site.ModelPair` with leaves [C, ...]; ``opt_state`` as
:class:`~fedmix_jax.site.SiteState`'s; ``train``: a :class:`FederatedSplit` (leaves [C, N, ...])
or its ``CompactSplit``.
"""

from __future__ import annotations

__all__ = ["FineTunedConsensus", "fine_tune_epoch", "fine_tuned_consensus"]

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax.consensus import consensus_dice_per_threshold
from fedmix_jax.round import broadcast, client_data, client_rows
from fedmix_jax.site import SiteState, site_round


@functools.lru_cache(maxsize=16)
def _epoch_fn(model: nn.Module, round_config):
    def epoch(params, opt_state, train, key, hparams, round_index):
        rows, pool = client_rows(train)
        keys = jax.random.split(key, jax.tree.leaves(params)[0].shape[0])

        def one(client):
            site, r, k = client
            return site_round(model, round_config, site.params, site, client_data(pool, r), k,
                              hparams, round_index)

        sites, _ = jax.lax.map(one, (SiteState(params, opt_state), rows, keys))
        return sites.params, sites.opt_state

    return jax.jit(epoch)


def fine_tune_epoch(model: nn.Module, round_config, params, opt_state, train, key: jax.Array,
                    hparams, round_index) -> tuple:
    """One more local epoch at every site, each from its own pair: ``(params, opt_state)``, the
    same structures. Pure and jitted (one compile per model and round config); ``round_index``:
    the 0-based round the epoch counts as (warm-up switches read it), may be traced. A site with
    no usable sample keeps its pair (its steps are masked)."""
    return _epoch_fn(model, round_config)(params, opt_state, train, key, hparams,
                                          jnp.asarray(round_index, jnp.int32))


@dataclasses.dataclass(frozen=True)
class FineTunedConsensus:
    """What :func:`fine_tuned_consensus` chose per site: ``mask_params`` (model 1, leaves
    [C, ...]), ``epochs`` int [C] (0: the round copy itself), ``thresholds`` float32 [C],
    ``val_dice`` float64 [C] (Dice on the validation lesion images, -inf at a site with none).
    Evaluate with ``ConsensusModel(model)`` and params
    ``(broadcast(global, C), round_copy, thresholds, mask_params)``."""

    mask_params: object
    epochs: np.ndarray
    thresholds: np.ndarray
    val_dice: np.ndarray


def fine_tuned_consensus(model: nn.Module, round_config, global_params, pair, opt_state, train,
                         val, key: jax.Array, hparams, round_index, max_epochs: int = 8,
                         candidates=(0.5, 0.4, 0.3, 0.2, 0.1)) -> FineTunedConsensus:
    """Each site fine-tunes its ``pair`` (leaves [C, ...], with its ``opt_state``) for up to
    ``max_epochs`` more local epochs (:func:`fine_tune_epoch`) and keeps, for the mask of its
    consensus model, the epoch (0 included: its round copy) and mask threshold with the highest
    Dice on the lesion images of its own ``val`` split (the earliest epoch and the first candidate
    on ties). ``global_params``: leaves [...] (the model the sites received). Each site reads
    only its own data, so each can run this alone; the result is the same."""
    if max_epochs < 0:
        raise ValueError(f"max_epochs must be >= 0, got {max_epochs}")
    c = val.num_clients
    g = broadcast(global_params, c)
    round_copy = pair[0]
    cand = np.asarray(candidates, np.float32)

    def scores(mask_params):
        dice = consensus_dice_per_threshold(model, g, round_copy, val, candidates, mask_params)
        return dice.max(axis=0), cand[np.argmax(dice, axis=0)]

    best, thresholds = scores(round_copy)
    epochs = np.zeros(c, np.int32)
    mask_params = round_copy
    params = pair
    for e in range(1, max_epochs + 1):
        params, opt_state = fine_tune_epoch(model, round_config, params, opt_state, train,
                                            jax.random.fold_in(key, e), hparams, round_index)
        dice, thr = scores(params[0])
        better = dice > best
        if not better.any():
            continue
        pick = jnp.asarray(better)
        mask_params = jax.tree.map(
            lambda new, old: jnp.where(pick.reshape((c,) + (1,) * (new.ndim - 1)), new, old),
            params[0], mask_params)
        best, thresholds, epochs = (np.where(better, dice, best), np.where(better, thr, thresholds),
                                    np.where(better, e, epochs).astype(np.int32))
    return FineTunedConsensus(mask_params=mask_params, epochs=epochs,
                              thresholds=thresholds.astype(np.float32), val_dice=best)

"""Seeded FedMix runs for the benchmark scripts: one compiled round per configuration, its seeds
reuse it; each run reports the test figures of its best-validation round."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import fedmix_jax as fm
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.consensus import ConsensusModel, choose_mask_thresholds
from fedmix_jax.diagnostics import pseudo_label_diagnostics, summarize
from fedmix_jax.evaluation import evaluate
from fedmix_jax.fine_tuning import fine_tuned_consensus
from fedmix_jax.round import broadcast
from fedmix_jax.round_selection import selection_score


def reported_figures(test: dict, hd95: bool) -> dict:
    """The figures a run reports from :func:`~fedmix_jax.evaluation.evaluate`'s ``test``."""
    return dict(dice=float(test["mean_dice"]),
                dice_lesion=float(test["mean_dice_present"]),
                fp_rate=float(test["mean_false_positive_rate"]),
                fp_rate_per_client=[float(x) for x in test["false_positive_rate"]],
                dice_lesion_per_client=[float(x) for x in test["dice_present"]],
                dice_per_class=[float(x) for x in test["mean_dice_per_class"]],
                dice_lesion_per_class=[float(x) for x in test["mean_dice_present_per_class"]],
                **({"hd95": float(test["mean_hd95"])} if hd95 else {}))


def run_variant(config, federation, seeds, rounds, hd95=False, round_times=None,
                diagnostics=False, local=False, fine_tune_epochs=0, select_by="mean_dice",
                every_round=False):
    """Best-validation test figures of each seed: list of dicts (with ``hd95``: HD95 and the
    per-class Dice too). ``round_times``, if a list, gets each round's seconds (the round alone,
    to its results on the host; the first one compiles). With ``diagnostics`` = k (an int; True
    is 1), each run also gets ``pseudo_labels``: in round 1 and every k-th round, the pooled
    pseudo-label diagnostics of the pair the round starts from (:mod:`fedmix_jax.diagnostics`;
    empty for strategies without pseudo-labels). With ``local``, each run also gets ``local``:
    the same figures of the sites' local models (each site's model 1 after its local epoch, on
    its own test split) at the round where their mean validation Dice (each on its own
    validation split) is highest -- what a site that keeps its own fine-tuned copy deploys -- and
    ``consensus``: the same of each site's :mod:`~fedmix_jax.consensus` model (its local copy's
    mask where it and the global model both mark a lesion), at its own best validation round;
    ``consensus_tuned``: the same consensus models with each site's mask threshold chosen on its
    own validation split (:func:`~fedmix_jax.consensus.choose_mask_thresholds`; ``thresholds``).
    With ``local`` and ``fine_tune_epochs`` > 0, also ``consensus_finetuned``: each site's
    consensus model whose mask is its copy fine-tuned for up to that many more local epochs
    (:func:`~fedmix_jax.fine_tuning.fine_tuned_consensus`, from the same round; ``epochs`` and
    ``thresholds`` each site chose on its validation split)."""
    model = build_model(config, federation.num_classes)
    round_config = build_round_config(config)
    round_fn = fm.make_round_fn(model, round_config)
    consensus = ConsensusModel(model)
    train = jax.device_put(federation.train)
    image_shape = federation.train.images.shape[2:]
    out = []
    for seed in seeds:
        state = fm.init_state(model, jax.random.PRNGKey(seed), image_shape,
                              federation.num_clients, round_config)
        best = (-1.0, 0, None)          # validation score, round, model 1's params
        best_local = (-1.0, 0, None)    # the same of the local models (leaves [C, ...])
        best_consensus = (-1.0, 0, None)    # (global [C, ...], local [C, ...])
        site_pair = None                    # the sites' pairs and optimiser states there
        per_round, every = [], []
        for r in range(rounds):
            if diagnostics and (r == 0 or (r + 1) % int(diagnostics) == 0):
                per_round.append({"round": r + 1, **summarize(pseudo_label_diagnostics(
                    model, round_config, state.global_params, train))})
            t0 = time.perf_counter()
            state, metrics = round_fn(state, train)
            jax.block_until_ready(metrics)
            if round_times is not None:
                round_times.append(time.perf_counter() - t0)
            params = state.global_params[0]
            val_figures = evaluate(model, params, federation.val, hd95=False)
            val = selection_score(val_figures, select_by)
            if every_round:
                every.append(dict(
                    round=int(state.round), val_mean_dice=float(val_figures["mean_dice"]),
                    val_dice_lesion=float(val_figures["mean_dice_present"]),
                    val_fp_rate=float(val_figures["mean_false_positive_rate"]),
                    **reported_figures(evaluate(model, params, federation.test, hd95=False),
                                       False)))
            if val > best[0]:       # the test split is scored once, for the selected round
                best = (val, int(state.round), jax.tree.map(jnp.copy, params))
            if local:
                mine = state.client_params[0]
                val = selection_score(evaluate(model, mine, federation.val,
                                               per_client_params=True, hd95=False), select_by)
                if val > best_local[0]:
                    best_local = (val, int(state.round), jax.tree.map(jnp.copy, mine))
                pair = (broadcast(params, federation.num_clients), mine)
                val = selection_score(evaluate(consensus, pair, federation.val,
                                               per_client_params=True, hd95=False), select_by)
                if val > best_consensus[0]:
                    best_consensus = (val, int(state.round), jax.tree.map(jnp.copy, pair))
                    if fine_tune_epochs:
                        site_pair = jax.tree.map(jnp.copy, (params, state.client_params,
                                                            state.opt_state))
        val, best_round, params = best
        test = evaluate(model, params, federation.test, hd95=hd95)
        run = dict(seed=seed, round=best_round, val_dice=float(val), **reported_figures(test, hd95),
                   **({"pseudo_labels": per_round} if diagnostics else {}),
                   **({"rounds": every} if every_round else {}))
        if local:
            for key, m, (val, best_round, params) in (("local", model, best_local),
                                                      ("consensus", consensus, best_consensus)):
                test = evaluate(m, params, federation.test, per_client_params=True, hd95=hd95)
                run[key] = dict(round=best_round, val_dice=float(val),
                                **reported_figures(test, hd95))
            val, best_round, (g, mine) = best_consensus
            thresholds = choose_mask_thresholds(model, g, mine, federation.val)
            test = evaluate(consensus, (g, mine, thresholds), federation.test,
                            per_client_params=True, hd95=hd95)
            run["consensus_tuned"] = dict(round=best_round, val_dice=float(val),
                                          thresholds=[round(float(t), 3) for t in thresholds],
                                          **reported_figures(test, hd95))
            if fine_tune_epochs:
                g_params, pair, opt_state = site_pair
                tuned = fine_tuned_consensus(
                    model, round_config, g_params, pair, opt_state, train, federation.val,
                    jax.random.fold_in(jax.random.PRNGKey(seed), best_round),
                    round_config.hparams(), best_round, max_epochs=fine_tune_epochs)
                test = evaluate(consensus, (g, mine, tuned.thresholds, tuned.mask_params),
                                federation.test, per_client_params=True, hd95=hd95)
                run["consensus_finetuned"] = dict(
                    round=best_round, val_dice=float(val),
                    epochs=[int(e) for e in tuned.epochs],
                    thresholds=[round(float(t), 3) for t in tuned.thresholds],
                    **reported_figures(test, hd95))
        out.append(run)
    return out

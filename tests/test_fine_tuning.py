"""``fedmix_jax.fine_tuning``: each site fine-tunes its own pair further, and its consensus model
takes the fine-tuned copy's mask for the epoch and threshold its validation split prefers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedmix_jax as fm
from fedmix_jax.config import build_model, build_round_config
from fedmix_jax.consensus import (choose_mask_thresholds, consensus_dice_per_threshold)
from fedmix_jax.data.sources import load_federation
from fedmix_jax.fine_tuning import fine_tune_epoch, fine_tuned_consensus
from fedmix_jax.round import broadcast
from fedmix_jax.site import SiteState, site_round
from test_main import tiny_config


@pytest.fixture(scope="module")
def trained():
    """A tiny fedmix_plus federation after one round: (model, round config, federation, state)."""
    cfg = tiny_config(strategy="fedmix_plus")
    fed = load_federation(cfg.data, verbose=False)
    model = build_model(cfg, fed.num_classes)
    rc = build_round_config(cfg)
    state = fm.init_state(model, jax.random.PRNGKey(0), fed.train.images.shape[2:],
                          fed.num_clients, rc)
    state, _ = fm.make_round_fn(model, rc)(state, fed.train)
    return model, rc, fed, state


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_an_epoch_is_each_sites_round_from_its_own_pair(trained):
    """Site c's new pair is ``site_round`` with its own pair as the start and the pseudo-labels'
    source; a site without a usable sample keeps its pair."""
    model, rc, fed, state = trained
    train = dataclasses.replace(fed.train, valid=np.asarray(fed.train.valid).copy())
    train.valid[3] = False      # site 3 has nothing to train on
    key, hp = jax.random.PRNGKey(5), rc.hparams()
    params, opt = fine_tune_epoch(model, rc, state.client_params, state.opt_state, train, key,
                                  hp, 1)
    keys = jax.random.split(key, fed.num_clients)
    one = jax.jit(lambda mine, site, data, k: site_round(model, rc, mine, site, data, k, hp,
                                                         jnp.int32(1)))
    for c in range(fed.num_clients):
        mine = jax.tree.map(lambda x: x[c], state.client_params)
        site = SiteState(mine, jax.tree.map(lambda x: x[c], state.opt_state))
        want, _ = one(mine, site, jax.tree.map(lambda x: jnp.asarray(x[c]), train), keys[c])
        got = jax.tree.map(lambda x: x[c], params)
        for w, g in zip(jax.tree.leaves(want.params), jax.tree.leaves(got)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
        changed = not _leaves_equal(got, mine)
        assert changed == (c != 3)


def test_without_epochs_it_is_the_tuned_consensus(trained):
    model, rc, fed, state = trained
    g = state.global_params[0]
    out = fine_tuned_consensus(model, rc, g, state.client_params, state.opt_state, fed.train,
                               fed.val, jax.random.PRNGKey(0), rc.hparams(), 1, max_epochs=0)
    assert _leaves_equal(out.mask_params, state.client_params[0])
    np.testing.assert_array_equal(out.epochs, np.zeros(fed.num_clients, np.int32))
    np.testing.assert_array_equal(out.thresholds, choose_mask_thresholds(
        model, broadcast(g, fed.num_clients), state.client_params[0], fed.val))
    with pytest.raises(ValueError, match="max_epochs"):
        fine_tuned_consensus(model, rc, g, state.client_params, state.opt_state, fed.train,
                             fed.val, jax.random.PRNGKey(0), rc.hparams(), 1, max_epochs=-1)


def test_each_site_keeps_its_best_validation_epoch(trained):
    """The chosen epoch and threshold of each site are the argmax of its validation lesion Dice
    over (epoch, candidate), recomputed here epoch by epoch; the mask params are that epoch's."""
    model, rc, fed, state = trained
    g, key, hp, c = state.global_params[0], jax.random.PRNGKey(3), rc.hparams(), fed.num_clients
    out = fine_tuned_consensus(model, rc, g, state.client_params, state.opt_state, fed.train,
                               fed.val, key, hp, 1, max_epochs=2)
    gb, round_copy = broadcast(g, c), state.client_params[0]
    copies = [round_copy]
    params, opt = state.client_params, state.opt_state
    for e in (1, 2):
        params, opt = fine_tune_epoch(model, rc, params, opt, fed.train,
                                      jax.random.fold_in(key, e), hp, 1)
        copies.append(params[0])
    dice = np.stack([consensus_dice_per_threshold(model, gb, round_copy, fed.val,
                                                  mask_params=m) for m in copies])  # [E, T, C]
    flat = dice.reshape(-1, c)
    best = np.argmax(flat, axis=0)      # the earliest epoch, then the first candidate, on ties
    np.testing.assert_array_equal(out.epochs, best // dice.shape[1])
    np.testing.assert_array_equal(out.thresholds,
                                  np.asarray((0.5, 0.4, 0.3, 0.2, 0.1), np.float32)[
                                      best % dice.shape[1]])
    np.testing.assert_allclose(out.val_dice, flat.max(axis=0))
    for site in range(c):
        want = jax.tree.map(lambda x: x[site], copies[int(out.epochs[site])])
        assert _leaves_equal(jax.tree.map(lambda x: x[site], out.mask_params), want)

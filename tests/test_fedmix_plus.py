"""fedmix_plus (FedMix + the weak labels used directly as losses): the round's invariants on tiny
shapes, its config, and the pseudo-label diagnostics against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedmix_jax as fm
from fedmix_jax.data.federation import BOX, IMAGE, NONE, PIXEL, stack_clients
from fedmix_jax.diagnostics import pseudo_label_diagnostics, summarize
from fedmix_jax.losses import dice_coefficient
from fedmix_jax.weak_objective import WeakSupervision
from fedmix_jax.pseudo_labels import SelectionConfig
from fedmix_jax.pseudo_labels import site_pseudo_labels
from test_round import LENIENT, MODEL, SIZE, as_device, assert_trees, make_client

# Nothing is ever selected: an agreement above 1 is impossible (dice <= 1), and empty agreed
# predictions are rejected. Only the direct weak-label terms can train the weak clients.
STRICT = SelectionConfig(agreement=1.0, box_fit=1.0, reject_empty=True, use_image_labels=False,
                         empty_boxes_negative=False)


@pytest.fixture(scope="module")
def clients():
    rng = np.random.default_rng(1)
    return [make_client(rng, 9, BOX), make_client(rng, 6, PIXEL), make_client(rng, 7, IMAGE),
            make_client(rng, 5, NONE)]


def _cfg(strategy, selection, **kw):
    return fm.RoundConfig(strategy=fm.get_strategy(strategy, selection), batch_size=4,
                         crop=(12, 12), **kw)


def _rounds(split, cfg, rounds=2, seed=0):
    state = fm.init_state(MODEL, jax.random.PRNGKey(seed), (SIZE, SIZE, 1), split.num_clients,
                         cfg)
    before = jax.device_get(state)
    round_fn = fm.make_round_fn(MODEL, cfg)
    ms = []
    for _ in range(rounds):
        state, m = round_fn(state, as_device(split))
        ms.append(jax.device_get(m))
    return before, jax.device_get(state), ms


@pytest.fixture(scope="module")
def strict_runs(clients):
    """One round of fedmix and two of fedmix_plus where nothing is ever selected."""
    split = stack_clients(clients)
    return _rounds(split, _cfg("fedmix", STRICT), rounds=1), _rounds(
        split, _cfg("fedmix_plus", STRICT), rounds=2)


@pytest.fixture(scope="module")
def lenient_run(clients):
    return _rounds(stack_clients(clients), _cfg("fedmix_plus", LENIENT))


def test_weak_clients_train_on_their_labels_without_any_selection(strict_runs):
    (_, _, plain), (_, _, plus) = strict_runs
    m, p = plain[0], plus[0]
    assert m.reports.num_selected_weak.sum() == 0 and p.reports.num_selected_weak.sum() == 0
    # fedmix: only the pixel client trains; fedmix_plus: the box and image clients too, every
    # sample (n_i counts them); the unlabelled client has nothing to train on.
    assert m.reports.steps.tolist() == [0, 2, 0, 0]
    assert m.reports.num_usable.tolist() == [0, 6, 0, 0]
    assert p.reports.steps.tolist() == [3, 2, 2, 0]
    assert p.reports.num_usable.tolist() == [9, 6, 7, 0]
    # l_i stays the Dice loss of samples with a (pseudo-)target: 0 for the weak clients here
    assert p.reports.loss1[0] == 0 and p.reports.loss1[2] == 0 and p.reports.loss1[1] > 0
    assert np.isclose(p.weights.sum(), 1.0) and p.weights[3] == 0


def test_warm_up_trains_what_fedmix_trains_then_every_weak_sample(clients, strict_runs):
    # weak.warmup_rounds = 1: round 1 trains only FedMix's samples (here the pixel client), with
    # FedMix's update; from round 2 on the box and image clients train on their weak labels.
    (_, _, plain), _ = strict_runs
    base = _cfg("fedmix_plus", STRICT)
    cfg = fm.RoundConfig(strategy=base.strategy.with_weak(WeakSupervision(warmup_rounds=1)),
                         batch_size=4, crop=(12, 12))
    _, _, ms = _rounds(stack_clients(clients), cfg, rounds=2)
    assert ms[0].reports.steps.tolist() == plain[0].reports.steps.tolist() == [0, 2, 0, 0]
    assert ms[0].reports.num_usable.tolist() == [0, 6, 0, 0]
    assert ms[1].reports.steps.tolist() == [3, 2, 2, 0]
    assert ms[1].reports.num_usable.tolist() == [9, 6, 7, 0]


def test_masked_steps_leave_a_client_without_labels_untouched(strict_runs):
    # The unlabelled client (NONE) selects nothing: every step is masked and its Adam state
    # passes through bit-identical.
    _, (before, after, ms) = strict_runs
    take = lambda t, c: jax.tree.map(lambda x: np.asarray(x)[c], t)  # noqa: E731
    assert [int(m.reports.steps[3]) for m in ms] == [0, 0]
    assert_trees(take(after.opt_state, 3), take(before.opt_state, 3))


def test_padding_with_invalid_samples_changes_nothing(clients, lenient_run):
    split = stack_clients(clients)
    padded = split.pad_to(split.max_samples + 5)
    _, s1, m1 = lenient_run
    _, s2, m2 = _rounds(padded, _cfg("fedmix_plus", LENIENT))
    assert sum(int(m.reports.num_selected_weak.sum()) for m in m1) > 0
    assert_trees(s1.global_params, s2.global_params, exact=False, atol=1e-6)
    for a, b in zip(m1, m2):
        np.testing.assert_array_equal(a.reports.num_usable, b.reports.num_usable)
        np.testing.assert_allclose(a.reports.loss1, b.reports.loss1, rtol=5e-4, atol=1e-7)


def test_weak_weights_change_the_update(clients, lenient_run):
    cfg = _cfg("fedmix_plus", LENIENT)
    off = WeakSupervision(emptiness=0.0, tightness=0.0, image_mil=0.0)
    cfg_off = fm.RoundConfig(strategy=cfg.strategy.with_weak(off), batch_size=4, crop=(12, 12))
    _, b, _ = _rounds(stack_clients(clients), cfg_off)
    _, a, _ = lenient_run
    leaf = lambda s: jax.tree.leaves(s.global_params)[0]  # noqa: E731
    assert not np.allclose(leaf(a), leaf(b))


def test_box_appearance_changes_the_update_of_box_clients_only(clients):
    """With nothing selected, weak.box_appearance moves the box client's local models in its
    first round (its boxes' appearance masks are targets) and leaves the others' as they were."""
    cfg = _cfg("fedmix_plus", STRICT)
    on = WeakSupervision(box_appearance=1.0, appearance_min_contrast=0.0)
    cfg_on = fm.RoundConfig(strategy=cfg.strategy.with_weak(on), batch_size=4, crop=(12, 12))
    _, a, _ = _rounds(stack_clients(clients), cfg, rounds=1)
    _, b, mb = _rounds(stack_clients(clients), cfg_on, rounds=1)
    assert np.isfinite(np.asarray(mb[-1].reports.loss1)).all()
    leaf = lambda s, c: jax.tree.leaves(s.client_params)[0][c]  # noqa: E731
    assert not np.allclose(leaf(a, 0), leaf(b, 0))           # client 0: boxes
    for c in (1, 2, 3):                                      # pixel, image-level, unlabelled
        np.testing.assert_array_equal(leaf(a, c), leaf(b, c))


def test_config_builds_the_weak_terms():
    import ml_collections

    from fedmix_jax.config import build_round_config
    from fedmix_jax.config_defaults import run_config, selection_config, train_config
    from fedmix_jax.errors import ConfigError

    config = run_config(2, 1, 1, width=4, depth=2)
    config.train = train_config(4, None, 10.0, 3.0)
    config.selection = selection_config()
    config.weak.tightness_inset = 3
    config.weak.emptiness = 0.5
    config.strategy = "fedmix_plus"
    rc = build_round_config(config)
    assert rc.strategy.weak == WeakSupervision(emptiness=0.5, tightness_inset=3)
    # fedmix_plus selects box pseudo-labels with weak.box_fit; fedmix keeps selection.box_fit
    assert rc.strategy.selection.box_fit == 0.2 == fm.get_strategy("fedmix_plus").selection.box_fit
    config.weak.box_fit = 0.4
    assert build_round_config(config).strategy.selection.box_fit == 0.4
    config.strategy = "fedmix"
    assert build_round_config(config).strategy.weak is None
    assert build_round_config(config).strategy.selection.box_fit == 0.5
    config.strategy = "fedmix_plus"
    config.weak.tightness = -1.0
    with pytest.raises(ConfigError, match="weak.tightness"):
        build_round_config(config)
    # (fedmix_plus streams too: tests/test_streaming.py checks it against the in-memory round.)
    del ml_collections


def test_diagnostics_match_a_numpy_reference(clients):
    split = stack_clients(clients)
    cfg = _cfg("fedmix", LENIENT)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 4, cfg)
    diag = pseudo_label_diagnostics(MODEL, cfg, state.global_params, as_device(split))
    assert set(k.split("_")[1] for k in diag) == {"box", "image", "none"}
    for c, level, name in ((0, BOX, "box"), (2, IMAGE, "image"), (3, NONE, "none")):
        site = jax.tree.map(lambda x: jnp.asarray(x)[c], split)
        pl = site_pseudo_labels(MODEL, state.global_params, site, cfg)
        sel = np.asarray(pl.selected) & np.asarray(site.valid)
        dice = np.asarray(dice_coefficient(np.asarray(pl.pseudo2, np.float32),
                                           np.asarray(site.masks, np.float32)))
        mine = np.asarray(site.valid) & (np.asarray(site.levels) == level)
        assert diag[f"pl_{name}_n"][c] == mine.sum()
        assert diag[f"pl_{name}_sel"][c] == (sel & mine).sum()
        if (sel & mine).any():
            np.testing.assert_allclose(diag[f"pl_{name}_dice"][c], dice[sel & mine].mean(),
                                       rtol=1e-5)
            np.testing.assert_allclose(diag[f"pl_{name}_precision"][c],
                                       (dice[sel & mine] >= 0.8).mean(), rtol=1e-6)
        else:
            assert diag[f"pl_{name}_dice"][c] is None
        good = mine & (dice >= 0.8)
        if good.any():
            np.testing.assert_allclose(diag[f"pl_{name}_recall"][c], sel[good].mean(), rtol=1e-6)
    pooled = summarize(diag)
    assert pooled["pl_box_n"] == 9 and pooled["pl_image_n"] == 7 and pooled["pl_none_n"] == 5
    # fedavg_pixel trains on no pseudo-label: nothing to diagnose
    assert pseudo_label_diagnostics(MODEL, _cfg("fedavg_pixel", LENIENT), state.global_params,
                                    as_device(split)) == {}

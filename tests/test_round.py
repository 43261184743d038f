"""Invariants of the compiled federated round, and a small end-to-end learning check."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedmix_jax as fm
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, stack_clients
from fedmix_jax.evaluation import evaluate
from fedmix_jax.models import UNet
from fedmix_jax.pseudo_labels import SelectionConfig
from fedmix_jax.site import TrainInputs, local_epoch

MODEL = UNet(width=4, depth=2)
SIZE = 16
# Lenient selection, so that a freshly initialised model selects weak samples and every code path
# (pseudo-labels, both models, adaptive weights) carries real numbers.
LENIENT = SelectionConfig(agreement=0.0, box_fit=0.0, reject_empty=False)


def make_client(rng, n, level):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((n, SIZE, SIZE, 1), np.float32)
    for i in range(n):
        cy, cx, r = rng.integers(4, 12), rng.integers(4, 12), rng.integers(2, 5)
        masks[i, ..., 0] = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    images = (0.3 + 0.5 * masks + 0.1 * rng.random(masks.shape)).astype(np.float32)
    boxes = np.zeros_like(masks)
    for i in range(n):
        ys, xs = np.nonzero(masks[i, ..., 0])
        boxes[i, max(ys.min() - 1, 0):ys.max() + 2, max(xs.min() - 1, 0):xs.max() + 2] = 1
    return dict(images=images, masks=masks, boxes=boxes, image_labels=masks.max(axis=(1, 2)),
                levels=np.full(n, level, np.int32))


@pytest.fixture(scope="module")
def clients():
    rng = np.random.default_rng(0)
    return [make_client(rng, 9, BOX), make_client(rng, 6, PIXEL), make_client(rng, 11, IMAGE)]


def selected_count(metrics):
    return sum(int(m.reports.num_selected_weak.sum()) for m in metrics)


def as_device(split):
    return jax.tree.map(jnp.asarray, split)


def run(split, strategy="fedmix", rounds=2, executor="loop", seed=0, **kw):
    cfg = fm.RoundConfig(strategy=fm.get_strategy(strategy, LENIENT), batch_size=4, crop=(12, 12),
                        executor=executor, **kw)
    state = fm.init_state(MODEL, jax.random.PRNGKey(seed), (SIZE, SIZE, 1), split.num_clients, cfg)
    round_fn = fm.make_round_fn(MODEL, cfg)
    split = as_device(split)
    metrics = []
    for _ in range(rounds):
        state, m = round_fn(state, split)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics, round_fn


def assert_trees(a, b, exact=True, atol=1e-5):
    """Same tree structure and leaves equal (``exact``) or close."""
    if exact:
        chex.assert_trees_all_equal(a, b)
    else:
        chex.assert_trees_all_close(a, b, atol=atol, rtol=1e-4)


def test_same_seed_is_bit_identical(clients):
    split = stack_clients(clients)
    s1, m1, _ = run(split)
    s2, m2, _ = run(split)
    assert selected_count(m1) > 0
    assert_trees(s1, s2)
    assert_trees(m1, m2)
    s3, _, _ = run(split, seed=1)
    assert not np.array_equal(jax.tree.leaves(s1.global_params)[0],
                              jax.tree.leaves(s3.global_params)[0])


def test_padding_with_invalid_samples_changes_nothing(clients):
    split = stack_clients(clients)
    padded = split.pad_to(split.max_samples + 7)
    s1, m1, _ = run(split)
    s2, m2, _ = run(padded)
    assert selected_count(m1) > 0
    assert_trees(s1.global_params, s2.global_params, exact=False, atol=1e-6)
    assert_trees(s1.opt_state, s2.opt_state, exact=False, atol=1e-6)
    for a, b in zip(m1, m2):
        np.testing.assert_array_equal(a.reports.num_usable, b.reports.num_usable)
        np.testing.assert_allclose(a.reports.loss1, b.reports.loss1, rtol=5e-4)
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-5)


def test_masked_steps_leave_client_bit_identical(clients):
    # Under `local` the box and image clients have no usable sample: every step is masked.
    split = as_device(stack_clients(clients))
    cfg = fm.RoundConfig(strategy=fm.get_strategy("local"), batch_size=4, crop=(12, 12))
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    clients_before = jax.device_get(state.client_params)
    opt_before = jax.device_get(state.opt_state)
    round_fn = fm.make_round_fn(MODEL, cfg)
    for _ in range(2):
        state, m = round_fn(state, split)
    m = jax.device_get(m)
    assert m.reports.steps.tolist() == [0, 2, 0] and m.reports.num_usable.tolist() == [0, 6, 0]
    assert m.weights.tolist() == [0, 0, 0]
    take = lambda t, c: jax.tree.map(lambda x: np.asarray(x)[c], t)  # noqa: E731
    for c in (0, 2):
        assert_trees(take(state.client_params, c), take(clients_before, c))
        assert_trees(take(state.opt_state, c), take(opt_before, c))
    # the pixel client trained alone: its model moved, and no other model moved with it
    assert not np.array_equal(jax.tree.leaves(take(state.client_params, 1))[0],
                              jax.tree.leaves(take(clients_before, 1))[0])


def test_client_update_with_no_usable_sample_is_identity(clients):
    split = stack_clients(clients)
    cfg = fm.RoundConfig(batch_size=4)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    take = lambda t: jax.tree.map(lambda x: x[0], t)  # noqa: E731
    params, opt = take(state.client_params), take(state.opt_state)
    no_sample = jnp.zeros((split.max_samples,), bool)
    inputs = TrainInputs(images=split.images[0], target1=split.masks[0],
                         target2=split.masks[0], usable=no_sample, weak=no_sample,
                         selected_weak=no_sample, self_train=no_sample)
    p, o, (loss1, _, steps) = jax.jit(lambda *a: local_epoch(MODEL, cfg, *a))(
        params, opt, jax.random.PRNGKey(1), inputs, jnp.float32(cfg.learning_rate))
    assert_trees(p, params)
    assert_trees(o, opt)
    assert int(steps) == 0 and float(loss1) == 0.0


def test_equal_weights_give_plain_mean(clients):
    rng = np.random.default_rng(3)
    n = max(len(c["levels"]) for c in clients)        # same shapes as `clients`: no recompile
    split = stack_clients([make_client(rng, n, PIXEL) for _ in range(3)])
    state, metrics, _ = run(split, rounds=1, lam=0.0)
    np.testing.assert_allclose(metrics[0].weights, np.full(3, 1 / 3), rtol=1e-6)
    mean = jax.tree.map(lambda x: np.asarray(x).mean(0), state.client_params)
    assert_trees(state.global_params, mean, exact=False, atol=1e-6)


def test_lambda_zero_gives_count_weights(clients):
    split = stack_clients(clients)
    _, metrics, _ = run(split, rounds=1, lam=0.0)
    m = metrics[0]
    counts = m.reports.num_usable
    assert counts.sum() > counts[1]                # weak samples were selected
    np.testing.assert_allclose(m.weights, counts / counts.sum(), rtol=1e-6)
    _, metrics10, _ = run(split, rounds=1, lam=10.0)
    w10 = metrics10[0]
    expected = (counts / counts.sum()
                + 10 * w10.reports.loss1 ** 3 / (w10.reports.loss1 ** 3).sum())
    np.testing.assert_allclose(w10.weights, expected / expected.sum(), rtol=1e-5)
    assert not np.allclose(w10.weights, m.weights)


@pytest.fixture(scope="module")
def loop_run(clients):
    return run(stack_clients(clients), executor="loop")


@pytest.mark.parametrize("group", [0, 2])
def test_vmap_and_loop_executors_agree(clients, loop_run, group):
    """``vmap`` of all three clients, and in groups of 2 (the second group padded with a
    non-participating client), computes the loop's round."""
    split = stack_clients(clients)
    s_loop, m_loop, _ = loop_run
    s_vmap, m_vmap, _ = run(split, executor="vmap", client_group=group)
    for a, b in zip(m_loop, m_vmap):
        np.testing.assert_array_equal(a.reports.num_usable, b.reports.num_usable)
        np.testing.assert_allclose(a.reports.loss1, b.reports.loss1, rtol=5e-4)
        np.testing.assert_allclose(a.reports.loss2, b.reports.loss2, rtol=5e-4)
        np.testing.assert_allclose(a.weights, b.weights, rtol=5e-4)
    # Adam divides by sqrt(v): a parameter whose gradient is ~0 moves by up to lr in a direction
    # set by rounding, so the bound is one step (lr = 1e-3); almost all parameters agree closely.
    diff = np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel() for x, y in zip(
        jax.tree.leaves(s_loop.global_params), jax.tree.leaves(s_vmap.global_params))])
    assert diff.max() < 2e-3 and np.median(diff) < 1e-6, (diff.max(), np.median(diff))


@pytest.mark.parametrize("executor", ["vmap", "loop"])
def test_no_recompilation_after_first_round(clients, executor):
    split = as_device(stack_clients(clients))
    cfg = fm.RoundConfig(strategy=fm.get_strategy("fedmix", LENIENT), batch_size=4, crop=(12, 12),
                        executor=executor)
    state = fm.init_state(MODEL, jax.random.PRNGKey(0), (SIZE, SIZE, 1), 3, cfg)
    round_fn = fm.make_round_fn(MODEL, cfg)
    state, _ = round_fn(state, split)
    sizes = [j._cache_size() for j in round_fn.jitted]
    for _ in range(2):
        state, _ = round_fn(state, split)
    assert [j._cache_size() for j in round_fn.jitted] == sizes


def test_unknown_strategy_and_executor_raise():
    with pytest.raises(ValueError, match="unknown strategy"):
        fm.get_strategy("fedprox")
    with pytest.raises(ValueError, match="unknown executor"):
        fm.RoundConfig(executor="pmap")
    with pytest.raises(ValueError, match="client_group=2 groups clients of the 'vmap' or"):
        fm.RoundConfig(executor="map", client_group=2)
    with pytest.raises(ValueError, match="client_group must be >= 0"):
        fm.RoundConfig(executor="vmap", client_group=-1)


@pytest.mark.slow
def test_end_to_end_learns_and_selects():
    """Three clients [image, box, pixel], 176 synthetic 32x32 images, width-8 U-Net, 6 rounds."""
    from fedmix_jax.data.synthetic import make_synthetic_federation

    # 1-3 px box margins: the spec's 1-9 px at 256 px, scaled to 32 px images.
    fed = make_synthetic_federation(num_clients=3, image_size=32, train_sizes=(64, 64, 48),
                                    val_size=8, test_size=24, levels=("image", "box", "pixel"),
                                    lesion_free_fraction=0.1, box_margin=(1, 3), seed=0)
    model = UNet(width=8)
    cfg = fm.RoundConfig(strategy=fm.get_strategy("fedmix"), batch_size=8, learning_rate=3e-3)
    state = fm.init_state(model, jax.random.PRNGKey(0), (32, 32, 1), 3, cfg)
    before = evaluate(model, state.global_params[0], fed.test)["mean_dice"]
    round_fn = fm.make_round_fn(model, cfg)
    train = as_device(fed.train)
    selected = np.zeros(3)
    for _ in range(6):
        state, m = round_fn(state, train)
        selected += np.asarray(m.reports.num_selected_weak)
    after = evaluate(model, state.global_params[0], fed.test)["mean_dice"]
    assert after > before + 0.2, (before, after)
    assert selected[0] > 0 and selected[1] > 0 and selected[2] == 0, selected

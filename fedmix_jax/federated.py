"""The compiled FedMix round: state, strategies, local training and aggregation.

Shapes of the state (``C`` clients; a "model pair" is the tuple ``(params_model1, params_model2)``):

=====================  ================================================================
``global_params``      model pair, leaves [...]            the server's global models
``client_params``      model pair, leaves [C, ...]         each client's local models after
                                                            its last local epoch
``opt_state``          (adam_model1, adam_model2),          per-client Adam states; they persist
                       leaves [C, ...]                      across rounds, as in the reference
``round``              [] int32                             rounds completed
``key``                [2] uint32                           PRNG key, split once per round
=====================  ================================================================

The data of a round is a :class:`~fedmix_jax.data.federation.FederatedSplit` with leaves
[C, N, ...] (N padded; ``valid`` [C, N] masks padding). Inside the round every per-sample decision
is a mask of shape [C, N]:

* ``selected`` — pseudo-label selection (pixel samples: True);
* ``usable = valid & (level == PIXEL | selected)`` — samples that train this round
  (``n_i = sum usable``);
* each client makes ``S = ceil(N / B)`` local steps over fixed-size batches of its usable samples
  in a fresh random order; a batch with no usable sample is a *masked step* whose parameters and
  Adam state pass through bit-identical.

One round (fedmix-spec.md): broadcast -> pseudo-labels of the global models on un-augmented images
-> one local epoch per client -> per-client loss of model 1 and count -> weights -> aggregation.

How the client axis executes is a choice (``RoundConfig.executor``), all giving the same numbers
to float tolerance:

* ``"vmap"`` — one jitted program, clients vectorised (memory grows with the clients: at the
  reference size it does not fit an 80 GB GPU for 4 clients; on CPU XLA turns a vmapped
  convolution over different weights into a slow grouped convolution);
* ``"map"`` — one jitted program, clients one after another under ``lax.map`` (no Python loop,
  one dispatch per round, memory of one client; the default, see :func:`default_executor`);
* ``"loop"`` — a Python loop over one jitted per-client update that updates the stacked state in
  place (three programs per round);
* ``"sharded"`` — the client axis split over the devices of a 1-D mesh ``"clients"``
  (``shard_map``): each device runs its block of clients one after another (``lax.map``), the
  aggregation is a cross-device weighted sum (``psum``). A client count that the device count does
  not divide is padded with non-participating clients (no valid sample: weight 0), sliced off the
  outputs. See :mod:`fedmix_jax.sharding`.

Work that changes nothing is skipped where the executor runs clients one at a time (``map``,
``loop``, ``sharded`` on CPU): a masked local step is a ``lax.cond`` branch that passes the state
through (as the reference, which only iterates over its usable samples), and pseudo-labelling skips
chunks of images that need no pseudo-label (pixel-level or padding). Under ``vmap`` both branches
of a ``cond`` run, with the same results.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedmix_jax import aggregation
from fedmix_jax.augment import augment_jointly
from fedmix_jax.data.federation import PIXEL, FederatedSplit
from fedmix_jax.inference import apply_in_chunks
from fedmix_jax.losses import dice_loss, mixed_supervision_targets
from fedmix_jax.pseudo_labels import SelectionConfig, pseudo_labels_from_logits

EXECUTORS = ("vmap", "loop", "map", "sharded")


# ----------------------------------------------------------------------------------------------
# Strategies


@dataclasses.dataclass(frozen=True)
class Strategy:
    """What a round does; a strategy is data, not a new loop.

    name: registry name.
    dual_models: train model 2 as well (cross pseudo-supervision); otherwise only model 1 trains.
    use_pseudo_labels: weak samples train on selected pseudo-labels; otherwise they are unused.
    all_pixel: every sample trains on its ground truth (the fully supervised upper bound).
    weighting: "fedmix" (adaptive), "fedavg" (by usable counts) or "none" (no aggregation).
    selection: the pseudo-label switches and thresholds.
    """

    name: str
    dual_models: bool
    use_pseudo_labels: bool
    all_pixel: bool
    weighting: str
    selection: SelectionConfig = SelectionConfig()

    @property
    def aggregates(self) -> bool:
        return self.weighting != "none"


def _registry(selection: SelectionConfig) -> dict[str, Strategy]:
    return {
        "fedmix": Strategy("fedmix", True, True, False, "fedmix", selection),
        "fedmix_no_adaptive": Strategy("fedmix_no_adaptive", True, True, False, "fedavg",
                                       selection),
        "fedmix_no_refine": Strategy("fedmix_no_refine", True, True, False, "fedmix",
                                     dataclasses.replace(selection, refine=False)),
        "fedavg_pixel": Strategy("fedavg_pixel", False, False, False, "fedavg", selection),
        "fedavg_full": Strategy("fedavg_full", False, False, True, "fedavg", selection),
        "local": Strategy("local", False, False, False, "none", selection),
    }


STRATEGY_NAMES = tuple(_registry(SelectionConfig()))


def get_strategy(name: str, selection: SelectionConfig = SelectionConfig()) -> Strategy:
    """The strategy called ``name`` (see :data:`STRATEGY_NAMES`) with the given selection rules.

    * ``fedmix`` — adaptive weights, both models, cross pseudo-supervision;
    * ``fedmix_no_adaptive`` — FedMix pseudo-labels with count-only FedAvg weights;
    * ``fedmix_no_refine`` — FedMix without box / class refinement of the pseudo-labels;
    * ``fedavg_pixel`` — FedAvg by counts over the pixel-labelled samples only (clients without
      any take no part: zero count, zero weight);
    * ``fedavg_full`` — every client trains on its ground truth (the upper bound);
    * ``local`` — no aggregation: each client trains alone on its own pixel samples.
    """
    strategies = _registry(selection)
    if name not in strategies:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(strategies)}")
    return strategies[name]


# ----------------------------------------------------------------------------------------------
# Configuration and state


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """Static settings of the round (hashable; changing one recompiles).

    batch_size: local batch size B (reference: 16).
    crop: (h, w) of the train-time random crop, or None (no crop).
    hflip, vflip: random flips at train time.
    lam, beta: FedMix weighting (reference skin: 10, 3).
    learning_rate, weight_decay, b1, b2, adam_eps: torch-style Adam with L2 added to the gradient.
    executor: "vmap", "map", "loop" or "sharded" (see the module docstring and
      :func:`default_executor`).
    inference_chunk: images per chunk when pseudo-labelling (16: measured fastest of 1-128 on a
      2-core CPU at 64x64, where large chunks fall out of cache; still a large batch on GPU).
    num_devices: devices of the ``sharded`` executor's mesh (None: all of ``jax.devices()``).
    """

    strategy: Strategy = get_strategy("fedmix")
    batch_size: int = 16
    crop: tuple[int, int] | None = None
    hflip: bool = True
    vflip: bool = True
    lam: float = 10.0
    beta: float = 3.0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    executor: str = "loop"
    inference_chunk: int = 16
    num_devices: int | None = None

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose one of {EXECUTORS}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_devices is not None and self.num_devices < 1:
            raise ValueError(f"num_devices must be >= 1 or None, got {self.num_devices}")


def default_executor() -> str:
    """The executor of the client axis measured fastest (or only fitting) on each platform: ``map``.

    ``python -m fedmix_jax.bench``, each executor from the same state, timed interleaved:

    * 2-core CPU (4 clients x 32 images, 64x64, width 16, batch 8): ``map`` 5.7 s per round,
      ``loop`` 5.9 s (the same work in three programs and a host loop), ``vmap`` 23 s (XLA:CPU
      runs vmapped convolutions over per-client weights as grouped convolutions); ``map``
      compiles fastest.
    * H100 80 GB (4 clients x 32 images, 224x224, width 64, batch 16): ``map`` 0.49 s per round;
      ``vmap`` ran out of memory (one 35 GiB buffer on top of the rest, past XLA's default
      limit of 75% of the card); ``map`` peaked at 11 GB.

    ``vmap`` stays available for small models on accelerators, where vectorising clients can
    fill the device better.
    """
    return "map"


def make_optimizer(config: RoundConfig) -> optax.GradientTransformation:
    """torch ``Adam(lr, betas, eps, weight_decay)``: L2 added to the gradient, then Adam."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.adam_eps),
        optax.scale(-config.learning_rate),
    )


@struct.dataclass
class FedState:
    """The whole federated training state (see the module docstring for shapes)."""

    global_params: Any
    client_params: Any
    opt_state: Any
    round: jax.Array
    key: jax.Array


@struct.dataclass
class RoundMetrics:
    """Per-client figures of one round, each [C].

    loss1, loss2: mean training Dice loss of local model 1 / 2 over the client's active steps
      (0 for a client that made no step; loss2 is 0 when model 2 does not train).
    counts: n_i, usable samples (pixel + selected weak).
    weak: valid weak (non-pixel) samples; selected_weak: how many of them were selected.
    steps: local steps actually taken; weights: aggregation weights w_i (0 for ``local``).
    """

    loss1: jax.Array
    loss2: jax.Array
    counts: jax.Array
    weak: jax.Array
    selected_weak: jax.Array
    steps: jax.Array
    weights: jax.Array

    @property
    def selection_rate(self) -> jax.Array:
        """Selected fraction of each client's weak samples, [C] (0 where it has none)."""
        return self.selected_weak / jnp.maximum(self.weak, 1)


def _broadcast(tree, num_clients: int):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + x.shape), tree)


def init_params(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...]):
    """One model's ``params`` for images of ``image_shape`` (H, W, Cin).

    The U-Net uses :func:`fedmix_jax.models.init_unet` (same distributions as ``model.init``,
    compiled in a fraction of the time); other Flax modules use ``model.init``.
    """
    from fedmix_jax.models import UNet, init_unet

    if isinstance(model, UNet):
        return init_unet(key, model, (1,) + tuple(image_shape))
    return jax.jit(model.init)(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]


def init_state(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], num_clients: int,
               config: RoundConfig) -> FedState:
    """Initialise both models from independent keys and every client's Adam state.

    Args:
      model: the Flax segmentation model (e.g. :class:`fedmix_jax.models.UNet`).
      key: PRNG key; model 1, model 2 and the round keys are split from it.
      image_shape: one input image's shape (H, W, Cin).
      num_clients: C.
    """
    k1, k2, k_round = jax.random.split(key, 3)
    p1, p2 = init_params(model, k1, image_shape), init_params(model, k2, image_shape)
    pair = (p1, p2)
    tx = make_optimizer(config)
    opt = (tx.init(p1), tx.init(p2))
    return FedState(global_params=pair, client_params=_broadcast(pair, num_clients),
                    opt_state=_broadcast(opt, num_clients), round=jnp.zeros((), jnp.int32),
                    key=k_round)


# ----------------------------------------------------------------------------------------------
# The pieces of a round, as pure functions


def _apply(model: nn.Module, params, x):
    return model.apply({"params": params}, x)


def compute_pseudo_labels(model: nn.Module, global_params, train: FederatedSplit,
                          config: RoundConfig):
    """Pseudo-labels of the global pair on every train image (un-augmented).

    The images run through both models in chunks of ``config.inference_chunk``; a chunk none of
    whose images needs a pseudo-label (pixel-level or padding) is skipped (``lax.cond``; its
    logits are zeros, never read: pixel samples train on their masks, padding not at all).

    Returns (pseudo1, pseudo2 [C, N, H, W, K], selected [C, N] bool).
    """
    c, n = train.valid.shape
    flat = lambda x: x.reshape((c * n,) + x.shape[2:])  # noqa: E731
    p1, p2 = global_params
    needs = flat(train.valid & (train.levels != PIXEL))

    def both(x):
        return _apply(model, p1, x), _apply(model, p2, x)

    def chunk(args):
        x, need = args
        skip = lambda x: jax.tree.map(  # noqa: E731
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(both, x))
        return jax.lax.cond(jnp.any(need), both, skip, x)

    logits1, logits2 = apply_in_chunks(chunk, (flat(train.images), needs),
                                       config.inference_chunk)
    pl = pseudo_labels_from_logits(logits1, logits2, flat(train.boxes), flat(train.image_labels),
                                   flat(train.levels), flat(train.valid),
                                   config.strategy.selection)
    unflat = lambda x: x.reshape((c, n) + x.shape[1:])  # noqa: E731
    return unflat(pl.pseudo1), unflat(pl.pseudo2), unflat(pl.selected)


def client_inputs(model: nn.Module, global_params, train: FederatedSplit, config: RoundConfig):
    """Per-sample training inputs of every client under the round's strategy.

    Returns a dict of [C, N, ...] arrays: images, target1, target2 (the targets of model 1 and 2),
    usable (bool), and the weak / selected-weak masks for the metrics.
    """
    strategy = config.strategy
    levels = train.levels
    if strategy.all_pixel:
        levels = jnp.full_like(levels, PIXEL)
    is_pixel = levels == PIXEL
    weak = train.valid & ~is_pixel
    if strategy.use_pseudo_labels:
        pseudo1, pseudo2, selected = compute_pseudo_labels(model, global_params, train, config)
        target1, target2 = jax.vmap(mixed_supervision_targets)(train.masks, pseudo1, pseudo2,
                                                               levels)
        usable = train.valid & (is_pixel | selected)
    else:
        target1 = target2 = train.masks
        selected = jnp.zeros_like(train.valid)
        usable = train.valid & is_pixel
    return dict(images=train.images, target1=target1, target2=target2, usable=usable,
                weak=weak, selected_weak=weak & selected)


def _sample_order(key: jax.Array, usable: jax.Array) -> jax.Array:
    """A random order of one client's samples with the usable ones first, [N] int32.

    Each sample's random priority depends only on its index (``fold_in``), so padding a client
    with extra invalid samples does not change the order of its usable samples.
    """
    n = usable.shape[0]
    idx = jnp.arange(n)
    priority = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(idx)
    priority = jnp.where(usable, priority, 2.0)
    return jnp.argsort(priority, stable=True).astype(jnp.int32)


def client_update(model: nn.Module, config: RoundConfig, params, opt_state, key: jax.Array,
                  images, target1, target2, usable):
    """One local epoch of one client: ``S = ceil(N / B)`` steps of fixed batch size B.

    Args:
      params, opt_state: the client's model pair and Adam pair (leaves without client axis).
      key: the client's key for this round.
      images [N, H, W, Cin], target1 / target2 [N, H, W, K]: inputs and targets of model 1 / 2;
      usable [N] bool: samples that train this round.

    Returns:
      (params, opt_state, metrics) with metrics = dict(loss1, loss2, steps) scalars: mean batch
      losses over the active steps and the number of active steps.
    """
    n = images.shape[0]
    b = config.batch_size
    num_steps = -(-n // b)
    k_order, k_aug = jax.random.split(key)
    order = _sample_order(k_order, usable)
    order = jnp.pad(order, (0, num_steps * b - n))
    in_range = jnp.arange(num_steps * b) < n
    tx = make_optimizer(config)
    crop = config.crop
    dual = config.strategy.dual_models

    def loss_fn(trainable, x, t1, t2, w):
        if dual:
            p1, p2 = trainable
            l1 = dice_loss(_apply(model, p1, x), t1, w)
            l2 = dice_loss(_apply(model, p2, x), t2, w)
            return l1 + l2, (l1, l2)
        l1 = dice_loss(_apply(model, trainable, x), t1, w)
        return l1, (l1, jnp.zeros_like(l1))

    def train_step(carry, s, w):
        params, opt_state = carry
        idx = jax.lax.dynamic_slice(order, (s * b,), (b,))
        arrays = (images[idx], target1[idx]) + ((target2[idx],) if dual else ())
        arrays = augment_jointly(jax.random.fold_in(k_aug, s), arrays, crop, config.hflip,
                                 config.vflip)
        x, t1 = arrays[0], arrays[1]
        t2 = arrays[2] if dual else t1
        trainable = params if dual else params[0]
        opt_t = opt_state if dual else opt_state[0]
        (_, (l1, l2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, x, t1, t2, w)
        if dual:
            updates = [tx.update(g, o, p) for g, o, p in zip(grads, opt_t, trainable)]
            upd = tuple(u for u, _ in updates)
            new_opt = tuple(o for _, o in updates)
        else:
            upd, new_opt = tx.update(grads, opt_t, trainable)
        new_trainable = optax.apply_updates(trainable, upd)
        if dual:
            return (new_trainable, new_opt), (l1, l2)
        return ((new_trainable, params[1]), (new_opt, opt_state[1])), (l1, l2)

    def masked_step(carry, s, w):
        zero = jnp.zeros((), jnp.float32)
        return carry, (zero, zero)

    def step(carry, s):
        idx = jax.lax.dynamic_slice(order, (s * b,), (b,))
        w = (usable[idx] & jax.lax.dynamic_slice(in_range, (s * b,), (b,))).astype(jnp.float32)
        active = jnp.sum(w) > 0
        # A batch without usable sample is skipped (under vmap: both branches run, then select).
        carry, (l1, l2) = jax.lax.cond(active, train_step, masked_step, carry, s, w)
        return carry, (l1, l2, active)

    (params, opt_state), (l1, l2, active) = jax.lax.scan(
        step, (params, opt_state), jnp.arange(num_steps))
    act = active.astype(jnp.float32)
    steps = jnp.sum(act)
    denom = jnp.maximum(steps, 1.0)
    return params, opt_state, dict(loss1=jnp.sum(l1 * act) / denom,
                                   loss2=jnp.sum(l2 * act) / denom,
                                   steps=steps.astype(jnp.int32))


def aggregation_weights(config: RoundConfig, counts: jax.Array, loss1: jax.Array,
                        participating: jax.Array, lam=None, beta=None) -> jax.Array:
    """[C] aggregation weights of the strategy (zeros for ``local``).

    ``lam`` / ``beta`` default to the config's; they may be traced scalars, so changing them
    does not recompile the round.
    """
    weighting = config.strategy.weighting
    lam = config.lam if lam is None else lam
    beta = config.beta if beta is None else beta
    if weighting == "fedmix":
        return aggregation.fedmix_weights(counts, loss1, lam, beta, participating)
    if weighting == "fedavg":
        return aggregation.fedavg_weights(counts, participating)
    return jnp.zeros(counts.shape, jnp.float32)


def _round_keys(state: FedState, num_clients: int):
    next_key, round_key = jax.random.split(state.key)
    client_keys = jax.vmap(lambda c: jax.random.fold_in(round_key, c))(jnp.arange(num_clients))
    return next_key, client_keys


def _start_round(model, config, state: FedState, train: FederatedSplit):
    """Broadcast, pseudo-labels and round keys: everything before local training."""
    c = train.valid.shape[0]
    local = (_broadcast(state.global_params, c) if config.strategy.aggregates
             else state.client_params)
    inputs = client_inputs(model, state.global_params, train, config)
    next_key, client_keys = _round_keys(state, c)
    return local, inputs, next_key, client_keys


def _client_counts(train: FederatedSplit, inputs):
    """Per-client counts of a round: (counts n_i, weak, selected_weak, participating), each [C]."""
    counts = jnp.sum(inputs["usable"], axis=1).astype(jnp.int32)
    weak = jnp.sum(inputs["weak"], axis=1).astype(jnp.int32)
    selected_weak = jnp.sum(inputs["selected_weak"], axis=1).astype(jnp.int32)
    return counts, weak, selected_weak, jnp.any(train.valid, axis=1)


def _finish_round(config, global_params, round_index, train: FederatedSplit, local_params,
                  opt_state, next_key, inputs, client_metrics, lam, beta):
    """Weights, aggregation and metrics: everything after local training."""
    counts, weak, selected_weak, participating = _client_counts(train, inputs)
    weights = aggregation_weights(config, counts, client_metrics["loss1"], participating, lam,
                                  beta)
    if config.strategy.aggregates:
        global_params = aggregation.weighted_average(local_params, weights)
    metrics = RoundMetrics(
        loss1=client_metrics["loss1"], loss2=client_metrics["loss2"], counts=counts,
        weak=weak, selected_weak=selected_weak, steps=client_metrics["steps"], weights=weights)
    new_state = FedState(global_params=global_params, client_params=local_params,
                         opt_state=opt_state, round=round_index + 1, key=next_key)
    return new_state, metrics


_TRAIN_FIELDS = ("images", "target1", "target2", "usable")


def _run_clients(model, config, local, opt_state, client_keys, inputs, how: str):
    """Every client's local epoch, ``how`` = "vmap" (vectorised) or "map" (one at a time)."""
    update = functools.partial(client_update, model, config)
    args = (local, opt_state, client_keys) + tuple(inputs[f] for f in _TRAIN_FIELDS)
    if how == "vmap":
        return jax.vmap(update)(*args)
    return jax.lax.map(lambda a: update(*a), args)


def make_round_fn(model: nn.Module, config: RoundConfig
                  ) -> Callable[[FedState, FederatedSplit], tuple[FedState, RoundMetrics]]:
    """Build ``round_fn(state, train) -> (state, metrics)`` for a model and a round config.

    The returned function runs one whole round. With the ``vmap``, ``map`` and ``sharded``
    executors it is a single jitted program; with ``loop`` it is three jitted programs (start,
    per-client update, finish) and a Python loop over clients. The input state's buffers are
    donated: keep using the returned one. Compiled programs are cached per (model, config), and
    ``lam`` / ``beta`` are traced, so several runs of one configuration (seeds, lambda sweeps)
    compile once. ``round_fn.jitted`` lists the jitted programs. Keep ``train`` on the device(s)
    (``jax.device_put`` once, or :func:`fedmix_jax.sharding.shard_clients` for ``sharded``, whose
    mesh is ``round_fn.mesh``): host arrays would be copied in every round.
    """
    parts = _compiled_round(model, dataclasses.replace(config, lam=0.0, beta=0.0))
    # Scalars made once (uncommitted: usable on any device set), not per round.
    lam = jnp.asarray(float(config.lam), jnp.float32)
    beta = jnp.asarray(float(config.beta), jnp.float32)

    def round_fn(state: FedState, train: FederatedSplit):
        return parts(state, train, lam, beta)

    round_fn.jitted = parts.jitted
    round_fn.mesh = getattr(parts, "mesh", None)
    return round_fn


@functools.lru_cache(maxsize=32)
def _compiled_round(model: nn.Module, config: RoundConfig):
    if config.executor in ("vmap", "map"):
        how = config.executor

        @functools.partial(jax.jit, donate_argnums=(0,))
        def round_single(state: FedState, train: FederatedSplit, lam, beta):
            local, inputs, next_key, client_keys = _start_round(model, config, state, train)
            params, opt, cm = _run_clients(model, config, local, state.opt_state, client_keys,
                                           inputs, how)
            return _finish_round(config, state.global_params, state.round, train, params, opt,
                                 next_key, inputs, cm, lam, beta)

        round_single.jitted = (round_single,)
        return round_single
    if config.executor == "sharded":
        return _sharded_round(model, config)

    def start_fn(state, train):
        local, inputs, next_key, client_keys = _start_round(model, config, state, train)
        c = train.valid.shape[0]
        cm = dict(loss1=jnp.zeros((c,), jnp.float32), loss2=jnp.zeros((c,), jnp.float32),
                  steps=jnp.zeros((c,), jnp.int32))
        return local, inputs, next_key, client_keys, cm

    start = jax.jit(start_fn)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def update_one(params, opt_state, client_metrics, c, client_keys, inputs):
        take = lambda tree: jax.tree.map(lambda x: x[c], tree)  # noqa: E731
        p, o, m = client_update(model, config, take(params), take(opt_state), client_keys[c],
                                *(take(inputs[f]) for f in _TRAIN_FIELDS))
        put = lambda tree, new: jax.tree.map(lambda x, y: x.at[c].set(y), tree, new)  # noqa
        return put(params, p), put(opt_state, o), put(client_metrics, m)

    finish = jax.jit(functools.partial(_finish_round, config))
    indices: dict[int, list] = {}     # client indices as device scalars, made once

    def round_loop(state: FedState, train: FederatedSplit, lam, beta):
        local, inputs, next_key, client_keys, cm = start(state, train)
        num_clients = train.valid.shape[0]
        if num_clients not in indices:
            indices[num_clients] = [jnp.asarray(c, jnp.int32) for c in range(num_clients)]
        params, opt = local, state.opt_state
        train_inputs = {f: inputs[f] for f in _TRAIN_FIELDS}
        for c in indices[num_clients]:
            params, opt, cm = update_one(params, opt, cm, c, client_keys, train_inputs)
        return finish(state.global_params, state.round, train, params, opt, next_key, inputs, cm,
                      lam, beta)

    round_loop.jitted = (start, update_one, finish)
    return round_loop


def _sharded_round(model: nn.Module, config: RoundConfig):
    """The ``sharded`` executor: ``shard_map`` over the mesh axis ``"clients"``.

    Each device receives its block of clients (state, keys and data) and the global pair
    (replicated), computes their pseudo-labels and local epochs one client after another
    (``lax.map``: the memory of one client per device, as ``map``), all-gathers the per-client
    counts and losses (a few scalars) to compute the weights of every client identically on
    every device, and contributes its clients' weighted sum to the new global pair through one
    ``psum``.
    """
    from fedmix_jax import sharding

    mesh = sharding.client_mesh(config.num_devices)
    d = mesh.size
    axis = sharding.CLIENT_AXIS
    how = "map"
    P = jax.sharding.PartitionSpec
    aggregates = config.strategy.aggregates

    def per_device(global_params, client_params, opt_state, client_keys, train, lam, beta):
        c_local = train.valid.shape[0]
        local = _broadcast(global_params, c_local) if aggregates else client_params
        inputs = client_inputs(model, global_params, train, config)
        params, opt, cm = _run_clients(model, config, local, opt_state, client_keys, inputs, how)
        counts, weak, selected_weak, participating = _client_counts(train, inputs)
        gather = lambda x: jax.lax.all_gather(x, axis, tiled=True)  # noqa: E731
        weights = aggregation_weights(config, gather(counts), gather(cm["loss1"]),
                                      gather(participating), lam, beta)
        if aggregates:
            mine = jax.lax.dynamic_slice_in_dim(weights, jax.lax.axis_index(axis) * c_local,
                                                c_local)
            new_global = jax.lax.psum(aggregation.weighted_average(params, mine), axis)
        else:
            new_global = global_params
        metrics = dict(loss1=cm["loss1"], loss2=cm["loss2"], counts=counts, weak=weak,
                       selected_weak=selected_weak, steps=cm["steps"])
        return new_global, params, opt, metrics, weights

    # check_vma=False: the skip branches of the round's ``lax.cond``s return constants (not
    # device-varying values); the replicated outputs (global pair after psum, weights computed
    # from all-gathered numbers) are identical on every device by construction.
    sharded = jax.shard_map(
        per_device, mesh=mesh,
        in_specs=(P(), P(axis), P(axis), P(axis), P(axis), P(), P()),
        out_specs=(P(), P(axis), P(axis), P(axis), P()), check_vma=False)

    def round_sharded(state: FedState, train: FederatedSplit, lam, beta):
        c = train.valid.shape[0]
        padded = sharding.padded_count(c, d)
        next_key, client_keys = _round_keys(state, padded)   # the first c keys are unchanged
        client_params, opt_state = state.client_params, state.opt_state
        if padded > c:
            train = sharding.pad_clients(train, padded)                       # valid = False
            client_params = sharding.pad_clients(client_params, padded, mode="edge")
            opt_state = sharding.pad_clients(opt_state, padded, mode="edge")
        new_global, params, opt, m, weights = sharded(
            state.global_params, client_params, opt_state, client_keys, train, lam, beta)
        cut = lambda tree: jax.tree.map(lambda x: x[:c], tree)  # noqa: E731
        params, opt, m, weights = cut(params), cut(opt), cut(m), weights[:c]
        metrics = RoundMetrics(weights=weights, **m)
        new_state = FedState(global_params=new_global, client_params=params, opt_state=opt,
                             round=state.round + 1, key=next_key)
        return new_state, metrics

    donating = jax.jit(round_sharded, donate_argnums=(0,))
    plain = jax.jit(round_sharded)      # padded clients: the outputs cannot reuse the inputs

    def round_fn(state: FedState, train: FederatedSplit, lam, beta):
        c = train.valid.shape[0]
        fn = donating if sharding.padded_count(c, d) == c else plain
        return fn(state, train, lam, beta)

    round_fn.jitted = (donating, plain)
    round_fn.mesh = mesh
    return round_fn

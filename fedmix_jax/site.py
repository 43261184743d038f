"""The site function :func:`site_round`: what one hospital does in one round, pure.

Every path runs it (the backends map it over the clients, the Flower ClientApp on its own data);
one site's data has leaves [N, ...]. Details: docs/architecture.md ("The site function").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedmix_jax.augment import augment_jointly
from fedmix_jax.data.federation import (BOX, IMAGE, PIXEL, FederatedSplit, float_images,
                                        float_labels, unpack_split_labels)
from fedmix_jax.losses import (dice_loss, dice_loss_per_sample, empty_aware_loss_per_sample,
                               mixed_supervision_targets, weighted_mean)
from fedmix_jax.pseudo_labels import site_pseudo_labels
from fedmix_jax.self_training import intensity_shift, self_training_loss
from fedmix_jax.weak_objective import weak_batch_loss


@struct.dataclass
class ModelPair:
    """FedMix's two models, leaves [...] (or [C, ...] stacked); indexes and unpacks as a tuple."""

    model1: Any
    model2: Any

    def __getitem__(self, i: int):
        return (self.model1, self.model2)[i]

    def __iter__(self):
        return iter((self.model1, self.model2))

    def __len__(self) -> int:
        return 2


@struct.dataclass
class SiteState:
    """What a site keeps between rounds: its model pair and the pair's Adam states."""

    params: ModelPair
    opt_state: ModelPair


@struct.dataclass
class SiteReport:
    """A site's scalars after its round ([], or [C] stacked): int32 counts ``num_usable`` (n_i),
    ``num_weak``, ``num_selected_weak``, ``num_pixel``, ``steps``; float32 ``loss1`` / ``loss2``,
    the mean training Dice loss of model 1 / 2 over the active steps (0 without step)."""

    num_usable: jax.Array
    loss1: jax.Array
    loss2: jax.Array
    num_weak: jax.Array
    num_selected_weak: jax.Array
    num_pixel: jax.Array
    steps: jax.Array


@struct.dataclass
class TrainInputs:
    """One site's per-sample inputs (storage dtypes): images [N,H,W,Cin], target1 / target2
    [N,H,W,K], usable / weak / selected_weak / self_train [N] bool; with ``strategy.weak`` only
    (else None): has_target [N] bool, boxes [N,H,W,K], image_labels [N,K], levels [N]."""

    images: jax.Array
    target1: jax.Array
    target2: jax.Array
    usable: jax.Array
    weak: jax.Array
    selected_weak: jax.Array
    self_train: jax.Array
    has_target: jax.Array | None = None
    boxes: jax.Array | None = None
    image_labels: jax.Array | None = None
    levels: jax.Array | None = None

    def batch_extras(self) -> tuple:
        """``(self_train, has_target, boxes, image_labels, levels)``, gathered per batch."""
        return (self.self_train, self.has_target, self.boxes, self.image_labels, self.levels)


def _torch_adam(learning_rate, weight_decay: float, b1: float, b2: float, eps: float):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       optax.scale_by_learning_rate(learning_rate))


def make_optimizer(config) -> optax.GradientTransformation:
    """torch's ``Adam(lr, betas, eps, weight_decay)`` (L2 on the gradient); lr injected."""
    return optax.inject_hyperparams(_torch_adam, static_args=("weight_decay", "b1", "b2", "eps"))(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, b1=config.b1,
        b2=config.b2, eps=config.adam_eps)


def _apply(model: nn.Module, params, x):
    return model.apply({"params": params}, x)


def train_inputs(model: nn.Module, global_params: ModelPair, data: FederatedSplit,
                 config, round_index=0) -> TrainInputs:
    """What each sample of a site trains on under the strategy in 0-based round ``round_index``."""
    mode = config.strategy.weak_samples
    levels = jnp.full_like(data.levels, PIXEL) if mode == "ground_truth" else data.levels
    is_pixel = levels == PIXEL
    weak = data.valid & ~is_pixel
    target1 = target2 = data.masks
    selected = self_train = jnp.zeros_like(data.valid)
    usable = data.valid & is_pixel
    if mode == "pseudo_labels":
        pl = site_pseudo_labels(model, global_params, data, config)
        target1, target2 = mixed_supervision_targets(data.masks, pl.pseudo1, pl.pseudo2, levels)
        selected = pl.selected
        usable = data.valid & (is_pixel | selected)
    elif mode == "self_training":
        self_train = weak & ~config.strategy.warming_up(round_index)
        usable = usable | self_train
    inputs = TrainInputs(images=data.images, target1=target1, target2=target2, usable=usable,
                         weak=weak, selected_weak=weak & selected, self_train=self_train)
    if config.strategy.weak is None:
        return inputs
    # Box and image samples train on their weak labels every round (after the weak warm-up).
    labelled = data.valid & ((levels == BOX) | (levels == IMAGE))
    if config.strategy.weak.warmup_rounds:
        labelled &= jnp.asarray(round_index) >= config.strategy.weak.warmup_rounds
    return inputs.replace(usable=usable | labelled, has_target=usable, boxes=data.boxes,
                          image_labels=data.image_labels, levels=levels)


def sample_order(key: jax.Array, usable: jax.Array) -> jax.Array:
    """[N] int32 random order, ``usable`` [N] first; a priority depends on its index only."""
    n = usable.shape[0]
    priority = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(jnp.arange(n))
    priority = jnp.where(usable, priority, 2.0)
    return jnp.argsort(priority, stable=True).astype(jnp.int32)


def prepare_epoch(config, params: ModelPair, opt_state: ModelPair, learning_rate: jax.Array):
    """``(tx, opt_state, trainable, opt_t)`` of a local epoch: the optimizer, the Adam pair with
    ``learning_rate`` set, the models that train and their Adam states (also streamed)."""
    opt_state = ModelPair(*(o._replace(hyperparams=dict(o.hyperparams, learning_rate=learning_rate))
                            for o in opt_state))
    n = 2 if config.strategy.trains_model2 else 1
    return make_optimizer(config), opt_state, tuple(params)[:n], tuple(opt_state)[:n]


def make_train_batch(model: nn.Module, config, tx, k_aug: jax.Array):
    """``train_batch((models, opts), s, w, images, targets, extras) -> (carry, (l1, l2,
    counted))``: step ``s`` on a gathered batch (images [B,H,W,Cin], one [B,H,W,K] target per
    training model, w [B] float32, ``extras``: :meth:`TrainInputs.batch_extras` or self_train)."""
    weak_weights = config.strategy.weak

    def loss_fn(models, x, targets, w, self_train, key):
        if config.strategy.weak_samples == "self_training":
            (p,), (t,) = models, targets
            logits = _apply(model, p, x)
            dice = dice_loss_per_sample(logits, t)
            loss = self_training_loss(_apply(model, p, intensity_shift(key, x)), logits, dice, w,
                                      self_train, config.self_training_mean)
            gt = w * (~self_train).astype(w.dtype)
            return loss, ((weighted_mean(dice, gt),), (jnp.sum(gt) > 0).astype(jnp.float32))
        if config.empty_target_loss == "dice":
            losses = tuple(dice_loss(_apply(model, p, x), t, w) for p, t in zip(models, targets))
            return sum(losses), (losses, jnp.ones((), jnp.float32))
        losses, fits, counted = [], [], None
        for p, t in zip(models, targets):
            logits = _apply(model, p, x)
            losses.append(weighted_mean(empty_aware_loss_per_sample(logits, t), w))
            # l_i for the weights: the Dice loss of the samples with foreground only.
            has_fg = (jnp.sum(t, axis=(1, 2, 3)) > 0).astype(w.dtype)
            fits.append(weighted_mean(dice_loss_per_sample(logits, t), w * has_fg))
            if counted is None:    # model 1's batch counts for l_i if it has foreground
                counted = (jnp.sum(w * has_fg) > 0).astype(jnp.float32)
        return sum(losses), (tuple(fits), counted)

    def train_batch(carry, s, w, images, targets, extras):
        models, opts = carry
        k_step = jax.random.fold_in(k_aug, s)
        extras = extras if isinstance(extras, tuple) else (extras, None, None, None, None)
        # The gathered batch leaves its storage dtype here (uint8 -> float32), never the split.
        images, targets = float_images(images), tuple(float_labels(t) for t in targets)
        boxes = () if weak_weights is None else (float_labels(extras[2]),)   # move with the image
        x, *maps = augment_jointly(k_step, (images,) + targets + boxes, config.crop,
                                   config.hflip, config.vflip)
        targets = maps[:len(targets)]
        if weak_weights is None:
            (_, (fits, counted)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                models, x, targets, w, extras[0], jax.random.fold_in(k_step, 1))
        else:
            extras = extras[:2] + (maps[-1], float_labels(extras[3])) + extras[4:]
            (_, (fits, counted)), grads = jax.value_and_grad(weak_batch_loss, has_aux=True)(
                models, lambda p, x: _apply(model, p, x), config, x, targets, w, extras)
        updates, opts = zip(*(tx.update(g, o, p) for g, o, p in zip(grads, opts, models)))
        models = tuple(optax.apply_updates(p, u) for p, u in zip(models, updates))
        fits = fits + (jnp.zeros_like(fits[0]),) * (2 - len(fits))
        return (models, opts), fits + (counted,)

    return train_batch


def masked_batch(carry, *args):
    """A masked local step: the state passes through, zero losses."""
    zero = jnp.zeros((), jnp.float32)
    return carry, (zero, zero, zero)


def finish_epoch(config, params: ModelPair, opt_state: ModelPair, trainable, opt_t,
                 l1: jax.Array, l2: jax.Array, counted: jax.Array, active: jax.Array):
    """:func:`local_epoch`'s result from the per-step outputs [S] (masked: ``active`` False)."""
    # Model 2 and its Adam state stay as they are when it does not train.
    params = ModelPair(*trainable, *tuple(params)[len(trainable):])
    opt_state = ModelPair(*opt_t, *tuple(opt_state)[len(opt_t):])
    act = active.astype(jnp.float32)
    # Steps whose losses enter l_i: the active ones; with "bce", those with foreground only.
    counted = act * counted
    denom = jnp.maximum(jnp.sum(counted), 1.0)
    return params, opt_state, (jnp.sum(l1 * counted) / denom, jnp.sum(l2 * counted) / denom,
                               jnp.sum(act).astype(jnp.int32))


def local_epoch(model: nn.Module, config, params: ModelPair, opt_state: ModelPair,
                key: jax.Array, inputs: TrainInputs, learning_rate: jax.Array):
    """One local epoch of ``S = ceil(N / B)`` steps on ``inputs`` (leaves [N, ...]): ``(params,
    opt_state, (loss1, loss2, steps))``, the mean batch losses over the active steps (with
    ``empty_target_loss == "bce"``: of the samples with foreground) and the active step count."""
    n, b = inputs.images.shape[0], config.batch_size
    num_steps = -(-n // b)
    k_order, k_aug = jax.random.split(key)
    order = jnp.pad(sample_order(k_order, inputs.usable), (0, num_steps * b - n))
    in_range = jnp.arange(num_steps * b) < n
    tx, opt_state, trainable, opt_t = prepare_epoch(config, params, opt_state, learning_rate)
    train_batch = make_train_batch(model, config, tx, k_aug)

    def train_step(carry, s, w, idx):
        targets = (inputs.target1[idx], inputs.target2[idx])[:len(carry[0])]
        extras = jax.tree.map(lambda a: a[idx], inputs.batch_extras())
        return train_batch(carry, s, w, inputs.images[idx], targets, extras)

    def step(carry, s):
        idx = jax.lax.dynamic_slice(order, (s * b,), (b,))
        w = (inputs.usable[idx] & jax.lax.dynamic_slice(in_range, (s * b,), (b,))
             ).astype(jnp.float32)
        active = jnp.sum(w) > 0
        # A batch without usable sample is skipped (under vmap: both branches run, then select).
        carry, (l1, l2, counted) = jax.lax.cond(active, train_step, masked_batch, carry, s, w, idx)
        return carry, (l1, l2, counted, active)

    (trainable, opt_t), (l1, l2, counted, active) = jax.lax.scan(step, (trainable, opt_t),
                                                                 jnp.arange(num_steps))
    return finish_epoch(config, params, opt_state, trainable, opt_t, l1, l2, counted, active)


def site_round(model: nn.Module, config, global_params: ModelPair, site: SiteState,
               data: FederatedSplit, key: jax.Array, hparams, round_index
               ) -> tuple[SiteState, SiteReport]:
    """One round at one site: ``(new SiteState, SiteReport)``; pure, jittable, vmappable.

    ``global_params``: the broadcast pair, leaves [...]; ``site``'s pair is the start only without
    aggregation; ``data``: leaves [N, ...] (bit-packed labels unpacked here); ``round_index``:
    0-based, may be traced.
    """
    start = global_params if config.strategy.aggregates else site.params
    data = unpack_split_labels(data)    # bit-packed masks / boxes: this site's, once
    inputs = train_inputs(model, global_params, data, config, round_index)
    params, opt_state, (loss1, loss2, steps) = local_epoch(
        model, config, start, site.opt_state, key, inputs, hparams.learning_rate)
    count = lambda m: jnp.sum(m).astype(jnp.int32)  # noqa: E731
    report = SiteReport(num_usable=count(inputs.usable), loss1=loss1, loss2=loss2,
                        num_weak=count(inputs.weak), num_selected_weak=count(inputs.selected_weak),
                        num_pixel=count(data.valid & (data.levels == PIXEL)), steps=steps)
    return SiteState(params=params, opt_state=opt_state), report


def init_site_state(tx: optax.GradientTransformation, params: ModelPair) -> SiteState:
    """A site's state before its first round: its pair and fresh Adam states."""
    return SiteState(params=params, opt_state=ModelPair(tx.init(params[0]), tx.init(params[1])))

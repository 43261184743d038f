"""What the benchmark times: the compiled round, and the round with the reference's structure.

:class:`SequentialBaseline` is one FedMix round structured as the PyTorch reference runs it, built
from the package's public site pieces (:mod:`fedmix_jax.site`: ``train_inputs``,
``sample_order``, ``make_optimizer``; :func:`fedmix_jax.round.round_keys`; the strategy's
``weights``). It is not another implementation of the round: the site function's pieces
compute every value, and only the control flow differs. It has a Python loop over clients and
over the two models, pseudo-labels one image at a time, one jitted call per image / batch /
model, a host read per step of the loss (``loss.item()``) and one per image of the selection.
That is what a straight port of the reference notebooks does. It computes the same round as
``make_round_fn`` (checked as ``baseline_check`` by the benchmark and in
``tests/test_bench.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedmix_jax as fm
from fedmix_jax import site as S
from fedmix_jax.augment import augment_jointly
from fedmix_jax.data.federation import PIXEL, FederatedSplit, float_images, float_labels
from fedmix_jax.losses import dice_loss
from fedmix_jax.round import FedState, round_keys


def _take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def site_reports(metrics: dict, num_pixel: np.ndarray) -> S.SiteReport:
    """The clients' :class:`~fedmix_jax.site.SiteReport` ([C] fields) from a baseline's
    metrics (``counts``, ``loss1``, ``loss2``, ``weak``, ``selected_weak``, ``steps``)."""
    fields = dict(num_usable=metrics["counts"], loss1=metrics["loss1"], loss2=metrics["loss2"],
                  num_weak=metrics["weak"], num_selected_weak=metrics["selected_weak"],
                  steps=metrics["steps"], num_pixel=num_pixel)
    names = {f.name for f in dataclasses.fields(S.SiteReport)}
    return S.SiteReport(**{k: v for k, v in fields.items() if k in names})


class SequentialBaseline:
    """One FedMix round as the PyTorch reference structures it, on the package's site pieces.

    Per client, in a Python loop: load the global models; for each weak image, **one at a time**,
    the site's ``train_inputs`` on that one image (both models' forward passes, refinement and
    selection) and a host read of its decision, as the reference appends selected samples to a
    list. Then one local epoch over the usable samples: each batch is a jitted augmentation and
    **two separate jitted train steps** (model 1, then model 2), each followed by a host read of
    its loss. After the clients come the strategy's weights and a weighted average of each
    model, written as a sum over the clients.

    A batch without usable sample is skipped, as the reference's loader never yields one. The
    compiled round masks it as a no-op step instead. Same keys, sample order, augmentation,
    batches and Adam, so the results match.

    State: ``dict(global_params=ModelPair, clients=[SiteState, ...], round, key)``;
    :meth:`from_fed_state` / :meth:`to_fed_state` convert.
    """

    def __init__(self, model, config: fm.RoundConfig):
        if getattr(config, "empty_target_loss", "dice") != "dice":
            raise ValueError("the sequential baseline trains with the reference's Dice loss; "
                             f"empty_target_loss={config.empty_target_loss!r} is not written")
        self.model, self.config = model, config
        self.tx = tx = S.make_optimizer(config)
        strategy = config.strategy
        self.dual = strategy.trains_model2
        apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
        self.inputs_one = jax.jit(lambda gp, d: S.train_inputs(model, gp, d, config))

        def step(params, opt, x, t, w, lr):
            opt = opt._replace(hyperparams=dict(opt.hyperparams, learning_rate=lr))
            loss, grads = jax.value_and_grad(lambda p: dice_loss(apply(p, x), t, w))(params)
            updates, opt = tx.update(grads, opt, params)
            return optax.apply_updates(params, updates), opt, loss

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        self.order = jax.jit(S.sample_order)
        self.split_key = jax.jit(jax.random.split)
        self.fold_in = jax.jit(jax.random.fold_in)
        self.round_keys = jax.jit(round_keys, static_argnums=1)
        crop, hflip, vflip = config.crop, config.hflip, config.vflip
        self.augment = jax.jit(lambda k, arrays: augment_jointly(k, arrays, crop, hflip, vflip))
        self.stack = jax.jit(lambda xs: jnp.stack(xs))
        self.weights = jax.jit(strategy.weights)
        self.average = jax.jit(lambda ws, trees: jax.tree.map(
            lambda *xs: sum(w * x for w, x in zip(ws, xs)), *trees))

    # -- state conversion
    @staticmethod
    def from_fed_state(state: FedState) -> dict:
        c = jax.tree.leaves(state.client_params)[0].shape[0]
        sites = [S.SiteState(params=_take(state.client_params, i),
                             opt_state=_take(state.opt_state, i)) for i in range(c)]
        return dict(global_params=state.global_params, clients=sites, round=state.round,
                    key=state.key)

    @staticmethod
    def to_fed_state(bstate: dict) -> FedState:
        return FedState(global_params=bstate["global_params"],
                        client_params=_stack([s.params for s in bstate["clients"]]),
                        opt_state=_stack([s.opt_state for s in bstate["clients"]]),
                        round=bstate["round"], key=bstate["key"])

    @staticmethod
    def client_data(train: FederatedSplit) -> list[dict]:
        """Per-client device arrays, one-image splits and host-side levels / validity."""
        out = []
        for c in range(train.num_clients):
            split = jax.device_put(_take(train, c))
            out.append(dict(split=split, images=split.images, masks=split.masks,
                            levels=np.asarray(train.levels[c]), valid=np.asarray(train.valid[c])))
        return out

    # -- the parts of a round
    def pseudo_label_client(self, global_params, d: dict):
        """One client's usable mask and targets, one image at a time.

        Returns (usable [N] bool numpy, target1 list, target2 list, weak, selected_weak).
        """
        mode = self.config.strategy.weak_samples
        n = d["valid"].shape[0]
        usable = np.zeros(n, bool)
        t1, t2 = [], []
        zero = jnp.zeros_like(d["masks"][0])
        weak = selected_weak = 0
        self.num_pixel = int((d["valid"] & (d["levels"] == PIXEL)).sum())
        for i in range(n):
            target = (zero, zero)
            if d["valid"][i]:
                if mode == "ground_truth" or d["levels"][i] == PIXEL:
                    usable[i] = True
                    target = (d["masks"][i], d["masks"][i])
                else:
                    weak += 1
                    if mode == "pseudo_labels":
                        one = jax.tree.map(lambda x: x[i:i + 1], d["split"])
                        inp = self.inputs_one(global_params, one)
                        if bool(inp.usable[0]):                      # host sync, per image
                            usable[i] = True
                            selected_weak += 1
                            target = (inp.target1[0], inp.target2[0])
            t1.append(target[0])
            t2.append(target[1])
        return usable, t1, t2, weak, selected_weak

    def train_client(self, params, opt, key, images, target1, target2, usable, lr):
        """One local epoch, model by model and batch by batch. Returns (params, opt, metrics)."""
        b = self.config.batch_size
        n = usable.shape[0]
        k_order, k_aug = self.split_key(key)
        order = np.asarray(self.order(k_order, jnp.asarray(usable)))
        steps = -(-int(usable.sum()) // b)             # the loader yields only usable samples
        padded = np.concatenate([order, np.zeros(steps * b, order.dtype)])
        (p1, p2), (o1, o2) = params, opt
        losses1, losses2 = [], []
        for s in range(steps):
            idx = padded[s * b:(s + 1) * b]
            w = jnp.asarray((usable[idx] & (np.arange(s * b, (s + 1) * b) < n))
                            .astype(np.float32))
            arrays = ((float_images(images[idx]), float_labels(target1[idx]))
                      + ((float_labels(target2[idx]),) if self.dual else ()))
            arrays = self.augment(self.fold_in(k_aug, s), arrays)
            p1, o1, l1 = self.step(p1, o1, arrays[0], arrays[1], w, lr)
            losses1.append(float(l1))                  # loss.item(): a host sync per step
            if self.dual:
                p2, o2, l2 = self.step(p2, o2, arrays[0], arrays[2], w, lr)
                losses2.append(float(l2))
        mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
        return (S.ModelPair(p1, p2), S.ModelPair(o1, o2),
                dict(loss1=mean(losses1), loss2=mean(losses2), steps=steps))

    def round(self, bstate: dict, data: list[dict], hparams):
        """One round. Returns (new state dict, metrics dict of [C] numpy arrays)."""
        strategy = self.config.strategy
        c = len(data)
        next_key, client_keys = self.round_keys(bstate["key"], c)
        gp = bstate["global_params"]
        new_clients, rows = [], []
        for i, d in enumerate(data):
            site = bstate["clients"][i]
            params = self.copy(gp) if strategy.aggregates else site.params  # load global models
            usable, t1, t2, weak, sel = self.pseudo_label_client(gp, d)
            target1, target2 = self.stack(t1), self.stack(t2)
            params, opt, m = self.train_client(params, site.opt_state, client_keys[i],
                                               d["images"], target1, target2, usable,
                                               hparams.learning_rate)
            new_clients.append(S.SiteState(params=params, opt_state=opt))
            rows.append(dict(m, counts=int(usable.sum()), weak=weak, selected_weak=sel,
                             pixel=self.num_pixel, participating=bool(d["valid"].any())))
        col = lambda k, dt: np.asarray([r[k] for r in rows], dt)  # noqa: E731
        metrics = dict(loss1=col("loss1", np.float32), loss2=col("loss2", np.float32),
                       counts=col("counts", np.int32), weak=col("weak", np.int32),
                       selected_weak=col("selected_weak", np.int32),
                       steps=col("steps", np.int32))
        reports = site_reports(metrics, col("pixel", np.int32))
        weights = self.weights(reports, jnp.asarray(col("participating", bool)), hparams,
                               bstate["round"])
        metrics["weights"] = np.asarray(weights)
        if strategy.aggregates:
            ws = [weights[i] for i in range(c)]
            gp = S.ModelPair(*(self.average(ws, [s.params[k] for s in new_clients])
                               for k in (0, 1)))
        return dict(global_params=gp, clients=new_clients, round=bstate["round"] + 1,
                    key=next_key), metrics


# ----------------------------------------------------------------------------- variants


class RoundVariant:
    """The compiled round (``make_round_fn``) with one executor, from the bench's initial
    state; calling it runs one round."""

    def __init__(self, name, model, config, train, key, image_shape):
        self.name, self.model, self.config = name, model, config
        self.state = fm.init_state(model, key, image_shape, train.num_clients, config)
        self.hparams = config.hparams()
        self.round_fn = fm.make_round_fn(model, config)
        mesh = self.round_fn.mesh
        if mesh is not None:
            from fedmix_jax import executors
            from fedmix_jax.sharding import shard_clients

            # placed as the main job places them, so the first call compiles the program the
            # timed rounds run (an unplaced state compiled a second program on the second call)
            self.state = executors.for_config(config).place_state(self.state, self.round_fn)
            self.train = shard_clients(train, mesh)
            self.devices = int(mesh.size)
        else:
            self.train = jax.device_put(train)
            self.devices = 1
        self.first_metrics = self.first_global = None

    def __call__(self):
        self.state, m = self.round_fn(self.state, self.train, self.hparams)
        if self.first_metrics is None:
            self.first_metrics = jax.device_get(m)
            self.first_global = jax.device_get(self.state.global_params)
        return self.state, m


class BaselineVariant:
    """:class:`SequentialBaseline` from the bench's initial state; calling it runs one round."""

    def __init__(self, model, config, train, key, image_shape):
        self.name = "baseline"
        self.base = SequentialBaseline(model, config)
        state = fm.init_state(model, key, image_shape, train.num_clients, config)
        self.state = SequentialBaseline.from_fed_state(state)
        self.data = SequentialBaseline.client_data(train)
        self.hparams = config.hparams()
        self.devices = 1
        self.first_metrics = self.first_global = None

    def __call__(self):
        self.state, m = self.base.round(self.state, self.data, self.hparams)
        if self.first_metrics is None:
            self.first_metrics = m
            self.first_global = jax.device_get(self.state["global_params"])
        return self.state["global_params"], m

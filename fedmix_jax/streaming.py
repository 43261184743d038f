"""Streamed rounds: a federation larger than device memory trains block by block.

:class:`StreamedRound` runs each site's round (:func:`streamed_site_round`) on training data read in
blocks (host arrays or the array_record cache), in three phases -- inputs, order, training in blocks
of ``k`` steps -- with :func:`fedmix_jax.site.site_round`'s results bit for bit. Details and shapes:
docs/streaming.md.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedmix_jax.data.federation import PIXEL, FederatedSplit, unpack_split_labels
from fedmix_jax.data.streamed_sources import SplitSource
from fedmix_jax.round import FedState, RoundMetrics, finish_round, round_keys
from fedmix_jax.site import (ModelPair, SiteReport, SiteState, finish_epoch, make_optimizer,
                             make_train_batch, masked_batch, prepare_epoch, sample_order,
                             train_inputs)


def prefetched(thunks: Iterable[Callable[[], Any]], depth: int = 2) -> Iterator[Any]:
    """Results of ``thunks`` in order, computed by one background thread up to ``depth`` ahead
    (reading and ``device_put`` of the next blocks overlap the device's work on this one)."""
    it = iter(thunks)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = collections.deque(pool.submit(t) for t in itertools.islice(it, max(depth, 1)))
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(nxt))
            yield result


@functools.lru_cache(maxsize=16)
def _programs(model: nn.Module, config):
    @jax.jit
    def inputs_block(global_params, block, round_index):
        block = unpack_split_labels(block)     # bit-packed masks / boxes: this block's
        ti = train_inputs(model, global_params, block, config, round_index)
        # with direct weak-label losses also (has_target, boxes, image_labels, levels)
        weak = None if config.strategy.weak is None else ti.batch_extras()[1:]
        return (ti.target1, ti.target2 if config.strategy.trains_model2 else None, ti.usable,
                ti.weak, ti.selected_weak, ti.self_train, weak)

    @jax.jit
    def order(key, usable):
        k_order, k_aug = jax.random.split(key)
        return sample_order(k_order, usable), k_aug

    @jax.jit
    def start(params, opt_state, learning_rate):
        _, opt_state, trainable, opt_t = prepare_epoch(config, params, opt_state, learning_rate)
        return opt_state, (trainable, opt_t)

    @jax.jit
    def run_block(carry, k_aug, steps, w, images, targets, extras):
        train_batch = make_train_batch(model, config, make_optimizer(config), k_aug)

        def step(carry, xs):
            s, w_s, x, t, ex = xs
            active = jnp.sum(w_s) > 0
            carry, (l1, l2, counted) = jax.lax.cond(active, train_batch, masked_batch, carry, s,
                                                    w_s, x, t, ex)
            return carry, (l1, l2, counted, active)

        return jax.lax.scan(step, carry, (steps, w, images, targets, extras))

    finish = jax.jit(functools.partial(finish_epoch, config))
    return inputs_block, order, start, run_block, finish


@dataclasses.dataclass
class StreamOptions:
    """block_steps: local steps per training block (k); pseudo_block: samples per phase-1 block
    (rounded up to a multiple of ``inference_chunk``; None: ``k * B``); prefetch: blocks read
    ahead by the background thread."""

    block_steps: int = 8
    pseudo_block: int | None = None
    prefetch: int = 2

    def __post_init__(self):
        if self.block_steps < 1 or self.prefetch < 0 or (
                self.pseudo_block is not None and self.pseudo_block < 1):
            raise ValueError(f"invalid stream options {self}")


def streamed_site_round(model: nn.Module, config, global_params: ModelPair, site: SiteState,
                        source: SplitSource, c: int, key: jax.Array, hparams, round_index,
                        options: StreamOptions | None = None) -> tuple[SiteState, SiteReport]:
    """:func:`fedmix_jax.site.site_round` of client ``c`` with its data read from ``source`` in
    blocks; same arguments otherwise, same results."""
    options = options or StreamOptions()
    programs = _programs(model, config)
    n, b = source.max_samples, config.batch_size
    # 1. per-sample training inputs from the global pair, block by block, kept on the host.
    targets, (usable, weak, selected_weak, self_train), weak_inputs = _training_inputs(
        programs[0], config, global_params, source, c, round_index, options)
    # 2. the order of the local epoch, as local_epoch computes it.
    order, k_aug = programs[1](key, jnp.asarray(usable))
    num_steps = -(-n // b)
    order = np.pad(np.asarray(order), (0, num_steps * b - n))
    w = (usable[order] & (np.arange(num_steps * b) < n)).astype(np.float32).reshape(num_steps, b)
    # 3. training in blocks of k steps; blocks without an active step are skipped.
    start = global_params if config.strategy.aggregates else site.params
    extras = self_train if weak_inputs is None else (self_train,) + weak_inputs
    params, opt_state, (loss1, loss2, steps) = _train_blocks(
        programs, start, site.opt_state, hparams, k_aug, order, w, targets, extras, source,
        c, options)
    count = lambda m: jnp.asarray(np.sum(m), jnp.int32)  # noqa: E731
    report = SiteReport(num_usable=count(usable), loss1=loss1, loss2=loss2, num_weak=count(weak),
                        num_selected_weak=count(selected_weak), steps=steps,
                        num_pixel=count(source.valid[c] & (source.levels[c] == PIXEL)))
    return SiteState(params=params, opt_state=opt_state), report


def _training_inputs(inputs_block, config, global_params, source, c, round_index, options):
    """Phase 1, on the host: ``((target1 [N, ...], target2 or None), flags [4, N] (usable, weak,
    selected_weak, self_train), weak)``, ``weak`` None or ``(has_target [N], boxes [N, H, W, K],
    image_labels [N, K], levels [N])``."""
    dual = config.strategy.trains_model2
    n, chunk = source.max_samples, config.inference_chunk
    want = options.pseudo_block or options.block_steps * config.batch_size
    # samples per block; all N when N <= chunk (one call, as in the in-memory pass)
    p = n if n <= chunk else min(-(-want // chunk) * chunk, -(-n // chunk) * chunk)
    starts = list(range(0, n, p))
    targets, weak = [None, None], [None] * 4
    flags = np.zeros((4, n), bool)

    def load_rows(lo):
        return lambda: jax.device_put(source.read(c, np.arange(lo, lo + p)))

    def keep(lo, out):     # block [lo, lo + p) to the host
        out = jax.device_get(out)
        m = min(p, n - lo)
        for store, values in ((targets, out[:2 if dual else 1]), (weak, out[6] or ())):
            for i, f in enumerate(values):   # [N, ...] host arrays, allocated at the first block
                if store[i] is None:
                    store[i] = np.empty((n,) + f.shape[1:], f.dtype)
                store[i][lo:lo + m] = f[:m]
        for i, f in enumerate(out[2:6]):
            flags[i, lo:lo + m] = f[:m]

    pending = None         # the previous block's outputs come back while this one computes
    for lo, block in zip(starts, prefetched((load_rows(lo) for lo in starts), options.prefetch)):
        out = inputs_block(global_params, block, round_index)
        if pending is not None:
            keep(*pending)
        pending = (lo, out)
    keep(*pending)
    return tuple(targets), flags, (None if weak[0] is None else tuple(weak))


def _train_blocks(programs, start, opt_state, hparams, k_aug, order, w, targets, extras,
                  source, c, options):
    """Phase 3, blocks of k steps: ``(params, opt_state, (loss1, loss2, steps))``. ``extras``:
    the [N, ...] host arrays a step reads besides images and targets (``self_train``, or
    :meth:`~fedmix_jax.site.TrainInputs.batch_extras`)."""
    _, _, start_fn, run_block, finish = programs
    num_steps, b = w.shape
    k = options.block_steps
    active = w.sum(axis=1) > 0
    opt_state, carry = start_fn(start, opt_state, hparams.learning_rate)
    run = [j for j in range(-(-num_steps // k)) if active[j * k:(j + 1) * k].any()]
    img_shape = tuple(source.images.shape[2:])
    rows_of_step = order.reshape(num_steps, b)

    def gathered(values, need, flat, steps_shape):
        out = np.zeros(steps_shape + values.shape[1:], values.dtype)
        out[need] = values[flat].reshape((-1, b) + values.shape[1:])
        return out

    def load_block(j):
        def load():
            steps = np.arange(j * k, (j + 1) * k)
            live = steps < num_steps
            steps_c = np.where(live, steps, 0)
            w_blk = np.where(live[:, None], w[steps_c], 0.0).astype(np.float32)     # [k, B]
            need = (w_blk.sum(axis=1) > 0)                   # only active steps are read
            flat = rows_of_step[steps_c][need].reshape(-1)   # their rows, [k, B] -> [-1]
            x = np.zeros((k, b) + img_shape, source.images.dtype)
            if flat.size:
                x[need] = source.read(c, flat, ("images",)).images.reshape((-1, b) + img_shape)
            tgs = tuple(gathered(t, need, flat, (k, b)) for t in targets if t is not None)
            ex = jax.tree.map(lambda a: gathered(a, need, flat, (k, b)), extras)
            return jax.device_put((steps.astype(np.int32), w_blk, x, tgs, ex))
        return load

    results = []           # per-block outputs stay on the device until the epoch ends
    for j, blk in zip(run, prefetched((load_block(j) for j in run), options.prefetch)):
        carry, (l1, l2, counted, _) = run_block(carry, k_aug, *blk)
        results.append((j, (l1, l2, counted)))
    outputs = np.zeros((3, num_steps), np.float32)     # l1, l2, counted
    for j, res in jax.device_get(results):
        lo, hi = j * k, min((j + 1) * k, num_steps)
        outputs[:, lo:hi] = np.stack(res)[:, :hi - lo]
    return finish(start, opt_state, *carry, *map(jnp.asarray, outputs), jnp.asarray(active))


class StreamedRound:
    """``round_fn(state, hparams=None) -> (state, RoundMetrics [C])``: one round over every client
    of ``source``, each a :func:`streamed_site_round`; keys, weights and aggregation as in
    :func:`fedmix_jax.round.round_step`. It does not donate the input state."""

    def __init__(self, model: nn.Module, config, source: SplitSource,
                 options: StreamOptions | None = None):
        self.model, self.config, self.source = model, config, source
        self.options = options or StreamOptions()
        self.default_hparams = config.hparams()
        self._keys = jax.jit(lambda key: round_keys(key, source.num_clients))
        self._take = jax.jit(lambda tree, c: jax.tree.map(lambda x: x[c], tree))
        self._stack = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
        self._finish = jax.jit(functools.partial(finish_round, config.strategy))
        self._valid = FederatedSplit(images=None, masks=None, boxes=None, image_labels=None,
                                     levels=None, valid=jnp.asarray(source.valid))
        self.jitted, self.mesh = (self._keys, self._finish) + _programs(model, config), None

    def __call__(self, state: FedState, hparams=None) -> tuple[FedState, RoundMetrics]:
        hparams = self.default_hparams if hparams is None else hparams
        next_key, client_keys = self._keys(state.key)
        sites_in = SiteState(params=state.client_params, opt_state=state.opt_state)
        sites, reports = zip(*(streamed_site_round(
            self.model, self.config, state.global_params, self._take(sites_in, c), self.source,
            c, client_keys[c], hparams, state.round, self.options)
            for c in range(self.source.num_clients)))
        return self._finish(state, self._valid, self._stack(*sites), self._stack(*reports),
                            next_key, hparams)


__all__ = ["StreamOptions", "StreamedRound", "streamed_site_round"]

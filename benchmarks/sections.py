"""The benchmark's sections beyond the round table: the parts of a round, the round time versus
clients and image size, and computation dtypes."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.baselines import BaselineVariant, RoundVariant, SequentialBaseline
from benchmarks.harness import cost_flops, summarize, time_variants, timed
from fedmix_jax import aggregation
import fedmix_jax as fm
from fedmix_jax.round import broadcast
from fedmix_jax import site as S
from fedmix_jax.data.federation import PIXEL
from fedmix_jax.losses import dice_loss
from fedmix_jax.round import round_keys


def train_step_fn(model, config: fm.RoundConfig):
    """One local-training step of both models at batch B, as the site function makes it."""
    tx = S.make_optimizer(config)
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731

    def step(params, opt, x, t1, t2, w):
        def loss(pair):
            l1 = dice_loss(apply(pair[0], x), t1, w)
            l2 = dice_loss(apply(pair[1], x), t2, w)
            return l1 + l2, (l1, l2)

        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(tuple(params))
        ups = [tx.update(g, o, p) for g, o, p in zip(grads, opt, params)]
        new = tuple(optax.apply_updates(p, u) for p, (u, _) in zip(params, ups))
        return new, tuple(o for _, o in ups), aux

    return jax.jit(step)


def time_parts(model, config, train, key, image_shape, repeats, peak,
               base: SequentialBaseline | None = None) -> dict:
    """Pseudo-labelling, local training, aggregation and one train step, round vs baseline.

    The round's parts are the site function's pieces mapped over the clients in one program
    (``lax.map``); the baseline's are :class:`SequentialBaseline`'s loops.
    """
    out = {}
    c = train.num_clients
    state = fm.init_state(model, key, image_shape, c, config)
    hp = config.hparams()
    dev_train = jax.device_put(train)
    base = base or SequentialBaseline(model, config)
    data = SequentialBaseline.client_data(train)
    gp = state.global_params
    over_clients = lambda f, xs: jax.lax.map(f, xs)  # noqa: E731 - the map executor's form

    inputs_fn = jax.jit(lambda gp, tr: over_clients(
        lambda d: S.train_inputs(model, gp, d, config), tr))
    inputs = inputs_fn(gp, dev_train)
    _, client_keys = jax.jit(round_keys, static_argnums=1)(state.key, c)
    epochs = jax.jit(lambda params, opt, keys, inp, lr: over_clients(
        lambda a: S.local_epoch(model, config, a[0], a[1], a[2], a[3], lr),
        (params, opt, keys, inp)))
    local = broadcast(gp, c)
    host_inputs = jax.device_get(inputs)
    take = lambda t, i: jax.tree.map(lambda x: x[i], t)  # noqa: E731

    def train_base():
        outs = []
        for i in range(c):
            params = base.copy(gp)
            opt = base.copy(take(state.opt_state, i))
            outs.append(base.train_client(
                params, opt, client_keys[i], data[i]["images"],
                jnp.asarray(host_inputs.target1[i]), jnp.asarray(host_inputs.target2[i]),
                np.asarray(host_inputs.usable[i]), hp.learning_rate))
        return outs

    w = jnp.full((c,), 1.0 / c, jnp.float32)
    agg = jax.jit(aggregation.weighted_average)
    client_pairs = [take(state.client_params, i) for i in range(c)]
    ws = [w[i] for i in range(c)]
    cases = {
        "pseudo_labels_round": lambda: inputs_fn(gp, dev_train),
        "pseudo_labels_baseline": lambda: [base.pseudo_label_client(gp, d)[0] for d in data],
        "local_training_round": lambda: epochs(local, state.opt_state, client_keys, inputs,
                                               hp.learning_rate),
        "local_training_baseline": train_base,
        "aggregation_round": lambda: agg(state.client_params, w),
        "aggregation_baseline": lambda: tuple(base.average(ws, [p[k] for p in client_pairs])
                                              for k in (0, 1)),
    }
    first = {k: timed(fn)[0] for k, fn in cases.items()}
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            times[k].append(timed(fn)[0])
    valid_images = int(np.asarray(train.valid).sum())
    weak_images = int((np.asarray(train.valid) & (np.asarray(train.levels) != PIXEL)).sum())
    steps = int(np.sum(jax.device_get(cases["local_training_round"]()[2][2])))
    for k in cases:
        s = summarize(times[k])
        row = dict(seconds=s, first_call_s=first[k], compile_s=max(first[k] - s["median"], 0))
        if k.startswith("pseudo"):
            row.update(images=weak_images, images_per_s=weak_images / s["median"])
        if k.startswith("local"):
            row.update(client_images_per_s=valid_images / s["median"], steps=steps)
        out[k] = row
    for part in ("pseudo_labels", "local_training", "aggregation"):
        out[part + "_speedup"] = (out[part + "_baseline"]["seconds"]["median"]
                                  / out[part + "_round"]["seconds"]["median"])
    out["train_step"], out["_step_fn"] = _train_step(model, config, image_shape, state, repeats,
                                                     peak, out, steps)
    return out


def _train_step(model, config, image_shape, state, repeats, peak, parts, steps):
    """One step of both models: XLA's FLOPs (cost analysis) / time vs the matmul peak, timed
    alternately with a matmul so that both see the same machine load."""
    b = config.batch_size
    hw = image_shape[:2] if config.crop is None else config.crop
    x = jax.random.uniform(jax.random.key(1), (b,) + tuple(hw) + (image_shape[2],))
    t = (x[..., :1] > 0.5).astype(jnp.float32)
    opt = tuple(jax.tree.map(lambda v: v[0], o) for o in state.opt_state)
    sargs = (tuple(state.global_params), opt, x, t, t, jnp.ones((b,), jnp.float32))
    t0 = time.perf_counter()
    compiled = train_step_fn(model, config).lower(*sargs).compile()
    compile_s = time.perf_counter() - t0
    flops = cost_flops(compiled)
    jax.block_until_ready(compiled(*sargs))
    n = peak["n"] if peak else 1024
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    step_times, dot_times = [], []
    for _ in range(max(repeats, 5)):
        step_times.append(timed(lambda: compiled(*sargs))[0])
        dot_times.append(timed(lambda: dot(a, a))[0])
    st, dt = summarize(step_times), summarize(dot_times)
    row = dict(batch=b, seconds=st, compile_s=compile_s, flops=flops,
               interleaved_matmul=dict(n=n, seconds=dt, gflops=2.0 * n ** 3 / dt["median"] / 1e9))
    if flops:
        gf = row["interleaved_matmul"]["gflops"]
        row["gflops_per_s"] = flops / st["median"] / 1e9
        row["fraction_of_matmul_peak"] = row["gflops_per_s"] / gf
        for who in ("round", "baseline"):   # the whole local training: step FLOPs x steps
            part = parts[f"local_training_{who}"]
            part["gflops_per_s"] = flops * steps / part["seconds"]["median"] / 1e9
            part["fraction_of_matmul_peak"] = part["gflops_per_s"] / gf
    return row, (compiled, sargs)


def sweep(args, make_model, make_config, make_federation, key, log, res) -> dict:
    """Round time versus the number of clients (at ``args.image_size``) and the image size (at
    ``args.clients``), with the baseline where ``args.sweep_baseline``."""
    executor = args.sweep_executor or fm.default_executor()
    points = [(int(c), args.image_size) for c in args.sweep_clients if c]
    points += [(args.clients, int(s)) for s in args.sweep_sizes if s and int(s) != args.image_size]
    out = dict(executor=executor, repeats=args.sweep_repeats, rows=[])
    model = make_model()
    for c, size in points:
        row = dict(clients=c, image_size=size)
        try:
            train = make_federation(num_clients=c, image_size=size).train
            image_shape = tuple(train.images.shape[2:])
            row["images"] = int(np.asarray(train.valid).sum())
            variants = {executor: RoundVariant(executor, model, make_config(executor), train,
                                               key, image_shape)}
            if args.sweep_baseline:
                variants["baseline"] = BaselineVariant(model, make_config(executor), train, key,
                                                       image_shape)
            r = time_variants(variants, args.sweep_repeats, 0, row["images"], log)
            main = r[executor]
            if main.get("error") and not main.get("seconds"):
                raise RuntimeError(main["error"])
            row.update(seconds=main["seconds"], compile_s=main["compile_s"],
                       client_images_per_s=main["client_images_per_s"], memory=main.get("memory"))
            if r.get("baseline", {}).get("seconds"):
                row["baseline_seconds"] = r["baseline"]["seconds"]
                row["speedup_vs_baseline"] = main.get("speedup_vs_baseline")
            log(f"  {c} clients, {size}px: {main['seconds']['median']:.3f} s")
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
            log(f"  {c} clients, {size}px: FAILED {str(e)[:200]}")
        out["rows"].append(row)
        res.set("sweep", out)
    return out


def mixed_precision(args, make_model, make_config, fed, log=print) -> dict:
    """Rounds and test Dice per computation dtype, from the same initial params (the reference
    selection rules, so the Dice is that of a normal run)."""
    from fedmix_jax.evaluation import evaluate

    out = {}
    for dt in args.dtypes:
        model = make_model(dt)
        config = make_config(fm.default_executor())
        config = dataclasses.replace(config, strategy=fm.get_strategy(args.strategy))
        image_shape = tuple(fed.train.images.shape[2:])
        state = fm.init_state(model, jax.random.key(args.seed), image_shape,
                             fed.train.num_clients, config)
        round_fn = fm.make_round_fn(model, config)
        train = jax.device_put(fed.train)
        t_first, (state, _) = timed(lambda: round_fn(state, train))
        times = []
        for _ in range(args.dice_rounds - 1):
            t, (state, _) = timed(lambda: round_fn(state, train))
            times.append(t)
        ev = evaluate(model, state.global_params[0], fed.test)
        out[str(jnp.dtype(dt))] = dict(rounds=args.dice_rounds, first_call_s=t_first,
                                       seconds=summarize(times), mean_dice=float(ev["mean_dice"]),
                                       dice=[float(v) for v in ev["dice"]])
        log(f"  {jnp.dtype(dt)}: {args.dice_rounds} rounds, test Dice "
            f"{float(ev['mean_dice']):.4f}, round {np.median(times) if times else t_first:.3f} s")
    return out

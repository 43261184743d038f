"""Benchmark of the FedMix round: executors, a sequential reference-structured baseline, parts.

Run::

    python -m fedmix_jax.bench [--clients 4 --train_per_client 32 --image_size 64 --width 16
                                --batch_size 8 --repeats 5 --executors vmap,loop,map,sharded
                                --json out.json] [--sweep] [--profile] [--dtypes float32,bfloat16]

In one process and one run it times, after compilation and warm-up, over ``--repeats`` repeats
taken *interleaved* (repeat r of every variant before repeat r + 1 of any, so a change of machine
load hits every variant alike; median and spread are reported):

* the FedMix round with each executor of the client axis (:mod:`fedmix_jax.federated`);
* ``baseline`` — a sequential round with the reference's structure (:class:`SequentialBaseline`):
  a Python loop over clients and over the two models, pseudo-labels one image at a time, one
  jitted call per image / batch / model, a host sync per step for the loss (``loss.item()``) and
  per image for the selection — what a straight port of the PyTorch notebooks does. It is built
  from the same pure pieces (U-Net, losses, pseudo-labels, augmentation, optax) and computes the
  same round (checked: ``baseline_check``);
* the parts alone: pseudo-labelling (batched chunks vs one image at a time), local training,
  aggregation, and one local-training step (both models, batch B) whose FLOPs come from XLA's cost
  analysis of the compiled step, reported as a fraction of a matmul peak measured in the same
  process (a large float32 ``jnp.dot``).

Printed as tables and written as JSON (``--json``; rewritten after every section, so a failure in
one section keeps the others). Figures: client-images per second (valid training images of all
clients per round / round time), speed-up over the baseline, compile time (first call minus a
steady call), host RSS (current, and the process's peak so far — a high-water mark) and the
device's ``memory_stats`` where the backend has them.

``--sweep`` adds round time versus the number of clients and the image size; ``--profile``
traces local-training steps (``jax.profiler``) and attributes the time and XLA's FLOPs to op
categories (convolution forward / backward, GroupNorm, ...); ``--dtypes`` compares computation
dtypes (e.g. bfloat16 compute with float32 params) for speed and test Dice after
``--dice_rounds`` rounds.

By default every weak sample is selected (``--selection lenient``), so each round trains on all
samples — the largest and a constant workload, as in late rounds when the models agree;
``--selection reference`` uses the paper's thresholds (early rounds then select little and train
little, which makes timings depend on the round).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gzip
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedmix_jax import aggregation
from fedmix_jax import federated as F
from fedmix_jax.augment import augment_jointly
from fedmix_jax.data.federation import PIXEL, FederatedSplit
from fedmix_jax.losses import dice_loss
from fedmix_jax.models import UNet
from fedmix_jax.pseudo_labels import SelectionConfig, pseudo_labels_from_logits

__all__ = ["SequentialBaseline", "summarize", "matmul_peak", "hlo_categories", "run", "main"]

LENIENT = SelectionConfig(agreement=0.0, box_fit=0.0, reject_empty=False)


# ----------------------------------------------------------------------------------------------
# Small utilities


def summarize(times) -> dict:
    """median / min / max / quartiles of a list of seconds."""
    t = np.asarray(times, np.float64)
    if t.size == 0:
        return dict(n=0)
    q1, q3 = np.percentile(t, [25, 75])
    return dict(n=int(t.size), median=float(np.median(t)), min=float(t.min()),
                max=float(t.max()), q1=float(q1), q3=float(q3),
                spread=float((t.max() - t.min()) / max(np.median(t), 1e-12)),
                all=[float(x) for x in t])


def _block(tree):
    return jax.block_until_ready(tree)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = _block(fn())
    return time.perf_counter() - t0, out


def host_memory() -> dict:
    """Host RSS now and the process's peak (MB), from /proc (Linux) or ``resource``."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss_mb" if line.startswith("VmRSS") else "rss_peak_mb"
                    out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if "rss_peak_mb" not in out:
        scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
        out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return out


def device_memory() -> dict | None:
    """``memory_stats()`` of the first device (MB), or None where the backend has none."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    if not stats:
        return None
    keep = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k.replace("bytes", "mb"): stats[k] / 2 ** 20 for k in keep if k in stats}


def memory() -> dict:
    return dict(host=host_memory(), device=device_memory())


def environment() -> dict:
    import flax

    dev = jax.devices()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return dict(backend=jax.default_backend(), devices=len(dev),
                device_kind=getattr(dev[0], "device_kind", str(dev[0])),
                platform=dev[0].platform, jax=jax.__version__, flax=flax.__version__,
                optax=optax.__version__, numpy=np.__version__, python=sys.version.split()[0],
                cpu_count=os.cpu_count(), loadavg=load, xla_flags=os.environ.get("XLA_FLAGS", ""))


def matmul_peak(sizes=None, repeats: int = 5) -> dict:
    """A float32 matmul peak: the best median GFLOP/s of ``jnp.dot`` over square ``sizes``."""
    if sizes is None:
        sizes = (1024, 2048) if jax.default_backend() == "cpu" else (4096, 8192)
    rows = []
    dot = jax.jit(jnp.dot)
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        _block(dot(a, b))
        times = [_timed(lambda: dot(a, b))[0] for _ in range(repeats)]
        s = summarize(times)
        rows.append(dict(n=n, seconds=s, gflops=2.0 * n ** 3 / s["median"] / 1e9,
                         gflops_best=2.0 * n ** 3 / s["min"] / 1e9))
        del a, b
    best = max(rows, key=lambda r: r["gflops"])
    return dict(gflops=best["gflops"], gflops_best=best["gflops_best"], n=best["n"],
                sizes=rows, precision=str(jax.config.jax_default_matmul_precision))


def cost_flops(compiled) -> float | None:
    """FLOPs from XLA's cost analysis of a compiled program (None if unavailable)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return None
    return float(ca.get("flops", 0.0)) or None


# ----------------------------------------------------------------------------------------------
# The sequential, reference-structured baseline


class SequentialBaseline:
    """One FedMix round as the PyTorch reference structures it, on the same JAX pieces.

    Per client, in a Python loop: load the global models; pseudo-label the client's weak images
    **one at a time** (one jitted forward per model per image, then a jitted per-sample selection
    and a host read of its decision, as the reference appends selected samples to a list); then
    one local epoch over the usable samples, each batch a jitted augmentation and **two separate
    jitted train steps** (model 1, then model 2) with a host read of the loss (``loss.item()``).
    Then the server's weights and a jitted weighted average per model.

    It computes the same round as :func:`fedmix_jax.federated.make_round_fn` (same keys, sample
    order, augmentation, batches with the same zero-weight fill, Adam): a step without usable
    sample is skipped, as the reference's loader never yields one.

    State: ``dict(global_params=(p1, p2), clients=[((p1, p2), (o1, o2)), ...], round, key)``;
    :meth:`from_fed_state` / :meth:`to_fed_state` convert.
    """

    def __init__(self, model, config: F.RoundConfig):
        self.model, self.config = model, config
        strategy = config.strategy
        self.tx = tx = F.make_optimizer(config)
        apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
        self.forward = jax.jit(apply)

        def select(l1, l2, box, label, level, valid):
            return pseudo_labels_from_logits(l1, l2, box[None], label[None], level[None],
                                             valid[None], strategy.selection)

        self.select = jax.jit(select)

        def step(params, opt, x, t, w):
            loss, grads = jax.value_and_grad(lambda p: dice_loss(apply(p, x), t, w))(params)
            updates, opt = tx.update(grads, opt, params)
            return optax.apply_updates(params, updates), opt, loss

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        self.order = jax.jit(F._sample_order)
        self.split_key = jax.jit(lambda k: jax.random.split(k))
        self.fold_in = jax.jit(jax.random.fold_in)
        self.round_keys = jax.jit(F._round_keys, static_argnums=1)
        crop, hflip, vflip = config.crop, config.hflip, config.vflip
        self.augment = jax.jit(lambda k, arrays: augment_jointly(k, arrays, crop, hflip, vflip))
        self.stack = jax.jit(lambda xs: jnp.stack(xs))
        self.weights = jax.jit(functools.partial(F.aggregation_weights, config))
        self.average = jax.jit(lambda ws, trees: jax.tree.map(
            lambda *xs: sum(w * x for w, x in zip(ws, xs)), *trees))

    # -- state conversion
    @staticmethod
    def from_fed_state(state: F.FedState) -> dict:
        c = jax.tree.leaves(state.client_params)[0].shape[0]
        take = lambda t, i: jax.tree.map(lambda x: x[i], t)  # noqa: E731
        return dict(global_params=state.global_params,
                    clients=[(take(state.client_params, i), take(state.opt_state, i))
                             for i in range(c)],
                    round=state.round, key=state.key)

    @staticmethod
    def to_fed_state(bstate: dict) -> F.FedState:
        stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
        return F.FedState(global_params=bstate["global_params"],
                          client_params=stack([p for p, _ in bstate["clients"]]),
                          opt_state=stack([o for _, o in bstate["clients"]]),
                          round=bstate["round"], key=bstate["key"])

    @staticmethod
    def client_data(train: FederatedSplit) -> list[dict]:
        """Per-client device arrays and host-side levels / validity (the reference's datasets)."""
        out = []
        for c in range(train.num_clients):
            out.append(dict(images=jnp.asarray(train.images[c]), masks=jnp.asarray(train.masks[c]),
                            boxes=jnp.asarray(train.boxes[c]),
                            image_labels=jnp.asarray(train.image_labels[c]),
                            levels=np.asarray(train.levels[c]), valid=np.asarray(train.valid[c]),
                            levels_dev=jnp.asarray(train.levels[c]),
                            valid_dev=jnp.asarray(train.valid[c])))
        return out

    # -- the parts of a round
    def pseudo_label_client(self, global_params, d: dict):
        """One client's usable mask and targets, pseudo-labelling one image at a time.

        Returns (usable [N] bool numpy, target1 list, target2 list, weak, selected_weak).
        """
        strategy = self.config.strategy
        g1, g2 = global_params
        n = d["valid"].shape[0]
        usable = np.zeros(n, bool)
        t1, t2 = [], []
        zero = jnp.zeros_like(d["masks"][0])
        weak = selected_weak = 0
        for i in range(n):
            target = (zero, zero)
            if d["valid"][i]:
                pixel = strategy.all_pixel or d["levels"][i] == PIXEL
                if pixel:
                    usable[i] = True
                    target = (d["masks"][i], d["masks"][i])
                else:
                    weak += 1
                    if strategy.use_pseudo_labels:
                        x = d["images"][i:i + 1]
                        l1, l2 = self.forward(g1, x), self.forward(g2, x)
                        pl = self.select(l1, l2, d["boxes"][i], d["image_labels"][i],
                                         d["levels_dev"][i], d["valid_dev"][i])
                        if bool(pl.selected[0]):                      # host sync, per image
                            usable[i] = True
                            selected_weak += 1
                            target = (pl.pseudo2[0], pl.pseudo1[0])   # cross supervision
            t1.append(target[0])
            t2.append(target[1])
        return usable, t1, t2, weak, selected_weak

    def train_client(self, params, opt, key, images, target1, target2, usable):
        """One local epoch, model by model and batch by batch. Returns (params, opt, metrics)."""
        dual = self.config.strategy.dual_models
        b = self.config.batch_size
        n = usable.shape[0]
        k_order, k_aug = self.split_key(key)
        order = np.asarray(self.order(k_order, jnp.asarray(usable)))
        n_usable = int(usable.sum())
        steps = -(-n_usable // b)                      # the loader yields only usable samples
        padded = np.concatenate([order, np.zeros(steps * b, order.dtype)])
        (p1, p2), (o1, o2) = params, opt
        losses1, losses2 = [], []
        for s in range(steps):
            idx = padded[s * b:(s + 1) * b]
            w = jnp.asarray((usable[idx] & (np.arange(s * b, (s + 1) * b) < n))
                            .astype(np.float32))
            arrays = (images[idx], target1[idx]) + ((target2[idx],) if dual else ())
            arrays = self.augment(self.fold_in(k_aug, s), arrays)
            p1, o1, l1 = self.step(p1, o1, arrays[0], arrays[1], w)
            losses1.append(float(l1))                  # loss.item(): a host sync per step
            if dual:
                p2, o2, l2 = self.step(p2, o2, arrays[0], arrays[2], w)
                losses2.append(float(l2))
        mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
        return (p1, p2), (o1, o2), dict(loss1=mean(losses1), loss2=mean(losses2), steps=steps)

    def round(self, bstate: dict, data: list[dict], lam: float, beta: float):
        """One round. Returns (new state dict, metrics dict of [C] numpy arrays)."""
        config = self.config
        c = len(data)
        next_key, client_keys = self.round_keys(F.FedState(None, None, None, bstate["round"],
                                                           bstate["key"]), c)
        gp = bstate["global_params"]
        new_clients, rows = [], []
        for i, d in enumerate(data):
            params, opt = bstate["clients"][i]
            if config.strategy.aggregates:
                params = self.copy(gp)                              # load the global models
            usable, t1, t2, weak, sel = self.pseudo_label_client(gp, d)
            target1, target2 = self.stack(t1), self.stack(t2)
            params, opt, m = self.train_client(params, opt, client_keys[i], d["images"],
                                               target1, target2, usable)
            new_clients.append((params, opt))
            rows.append(dict(m, counts=int(usable.sum()), weak=weak, selected_weak=sel,
                             participating=bool(d["valid"].any())))
        col = lambda k, dt: np.asarray([r[k] for r in rows], dt)  # noqa: E731
        metrics = dict(loss1=col("loss1", np.float32), loss2=col("loss2", np.float32),
                       counts=col("counts", np.int32), weak=col("weak", np.int32),
                       selected_weak=col("selected_weak", np.int32),
                       steps=col("steps", np.int32))
        weights = self.weights(jnp.asarray(metrics["counts"]), jnp.asarray(metrics["loss1"]),
                               jnp.asarray(col("participating", bool)),
                               jnp.float32(lam), jnp.float32(beta))
        metrics["weights"] = np.asarray(weights)
        if config.strategy.aggregates:
            ws = [weights[i] for i in range(c)]
            gp = tuple(self.average(ws, [p[k] for p, _ in new_clients]) for k in (0, 1))
        return dict(global_params=gp, clients=new_clients, round=bstate["round"] + 1,
                    key=next_key), metrics


# ----------------------------------------------------------------------------------------------
# HLO op categories and the profile


def _category(op_name: str, opcode: str, name: str) -> str:
    bwd = "transpose(" in op_name
    suffix = " bwd" if bwd else " fwd"
    if "conv_general_dilated" in op_name or opcode == "convolution":
        return "convolution" + suffix
    if re.search(r"/norm\d", op_name):
        return "groupnorm" + suffix
    if "reduce_window" in op_name or "max_pool" in op_name or "reduce-window" in name \
            or "select_and_scatter" in op_name or "select-and-scatter" in name:
        return "max-pool" + suffix
    if re.search(r"/up\d", op_name) and ("->" in op_name or "dot_general" in op_name):
        return "upsample" + suffix
    if "concatenate" in op_name or "/pad" in op_name:
        return "concat/pad" + suffix
    if "relu" in op_name or op_name.endswith("/max"):
        return "relu" + suffix
    if "transpose" in name or op_name.endswith("/transpose"):
        return "transpose/copy"
    if any(k in op_name for k in ("adam", "optax", "apply_updates", "add_decayed", "sqrt")):
        return "optimizer"
    if not op_name:
        return "other (no op_name)"
    return "other"


def _shape_dims(shape: str) -> list[int]:
    m = re.search(r"\[([\d,]*)\]", shape)
    return [int(v) for v in m.group(1).split(",") if v] if m else []


def hlo_categories(hlo_text: str) -> dict[str, dict]:
    """Entry instructions of an optimized HLO module: category and matmul/conv FLOPs.

    Returns ``{instruction name: dict(category, flops)}`` for the entry computation's
    instructions (the thunks / kernels a profile shows); a fusion's FLOPs are those of the
    convolutions and dots it calls (2 * output elements * contraction size).
    """
    comps: dict[str, list[str]] = {}
    current = None
    entry = None
    for line in hlo_text.splitlines():
        m = re.match(r"^(ENTRY )?%(\S+) .*\{\s*$", line)
        if m and not line.startswith(" "):
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
            continue
        if current is not None and line.startswith("  "):
            comps[current].append(line)
    shapes: dict[str, str] = {}
    inst_re = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?\[[\d,]*\]\S*|\([^=]*?\)) (\S+?)\((.*)$")
    parsed: dict[str, list[tuple]] = {}
    for comp, lines in comps.items():
        rows = []
        for line in lines:
            m = inst_re.match(line)
            if not m:
                continue
            name, shape, opcode, rest = m.groups()
            shapes[name] = shape
            rows.append((name, shape, opcode, rest, line))
        parsed[comp] = rows

    def inst_flops(shape, opcode, rest, line):
        if opcode == "convolution":
            ops = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", line)
            window = re.search(r"window=\{size=([\dx]+)", line)
            if not (ops and labels and window):
                return 0.0
            lhs = _shape_dims(shapes.get(ops[0], ""))
            fpos = labels.group(1).find("f")
            groups = re.search(r"feature_group_count=(\d+)", line)
            cin = lhs[fpos] // (int(groups.group(1)) if groups else 1) if lhs else 0
            k = math.prod(int(v) for v in window.group(1).split("x"))
            return 2.0 * math.prod(_shape_dims(shape)) * k * cin
        if opcode == "dot":
            ops = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
            lhs = _shape_dims(shapes.get(ops[0], "")) if ops else []
            if not (lhs and contract):
                return 0.0
            kk = math.prod(lhs[int(v)] for v in contract.group(1).split(",") if v)
            return 2.0 * math.prod(_shape_dims(shape)) * kk
        return 0.0

    @functools.lru_cache(maxsize=None)
    def comp_flops(comp: str) -> float:
        total = 0.0
        for _, shape, opcode, rest, line in parsed.get(comp, []):
            total += inst_flops(shape, opcode, rest, line)
            for callee in re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", line):
                if callee != comp:
                    total += comp_flops(callee)
        return total

    out = {}
    for name, shape, opcode, rest, line in parsed.get(entry, []):
        op = re.search(r'op_name="([^"]*)"', line)
        op_name = op.group(1) if op else ""
        if not op_name:   # a fusion's own metadata may be empty: use its callee's
            callee = re.search(r"calls=%([\w.\-]+)", line)
            if callee:
                for _, _, _, _, inner in parsed.get(callee.group(1), []):
                    mm = re.search(r'op_name="([^"]*)"', inner)
                    if mm:
                        op_name = mm.group(1)
                        break
        flops = inst_flops(shape, opcode, rest, line)
        for callee in re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", line):
            flops += comp_flops(callee)
        out[name] = dict(category=_category(op_name, opcode, name), flops=flops, op=opcode)
    return out


def profile_step(fn, args, calls: int = 3) -> dict:
    """Trace ``calls`` runs of ``fn(*args)`` (jitted or compiled) and attribute time and FLOPs to
    op categories.

    Time: the summed duration of the trace events (XLA:CPU thunks, GPU kernels) that name an
    entry instruction of the compiled program. XLA:CPU runs independent thunks concurrently, so
    the shares are of summed thunk time, not of wall time.
    """
    compiled = fn.lower(*args).compile() if hasattr(fn, "lower") else fn
    fn = compiled
    table = hlo_categories(compiled.as_text())
    _block(fn(*args))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                _block(fn(*args))
        wall = (time.perf_counter() - t0) / calls
        paths = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs
                 if f.endswith("perfetto_trace.json.gz")]
        if not paths:
            return dict(error="no perfetto trace written")
        with gzip.open(paths[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    dur: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("ph") != "X":
            continue
        name = e.get("name", "")
        args_ = e.get("args") or {}
        key = name if name in table else args_.get("hlo_op") or args_.get("name")
        if key in table:
            dur[table[key]["category"]] += float(e.get("dur", 0.0)) / 1e6 / calls
            count[table[key]["category"]] += 1
    flops: dict[str, float] = defaultdict(float)
    for row in table.values():
        flops[row["category"]] += row["flops"]
    total = sum(dur.values())
    cats = sorted(set(dur) | {k for k, v in flops.items() if v}, key=lambda k: -dur.get(k, 0))
    rows = []
    for k in cats:
        t = dur.get(k, 0.0)
        rows.append(dict(category=k, seconds=t, share=t / total if total else None,
                         gflop=flops.get(k, 0.0) / 1e9,
                         gflops_per_s=(flops.get(k, 0.0) / t / 1e9) if t else None))
    return dict(wall_per_call=wall, summed_event_seconds=total, rows=rows,
                total_gflop_hlo=sum(flops.values()) / 1e9, cost_analysis_gflop=(
                    (cost_flops(compiled) or 0.0) / 1e9))


# ----------------------------------------------------------------------------------------------
# Building blocks of the benchmark


def make_model(args, dtype=None) -> UNet:
    dt = jnp.dtype(dtype or args.dtype)
    return UNet(width=args.width, num_classes=1, dtype=dt)


def make_config(args, executor: str) -> F.RoundConfig:
    selection = LENIENT if args.selection == "lenient" else SelectionConfig()
    crop = (args.crop, args.crop) if args.crop else None
    return F.RoundConfig(strategy=F.get_strategy(args.strategy, selection),
                         batch_size=args.batch_size, crop=crop, lam=args.lam, beta=args.beta,
                         learning_rate=args.learning_rate, executor=executor,
                         inference_chunk=args.inference_chunk or F.RoundConfig.inference_chunk)


def make_federation(args, num_clients=None, image_size=None, test_size=None):
    from fedmix_jax.data.synthetic import make_synthetic_federation

    return make_synthetic_federation(
        num_clients=num_clients or args.clients, image_size=image_size or args.image_size,
        train_sizes=args.train_per_client, val_size=1,
        test_size=test_size if test_size is not None else 1, seed=args.seed)


class RoundVariant:
    """A FedMix round with one executor, from the bench's initial state."""

    def __init__(self, name, model, config, train, key, image_shape):
        self.name, self.model, self.config = name, model, config
        c = train.num_clients
        self.state = F.init_state(model, key, image_shape, c, config)
        self.round_fn = F.make_round_fn(model, config)
        mesh = self.round_fn.mesh
        if mesh is not None:
            from fedmix_jax.sharding import shard_clients

            self.train = shard_clients(train, mesh)
            self.devices = int(mesh.size)
        else:
            self.train = jax.device_put(train)
            self.devices = 1
        self.first_metrics = None
        self.first_global = None

    def __call__(self):
        self.state, m = self.round_fn(self.state, self.train)
        if self.first_metrics is None:
            self.first_metrics = jax.device_get(m)
            self.first_global = jax.device_get(self.state.global_params)
        return self.state, m


class BaselineVariant:
    """:class:`SequentialBaseline` from the bench's initial state."""

    def __init__(self, model, config, train, key, image_shape):
        self.name = "baseline"
        self.base = SequentialBaseline(model, config)
        state = F.init_state(model, key, image_shape, train.num_clients, config)
        self.state = SequentialBaseline.from_fed_state(state)
        self.data = SequentialBaseline.client_data(train)
        self.lam, self.beta = float(config.lam), float(config.beta)
        self.devices = 1
        self.first_metrics = None
        self.first_global = None

    def __call__(self):
        self.state, m = self.base.round(self.state, self.data, self.lam, self.beta)
        if self.first_metrics is None:
            self.first_metrics = m
            self.first_global = jax.device_get(self.state["global_params"])
        return self.state["global_params"], m


def compare_rounds(a, b) -> dict:
    """How far apart two variants' first rounds are (same initial state): metrics and params."""
    ma, mb = a.first_metrics, b.first_metrics
    get = lambda m, k: np.asarray(m[k] if isinstance(m, dict) else getattr(m, k))  # noqa: E731
    out = dict(between=[a.name, b.name])
    for k in ("counts", "weak", "selected_weak", "steps"):
        out[f"{k}_equal"] = bool(np.array_equal(get(ma, k), get(mb, k)))
    for k in ("loss1", "loss2", "weights"):
        x, y = get(ma, k).astype(np.float64), get(mb, k).astype(np.float64)
        out[f"{k}_max_rel_diff"] = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12)))
    diff = np.concatenate([np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).ravel()
                           for x, y in zip(jax.tree.leaves(a.first_global),
                                           jax.tree.leaves(b.first_global))])
    out["global_params_max_abs_diff"] = float(diff.max())
    out["global_params_median_abs_diff"] = float(np.median(diff))
    out["agree"] = bool(all(out[f"{k}_equal"] for k in ("counts", "weak", "selected_weak",
                                                         "steps"))
                        and out["loss1_max_rel_diff"] < 1e-3 and out["weights_max_rel_diff"] < 1e-3
                        and out["global_params_max_abs_diff"] < 2e-3
                        and out["global_params_median_abs_diff"] < 1e-5)
    return out


def time_variants(variants: dict, repeats: int, warmup: int, images_per_round: int,
                  log=print, on_update=None) -> dict:
    """Compile + warm up each variant, then time ``repeats`` rounds interleaved across them.

    ``on_update(partial_results)`` is called after each compile and each repeat (so that a run
    stopped by a time limit keeps what it measured).
    """
    res = {}
    update = on_update or (lambda r: None)
    for name, v in list(variants.items()):
        try:
            t_first, _ = _timed(v)
            for _ in range(warmup):
                _timed(v)
            res[name] = dict(first_call_s=t_first, times=[], devices=v.devices)
            log(f"  {name}: first call {t_first:.2f} s")
        except Exception as e:  # noqa: BLE001 - a failing variant must not lose the others
            res[name] = dict(error=f"{type(e).__name__}: {e}"[:2000])
            log(f"  {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
            variants.pop(name)
        update(res)
    for r in range(repeats):
        for name, v in list(variants.items()):
            try:
                t, _ = _timed(v)
                res[name]["times"].append(t)
            except Exception as e:  # noqa: BLE001
                res[name]["error"] = f"{type(e).__name__}: {e}"[:2000]
                variants.pop(name)
        res_mem = memory()
        for name in variants:
            res[name]["memory"] = res_mem
        _summarize_rounds(res, images_per_round)
        update(res)
    return _summarize_rounds(res, images_per_round)


def _summarize_rounds(res: dict, images_per_round: int) -> dict:
    for name, row in res.items():
        if row.get("times"):
            s = summarize(row["times"])
            row["seconds"] = s
            row["compile_s"] = max(row["first_call_s"] - s["median"], 0.0)
            row["client_images_per_s"] = images_per_round / s["median"]
    base = res.get("baseline", {}).get("seconds", {}).get("median")
    for name, row in res.items():
        if base and row.get("seconds"):
            row["speedup_vs_baseline"] = base / row["seconds"]["median"]
    return res


def train_step_fn(model, config: F.RoundConfig):
    """One local-training step of both models at batch B, as ``client_update`` makes it."""
    tx = F.make_optimizer(config)
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731

    def step(params, opt, x, t1, t2, w):
        def loss(pair):
            l1 = dice_loss(apply(pair[0], x), t1, w)
            l2 = dice_loss(apply(pair[1], x), t2, w)
            return l1 + l2, (l1, l2)

        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        ups = [tx.update(g, o, p) for g, o, p in zip(grads, opt, params)]
        new = tuple(optax.apply_updates(p, u) for p, (u, _) in zip(params, ups))
        return new, tuple(o for _, o in ups), aux

    return jax.jit(step)


def time_parts(args, model, config, train, key, image_shape, repeats, peak, log=print,
               base: "SequentialBaseline | None" = None) -> dict:
    """Pseudo-labelling, local training, aggregation and one train step, round vs baseline."""
    out = {}
    c = train.num_clients
    state = F.init_state(model, key, image_shape, c, config)
    dev_train = jax.device_put(train)
    how = "vmap" if config.executor == "vmap" else "map"
    base = base or SequentialBaseline(model, config)
    data = SequentialBaseline.client_data(train)
    gp = state.global_params

    # pseudo-labelling
    pl = jax.jit(lambda gp, tr: F.compute_pseudo_labels(model, gp, tr, config))
    pl_base = lambda: [base.pseudo_label_client(gp, d)[0] for d in data]  # noqa: E731
    inputs = jax.jit(lambda gp, tr: F.client_inputs(model, gp, tr, config))(gp, dev_train)
    _, client_keys = jax.jit(F._round_keys, static_argnums=1)(state, c)

    # local training (the round's: every client's epoch in one program; baseline: loops)
    run_clients = jax.jit(lambda loc, opt, keys, inp: F._run_clients(
        model, config, loc, opt, keys, inp, how))
    local = F._broadcast(gp, c)
    host_inputs = jax.device_get(inputs)
    base_targets = [(jnp.asarray(host_inputs["target1"][i]), jnp.asarray(host_inputs["target2"][i]),
                     np.asarray(host_inputs["usable"][i])) for i in range(c)]
    take = lambda t, i: jax.tree.map(lambda x: x[i], t)  # noqa: E731

    def train_base():
        outs = []
        for i in range(c):
            t1, t2, usable = base_targets[i]
            params = jax.tree.map(jnp.copy, gp)
            opt = jax.tree.map(jnp.copy, take(state.opt_state, i))
            outs.append(base.train_client(params, opt, client_keys[i], data[i]["images"], t1, t2,
                                          usable))
        return outs

    # aggregation
    w = jnp.full((c,), 1.0 / c, jnp.float32)
    agg = jax.jit(aggregation.weighted_average)
    client_pairs = [take(state.client_params, i) for i in range(c)]
    ws = [w[i] for i in range(c)]
    agg_base = lambda: tuple(base.average(ws, [p[k] for p in client_pairs])  # noqa: E731
                             for k in (0, 1))

    cases = {
        "pseudo_labels_round": lambda: pl(gp, dev_train),
        "pseudo_labels_baseline": pl_base,
        "local_training_round": lambda: run_clients(local, state.opt_state, client_keys, inputs),
        "local_training_baseline": train_base,
        "aggregation_round": lambda: agg(state.client_params, w),
        "aggregation_baseline": agg_base,
    }
    first = {}
    for k, fn in cases.items():
        first[k] = _timed(fn)[0]
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            times[k].append(_timed(fn)[0])
    valid_images = int(np.asarray(train.valid).sum())
    weak_images = int((np.asarray(train.valid) & (np.asarray(train.levels) != PIXEL)).sum())
    steps = int(np.sum(jax.device_get(run_clients(local, state.opt_state, client_keys,
                                                  inputs)[2]["steps"])))
    for k in cases:
        s = summarize(times[k])
        row = dict(seconds=s, first_call_s=first[k], compile_s=max(first[k] - s["median"], 0))
        if k.startswith("pseudo"):
            row["images"] = weak_images
            row["images_per_s"] = weak_images / s["median"]
        if k.startswith("local"):
            row["client_images_per_s"] = valid_images / s["median"]
            row["steps"] = steps
        out[k] = row
    for part in ("pseudo_labels", "local_training", "aggregation"):
        out[part + "_speedup"] = (out[part + "_baseline"]["seconds"]["median"]
                                  / out[part + "_round"]["seconds"]["median"])

    # one local-training step (both models, batch B): XLA's FLOPs / time vs the matmul peak
    b = config.batch_size
    step = train_step_fn(model, config)
    hw = image_shape[:2] if config.crop is None else config.crop
    x = jax.random.uniform(jax.random.PRNGKey(1), (b,) + tuple(hw) + (image_shape[2],))
    t = (x[..., :1] > 0.5).astype(jnp.float32)
    wb = jnp.ones((b,), jnp.float32)
    opt = take(state.opt_state, 0)
    sargs = (gp, opt, x, t, t, wb)
    t0 = time.perf_counter()
    compiled = step.lower(*sargs).compile()
    compile_s = time.perf_counter() - t0
    flops = cost_flops(compiled)
    step = compiled                    # time the program just compiled (no second compile)
    _block(step(*sargs))
    # The step and the matmul peak are timed alternately, so that both see the same machine
    # load (on a shared CPU a peak measured minutes earlier is not comparable).
    n = peak["n"] if peak else 1024
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    _block(dot(a, a))
    step_times, dot_times = [], []
    for _ in range(max(repeats, 5)):
        step_times.append(_timed(lambda: step(*sargs))[0])
        dot_times.append(_timed(lambda: dot(a, a))[0])
    del a
    st, dt = summarize(step_times), summarize(dot_times)
    row = dict(batch=b, seconds=st, compile_s=compile_s, flops=flops,
               interleaved_matmul=dict(n=n, seconds=dt, gflops=2.0 * n ** 3 / dt["median"] / 1e9))
    if flops:
        row["gflops_per_s"] = flops / st["median"] / 1e9
        row["fraction_of_matmul_peak"] = row["gflops_per_s"] / row["interleaved_matmul"]["gflops"]
        gf = row["interleaved_matmul"]["gflops"]
        # the whole local training: step FLOPs x active steps / its time (against the same peak)
        for who in ("round", "baseline"):
            part = out[f"local_training_{who}"]
            part["gflops_per_s"] = flops * steps / part["seconds"]["median"] / 1e9
            part["fraction_of_matmul_peak"] = part["gflops_per_s"] / gf
    out["train_step"] = row
    out["_step_fn"] = (compiled, sargs)
    return out


def mixed_precision(args, dtypes, train_fed, log=print) -> dict:
    """Rounds and test Dice per computation dtype, from the same initial params."""
    from fedmix_jax.evaluation import evaluate

    out = {}
    executor = args.default_executor
    for dt in dtypes:
        model = make_model(args, dt)
        config = make_config(args, executor)
        config = dataclasses.replace(config, strategy=F.get_strategy(args.strategy))
        c = train_fed.train.num_clients
        image_shape = tuple(train_fed.train.images.shape[2:])
        state = F.init_state(model, jax.random.PRNGKey(args.seed), image_shape, c, config)
        round_fn = F.make_round_fn(model, config)
        train = jax.device_put(train_fed.train)
        t_first, (state, _) = _timed(lambda: round_fn(state, train))
        times = []
        for _ in range(args.dice_rounds - 1):
            t, (state, _) = _timed(lambda: round_fn(state, train))
            times.append(t)
        ev = evaluate(model, state.global_params[0], train_fed.test)
        out[str(jnp.dtype(dt))] = dict(rounds=args.dice_rounds, first_call_s=t_first,
                                       seconds=summarize(times), mean_dice=float(ev["mean_dice"]),
                                       dice=[float(v) for v in ev["dice"]])
        log(f"  {jnp.dtype(dt)}: {args.dice_rounds} rounds, test Dice "
            f"{float(ev['mean_dice']):.4f}, round {np.median(times) if times else t_first:.3f} s")
    return out


# ----------------------------------------------------------------------------------------------
# Output


class Results:
    """The results dict, written to JSON after every section (atomically), optionally merged
    under ``section`` into an existing file."""

    def __init__(self, path: str | None, section: str | None = None):
        self.path, self.section = path, section
        self.data: dict = {}

    def set(self, key, value):
        self.data[key] = value
        self.write()

    def write(self):
        if not self.path:
            return
        payload = _jsonable(self.data)
        if self.section:
            try:
                with open(self.path) as f:
                    existing = json.load(f)
            except (OSError, ValueError):
                existing = {}
            existing[self.section] = payload
            payload = existing
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, self.path)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def _fmt_s(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"


def format_tables(data: dict) -> str:
    lines = []
    env = data.get("environment", {})
    cfg = data.get("config", {})
    lines.append(f"backend {env.get('backend')} x{env.get('devices')} ({env.get('device_kind')}), "
                 f"jax {env.get('jax')}, {env.get('cpu_count')} CPUs, load average "
                 f"{data.get('load_before')} -> {data.get('load_after')}")
    lines.append(f"size: {cfg.get('clients')} clients x {cfg.get('train_per_client')} images, "
                 f"{cfg.get('image_size')}x{cfg.get('image_size')}, width {cfg.get('width')}, "
                 f"batch {cfg.get('batch_size')}, dtype {cfg.get('dtype')}, selection "
                 f"{cfg.get('selection')}, repeats {cfg.get('repeats')} (interleaved)")
    peak = data.get("matmul_peak")
    if peak:
        lines.append(f"matmul peak (f32 jnp.dot {peak['n']}^2): {peak['gflops']:.1f} GFLOP/s "
                     f"median, {peak['gflops_best']:.1f} best")
    rounds = data.get("rounds", {})
    if rounds:
        lines.append("")
        lines.append(f"{'round variant':<14}{'devices':>8}  {'seconds median [min, max]':<28}"
                     f"{'client-img/s':>13}{'vs baseline':>12}{'compile s':>10}"
                     f"{'RSS peak MB':>12}{'dev peak MB':>12}")
        for name, r in rounds.items():
            if name.startswith("_"):
                continue
            if "error" in r and not r.get("seconds"):
                lines.append(f"{name:<14}  FAILED: {r['error'][:100]}")
                continue
            mem = r.get("memory", {})
            dev = (mem.get("device") or {}).get("peak_mb_in_use")
            lines.append(
                f"{name:<14}{r.get('devices', 1):>8}  {_fmt_s(r.get('seconds')):<28}"
                f"{r.get('client_images_per_s', float('nan')):>13.1f}"
                f"{r.get('speedup_vs_baseline', float('nan')):>11.2f}x"
                f"{r.get('compile_s', float('nan')):>10.1f}"
                f"{(mem.get('host') or {}).get('rss_peak_mb', float('nan')):>12.0f}"
                f"{dev if dev is not None else float('nan'):>12.0f}")
    check = data.get("baseline_check")
    if check:
        lines.append(f"baseline computes the same round as {check['between'][0]}: "
                     f"{check['agree']} (counts equal {check['counts_equal']}, loss1 rel diff "
                     f"{check['loss1_max_rel_diff']:.1e}, weights rel diff "
                     f"{check['weights_max_rel_diff']:.1e}, params max/median abs diff "
                     f"{check['global_params_max_abs_diff']:.1e}/"
                     f"{check['global_params_median_abs_diff']:.1e})")
    parts = data.get("parts")
    if parts:
        lines.append("")
        lines.append(f"{'part':<26}{'seconds median [min, max]':<28}{'rate':>22}{'speed-up':>10}")
        for k in ("pseudo_labels", "local_training", "aggregation"):
            for who in ("round", "baseline"):
                r = parts.get(f"{k}_{who}")
                if not r:
                    continue
                if "images_per_s" in r:
                    rate = f"{r['images_per_s']:.1f} img/s"
                elif "client_images_per_s" in r:
                    rate = f"{r['client_images_per_s']:.1f} client-img/s"
                else:
                    rate = ""
                sp = f"{parts.get(k + '_speedup', float('nan')):.2f}x" if who == "round" else ""
                lines.append(f"{k + ' (' + who + ')':<26}{_fmt_s(r['seconds']):<28}{rate:>22}"
                             f"{sp:>10}")
        st = parts.get("train_step")
        if st:
            frac = st.get("fraction_of_matmul_peak")
            im = st.get("interleaved_matmul", {})
            lines.append(f"train step (2 models, batch {st['batch']}): {_fmt_s(st['seconds'])} s,"
                         f" {(st.get('flops') or 0) / 1e9:.2f} GFLOP (XLA cost analysis), "
                         f"{st.get('gflops_per_s', float('nan')):.1f} GFLOP/s = "
                         f"{(frac if frac is not None else float('nan')) * 100:.0f}% of the "
                         f"matmul peak timed alternately with it ({im.get('gflops', 0):.1f} "
                         f"GFLOP/s, f32 {im.get('n')}^2)")
            lt = parts.get("local_training_round", {})
            if "fraction_of_matmul_peak" in lt:
                lb = parts["local_training_baseline"]
                lines.append(f"local training (round, {lt.get('steps')} steps): "
                             f"{lt['gflops_per_s']:.1f} GFLOP/s = "
                             f"{lt['fraction_of_matmul_peak'] * 100:.0f}% of the peak; baseline "
                             f"{lb['fraction_of_matmul_peak'] * 100:.0f}%")
    prof = data.get("profile")
    if prof and prof.get("rows"):
        lines.append("")
        lines.append(f"profile of the train step ({prof['wall_per_call']:.3f} s per call under "
                     "the profiler; shares of summed op time):")
        lines.append(f"  {'category':<22}{'ms':>9}{'share':>8}{'GFLOP':>9}{'GFLOP/s':>10}")
        for r in prof["rows"]:
            gfs = r.get("gflops_per_s")
            lines.append(f"  {r['category']:<22}{r['seconds'] * 1e3:>9.1f}"
                         f"{(r['share'] or 0) * 100:>7.1f}%{r['gflop']:>9.2f}"
                         f"{gfs if gfs is not None else float('nan'):>10.1f}")
    sweep = data.get("sweep")
    if sweep and sweep.get("rows"):
        lines.append("")
        lines.append(f"sweep ({sweep.get('executor')}; baseline where run):")
        lines.append(f"  {'clients':>7}{'size':>6}{'images':>8}  {'round s median [min, max]':<28}"
                     f"{'client-img/s':>13}{'compile s':>10}{'baseline s':>11}{'speed-up':>9}")
        for r in sweep["rows"]:
            if r.get("error"):
                lines.append(f"  {r['clients']:>7}{r['image_size']:>6}  FAILED: {r['error'][:80]}")
                continue
            b = r.get("baseline_seconds")
            lines.append(f"  {r['clients']:>7}{r['image_size']:>6}{r['images']:>8}  "
                         f"{_fmt_s(r['seconds']):<28}{r['client_images_per_s']:>13.1f}"
                         f"{r['compile_s']:>10.1f}"
                         f"{(b['median'] if b else float('nan')):>11.3f}"
                         f"{r.get('speedup_vs_baseline', float('nan')):>8.2f}x")
    mp = data.get("mixed_precision")
    if mp:
        lines.append("")
        lines.append("computation dtype (params float32):")
        for k, r in mp.items():
            if "error" in r:
                lines.append(f"  {k:<10} FAILED: {r['error'][:100]}")
                continue
            lines.append(f"  {k:<10} round {_fmt_s(r['seconds'])} s, test Dice after "
                         f"{r['rounds']} rounds {r['mean_dice']:.4f}")
    errors = data.get("errors")
    if errors:
        lines.append("")
        lines.extend(f"section {e['section']} failed: {e['error'][:200]}" for e in errors)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fedmix_jax.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--train_per_client", type=int, default=32)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--crop", type=int, default=0, help="train-time random crop side (0: none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="extra untimed rounds after compiling")
    p.add_argument("--executors", default=None,
                   help="comma list of vmap,loop,map,sharded (default: all four)")
    p.add_argument("--no_baseline", action="store_true", help="skip the sequential baseline")
    p.add_argument("--no_parts", action="store_true", help="skip the parts section")
    p.add_argument("--strategy", default="fedmix")
    p.add_argument("--selection", choices=("lenient", "reference"), default="lenient")
    p.add_argument("--lam", type=float, default=10.0)
    p.add_argument("--beta", type=float, default=3.0)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--inference_chunk", type=int, default=0, help="0: RoundConfig's default")
    p.add_argument("--dtype", default="float32", help="U-Net computation dtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="round time vs clients and image size")
    p.add_argument("--sweep_clients", default="2,4,8,16")
    p.add_argument("--sweep_sizes", default="64,128")
    p.add_argument("--sweep_repeats", type=int, default=3)
    p.add_argument("--sweep_baseline", action="store_true", help="time the baseline in the sweep")
    p.add_argument("--sweep_executor", default=None, help="default: default_executor()")
    p.add_argument("--only_sweep", action="store_true", help="run the sweep section only")
    p.add_argument("--profile", action="store_true", help="profile the train step by category")
    p.add_argument("--dtypes", default="", help="e.g. float32,bfloat16: speed and test Dice")
    p.add_argument("--dice_rounds", type=int, default=5)
    p.add_argument("--dice_train_per_client", type=int, default=64)
    p.add_argument("--json", default=None, help="write the results here (after every section)")
    p.add_argument("--section", default=None,
                   help="merge the results under this key of an existing --json file")
    return p.parse_args(argv)


def run(args, log=print) -> dict:
    """Run the benchmark sections selected by ``args``; returns the results dict."""
    args.default_executor = F.default_executor()
    res = Results(args.json, args.section)
    errors = []

    @contextlib.contextmanager
    def section(name):
        log(f"[bench] {name} ...")
        t0 = time.perf_counter()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - keep the other sections
            errors.append(dict(section=name, error=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc()[-4000:]))
            res.set("errors", errors)
            log(f"[bench] {name} FAILED: {type(e).__name__}: {str(e)[:500]}")
        log(f"[bench] {name} done in {time.perf_counter() - t0:.1f} s")

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    res.set("load_before", load)
    res.set("environment", environment())
    cfg = {k: v for k, v in vars(args).items() if k not in ("json", "section")}
    res.set("config", cfg)
    peak = None
    with section("matmul_peak"):
        peak = matmul_peak(repeats=max(3, min(args.repeats, 7)))
        res.set("matmul_peak", peak)
        log(f"  {peak['gflops']:.1f} GFLOP/s (f32 {peak['n']}^2)")

    executors = (args.executors.split(",") if args.executors
                 else ["vmap", "loop", "map", "sharded"])
    key = jax.random.PRNGKey(args.seed)
    base_obj = None
    if not args.only_sweep:
        fed = make_federation(args)
        train = fed.train
        image_shape = tuple(train.images.shape[2:])
        images_per_round = int(np.asarray(train.valid).sum())
        model = make_model(args)
        with section("rounds"):
            variants = {}
            for ex in executors:
                try:
                    variants[ex] = RoundVariant(ex, model, make_config(args, ex), train, key,
                                                image_shape)
                except Exception as e:  # noqa: BLE001
                    errors.append(dict(section=f"rounds/{ex}", error=f"{type(e).__name__}: {e}"))
            if not args.no_baseline:
                variants["baseline"] = BaselineVariant(
                    model, make_config(args, args.default_executor), train, key, image_shape)
            kept = dict(variants)
            base_obj = variants["baseline"].base if "baseline" in variants else None
            rounds = time_variants(variants, args.repeats, args.warmup, images_per_round, log,
                                   on_update=lambda r: res.set("rounds", r))
            res.set("rounds", rounds)
            done = {k: v for k, v in kept.items()
                    if k != "baseline" and v.first_metrics is not None}
            ref = done.get(args.default_executor) or next(iter(done.values()), None)
            base = kept.get("baseline")
            if base is not None and ref is not None and base.first_metrics is not None:
                res.set("baseline_check", compare_rounds(ref, base))
            del kept, variants
        if not args.no_parts:
            with section("parts"):
                parts = time_parts(args, model, make_config(args, args.default_executor), train,
                                   key, image_shape, args.repeats, peak, log, base=base_obj)
                step_fn = parts.pop("_step_fn")
                res.set("parts", parts)
                if args.profile:
                    with section("profile"):
                        res.set("profile", profile_step(*step_fn))
        elif args.profile:
            log("[bench] --profile needs the parts section")
    if args.sweep or args.only_sweep:
        with section("sweep"):
            res.set("sweep", sweep(args, key, log, res))
    if args.dtypes:
        with section("mixed_precision"):
            from fedmix_jax.data.synthetic import make_synthetic_federation

            dfed = make_synthetic_federation(num_clients=args.clients, image_size=args.image_size,
                                             train_sizes=args.dice_train_per_client, val_size=1,
                                             test_size=32, seed=args.seed)
            res.set("mixed_precision", mixed_precision(args, args.dtypes.split(","), dfed, log))
    try:
        res.set("load_after", [round(v, 2) for v in os.getloadavg()])
    except OSError:
        pass
    res.set("memory_end", memory())
    return res.data


def sweep(args, key, log, res) -> dict:
    executor = args.sweep_executor or args.default_executor
    points = [(int(c), args.image_size) for c in args.sweep_clients.split(",") if c]
    points += [(args.clients, int(s)) for s in args.sweep_sizes.split(",") if s
               and int(s) != args.image_size]
    out = dict(executor=executor, repeats=args.sweep_repeats, rows=[])
    model = make_model(args)
    for c, size in points:
        row = dict(clients=c, image_size=size)
        try:
            fed = make_federation(args, num_clients=c, image_size=size)
            train = fed.train
            image_shape = tuple(train.images.shape[2:])
            row["images"] = int(np.asarray(train.valid).sum())
            variants = {executor: RoundVariant(executor, model, make_config(args, executor),
                                               train, key, image_shape)}
            if args.sweep_baseline:
                variants["baseline"] = BaselineVariant(
                    model, make_config(args, executor), train, key, image_shape)
            r = time_variants(variants, args.sweep_repeats, 0, row["images"], log)
            main = r[executor]
            if main.get("error") and not main.get("seconds"):
                raise RuntimeError(main["error"])
            row.update(seconds=main["seconds"], compile_s=main["compile_s"],
                       client_images_per_s=main["client_images_per_s"], memory=main.get("memory"))
            if "baseline" in r and r["baseline"].get("seconds"):
                row["baseline_seconds"] = r["baseline"]["seconds"]
                row["speedup_vs_baseline"] = main.get("speedup_vs_baseline")
            log(f"  {c} clients, {size}px: {main['seconds']['median']:.3f} s")
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
            log(f"  {c} clients, {size}px: FAILED {str(e)[:200]}")
        out["rows"].append(row)
        res.set("sweep", out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    data = run(args)
    print()
    print(format_tables(data))
    if args.json:
        print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

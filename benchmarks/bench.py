"""Benchmark of the FedMix round: executors, the reference-structured baselines, the parts.

Run from the repository root::

    python benchmarks/bench.py [--clients 4 --train_per_client 32 --image_size 64 --width 16
                                --batch_size 8 --repeats 5 --executors vmap,loop,map,sharded
                                --json out.json] [--sweep] [--profile] [--dtypes float32,bfloat16]

(``python -m benchmarks.bench`` works too.) In one process and one run it times, after
compilation and warm-up, over ``--repeats`` repeats taken *interleaved* (repeat r of every
variant before repeat r + 1 of any, so a change of machine load hits every variant alike; median
and spread are reported):

* the FedMix round (``fedmix_jax.compiled_round.make_round_fn``) with each executor of the client axis;
* ``baseline``: the round with the reference's structure, built from the package's site
  function pieces (:class:`benchmarks.baselines.SequentialBaseline`). It loops over clients
  and over the two models in Python and pseudo-labels one image at a time. It computes the
  same round, which ``baseline_check`` verifies;
* ``torch``: the same structure in PyTorch (``benchmarks/torch_baseline.py``), if torch is
  importable (``--notorch`` skips it), starting from the same weights;
* the parts alone (``--noparts`` skips them): pseudo-labelling, local training, aggregation, and
  one local-training step of both models, whose FLOPs come from XLA's cost analysis of the
  compiled step (``jitted.lower(...).compile().cost_analysis()``), reported as a fraction of a
  matmul peak measured in the same process.

Printed as tables and written as JSON (``--json``; rewritten after every section, so a failure in
one section keeps the others). ``--sweep`` adds round time versus clients and image size;
``--profile`` traces the train step and sums its time by HLO opcode (``benchmarks/op_profile.py``);
``--dtypes`` compares computation dtypes for speed and test Dice after ``--dice_rounds`` rounds.

By default every weak sample is selected (``--selection lenient``), so each round trains on all
samples: the largest workload, and the same in every round, as in late rounds when the models
agree. ``--selection reference`` uses the paper's thresholds.

JAX's persistent compilation cache is on (``--compilation_cache``, default
``$FEDMIX_JAX_CACHE_DIR`` or ``~/.cache/fedmix_jax/jax_cache``). With a warm cache the
``compile s`` column is the time to load the programs. Pass ``--compilation_cache=off`` to
measure compilation itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import types

if __package__ in (None, ""):   # run as a script: import from the repository root, and keep
    # this folder off sys.path (its modules must not shadow the standard library's)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import sections  # noqa: E402
from benchmarks.baselines import BaselineVariant, RoundVariant  # noqa: E402
from benchmarks.harness import (Results, compare_rounds, environment, loadavg,  # noqa: E402
                                matmul_peak, memory, time_variants)
from benchmarks.tables import format_tables  # noqa: E402
from fedmix_jax import compilation_cache  # noqa: E402
import fedmix_jax as fm  # noqa: E402
from fedmix_jax.models import UNet  # noqa: E402
from fedmix_jax.pseudo_labels import SelectionConfig  # noqa: E402

LENIENT = SelectionConfig(agreement=0.0, box_fit=0.0, reject_empty=False)


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
    d = flags
    d.DEFINE_integer("clients", 4, "clients", flag_values=fv)
    d.DEFINE_integer("train_per_client", 32, "training images per client", flag_values=fv)
    d.DEFINE_integer("image_size", 64, "square image side (px)", flag_values=fv)
    d.DEFINE_integer("width", 16, "U-Net base width", flag_values=fv)
    d.DEFINE_integer("depth", 4, "U-Net down/up blocks (4: the reference)", flag_values=fv)
    d.DEFINE_integer("batch_size", 8, "local batch size", flag_values=fv)
    d.DEFINE_integer("crop", 0, "train-time random crop side (0: none)", flag_values=fv)
    d.DEFINE_integer("repeats", 5, "timed rounds per variant (interleaved)", flag_values=fv)
    d.DEFINE_integer("warmup", 1, "extra untimed rounds after compiling", flag_values=fv)
    d.DEFINE_list("executors", ["vmap", "loop", "map", "sharded"], "executors of the client axis; "
                  "vmap:G / sharded:G vectorise the clients in groups of G "
                  "(RoundConfig.client_group), e.g. map,vmap:2,vmap:4", flag_values=fv)
    d.DEFINE_bool("baseline", True, "time the sequential JAX baseline", flag_values=fv)
    d.DEFINE_bool("torch", True, "time the PyTorch baseline if torch is importable",
                  flag_values=fv)
    d.DEFINE_list("torch_threads", ["default"], "PyTorch baseline variants: torch's intra-op "
                  "threads for each ('default': torch's own choice, one per core; e.g. "
                  "default,1 times both, interleaved)", flag_values=fv)
    d.DEFINE_bool("parts", True, "time the parts of a round", flag_values=fv)
    d.DEFINE_string("strategy", "fedmix", "strategy", flag_values=fv)
    d.DEFINE_enum("selection", "lenient", ["lenient", "reference"], "pseudo-label selection",
                  flag_values=fv)
    d.DEFINE_float("lam", 10.0, "FedMix lambda", flag_values=fv)
    d.DEFINE_float("beta", 3.0, "FedMix beta", flag_values=fv)
    d.DEFINE_float("learning_rate", 1e-3, "Adam learning rate", flag_values=fv)
    d.DEFINE_integer("inference_chunk", 0, "0: RoundConfig's default", flag_values=fv)
    d.DEFINE_string("dtype", "float32", "U-Net computation dtype", flag_values=fv)
    d.DEFINE_integer("seed", 0, "seed of the data and the models", flag_values=fv)
    d.DEFINE_list("matmul_sizes", [], "square sizes of the matmul peak (default: 1024,2048 "
                  "on CPU, 4096,8192 on accelerators)", flag_values=fv)
    d.DEFINE_bool("sweep", False, "round time vs clients and image size", flag_values=fv)
    d.DEFINE_list("sweep_clients", ["2", "4", "8", "16"], "sweep: clients", flag_values=fv)
    d.DEFINE_list("sweep_sizes", ["64", "128"], "sweep: image sizes", flag_values=fv)
    d.DEFINE_integer("sweep_repeats", 3, "sweep: repeats", flag_values=fv)
    d.DEFINE_bool("sweep_baseline", False, "time the baseline in the sweep", flag_values=fv)
    d.DEFINE_string("sweep_executor", None, "default: default_executor()", flag_values=fv)
    d.DEFINE_bool("only_sweep", False, "run the sweep section only", flag_values=fv)
    d.DEFINE_bool("profile", False, "profile the train step by HLO opcode", flag_values=fv)
    d.DEFINE_bool("conv_floor", False, "after the round table, time the round's convolutions "
                  "alone on one core (benchmarks/conv_floor.py): the fastest round these "
                  "kernels allow on this machine", flag_values=fv)
    d.DEFINE_list("dtypes", [], "e.g. float32,bfloat16: speed and test Dice", flag_values=fv)
    d.DEFINE_integer("dice_rounds", 5, "rounds of the dtypes section", flag_values=fv)
    d.DEFINE_integer("dice_train_per_client", 64, "dtypes section: images per client",
                     flag_values=fv)
    d.DEFINE_string("json", None, "write the results here (after every section)",
                    flag_values=fv)
    d.DEFINE_string("section", None, "merge the results under this key of an existing --json",
                    flag_values=fv)
    d.DEFINE_string("compilation_cache", "default",
                    "persistent compilation cache dir; 'default': $FEDMIX_JAX_CACHE_DIR or "
                    "~/.cache/fedmix_jax/jax_cache; 'off' disables", flag_values=fv)
    d.DEFINE_integer("cpu_devices", 1, "JAX CPU devices (0: one per core; the 'sharded' "
                     "executor uses them all; fedmix_jax.cpu_cores)", flag_values=fv)
    return fv


def parse_args(argv: list[str]) -> types.SimpleNamespace:
    """The benchmark's settings from command-line arguments (without the program name)."""
    fv = define_flags(flags.FlagValues())
    rest = fv(["bench"] + list(argv))
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])}")
    return types.SimpleNamespace(**{name: fv[name].value for name in fv})


# ----------------------------------------------------------------------------- building blocks


def make_model(args, dtype=None) -> UNet:
    return UNet(width=args.width, depth=args.depth, num_classes=1,
                dtype=jnp.dtype(dtype or args.dtype))


def make_config(args, executor: str) -> fm.RoundConfig:
    """The round's config for ``executor``: an executor name, or ``vmap:G`` / ``sharded:G`` for
    clients vectorised in groups of G (``RoundConfig.client_group``)."""
    selection = LENIENT if args.selection == "lenient" else SelectionConfig()
    executor, _, group = executor.partition(":")
    try:
        client_group = int(group or 0)
    except ValueError:
        raise ValueError(f"--executors: {executor}:{group} needs an integer group "
                         "(e.g. vmap:2)") from None
    return fm.RoundConfig(strategy=fm.get_strategy(args.strategy, selection),
                         client_group=client_group, batch_size=args.batch_size,
                         crop=(args.crop, args.crop) if args.crop else None, lam=args.lam,
                         beta=args.beta, learning_rate=args.learning_rate, executor=executor,
                         inference_chunk=args.inference_chunk or fm.RoundConfig.inference_chunk,
                         # the reference's loss, the one the sequential baselines implement
                         empty_target_loss="dice")


def make_federation(args, num_clients=None, image_size=None, train_sizes=None, test_size=1):
    from fedmix_jax.data.synthetic import make_synthetic_federation

    return make_synthetic_federation(
        num_clients=num_clients or args.clients, image_size=image_size or args.image_size,
        train_sizes=train_sizes or args.train_per_client, val_size=1, test_size=test_size,
        seed=args.seed)


# ----------------------------------------------------------------------------- the run


def run(args, log=print) -> dict:
    """Runs the sections selected by ``args`` (see :func:`parse_args`); returns the results."""
    compilation_cache.enable(args.compilation_cache)
    if getattr(args, "cpu_devices", 1) != 1:        # before the first JAX computation
        from fedmix_jax.cpu_cores import use_cpu_cores

        use_cpu_cores(args.cpu_devices)
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

    res.set("load_before", loadavg())
    res.set("environment", environment())
    res.set("config", {k: v for k, v in vars(args).items() if k not in ("json", "section")})
    peak = None
    with section("matmul_peak"):
        peak = matmul_peak([int(n) for n in args.matmul_sizes] or None,
                           repeats=max(3, min(args.repeats, 7)))
        res.set("matmul_peak", peak)
        log(f"  {peak['gflops']:.1f} GFLOP/s (f32 {peak['n']}^2)")

    key = jax.random.key(args.seed)
    default = fm.default_executor()
    if not args.only_sweep:
        train = make_federation(args).train
        image_shape = tuple(train.images.shape[2:])
        model = make_model(args)
        base_obj = None
        with section("rounds"):
            base_obj = _rounds(args, model, train, key, image_shape, res, errors, log)
        if args.conv_floor and "round_work" in res.data:
            with section("conv_floor"):
                res.set("conv_floor", _conv_floor(args, image_shape, res.data["round_work"]))
        if args.parts:
            with section("parts"):
                parts = sections.time_parts(model, make_config(args, default), train, key,
                                            image_shape, args.repeats, peak, base=base_obj)
                step_fn = parts.pop("_step_fn")
                res.set("parts", parts)
            if args.profile and "parts" in res.data:
                with section("profile"):
                    from benchmarks.op_profile import profile_program

                    res.set("profile", profile_program(*step_fn))
        elif args.profile:
            log("[bench] --profile needs the parts section")
    if args.sweep or args.only_sweep:
        with section("sweep"):
            res.set("sweep", sections.sweep(
                args, lambda: make_model(args), lambda ex: make_config(args, ex),
                lambda **kw: make_federation(args, **kw), key, log, res))
    if args.dtypes:
        with section("mixed_precision"):
            fed = make_federation(args, train_sizes=args.dice_train_per_client, test_size=32)
            res.set("mixed_precision", sections.mixed_precision(
                args, lambda dt: make_model(args, dt), lambda ex: make_config(args, ex), fed,
                log))
    res.set("load_after", loadavg())
    res.set("memory_end", memory())
    return res.data


def _rounds(args, model, train, key, image_shape, res, errors, log):
    """The round table: each executor, the JAX baseline and the torch baseline, interleaved."""
    images_per_round = int(np.asarray(train.valid).sum())
    default = fm.default_executor()
    variants = {}
    for ex in args.executors:
        try:
            variants[ex] = RoundVariant(ex, model, make_config(args, ex), train, key, image_shape)
        except Exception as e:  # noqa: BLE001
            errors.append(dict(section=f"rounds/{ex}", error=f"{type(e).__name__}: {e}"))
            log(f"  {ex}: FAILED {type(e).__name__}: {str(e)[:300]}")
    if args.baseline:
        variants["baseline"] = BaselineVariant(model, make_config(args, default), train, key,
                                               image_shape)
    if args.torch:
        from benchmarks import torch_baseline

        described = {}
        for threads in args.torch_threads:
            tv = torch_baseline.variant(model, make_config(args, default), train, key,
                                        image_shape,
                                        threads=None if threads == "default" else int(threads))
            if isinstance(tv, str):
                res.set("torch", dict(skipped=tv))
                log(f"  torch: skipped ({tv})")
                break
            variants[tv.name] = tv
            described[tv.name] = tv.describe()
            res.set("torch", dict(next(iter(described.values())), variants=described))
    kept = dict(variants)
    rounds = time_variants(variants, args.repeats, args.warmup, images_per_round, log,
                           on_update=lambda r: res.set("rounds", r))
    res.set("rounds", rounds)
    done = {k: v for k, v in kept.items()
            if k != "baseline" and not k.startswith("torch") and v.first_metrics is not None}
    ref = done.get(default) or next(iter(done.values()), None)
    if ref is not None:      # the work of one round, for the conv floor (2 models)
        m = ref.first_metrics
        res.set("round_work", dict(variant=ref.name, model_steps=2 * int(np.sum(m.reports.steps)),
                                   forward_images=2 * int(np.sum(m.reports.num_weak))))
    torch_name = next((k for k in kept if k.startswith("torch")), None)
    for name, key_ in (("baseline", "baseline_check"), (torch_name, "torch_check")):
        other = kept.get(name)
        if other is not None and ref is not None and other.first_metrics is not None:
            check = compare_rounds(ref, other)
            if name == torch_name:   # other sample order and augmentation draws: the same work
                check = {k: v for k, v in check.items()          # (counts, steps), not values
                         if k.endswith("_equal") or k in ("between", "loss1_max_rel_diff")}
            res.set(key_, check)
    base = kept.get("baseline")
    return base.base if base is not None else None


def _conv_floor(args, image_shape, work: dict) -> dict:
    """benchmarks/conv_floor.py in a child pinned to one core, with this round's work."""
    from benchmarks import conv_floor

    if jax.default_backend() != "cpu":
        return dict(skipped=f"CPU only (backend {jax.default_backend()})")
    return conv_floor.measure(args.width, args.depth, args.image_size, args.batch_size,
                              args.inference_chunk or fm.RoundConfig.inference_chunk,
                              work["model_steps"], work["forward_images"],
                              in_channels=int(image_shape[-1]))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help", "--helpfull", "--helpshort"} & set(argv):
        print(__doc__.split("\n\n")[0] + "\n\nflags:\n" + define_flags(flags.FlagValues())
              .get_help())
        return 0
    try:
        args = parse_args(argv)
    except flags.Error as e:
        print(f"error: {e}\n(see the flags with: python benchmarks/bench.py --help)",
              file=sys.stderr)
        return 2
    data = run(args)
    print()
    print(format_tables(data))
    if args.json:
        print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Round time versus the number of clients, the client counts timed interleaved in one process.

    python benchmarks/client_scaling.py [--scaling_clients 4,8,16 --scaling_executors map
                                         --repeats 3 --json scaling.json]
    (and the size flags of ``benchmarks/bench.py``: --train_per_client 32 --image_size 64 ...)

Every client holds the same number of images (``--train_per_client``), so a round whose cost is
linear in the clients takes the same time per client at every count. The sweep of
``bench.py --sweep`` times one client count after the other: a change of machine load between
them reads as a change of cost per client. Here repeat r of every (executor, clients) point
runs before repeat r + 1 of any, as in the benchmark's round table, so load changes hit all
points alike. Printed: seconds per round (median [min, max]), seconds per client, and the
cost per client relative to the smallest count (1.00 = linear).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench  # noqa: E402
from benchmarks.baselines import RoundVariant  # noqa: E402
from benchmarks.harness import Results, environment, loadavg, time_variants  # noqa: E402
from fedmix_jax import compilation_cache  # noqa: E402


def parse_args(argv):
    fv = bench.define_flags(flags.FlagValues())
    flags.DEFINE_list("scaling_clients", ["4", "8", "16"], "client counts", flag_values=fv)
    flags.DEFINE_list("scaling_executors", ["map"], "executors (map, vmap, loop, sharded)",
                      flag_values=fv)
    fv.set_default("repeats", 3)
    rest = fv(["client_scaling"] + list(argv))
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])}")
    return fv


def run(fv, log=print) -> dict:
    compilation_cache.enable(fv.compilation_cache)
    res = Results(fv.json)
    res.set("load_before", loadavg())
    res.set("environment", environment())
    counts = [int(c) for c in fv.scaling_clients]
    model = bench.make_model(fv)
    key = jax.random.key(fv.seed)
    variants, images = {}, {}
    for c in counts:
        train = bench.make_federation(fv, num_clients=c).train
        images[c] = int(np.asarray(train.valid).sum())
        for ex in fv.scaling_executors:
            variants[f"{ex}@{c}"] = RoundVariant(ex, model, bench.make_config(fv, ex), train, key,
                                                 tuple(train.images.shape[2:]))
    rounds = time_variants(variants, fv.repeats, fv.warmup, 0, log,
                           on_update=lambda r: res.set("rounds", r))
    rows = []
    for ex in fv.scaling_executors:
        per_client0 = None
        for c in counts:
            r = rounds.get(f"{ex}@{c}", {})
            if not r.get("seconds"):
                rows.append(dict(executor=ex, clients=c, error=r.get("error")))
                continue
            med = r["seconds"]["median"]
            per_client = med / c
            per_client0 = per_client0 or per_client
            rows.append(dict(executor=ex, clients=c, images=images[c], seconds=r["seconds"],
                             per_client_s=per_client, relative=per_client / per_client0,
                             compile_s=r.get("compile_s")))
    res.set("rows", rows)
    res.set("load_after", loadavg())
    return res.data


def format_table(data: dict) -> str:
    lines = [f"load average {data.get('load_before')} -> {data.get('load_after')}",
             f"{'executor':<9}{'clients':>8}{'images':>8}  {'round s median [min, max]':<28}"
             f"{'s / client':>11}{'vs first':>9}"]
    for r in data.get("rows", []):
        if r.get("error") or not r.get("seconds"):
            lines.append(f"{r['executor']:<9}{r['clients']:>8}  FAILED: {str(r.get('error'))[:80]}")
            continue
        s = r["seconds"]
        lines.append(f"{r['executor']:<9}{r['clients']:>8}{r['images']:>8}  "
                     f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]".ljust(55)
                     + f"{r['per_client_s']:>8.3f}{r['relative']:>8.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    fv = parse_args(sys.argv[1:] if argv is None else argv)
    data = run(fv)
    print()
    print(format_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the Flower server's protective options cost: the same run with each option.

Runs the ServerApp with the sites' ClientApps in this process (``run_local``: the deployment's
code paths, the transport a function call) on a config's synthetic federation, once per noise
multiplier of client-level differential privacy (0: privacy off) and once per ``--variants``
setting of the run config (e.g. a robust aggregator, the update-norm bound; privacy off), and
prints one row each: ε at δ, mean test Dice of the best round, Dice on the test images with a
lesion, FP rate on the lesion-free ones, and the median update norm. JSON with ``--out``.

    python benchmarks/flower_options_cost.py --noise 0 0.01 1       # the default config, C: auto
    python benchmarks/flower_options_cost.py --noise 0 --variants aggregator=median \
        aggregator=trimmed_mean max-update-norm-ratio=3
    python benchmarks/flower_options_cost.py --overrides "num_rounds=2 model.width=4" --noise 0 1

Each row is its own run (a fresh workdir); the noise is drawn from the OS's entropy, so a
privacy row differs between repetitions (that is the point of it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def run_one(config: str, overrides: str, num_sites: int, noise: float, clip: float,
            delta: float, workdir: str, variant: dict | None = None) -> dict:
    from fedmix_jax.flower.simulation import run_local

    rc = {"config": config, "overrides": overrides, "workdir": workdir, "round-timeout": 3600.0,
          "dp-clip-norm": clip if noise > 0 else 0.0, "dp-noise-multiplier": noise or 1.0,
          "dp-delta": delta}
    if noise == 0:      # a norm bound no update reaches: the run records its update norms
        rc["max-update-norm-ratio"] = 1e30
    rc.update(variant or {})
    t0 = time.time()
    summary, _, _ = run_local(num_sites, rc)
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    norms = [n for rec in lines for n in rec.get("dp_update_norms", rec.get("update_norms", []))
             if n > 0]
    test = (summary.get("best") or {}).get("test") or {}
    return {"variant": variant or {}, "noise_multiplier": noise, "clip_norm": clip if noise > 0 else None,
            "epsilon": (summary.get("privacy") or {}).get("epsilon"), "delta": delta,
            "best_round": (summary.get("best") or {}).get("round"),
            "test_mean_dice": test.get("mean_dice"),
            "test_dice_present": test.get("mean_dice_present"),
            "test_fp_rate": test.get("mean_false_positive_rate"),
            "median_update_norm": float(np.median(norms)) if norms else None,
            "wall_s": time.time() - t0}


def _setting(text: str) -> dict:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--variants: {text!r} is not key=value")
    try:
        return {key: float(value)}
    except ValueError:
        return {key: value}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/synthetic.py")
    p.add_argument("--overrides", default="")
    p.add_argument("--num_sites", type=int, default=0, help="0: config.data.num_clients")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 1.0],
                   help="noise multipliers (0: privacy off)")
    p.add_argument("--clip", default="auto",
                   help="the clip norm C of each update; auto: the median update norm of the "
                        "run without privacy (then the first noise level must be 0)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--variants", nargs="*", default=[],
                   help="run config settings key=value, one row each (privacy off)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    num_sites = args.num_sites
    if not num_sites:
        from fedmix_jax.flower.server_app import load_config

        num_sites = int(load_config(args.config, args.overrides).data.num_clients)
    clip = None if args.clip == "auto" else float(args.clip)
    if clip is None and args.noise[0] != 0:
        p.error("--clip auto takes C from a first run without privacy: start --noise with 0")
    rows = []
    print(f"{'setting':>28} {'noise z':>8} {'epsilon':>10} {'test Dice':>10} {'lesion Dice':>12} "
          f"{'FP rate':>8} {'median |update|':>16} {'wall s':>7}", flush=True)
    runs = [(z, None) for z in args.noise] + [(0.0, _setting(v)) for v in args.variants]
    for z, variant in runs:
        with tempfile.TemporaryDirectory(prefix="fedmix_dp_") as wd:
            row = run_one(args.config, args.overrides, num_sites, z, clip or 0.0, args.delta,
                          os.path.join(wd, "run"), variant)
        rows.append(row)
        if clip is None and variant is None:
            clip = row["median_update_norm"]
            print(f"clip norm C = {clip:.4g} (the median update norm without privacy)")

        def f(x, fmt):
            return "-" if x is None else format(x, fmt)

        name = " ".join(f"{k}={v}" for k, v in (variant or {}).items()) or "-"
        print(f"{name:>28} {z:>8g} {f(row['epsilon'], '.4g'):>10} {f(row['test_mean_dice'], '.4f'):>10} "
              f"{f(row['test_dice_present'], '.4f'):>12} {f(row['test_fp_rate'], '.2f'):>8} "
              f"{f(row['median_update_norm'], '.4g'):>16} {row['wall_s']:>7.0f}", flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump({"config": args.config, "overrides": args.overrides,
                           "num_sites": num_sites, "clip": clip, "rows": rows}, fh,
                          indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

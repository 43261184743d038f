r"""Compare strategies over seeds on the same data: a table of test Dice, mean ± std over seeds.

    python -m fedmix_jax.compare --config configs/synthetic.py \
        --strategies fedmix,fedavg_pixel,fedavg_full,local --seeds 0,1,2 [--workdir DIR]

One federation shared by every run (the seeds vary ``config.seed``, not the data); each run an
ordinary run in ``<workdir>/<strategy>/seed<k>/`` (rerun to resume). Prints, and writes to
``compare.md`` / ``compare.json``, per client and mean: test Dice at the best-validation round,
mean ± sample std over seeds. Details: docs/main_job.md ("Comparing strategies").
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import numpy as np
from absl import flags, logging

from fedmix_jax import cpu_cores, rundir, train
from fedmix_jax import main as main_lib
from fedmix_jax.data.streamed_sources import load_run_federation
from fedmix_jax.diagnostics import summarize
from fedmix_jax.errors import ConfigError, TrainingDivergedError
from fedmix_jax.records import read_metrics
from fedmix_jax.strategies import get_strategy
from fedmix_jax.summary import level_names

USAGE = ("usage: python -m fedmix_jax.compare --config configs/synthetic.py "
         "--strategies fedmix,fedavg_pixel --seeds 0,1,2 [--config.<field>=<value> ...] "
         "[--workdir DIR] [--quiet] [--plots]")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def pseudo_label_summary(run_dir: str) -> dict:
    """The pseudo-label diagnostics (``pl_*``, pooled over clients) of the run's last record
    that has them (``config.diagnostics``); empty without."""
    try:
        records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    except (OSError, ValueError):
        return {}
    last = next((r for r in reversed(records) if any(k.startswith("pl_") for k in r)), None)
    return summarize({k: v for k, v in last.items() if k.startswith("pl_")}) if last else {}


def run_comparison(config, strategies: Sequence[str], seeds: Sequence[int], workdir: str,
                   quiet: bool = False, plots: bool = False, federation=None) -> dict:
    """Train every (strategy, seed) on one federation; returns what ``compare.json`` holds:
    ``client_names``, ``levels``, ``strategies``, ``seeds``, per strategy ``runs`` (per seed: test
    figures, best round, workdir; or an ``error``), ``dice_mean`` / ``dice_std`` [C] and
    ``mean_dice_mean`` / ``mean_dice_std``; plus ``markdown``, the table."""
    for s in strategies:  # fail before any training
        try:
            get_strategy(s)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    workdir = rundir.resolve(workdir)
    rundir.check_usable(workdir)
    cpu_cores.cpu_devices_from_config(config)        # before the first JAX computation
    if federation is None:
        federation = load_run_federation(config.data, verbose=not quiet)
    with rundir.WorkdirLock(workdir):  # one comparison per workdir (each run locks its own)
        return _compare(config, strategies, seeds, workdir, quiet, plots, federation)


def _compare(config, strategies, seeds, workdir, quiet, plots, federation):
    names = list(federation.client_names)
    out = {"config": rundir.config_to_dict(config), "client_names": names,
           "levels": level_names(federation),
           "strategies": list(strategies), "seeds": [int(s) for s in seeds],
           "metric": "test Dice of global model 1 (local: each client's model) at the round "
                     "with the best mean validation Dice; mean ± sample std over seeds",
           "results": {}}
    total = len(strategies) * len(seeds)
    t0 = time.time()
    for i, strategy in enumerate(strategies):
        runs = {}
        for k, seed in enumerate(seeds, start=i * len(seeds) + 1):
            cfg = config.copy_and_resolve_references()
            cfg.strategy = str(strategy)
            cfg.seed = int(seed)
            run_dir = os.path.join(workdir, strategy, f"seed{seed}")
            logging.info("run %d/%d: %s, seed %s -> %s", k, total, strategy, seed, run_dir)
            try:
                s = train.train_and_evaluate(cfg, run_dir, quiet=quiet, federation=federation,
                                             write_plots=plots)
            except TrainingDivergedError as e:
                logging.warning("%s, seed %s failed: %s", strategy, seed, e)
                runs[str(seed)] = {"error": str(e), "workdir": run_dir}
                continue
            best, test = s["best"], s["best"]["test"]
            runs[str(seed)] = {
                **{k: test[k] for k in ("dice", "iou", "mean_dice", "mean_iou")},
                "val_mean_dice": best["val"]["mean_dice"], "best_round": best["round"],
                **{k: test.get(k) for k in ("mean_hd95", "mean_dice_present",
                                            "mean_false_positive_rate", "mean_dice_per_class",
                                            "mean_dice_present_per_class")},
                "pseudo_labels": pseudo_label_summary(run_dir),
                "total_s": s["timing"]["total_s"], "workdir": run_dir}
        ok = [r for r in runs.values() if "error" not in r]
        per_client = [_mean_std([r["dice"][c] for r in ok]) for c in range(len(names))]
        mean = _mean_std([r["mean_dice"] for r in ok])
        out["results"][strategy] = {
            "runs": runs, "num_ok": len(ok),
            "dice_mean": [m for m, _ in per_client], "dice_std": [s for _, s in per_client],
            "mean_dice_mean": mean[0], "mean_dice_std": mean[1]}
        for key in ("mean_hd95", "mean_dice_present", "mean_false_positive_rate"):
            if values := [r[key] for r in ok if r.get(key) is not None]:
                out["results"][strategy].update(zip((f"{key}_mean", f"{key}_std"),
                                                    _mean_std(values)))
    out["total_s"] = time.time() - t0
    out["markdown"] = format_table(out)
    rundir.atomic_write_text(os.path.join(workdir, "compare.json"),
                             json.dumps(out, indent=2) + "\n")
    rundir.atomic_write_text(os.path.join(workdir, "compare.md"), out["markdown"] + "\n")
    return out


def format_table(result: dict) -> str:
    """The Markdown table: strategies x (clients, mean), cells ``mean ± std`` of test Dice."""
    names, levels, seeds = result["client_names"], result["levels"], result["seeds"]
    head = (["strategy"] + [f"{n} ({lv})" for n, lv in zip(names, levels)]
            + ["mean", "Dice, lesion images", "HD95 px", "FP rate"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + ":---:|" * (len(head) - 1)]
    for strategy, r in result["results"].items():
        if r["num_ok"] == 0:
            cells = ["failed"] * (len(names) + 4)
        else:
            cells = [f"{m:.4f} ± {s:.4f}" for m, s in zip(r["dice_mean"], r["dice_std"])]
            cells.append(f"**{r['mean_dice_mean']:.4f} ± {r['mean_dice_std']:.4f}**")
            cells += [f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}" if f"{k}_mean" in r else "-"
                      for k in ("mean_dice_present", "mean_hd95", "mean_false_positive_rate")]
        note = "" if r["num_ok"] == len(seeds) else f" ({r['num_ok']}/{len(seeds)} seeds ok)"
        lines.append("| " + " | ".join([strategy + note] + cells) + " |")
    lines += _pseudo_label_table(result)
    lines.append(f"\nTest figures at the round of best mean validation Dice; mean ± std over "
                 f"seeds {', '.join(str(s) for s in seeds)} (sample std, ddof=1). Per client and "
                 "mean: Dice (per class, averaged); Dice on the images that contain each class; "
                 "HD95 in px; FP rate: share of lesion-free images with any predicted foreground.")
    return "\n".join(lines)


def _pseudo_label_table(result: dict) -> list[str]:
    """Rows of the runs' last-round pseudo-label diagnostics (``config.diagnostics``), pooled over
    clients, mean over seeds, per strategy and weak level (none without diagnostics)."""
    rows = []
    for strategy, r in result["results"].items():
        runs = [x.get("pseudo_labels") or {} for x in r["runs"].values() if "error" not in x]
        levels = sorted({k.split("_")[1] for run in runs for k in run})
        for lvl in levels:
            def avg(key):
                v = [x for run in runs if (x := run.get(f"pl_{lvl}_{key}")) is not None]
                return f"{np.mean(v):.3f}" if v else "-"
            rows.append(f"| {strategy} | {lvl} | {avg('sel')} / {avg('sel_lesion')} / "
                        f"{avg('n')} | {avg('dice')} | {avg('dice_all')} | {avg('precision')} | "
                        f"{avg('recall')} | {avg('area')} |")
    if not rows:
        return []
    return ["", "Pseudo-labels in the last round (vs the true masks; mean over seeds):", "",
            "| strategy | level | selected / with a lesion / samples | Dice, selected | "
            "Dice, all with a lesion | precision | recall | area pred/true |",
            "|---|---|---|---|---|---|---|---|"] + rows


def define_flags(argv: list[str]) -> flags.FlagValues:
    """main's flags (``--config``, ``--workdir``, ``--quiet``) and the comparison's."""
    fv = main_lib.define_flags(argv)
    flags.DEFINE_list("strategies", ["fedmix", "fedavg_pixel", "fedavg_full", "local"],
                      "Comma-separated strategies.", flag_values=fv)
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Comma-separated seeds (config.seed).",
                      flag_values=fv)
    flags.DEFINE_bool("plots", False, "Also write each run's PNG plots.", flag_values=fv)
    return fv


def main(argv: list[str] | None = None) -> int:
    """Run the comparison command line ``argv``; returns the exit code."""
    def start(fv):
        seeds = [int(s) for s in fv.seeds]
        strategies = [s.strip() for s in fv.strategies if s.strip()]
        if not strategies or not seeds:
            raise flags.Error("--strategies and --seeds must not be empty")

        def job(workdir):
            result = run_comparison(fv.config, strategies, seeds, workdir, quiet=fv.quiet,
                                    plots=fv.plots)
            print(result["markdown"])
            print(f"written: {os.path.join(workdir, 'compare.md')}, "
                  f"{os.path.join(workdir, 'compare.json')}")
        return job
    return main_lib.run_cli(argv, USAGE, __doc__, define_flags, "compare", start)


if __name__ == "__main__":
    sys.exit(main())

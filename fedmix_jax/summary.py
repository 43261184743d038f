"""Parts of a run's summary (``summary.json``, built by ``run_loop.RunLoop.summary``) and the
closing table main prints."""

from __future__ import annotations

import statistics

import numpy as np

from fedmix_jax.data.federation import LEVEL_NAMES, Federation
from fedmix_jax.round_selection import SELECTION_WORDS


def level_names(federation: Federation) -> list[str]:
    """Per client, the supervision levels of its training samples (``"box"``, ``"pixel+box"``)."""
    train = federation.train
    return ["+".join(sorted({LEVEL_NAMES[int(x)] for x in np.unique(levels[valid])})) or "-"
            for valid, levels in zip(np.asarray(train.valid), np.asarray(train.levels))]


def timing(round_times: list[float], eval_times: list[float]) -> dict:
    """Per-round time and the compile-time estimate of this process's rounds."""
    t = {}
    if round_times:
        first, later = round_times[0], round_times[1:]
        t["first_round_s"] = first
        t["round_s_median"] = statistics.median(later) if later else first
        t["compile_s"] = max(0.0, first - t["round_s_median"]) if later else None
        t["compile_note"] = ("estimate: first round of this process minus the median of its "
                             "later rounds (tracing + XLA compilation of the round)" if later else
                             "one round only: its time includes compilation unless this "
                             "process had compiled the round before")
    if eval_times:
        first, later = eval_times[0], eval_times[1:]
        t["eval_s_median"] = statistics.median(later) if later else first
        t["eval_compile_s"] = max(0.0, first - t["eval_s_median"]) if later else None
    return t


def _fmt(x, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def format_summary(summary: dict) -> str:
    """The closing table: per client (and mean) validation and test Dice / IoU at the best round."""
    best, names = summary["best"], summary["client_names"]
    levels = summary.get("levels") or [""] * len(names)
    width = max([len("mean")] + [len(n) for n in names]) + 2
    head = (f"{'client':<{width}}{'level':<8}{'val Dice':>10}{'test Dice':>11}{'test IoU':>10}"
            f"{'HD95 px':>9}{'FP rate':>9}")
    lines = [head, "-" * len(head)]
    if best.get("val") is None:
        lines.append("(no evaluation yet)")
    else:
        test = best["test"]

        def row(name: str, level: str, pick) -> str:    # pick(figures, key): a client's or mean
            return (f"{name:<{width}}{level:<8}{pick(best['val'], 'dice'):>10.4f}"
                    f"{pick(test, 'dice'):>11.4f}{pick(test, 'iou'):>10.4f}"
                    f"{_fmt(pick(test, 'hd95'), 9, 1)}"
                    f"{_fmt(pick(test, 'false_positive_rate'), 9, 3)}")

        lines += [row(n, levels[c], lambda d, key, c=c: d.get(key, [None] * len(names))[c])
                  for c, n in enumerate(names)]
        lines += ["-" * len(head), row("mean", "", lambda d, key: d.get(f"mean_{key}"))]
        if lt := best.get("local_test"):
            lines.append("test Dice of each client's local (pre-aggregation) model: "
                         + ", ".join(f"{n} {d:.4f}" for n, d in zip(names, lt["dice"]))
                         + f"; mean {lt['mean_dice']:.4f}")
        if ct := best.get("consensus_test"):
            lines.append("each client's consensus model (its local model's mask where it and the "
                         "global model both mark a lesion): test Dice on lesion images "
                         f"{_fmt(ct.get('mean_dice_present'), 0, 4).strip()}, FP rate "
                         f"{_fmt(ct.get('mean_false_positive_rate'), 0, 3).strip()}")
        if ft := summary.get("fine_tuned_consensus"):
            ftest = ft["test"]
            lines.append(f"each client's consensus model with the mask of its copy fine-tuned "
                         f"after round {ft['round']} (epochs "
                         + ", ".join(f"{n} {e}" for n, e in zip(names, ft["epochs"]))
                         + f"): test Dice on lesion images "
                         f"{_fmt(ftest.get('mean_dice_present'), 0, 4).strip()}, FP rate "
                         f"{_fmt(ftest.get('mean_false_positive_rate'), 0, 3).strip()}")
        if test.get("mean_dice_present") is not None:
            lines.append(f"test Dice on images with a lesion (per class): "
                         f"{test['mean_dice_present']:.4f}; FP rate = share of lesion-free "
                         "test images with any predicted foreground")
    t = summary.get("timing", {})
    criterion = SELECTION_WORDS.get(summary.get("config", {}).get("select_round_by", "mean_dice"),
                                    SELECTION_WORDS["mean_dice"])
    lines.append(f"strategy {summary['strategy']}, seed {summary['seed']}: test numbers of the "
                 f"round with the best {criterion} (round {best['round']} of "
                 f"{summary['rounds_completed']})")
    times = [f"total {t.get('total_s', 0):.1f} s"]
    if t.get("rounds_this_process"):
        times.append(f"{t['round_s_median']:.2f} s/round (median)")
        if t.get("compile_s") is not None:
            times.append(f"compilation ~{t['compile_s']:.1f} s (first round minus the median "
                         "round)")
        else:
            times.append(f"one round in this process: {t['first_round_s']:.1f} s "
                         "(includes compilation unless compiled before)")
    lines.append(", ".join(times))
    lines.append(f"workdir: {summary['workdir']}")
    return "\n".join(lines)


__all__ = ["format_summary"]

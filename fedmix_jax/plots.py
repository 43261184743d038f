"""PNG plots of a run from its ``metrics.jsonl`` records: :func:`write_run_plots` (what each file
shows: docs/main_job.md, "What a workdir holds"). Matplotlib's Agg canvas without pyplot, so the
global pyplot state and backend are never touched (safe in notebooks and threads).
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedmix_jax.data.federation import float_images, gathered_labels
from fedmix_jax.diagnostics import LEVELS, summarize


def _figure(figsize=(6.4, 4.0), dpi=110):
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _colour(c: int) -> tuple[float, float, float]:
    """Client (or level) ``c``'s colour: Matplotlib's tab10, cycled."""
    return colormaps["tab10"].colors[c % 10]


def _series(records: Sequence[dict], key: str):
    """(rounds [R], values [R, C]) of the records that have ``key``."""
    rows = [r for r in records if key in r and r[key] is not None]
    if not rows:
        return np.zeros((0,), int), np.zeros((0, 0))
    return (np.array([r["round"] for r in rows]),
            np.array([r[key] for r in rows], dtype=np.float64))


def _client_lines(rounds, values, client_names, levels, lw: float = 1.4, keep=None):
    """A figure with one line per client of ``values`` [R, C] against ``rounds`` [R] (only the
    clients ``c`` with ``keep(c)``): ``(fig, ax, number of lines)``."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    shown = 0
    labels = client_names if levels is None else [f"{n} ({lv})"
                                                   for n, lv in zip(client_names, levels)]
    for c, label in enumerate(labels):
        if values.size and (keep is None or keep(c)):
            ax.plot(rounds, values[:, c], color=_colour(c), lw=lw, marker=".", ms=3, label=label)
            shown += 1
    return fig, ax, shown


def _finish(fig, ax, path: str, title: str, ylabel: str = ""):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_validation_dice(records, client_names, path, levels=None, best_round=None) -> str:
    """Mean (black) and per-client validation Dice vs round."""
    rounds, dice = _series(records, "val_dice")
    _, mean = _series(records, "val_mean_dice")
    fig, ax, _ = _client_lines(rounds, dice, client_names, levels, lw=1.2)
    if mean.size:
        ax.plot(rounds, mean, color="black", lw=2.2, label="mean")
    if best_round:
        ax.axvline(best_round, color="black", ls=":", lw=1, label=f"best (round {best_round})")
    ax.set_ylim(0, 1)
    return _finish(fig, ax, path, "Validation Dice of global model 1", ylabel="Dice")


def plot_weights(records, client_names, path, levels=None) -> str:
    """Aggregation weight of each client vs round."""
    fig, ax, _ = _client_lines(*_series(records, "weights"), client_names, levels)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, path, "Aggregation weights", ylabel="weight $w_i$")


def plot_selection_rate(records, client_names, path, levels=None) -> str:
    """Selected fraction of each weak client's samples vs round (clients with weak samples)."""
    rounds, rate = _series(records, "selection_rate")
    _, weak = _series(records, "weak")
    fig, ax, shown = _client_lines(rounds, rate, client_names, levels,
                                   keep=lambda c: weak.size and weak[:, c].max() > 0)
    if not shown:
        ax.text(0.5, 0.5, "no client has weakly labelled samples", ha="center", va="center",
                transform=ax.transAxes)
        ax.plot([], [], label="(none)")
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, path, "Pseudo-label selection rate (weak samples)",
                   ylabel="selected fraction")


def plot_loss(records, client_names, path, levels=None) -> str:
    """Mean training loss of local model 1 vs round (clients that trained)."""
    rounds, loss = _series(records, "loss1")
    _, steps = _series(records, "steps")
    if loss.size and steps.size:
        loss = np.where(steps > 0, loss, np.nan)      # rounds in which the client did not train
    fig, ax, _ = _client_lines(rounds, loss, client_names, levels)
    return _finish(fig, ax, path, "Training Dice loss of model 1", ylabel="loss")


def plot_pseudo_labels(records, client_names, path, levels=None) -> str | None:
    """Pseudo-label quality vs round (None without ``pl_*`` diagnostics): per weak level, pooled
    over clients, the Dice against the true masks and the selected share of samples."""
    rows = [(r["round"], summarize({k: v for k, v in r.items() if k.startswith("pl_")}))
            for r in records if any(k.startswith("pl_") for k in r)]
    if not rows:
        return None
    fig = _figure(figsize=(9.0, 3.6))
    ax_dice, ax_sel = fig.subplots(1, 2)
    rounds = np.array([r for r, _ in rows])
    for i, name in enumerate(LEVELS):
        if not any(f"pl_{name}_n" in s for _, s in rows):
            continue
        get = lambda key: np.array([s.get(key) for _, s in rows], float)  # None: NaN # noqa: E731
        n = get(f"pl_{name}_n")
        for ax, key, scale, style, what in (
                (ax_dice, "dice", 1, {"marker": "."}, "selected"),
                (ax_dice, "dice_all", 1, {"ls": "--"}, "all with a lesion"),
                (ax_sel, "sel", n, {"marker": "."}, "selected"),
                (ax_sel, "sel_lesion", n, {"ls": "--"}, "selected with a lesion")):
            ax.plot(rounds, get(f"pl_{name}_{key}") / scale, color=_colour(i),
                    label=f"{name}: {what}", **style)
    ax_dice.set_ylim(0, 1.02)
    ax_sel.set_ylim(0, 1.02)
    _finish(fig, ax_sel, path, "Selected share of weak samples", ylabel="share")
    return _finish(fig, ax_dice, path, "Pseudo-label Dice vs true masks", ylabel="Dice")


@functools.lru_cache(maxsize=8)
def _predict_fn(model):
    return jax.jit(lambda params, x: model.apply({"params": params}, x))


def plot_predictions(model, params, split, client_names, path, per_client: int = 4,
                     per_client_params: bool = False, title: str = "") -> str:
    """Grid of test images (rows: clients) with ground truth, prediction and box outlines.

    ``params``: leaves [...], or [C, ...] with ``per_client_params`` (client c's model on client
    c's images); ``split``: a :class:`~fedmix_jax.data.federation.FederatedSplit`."""
    k = max(1, min(per_client, np.shape(split.images)[1]))
    images = float_images(np.asarray(split.images)[:, :k])     # only the k plotted per client
    width = images.shape[-2]
    masks = gathered_labels(np.asarray(split.masks)[:, :k], width)   # unpacked if bit-packed
    boxes = gathered_labels(np.asarray(split.boxes)[:, :k], width)
    valid = np.asarray(split.valid)
    c_num = images.shape[0]
    predict = _predict_fn(model)
    logits = np.stack([np.asarray(predict(jax.tree.map(lambda x: x[c], params)
                                          if per_client_params else params, images[c]))
                       for c in range(c_num)])
    preds = (1.0 / (1.0 + np.exp(-logits)) > 0.5).astype(np.float32)
    fig = _figure(figsize=(1.7 * k, 1.8 * c_num + 0.4))
    axes = fig.subplots(c_num, k, squeeze=False)
    for c in range(c_num):
        for j in range(k):
            ax = axes[c, j]
            ax.set(xticks=[], yticks=[])
            if not valid[c, j]:
                ax.axis("off")
                continue
            img = images[c, j]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            gt, pr = masks[c, j].max(-1), preds[c, j].max(-1)
            for outline, colour, lw, ls in ((boxes[c, j].max(-1), "#ffd000", 0.8, "dashed"),
                                            (gt, "#30ff30", 1.0, "solid"),
                                            (pr, "#ff3030", 1.0, "solid")):
                if outline.any():
                    ax.contour(outline, levels=[0.5], colors=[colour], linewidths=lw, linestyles=ls)
            dice = (2 * float((gt * pr).sum()) + 1e-4) / (float(gt.sum() + pr.sum()) + 1e-4)
            ax.set_title(f"Dice {dice:.2f}", fontsize=7, pad=2)
            if j == 0:
                ax.set_ylabel(client_names[c], fontsize=7)
    fig.suptitle((title + "\n" if title else "")
                 + "green: ground truth, red: prediction, yellow dashed: box", fontsize=8)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    return path


PLOT_FILES = ("val_dice.png", "weights.png", "selection_rate.png", "loss.png", "predictions.png")


def write_run_plots(workdir: str, records, client_names, levels=None, best_round=None,
                    model=None, params=None, split=None, per_client_params=False) -> list[str]:
    """Every plot of a run into ``workdir``; the prediction grid only when a model is given."""
    paths = [plot_validation_dice(records, client_names, os.path.join(workdir, "val_dice.png"),
                                  levels, best_round)]
    for plot, name in ((plot_weights, "weights"), (plot_selection_rate, "selection_rate"),
                       (plot_loss, "loss"), (plot_pseudo_labels, "pseudo_labels")):
        paths.append(plot(records, client_names, os.path.join(workdir, f"{name}.png"), levels))
    paths = [p for p in paths if p is not None]     # no pseudo_labels.png without diagnostics
    if model is not None and params is not None and split is not None:
        title = (f"test images, model selected at round {best_round}" if best_round
                 else "test images")
        paths.append(plot_predictions(model, params, split, client_names,
                                      os.path.join(workdir, "predictions.png"),
                                      per_client_params=per_client_params, title=title))
    return paths


__all__ = ["write_run_plots"]

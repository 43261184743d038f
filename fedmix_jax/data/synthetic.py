"""The embedded synthetic federation: dermoscopy-like lesions from four acquisition domains.

The default demo data set, no download: :func:`make_synthetic_federation` (rendered by
:mod:`.synthetic_render`, every sample from its own seeded generator) and :func:`preview_grid`.
Domains and lesion model: docs/data.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fedmix_jax.data.boxes import check_box_mode
from fedmix_jax.data.federation import (LEVEL_NAMES, Federation, FederatedSplit, float_images,
                                        gathered_labels, level_from_name, stack_clients)
from fedmix_jax.data.synthetic_render import client_domain, lesion_types, make_client_split

__all__ = ["make_synthetic_federation", "preview_grid"]

_DEFAULT_TRAIN_SIZES = (96, 128, 24, 112)
_DEFAULT_LEVELS = ("box", "box", "pixel", "box")
_SPLITS = {"train": 0, "val": 1, "test": 2}


def _per_client(value, num_clients: int, what: str, default) -> list:
    if np.isscalar(value) or isinstance(value, str):
        return [value] * num_clients
    value = list(value)
    if len(value) == num_clients:
        return value
    if value and tuple(value) == tuple(default):  # the defaults describe 4 clients: cycle them
        return [value[c % len(value)] for c in range(num_clients)]
    raise ValueError(f"{what} has {len(value)} entries, expected num_clients={num_clients}")


def make_synthetic_federation(num_clients: int = 4, image_size: int = 64,
                              train_sizes: Sequence[int] | int = _DEFAULT_TRAIN_SIZES,
                              val_size: Sequence[int] | int = 24,
                              test_size: Sequence[int] | int = 48,
                              levels: Sequence[str] | str = _DEFAULT_LEVELS,
                              lesion_free_fraction: float = 0.15, num_classes: int = 1,
                              seed: int = 0, box_margin=(1, 9),
                              box_mode: str = "component") -> Federation:
    """Build the synthetic federation, a deterministic function of ``seed`` (docs/data.md).

    Sizes (samples) and ``levels`` (level names) are one value or one per client (the 4-client
    defaults are cycled); clients past 3 get perturbed preset domains; ``num_classes``: 1 or
    2..8 lesion types; ``box_margin``, ``box_mode``: :func:`~fedmix_jax.data.boxes.boxes_from_mask`.
    Returns a Federation: images [C, N, S, S, 1] float32, masks / boxes [C, N, S, S, K] uint8,
    image_labels [C, N, K], levels and valid [C, N].
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= lesion_free_fraction <= 1.0:
        raise ValueError(f"lesion_free_fraction must be in [0, 1], got {lesion_free_fraction}")
    box_mode = check_box_mode(box_mode)
    types, class_names = lesion_types(int(num_classes))
    sizes = {split: [int(v) for v in _per_client(value, num_clients, name, default)]
             for split, name, value, default in (
                 ("train", "train_sizes", train_sizes, _DEFAULT_TRAIN_SIZES),
                 ("val", "val_size", val_size, ()), ("test", "test_size", test_size, ()))}
    for split, ns in sizes.items():
        if any(v < 0 for v in ns):
            raise ValueError(f"{split} sizes must be >= 0, got {ns}")
    lv = [level_from_name(v) for v in _per_client(levels, num_clients, "levels", _DEFAULT_LEVELS)]
    domains = [client_domain(c) for c in range(num_clients)]
    out = {split: stack_clients([
        make_client_split(int(seed), c, split_id, sizes[split][c], domains[c], types,
                          int(image_size), float(lesion_free_fraction), lv[c], box_margin, box_mode)
        for c in range(num_clients)]) for split, split_id in _SPLITS.items()}
    return Federation(client_names=[d.name for d in domains], class_names=class_names, **out)


def synthetic_federation_from_config(cfg: Any = None) -> Federation:
    """:func:`make_synthetic_federation` from a ConfigDict (or a mapping or object) with its
    arguments as fields; missing or None fields take the defaults."""
    names = ("num_clients", "image_size", "train_sizes", "val_size", "test_size", "levels",
             "lesion_free_fraction", "num_classes", "seed", "box_margin", "box_mode")
    get = getattr(cfg, "get", lambda name, default: getattr(cfg, name, default))
    return make_synthetic_federation(**{k: tuple(v) if isinstance(v, list) else v
                                        for k in names if (v := get(k, None)) is not None})


def preview_grid(federation: Federation, path: str, per_client: int = 6, split: str = "train") -> str:
    """Write a PNG grid of ``per_client`` images per client (rows) with mask contours (solid)
    and box outlines (dashed), on Matplotlib's Agg canvas (not pyplot's). Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data: FederatedSplit = getattr(federation, split)
    c_num, k_num = data.num_clients, data.num_classes
    colours = ["#ff3030", "#30c0ff", "#ffd000", "#40ff60", "#ff60ff", "#ff9030", "#a0a0ff", "#ffffff"]
    colour_names = ["red", "cyan", "yellow", "green", "magenta", "orange", "lavender", "white"]
    fig = Figure(figsize=(1.6 * per_client, 1.75 * c_num), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(c_num, per_client, squeeze=False)
    for c in range(c_num):
        count = int(np.asarray(data.valid[c]).sum())
        for j, ax in enumerate(axes[c]):
            ax.set(xticks=[], yticks=[])
            if j >= count:
                ax.axis("off")
                continue
            img = float_images(np.asarray(data.images[c, j, ..., 0]))   # uint8 (real) or float32
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            masks, boxes = (gathered_labels(np.asarray(x[c, j]), img.shape[-1])  # unpacked
                            for x in (data.masks, data.boxes))
            for k in range(k_num):
                col = colours[k % len(colours)]
                m, b = masks[..., k], boxes[..., k]
                if m.any():
                    ax.contour(m, levels=[0.5], colors=[col], linewidths=0.9)
                if b.any():
                    bcol = col if k_num > 1 else "#ffd000"
                    ax.contour(b, levels=[0.5], colors=[bcol], linewidths=0.8, linestyles="dashed")
            if j == 0:
                lv = LEVEL_NAMES[int(np.asarray(data.levels[c, 0]))]
                ax.set_ylabel(f"{federation.client_names[c]}\n({lv}, n={count})", fontsize=7)
    if k_num > 1:
        fig.suptitle("classes: " + ", ".join(f"{n} ({colour_names[k % len(colours)]})"
                                             for k, n in enumerate(federation.class_names)),
                     fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    return path

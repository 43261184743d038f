"""The embedded synthetic federation: dermoscopy-like lesions from four acquisition domains.

This is the default demo data set; it needs no download and builds in a fraction of a second.
Each client is a "hospital" with its own acquisition domain (non-IID): brightness and gamma,
illumination gradient and vignetting, skin texture, lesion contrast and texture, edge softness,
optical blur, sensor noise, speckle and hairs. Lesions are dark blobs with irregular boundaries,
r(theta) = r0 * (1 + sum_k a_k cos(k theta + phi_k)) on a rotated ellipse, with a jagged rim from
smoothed noise, a darker core and internal texture; sometimes two (or, multi-class, up to three)
lesions; a fraction of images is lesion-free (empty mask, image label 0).

Default domains (``site_c`` is the small pixel-labelled client, levels ``[B, B, L, B]`` as the
paper's skin setting):

=====================  =======================================================================
client                 look
=====================  =======================================================================
``site_a_dim``         dark, high gamma, strong vignette and gradient, low lesion contrast, soft
                       edges, slight blur
``site_b_hairy``       bright, fine coarse-grained skin texture, several dark hairs per image,
                       strong sensor noise, sharp, highly textured lesions
``site_c_clean``       mid-grey, clean, little noise and texture, well-contrasted lesions
``site_d_bright``      over-exposed (low gamma, gain > 1), strong blur, speckle, large pale
                       mottled lesions
=====================  =======================================================================

More clients cycle through these four with deterministic per-client perturbations.

Determinism: every sample is drawn from its own generator seeded by
``(seed, client, split, index, stream)`` (:func:`fedmix_jax.data.boxes.sample_rng`), so a sample
does not change when other splits or clients change size; train / val / test are disjoint draws.
Box margins (1-9 px, as in the reference) come from a separate per-sample stream and are drawn
once. Pixel-scale parameters (edge width, blur, hair width) are given for 64 px and scale with
``image_size``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fedmix_jax.data.boxes import check_box_mode
from fedmix_jax.data.federation import (Federation, FederatedSplit, float_images,
                                        gathered_labels,
                                        level_from_name, stack_clients)
from fedmix_jax.data.synthetic_domains import client_domain, lesion_types
from fedmix_jax.data.synthetic_render import make_client_split

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
    """Build the synthetic federation (see the module docstring for the domains).

    Args:
      num_clients: number of clients; clients 0-3 use the preset domains, later ones perturbed
        copies. Default train sizes and levels are cycled when ``num_clients != 4``.
      image_size: square image side in px.
      train_sizes, val_size, test_size: samples per client, an int (every client) or one per
        client; val and test are always fully labelled in ``masks`` (evaluation only).
      levels: supervision level name per client for the training split ('pixel'/'L', 'box'/'B',
        'image'/'I', 'none'/'U'); val and test carry the same per-client levels.
      lesion_free_fraction: fraction of images without lesion (empty masks, image label 0), spread
        evenly over each client's samples.
      num_classes: 1 (binary lesion task) or 2..8 lesion types (nodular, irregular, elongated,
        ring, then smaller variants), with per-class masks, boxes and image labels.
      seed: everything is a deterministic function of the seed.
      box_margin: ``(lo, hi)`` px margin per box side, drawn once per sample (reference: 1-9).
      box_mode: ``'component'`` (one box per connected component) or ``'enclosing'`` (the
        reference's one box around all of a class's foreground; see :mod:`fedmix_jax.data.boxes`).

    Returns:
      A :class:`~fedmix_jax.data.federation.Federation` whose splits follow the padded layout:
      images [C, N, S, S, 1], masks/boxes [C, N, S, S, K], image_labels [C, N, K], levels [C, N],
      valid [C, N].
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= lesion_free_fraction <= 1.0:
        raise ValueError(f"lesion_free_fraction must be in [0, 1], got {lesion_free_fraction}")
    box_mode = check_box_mode(box_mode)
    types, class_names = lesion_types(int(num_classes))
    sizes = {
        "train": [int(v) for v in _per_client(train_sizes, num_clients, "train_sizes", _DEFAULT_TRAIN_SIZES)],
        "val": [int(v) for v in _per_client(val_size, num_clients, "val_size", ())],
        "test": [int(v) for v in _per_client(test_size, num_clients, "test_size", ())],
    }
    for split, ns in sizes.items():
        if any(v < 0 for v in ns):
            raise ValueError(f"{split} sizes must be >= 0, got {ns}")
    lv = [level_from_name(v) for v in _per_client(levels, num_clients, "levels", _DEFAULT_LEVELS)]
    domains = [client_domain(c) for c in range(num_clients)]
    out = {}
    for split, split_id in _SPLITS.items():
        per_client = [
            make_client_split(int(seed), c, split_id, sizes[split][c], domains[c], types,
                              int(image_size), float(lesion_free_fraction), lv[c], box_margin,
                              box_mode)
            for c in range(num_clients)]
        out[split] = stack_clients(per_client)
    return Federation(client_names=[d.name for d in domains], class_names=class_names, **out)


def synthetic_federation_from_config(cfg: Any = None) -> Federation:
    """:func:`make_synthetic_federation` from an ``ml_collections.ConfigDict`` (or a mapping).

    Recognised fields: image_size, num_clients, train_sizes, val_size, test_size, levels,
    lesion_free_fraction, num_classes, seed, box_margin, box_mode; missing fields take the
    defaults.
    """
    names = ("num_clients", "image_size", "train_sizes", "val_size", "test_size", "levels",
             "lesion_free_fraction", "num_classes", "seed", "box_margin", "box_mode")
    kwargs = {}
    if cfg is not None:
        for name in names:
            if hasattr(cfg, "get"):
                value = cfg.get(name, None)
            else:
                value = getattr(cfg, name, None)
            if value is not None:
                if isinstance(value, list):
                    value = tuple(value)
                kwargs[name] = value
    return make_synthetic_federation(**kwargs)


def preview_grid(federation: Federation, path: str, per_client: int = 6, split: str = "train") -> str:
    """Write a PNG grid of ``per_client`` images per client with mask contours and box outlines.

    Rows are clients (name and training level in the row title); the mask contour is drawn in red
    (multi-class: one colour per class, solid) and the box mask outline dashed in the same colour.
    Uses Matplotlib's Agg canvas directly (the global pyplot backend is not touched). Returns
    ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fedmix_jax.data.federation import LEVEL_NAMES

    data: FederatedSplit = getattr(federation, split)
    c_num = data.num_clients
    k_num = data.num_classes
    colours = ["#ff3030", "#30c0ff", "#ffd000", "#40ff60", "#ff60ff", "#ff9030", "#a0a0ff", "#ffffff"]
    colour_names = ["red", "cyan", "yellow", "green", "magenta", "orange", "lavender", "white"]
    fig = Figure(figsize=(1.6 * per_client, 1.75 * c_num), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(c_num, per_client, squeeze=False)
    for c in range(c_num):
        count = int(np.asarray(data.valid[c]).sum())
        for j in range(per_client):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= count:
                ax.axis("off")
                continue
            img = float_images(np.asarray(data.images[c, j, ..., 0]))   # uint8 (real) or float32
            ax.imshow(img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            width = img.shape[-1]
            masks = gathered_labels(np.asarray(data.masks[c, j]), width)   # unpacked if packed
            boxes = gathered_labels(np.asarray(data.boxes[c, j]), width)
            for k in range(k_num):
                col = colours[k % len(colours)] if k_num > 1 else colours[0]
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

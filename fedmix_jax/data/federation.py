"""The federated array layout shared by every data source and by the round.

Every data source (the embedded synthetic federation, HAM10000, breast ultrasound, a hospital's own
folders) produces a :class:`Federation`: three :class:`FederatedSplit` s (train / val / test) whose
arrays carry a leading client axis ``C`` and a padded sample axis ``N`` (the largest client's size;
smaller clients are padded with zeros and ``valid = False``).

Shapes (NHWC, ``K`` = number of classes, one sigmoid channel per class; binary tasks have K = 1):

==================  =======================  ==========================================================
field               shape / dtype            meaning
==================  =======================  ==========================================================
``images``          [C, N, H, W, Cin] f32    intensities scaled to [0, 1]
``masks``           [C, N, H, W, K]   f32    ground-truth masks in {0, 1} (used only for ``pixel``
                                             samples in training, and by the fully-supervised upper
                                             bound; always used for evaluation)
``boxes``           [C, N, H, W, K]   f32    box masks in {0, 1}: 1 inside any box of that class
                                             (drawn once per sample with a fixed noisy margin)
``image_labels``    [C, N, K]         f32    1 if the class is present in the image, else 0
``levels``          [C, N]            i32    supervision level: PIXEL=0, BOX=1, IMAGE=2, NONE=3
``valid``           [C, N]            bool   False for padding
==================  =======================  ==========================================================

The level is *data*: a client may mix levels, and one compiled round serves any mix.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from flax import struct

PIXEL, BOX, IMAGE, NONE = 0, 1, 2, 3
LEVEL_NAMES = ("pixel", "box", "image", "none")
_LEVEL_ALIASES = {"pixel": PIXEL, "l": PIXEL, "mask": PIXEL, "box": BOX, "b": BOX,
                  "image": IMAGE, "i": IMAGE, "none": NONE, "u": NONE, "unlabelled": NONE,
                  "unlabeled": NONE}


def level_from_name(name: str) -> int:
    """'pixel'/'L', 'box'/'B', 'image'/'I', 'none'/'U' (case-insensitive) -> level integer."""
    try:
        return _LEVEL_ALIASES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown supervision level {name!r}; expected one of pixel (L), box (B), image (I), "
            "none (U)") from None


@struct.dataclass
class FederatedSplit:
    """One split of a federation as padded arrays with a leading client axis (see module doc)."""

    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    image_labels: np.ndarray
    levels: np.ndarray
    valid: np.ndarray

    @property
    def num_clients(self) -> int:
        return int(self.images.shape[0])

    @property
    def max_samples(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.masks.shape[-1])

    def counts(self) -> np.ndarray:
        """Number of valid samples per client, [C] int."""
        return np.asarray(self.valid).sum(axis=1)

    def with_levels(self, levels) -> "FederatedSplit":
        """Same arrays with per-client levels replaced: ``levels`` is [C] or [C, N]."""
        lv = np.asarray(levels, dtype=np.int32)
        if lv.ndim == 1:
            lv = np.broadcast_to(lv[:, None], self.levels.shape)
        return self.replace(levels=np.ascontiguousarray(lv))

    def pad_to(self, num_samples: int) -> "FederatedSplit":
        """Pad the sample axis to ``num_samples`` with invalid zero samples."""
        n = self.max_samples
        if num_samples < n:
            raise ValueError(f"cannot pad {n} samples down to {num_samples}")

        def pad(x):
            x = np.asarray(x)
            widths = [(0, 0), (0, num_samples - n)] + [(0, 0)] * (x.ndim - 2)
            return np.pad(x, widths)

        return FederatedSplit(*(pad(getattr(self, f.name)) for f in dataclasses.fields(self)))


@dataclasses.dataclass
class Federation:
    """A federated dataset: client names, the task's class names and three splits."""

    client_names: list[str]
    class_names: list[str]
    train: FederatedSplit
    val: FederatedSplit
    test: FederatedSplit

    @property
    def num_clients(self) -> int:
        return len(self.client_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        """A small human-readable table of the clients, their sizes and label levels."""
        lines = [f"{'client':<16}{'train':>7}{'val':>6}{'test':>6}  levels (train)"]
        for c, name in enumerate(self.client_names):
            tv = np.asarray(self.train.valid[c])
            lv = np.asarray(self.train.levels[c])[tv]
            levels = ", ".join(f"{LEVEL_NAMES[k]}:{int((lv == k).sum())}"
                               for k in range(4) if (lv == k).any())
            lines.append(f"{name:<16}{int(tv.sum()):>7}{int(np.asarray(self.val.valid[c]).sum()):>6}"
                         f"{int(np.asarray(self.test.valid[c]).sum()):>6}  {levels}")
        return "\n".join(lines)


def stack_clients(per_client: Sequence[dict], num_samples: int | None = None) -> FederatedSplit:
    """Stack per-client dicts of unpadded arrays into one padded :class:`FederatedSplit`.

    Each dict holds ``images`` [n, H, W, Cin], ``masks`` [n, H, W, K], ``boxes`` [n, H, W, K],
    ``image_labels`` [n, K] and ``levels`` [n]; ``n`` may differ per client (0 is allowed and
    gives an all-invalid client). ``num_samples`` defaults to the largest ``n``.
    """
    if not per_client:
        raise ValueError("stack_clients needs at least one client")
    sizes = [int(np.asarray(d["images"]).shape[0]) for d in per_client]
    n_max = max(sizes) if num_samples is None else int(num_samples)
    if n_max < max(sizes):
        raise ValueError(f"num_samples={n_max} is smaller than the largest client ({max(sizes)})")
    n_max = max(n_max, 1)
    ref = next((d for d, n in zip(per_client, sizes) if n > 0), per_client[0])
    shapes = {k: np.asarray(ref[k]).shape[1:] for k in ("images", "masks", "boxes", "image_labels")}
    out = {k: np.zeros((len(per_client), n_max) + s, np.float32) for k, s in shapes.items()}
    out["levels"] = np.zeros((len(per_client), n_max), np.int32)
    out["valid"] = np.zeros((len(per_client), n_max), bool)
    for c, (d, n) in enumerate(zip(per_client, sizes)):
        if n == 0:
            continue
        for k, s in shapes.items():
            a = np.asarray(d[k], np.float32)
            if a.shape[1:] != s:
                raise ValueError(f"client {c}: {k} has per-sample shape {a.shape[1:]}, expected {s}")
            out[k][c, :n] = a
        out["levels"][c, :n] = np.asarray(d["levels"], np.int32)
        out["valid"][c, :n] = True
    return FederatedSplit(**out)

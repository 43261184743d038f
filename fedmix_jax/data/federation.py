"""The federated array layout shared by every data source and by the round.

A :class:`Federation` holds three :class:`FederatedSplit` s (train / val / test) with a client
axis ``C`` and a sample axis ``N`` padded to the largest client (``valid = False``); images NHWC,
masks and boxes one channel per class ``K``, kept in their storage dtype (uint8 masks and boxes
may be bit-packed along W). Details: docs/memory.md.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PIXEL, BOX, IMAGE, NONE = 0, 1, 2, 3
LEVEL_NAMES = ("pixel", "box", "image", "none")
_LEVEL_ALIASES = {"pixel": PIXEL, "l": PIXEL, "mask": PIXEL, "box": BOX, "b": BOX, "image": IMAGE,
                  "i": IMAGE, "none": NONE, "u": NONE, "unlabelled": NONE, "unlabeled": NONE}


def level_from_name(name: str) -> int:
    """'pixel'/'L', 'box'/'B', 'image'/'I', 'none'/'U' (case-insensitive) -> level integer."""
    try:
        return _LEVEL_ALIASES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown supervision level {name!r}; expected one of pixel (L), "
                         "box (B), image (I), none (U)") from None


def float_images(x):
    """Images [..., H, W, Cin] in their storage dtype -> float32 in [0, 1] (NumPy or JAX): uint8
    times ``1 / 255`` (bit-identical to a float32 ``k / 255`` copy), others cast."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return float_labels(x)


def float_labels(x):
    """Masks / boxes / image labels (uint8 or bool {0, 1}, or float32) -> float32 {0, 1}."""
    return x if x.dtype == np.float32 else x.astype(np.float32)


def pack_labels(x) -> np.ndarray:
    """Masks or boxes ``[..., H, W, K]`` (nonzero is 1) -> uint8 ``[..., H, ceil(W / 8), K]``,
    ``np.packbits`` along W (first pixel in the high bit). Host only."""
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"pack_labels needs [..., H, W, K] arrays, got shape {x.shape}")
    return np.packbits(x != 0, axis=-2)


def unpack_labels(x, width: int):
    """:func:`pack_labels` reversed -> uint8 {0, 1} ``[..., H, width, K]`` (NumPy or JAX)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.unpackbits(x, axis=-2, count=int(width))


def labels_packed(split) -> bool:
    """Whether ``split``'s masks and boxes are bit-packed (narrower than its images along W)."""
    masks, images = (getattr(x, "shape", None) for x in (split.masks, split.images))
    return masks is not None and images is not None and masks[-2] != images[-2]


def gathered_labels(labels, width: int):
    """Gathered masks / boxes -> float32 {0, 1} ``[..., H, width, K]``, unpacked if packed."""
    return float_labels(labels if labels.shape[-2] == width else unpack_labels(labels, width))


def pack_split_labels(split: "FederatedSplit") -> "FederatedSplit":
    """``split`` with masks and boxes (values in {0, 1}) bit-packed on the host; a packed or
    1 px wide split (packed, it could not be told from unpacked) is returned as it is."""
    if labels_packed(split) or np.shape(split.images)[-2] < 2:
        return split
    return split.replace(**{f: _pack_by_client(getattr(split, f), f) for f in ("masks", "boxes")})


def _pack_by_client(labels, name: str) -> np.ndarray:
    """:func:`pack_labels` of ``[C, N, H, W, K]`` one client at a time, checked to be {0, 1}."""
    packed = []
    for c, x in enumerate(np.asarray(labels)):
        if not (x.max(initial=0) <= 1 if x.dtype in (np.uint8, np.bool_)
                else ((x == 0) | (x == 1)).all()):
            raise ValueError(f"cannot bit-pack {name}: client {c} has values other than 0 and 1")
        packed.append(pack_labels(x))
    return np.stack(packed)


def unpack_split_labels(split: "FederatedSplit") -> "FederatedSplit":
    """``split`` with packed masks and boxes unpacked to uint8 {0, 1} (NumPy or JAX, jittable)."""
    if not labels_packed(split):
        return split
    width = split.images.shape[-2]
    return split.replace(**{f: unpack_labels(getattr(split, f), width) for f in ("masks", "boxes")})


class SplitSizes:
    """A split's sizes, from its ``images`` [C, N, ...], ``masks`` [..., K], ``valid`` [C, N]."""

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


@struct.dataclass
class FederatedSplit(SplitSizes):
    """One split of a federation as padded arrays with a leading client axis."""

    images: np.ndarray         # [C, N, H, W, Cin] uint8 (k means k / 255) or float32 in [0, 1]
    masks: np.ndarray          # [C, N, H, W, K] uint8 (or float32) ground truth in {0, 1}
    boxes: np.ndarray          # [C, N, H, W, K] uint8 (or float32) {0, 1}: inside a box
    image_labels: np.ndarray   # [C, N, K] float32: 1 if the class is present in the image
    levels: np.ndarray         # [C, N] int32: PIXEL=0, BOX=1, IMAGE=2, NONE=3
    valid: np.ndarray          # [C, N] bool: False for padding

    def pad_to(self, num_samples: int) -> "FederatedSplit":
        """Pad the sample axis to ``num_samples`` with invalid zero samples."""
        n = self.max_samples
        if num_samples < n:
            raise ValueError(f"cannot pad {n} samples down to {num_samples}")
        return jax.tree.map(lambda x: np.pad(np.asarray(x), [(0, 0), (0, num_samples - n)]
                                             + [(0, 0)] * (np.ndim(x) - 2)), self)


def pack_federation_labels(federation: "Federation") -> "Federation":
    """``federation`` with every in-memory split's masks and boxes bit-packed (not streamed)."""
    for name in ("train", "val", "test"):
        split = getattr(federation, name)
        if isinstance(split, FederatedSplit):
            setattr(federation, name, pack_split_labels(split))
    return federation


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
            lv = np.asarray(self.train.levels[c])[np.asarray(self.train.valid[c])]
            levels = ", ".join(f"{LEVEL_NAMES[k]}:{n}"
                               for k, n in enumerate(np.bincount(lv, minlength=4)) if n)
            n = [int(np.asarray(s.valid[c]).sum()) for s in (self.train, self.val, self.test)]
            lines.append(f"{name:<16}{n[0]:>7}{n[1]:>6}{n[2]:>6}  {levels}")
        return "\n".join(lines)


def _storage_dtype(dtype) -> np.dtype:
    return np.dtype(dtype if np.dtype(dtype) in (np.uint8, bool) else np.float32)


def stack_clients(per_client: Iterable[dict], num_samples: int | None = None,
                  num_clients: int | None = None) -> FederatedSplit:
    """Stack per-client dicts of unpadded arrays into one padded :class:`FederatedSplit`.

    Each dict holds ``images`` [n, H, W, Cin], ``masks`` / ``boxes`` [n, H, W, K],
    ``image_labels`` [n, K] and ``levels`` [n] (``n`` may be 0); uint8 and bool keep their dtype,
    others become float32; images must share one dtype. A generator ``per_client`` needs
    ``num_samples`` and ``num_clients`` (default: largest ``n``, number of dicts).
    """
    if isinstance(per_client, Sequence):
        if num_samples is None:
            num_samples = max((int(np.shape(d["images"])[0]) for d in per_client), default=1)
        num_clients = len(per_client) if num_clients is None else num_clients
    elif num_samples is None or num_clients is None:
        raise ValueError("stack_clients of a generator needs num_samples and num_clients")
    num_clients, n_max = int(num_clients), max(int(num_samples), 1)
    if num_clients < 1:
        raise ValueError("stack_clients needs at least one client")
    fields = ("images", "masks", "boxes", "image_labels")
    out, first, c = None, None, -1

    def allocate(ref):
        return {**{k: np.zeros((num_clients, n_max) + np.shape(ref[k])[1:],
                               _storage_dtype(np.asarray(ref[k]).dtype)) for k in fields},
                "levels": np.zeros((num_clients, n_max), np.int32),
                "valid": np.zeros((num_clients, n_max), bool)}

    for c, d in enumerate(per_client):
        if c >= num_clients:
            raise ValueError(f"more clients than num_clients={num_clients}")
        first = first or {k: np.asarray(d[k])[:0] for k in fields}
        n = int(np.shape(d["images"])[0])
        if n == 0:
            continue
        if n > n_max:
            raise ValueError(f"client {c} has {n} samples, more than num_samples={n_max}")
        out = out or allocate(d)
        for k in fields:
            a = np.asarray(d[k])
            if a.shape[1:] != out[k].shape[2:]:
                raise ValueError(f"client {c}: {k} has per-sample shape {a.shape[1:]}, "
                                 f"expected {out[k].shape[2:]}")
            if k == "images" and _storage_dtype(a.dtype) != out[k].dtype:
                raise ValueError(f"client {c}: images are {a.dtype}, the first client's are "
                                 f"{out[k].dtype}; store every client's images in one dtype "
                                 "(uint8 k means k/255; float32 is already in [0, 1])")
            out[k][c, :n] = a
        out["levels"][c, :n] = np.asarray(d["levels"], np.int32)
        out["valid"][c, :n] = True
        d = a = None    # let a generator's client go before the next one is read
    if c + 1 != num_clients:
        raise ValueError(f"{c + 1} clients given, num_clients={num_clients}")
    return FederatedSplit(**(out or allocate(first)))   # all empty: the first's shapes, dtypes

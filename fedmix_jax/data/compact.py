"""The compact layout of a split: every client's rows one after another, no padding.

:class:`CompactSplit` holds client ``c``'s rows at ``offsets[c]`` to ``offsets[c] + lengths[c]``
(clients smallest first, zero rows at the end); :func:`client_window` reads client ``c`` as the
padded split's row ``c``, bit-identical under ``valid``. Details: docs/memory.md.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from flax import struct

from fedmix_jax.data.federation import FederatedSplit

__all__ = ["CompactSplit", "compact_split", "put_compact", "client_window"]

_ROW_FIELDS = ("images", "masks", "boxes", "image_labels", "levels", "valid")


@struct.dataclass
class CompactSplit:
    """A split's clients' rows concatenated (module docstring); ``T >= offsets[c] + N``."""

    images: jax.Array          # [T, H, W, Cin]
    masks: jax.Array           # [T, H, W, K], or [T, H, ceil(W / 8), K] bit-packed
    boxes: jax.Array           # as masks
    image_labels: jax.Array    # [T, K]
    levels: jax.Array          # [T] int32
    valid: jax.Array           # [T] bool
    offsets: jax.Array         # [C] int32: client c's first row
    lengths: jax.Array         # [C] int32: client c's rows
    max_samples: int = struct.field(pytree_node=False)   # N, the window a client is read in

    @property
    def num_clients(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.masks.shape[-1])

    def counts(self) -> np.ndarray:
        """Number of valid samples per client, [C] int (host)."""
        return np.asarray(client_counts(self))

    def padded_valid(self) -> np.ndarray:
        """The padded split's ``valid``, [C, N] bool (host)."""
        return padded_rows(np.asarray(self.valid), np.asarray(self.offsets),
                           np.asarray(self.lengths), self.max_samples)

    def padded(self) -> FederatedSplit:
        """The same split padded to ``[C, N, ...]`` on the host (NumPy)."""
        offsets, lengths = np.asarray(self.offsets), np.asarray(self.lengths)
        return FederatedSplit(**{f: padded_rows(np.asarray(getattr(self, f)), offsets, lengths,
                                                self.max_samples) for f in _ROW_FIELDS})


@struct.dataclass
class ClientRows:
    """Where the clients' rows are, [C] each: what the round maps over the client axis."""

    offsets: jax.Array
    lengths: jax.Array


def client_lengths(valid: np.ndarray) -> np.ndarray:
    """Per client, the rows up to and including its last valid one: [C, N] bool -> [C] (host)."""
    last = valid.shape[1] - np.argmax(valid[:, ::-1], axis=1)
    return np.where(valid.any(axis=1), last, 0).astype(np.int64)


def compact_split(split: FederatedSplit, put=lambda x: x) -> CompactSplit:
    """The compact layout of a padded split (host NumPy in, NumPy out, or each field through
    ``put`` as soon as it is built); dtypes, packing and positions in the window are kept."""
    if isinstance(split, CompactSplit):
        return jax.tree.map(put, split)
    return compact_fields({f: getattr(split, f) for f in _ROW_FIELDS}, put)


def compact_fields(fields: dict, put=lambda x: x) -> CompactSplit:
    """:func:`compact_split` of a dict of the six padded arrays, which it *consumes*: each is
    removed from ``fields`` once its compact copy is built, before ``put``."""
    valid = np.asarray(fields["valid"]).astype(bool)
    if valid.ndim != 2:
        raise ValueError(f"compact_split needs a padded split, valid [C, N]; got {valid.shape}")
    num_clients, n = valid.shape
    lengths = client_lengths(valid)
    order = np.argsort(lengths, kind="stable")          # smallest first, the largest last
    offsets = np.zeros(num_clients, np.int64)
    offsets[order] = np.cumsum(lengths[order]) - lengths[order]   # the rows of the clients before
    rows = max(int(lengths.sum()), int((offsets + n).max(initial=0)))

    def compact(name):
        x = np.asarray(fields.pop(name))
        out = np.zeros((rows,) + x.shape[2:], x.dtype)
        for c in range(num_clients):
            out[offsets[c]:offsets[c] + lengths[c]] = x[c, :lengths[c]]
        del x                                   # the padded field, before the copy is put
        return put(out)

    return CompactSplit(**{f: compact(f) for f in _ROW_FIELDS},
                        offsets=put(offsets.astype(np.int32)),
                        lengths=put(lengths.astype(np.int32)), max_samples=int(n))


def put_compact(split: FederatedSplit, device=None) -> CompactSplit:
    """:func:`compact_split` onto ``device`` (default: JAX's), one field at a time."""
    return compact_split(split, put=lambda x: jax.device_put(x, device))


def padded_rows(flat: np.ndarray, offsets, lengths, max_samples: int, fill=0) -> np.ndarray:
    """Rows of a compact array back to ``[C, N, ...]`` (host): client ``c``'s ``lengths[c]``
    rows from ``offsets[c]``, ``fill`` after them."""
    out = np.full((len(offsets), max_samples) + flat.shape[1:], fill, flat.dtype)
    for c, (o, n) in enumerate(zip(offsets, lengths)):
        out[c, :n] = flat[o:o + n]
    return out


def client_window(split: CompactSplit, offset: jax.Array, length: jax.Array) -> FederatedSplit:
    """One client's ``[N, ...]`` view (jittable; ``offset``, ``length`` may be traced); rows
    past ``length`` hold the next client's samples (or zeros) with ``valid`` off."""
    n = split.max_samples
    rows = {f: jax.lax.dynamic_slice_in_dim(getattr(split, f), offset, n) for f in _ROW_FIELDS}
    rows["valid"] = rows["valid"] & (jnp.arange(n) < length)
    return FederatedSplit(**rows)


def client_counts(split: CompactSplit) -> jax.Array:
    """Valid samples per client, [C] int32 (jittable)."""
    ends = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(split.valid.astype(jnp.int32))])
    return ends[split.offsets + split.lengths] - ends[split.offsets]

"""RETOUCH (retinal OCT fluid; classes ``irf, srf, ped``): the layout (one client per vendor,
every B-scan a sample, split by volume; volumes read by :mod:`.metaimage` as [Z, Y, X]) and its
TFDS builder :class:`RetouchFedmix`. Details: docs/multiclass.md.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from fedmix_jax.data.boxes import box_mask, boxes_from_mask, sample_rng
from fedmix_jax.data.real import builders as dataset_builders
from fedmix_jax.data.real import metaimage
from fedmix_jax.data.real.errors import BadInputError, BadInputPolicy
from fedmix_jax.data.real.scanning import Layout, Sample, Scan, normalized_name, subdirs
from fedmix_jax.data.real.splits import stable_int

CLASS_NAMES = ("irf", "srf", "ped")
CLIENTS = ("cirrus", "topcon", "spectralis")          # the reference's order
LEVELS = ("image", "box", "pixel")                     # the paper's setting [I, B, L]
_VENDOR_TOKENS = {"cirrus": ("cirrus",), "topcon": ("topcon",),
                  "spectralis": ("spectralis", "heidelberg")}
_OCT_NAMES = ("oct.mhd", "oct.mha")
_REF_NAMES = ("reference.mhd", "reference.mha")
NUM_LABELS = len(CLASS_NAMES)


def _check_shapes(oct_path: str, ref_path: str, shape, ref_shape, name: str) -> None:
    """A 3D volume [Z, Y, X] and a label volume of its shape, else a :class:`BadInputError`."""
    size, ref_size = (" x ".join(str(v) for v in s) for s in (shape, ref_shape))
    if len(shape) != 3:
        raise BadInputError(f"{oct_path} is not a 3D volume (size {size})", oct_path)
    if tuple(shape) != tuple(ref_shape):
        raise BadInputError(f"volume and label shapes differ in {name}: oct {size} vs "
                            f"reference {ref_size} ([B-scans, depth, width])", ref_path)


class Retouch(Layout):
    name = "retouch"
    title = "RETOUCH (retinal OCT fluid: IRF, SRF, PED)"
    tree = """\
    data_dir/
      RETOUCH-TrainingSet-Cirrus/        (any folder name containing 'cirrus')  -> client cirrus
        TRAIN001/oct.mhd, oct.raw, reference.mhd, reference.raw   (labels 0-3)
        TRAIN002/ ...
      RETOUCH-TrainingSet-Spectralis/    (name containing 'spectralis')         -> spectralis
        TRAIN025/ ...
      RETOUCH-TrainingSet-Topcon/        (name containing 'topcon')             -> topcon
        TRAIN049/ ...
"""
    download = ("RETOUCH challenge training set, https://retouch.grand-challenge.org (registration "
                "required): extract the three RETOUCH-TrainingSet-<vendor> archives into data_dir")
    default_clients = CLIENTS
    default_levels = LEVELS
    class_names = CLASS_NAMES

    def _vendor_dirs(self, data_dir: str, policy: BadInputPolicy) -> dict[str, str]:
        def find(root):
            out = {}
            for e, p in subdirs(root):
                n = normalized_name(e)
                for client, tokens in _VENDOR_TOKENS.items():
                    if any(t in n for t in tokens):
                        if client in out:
                            policy(BadInputError(f"two folders for vendor {client}: {out[client]} "
                                                 f"and {p} (keep one)", p))
                            continue
                        out[client] = p
            return out

        found = find(data_dir)
        if not found:  # one level deeper (data_dir/<archive root>/RETOUCH-TrainingSet-*)
            for _, p in subdirs(data_dir):
                found.update({c: d for c, d in find(p).items() if c not in found})
        return found

    def scan(self, data_dir, policy):
        data_dir = self.check_data_dir(data_dir)
        vendors = self._vendor_dirs(data_dir, policy)
        if not vendors:
            raise self.not_found(f"no folder whose name contains cirrus, spectralis or topcon in "
                                 f"{data_dir}")
        warnings = [f"no {c} folder in {data_dir}; client {c} is absent" for c in CLIENTS
                    if c not in vendors]
        samples = [s for c in CLIENTS if c in vendors
                   for s in self._scan_vendor(c, vendors[c], policy, warnings)]
        clients = [c for c in CLIENTS if any(s.client == c for s in samples)]
        if not clients:
            raise self.not_found(f"no usable volume (a folder with oct.mhd and reference.mhd) in "
                                 f"{', '.join(vendors.values())}")
        return Scan(samples, clients, warnings)

    def _scan_vendor(self, client, vdir, policy, warnings):
        samples = []
        for vol, vpath in subdirs(vdir):
            files = {f.lower(): os.path.join(vpath, f) for f in os.listdir(vpath)}
            oct_path = next((files[n] for n in _OCT_NAMES if n in files), None)
            ref_path = next((files[n] for n in _REF_NAMES if n in files), None)
            if oct_path is None and ref_path is None:
                warnings.append(f"ignored folder {vpath}: no oct.mhd / reference.mhd inside")
                continue
            if ref_path is None:
                policy(BadInputError(f"missing reference volume: {vpath} has "
                                     f"{os.path.basename(oct_path)} but no reference.mhd (the "
                                     "label volume)", oct_path))
                continue
            if oct_path is None:
                policy(BadInputError(f"missing OCT volume: {vpath} has reference.mhd but no "
                                     "oct.mhd", ref_path))
                continue
            try:
                shape = metaimage.read_header(oct_path).shape
                _check_shapes(oct_path, ref_path, shape, metaimage.read_header(ref_path).shape,
                              f"{client}/{vol}")
            except BadInputError as e:
                policy(e)
                continue
            for z in range(shape[0]):
                samples.append(Sample(
                    id=f"{client}/{vol}/{z:03d}", client=client, stem=f"{vol}_{z:03d}",
                    image_path=oct_path, mask_paths=[ref_path], group=f"{client}/{vol}"))
        return samples


def _to_uint8(vol: np.ndarray) -> np.ndarray:
    if vol.dtype == np.uint8:
        return vol
    v = vol.astype(np.float32)
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip(np.rint((v - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def load_volume_pair(oct_path: str, ref_path: str, size: int, channels: int = 1, name: str = ""
                     ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read, check and resize one volume and its labels: ``(images uint8 [Z, S, S, channels],
    labels uint8 [Z, S, S] in 0..3, (rows, cols))``; a :class:`BadInputError` naming the volume
    for shapes that differ or labels outside 0-3."""
    vol, ref = metaimage.read_volume(oct_path), metaimage.read_volume(ref_path)
    name = name or os.path.dirname(oct_path)
    _check_shapes(oct_path, ref_path, vol.shape, ref.shape, name)
    vals = np.unique(ref)
    bad = vals[(vals < 0) | (vals > NUM_LABELS) | (vals != np.round(vals))]
    if bad.size:
        raise BadInputError(
            f"labels outside 0-3 in {ref_path} ({name}): values {bad[:8].tolist()}; RETOUCH "
            "labels are 0 background, 1 IRF, 2 SRF, 3 PED", ref_path)
    if vol.dtype.kind == "c" or vol.dtype == bool:
        raise BadInputError(f"{oct_path}: unsupported voxel type {vol.dtype}", oct_path)
    images = np.stack([np.asarray(Image.fromarray(b, "L").resize((size, size), Image.BILINEAR))
                       for b in _to_uint8(vol)])
    labels = np.stack([np.asarray(Image.fromarray(b, "L").resize((size, size), Image.NEAREST))
                       for b in ref.astype(np.uint8)])
    return np.repeat(images[..., None], int(channels), axis=-1), labels, vol.shape[1:]


def slice_example(s: Sample, image: np.ndarray, labels: np.ndarray, orig_hw, seed: int,
                  data_dir: str, cindex: dict, volume: str, index: int,
                  box_mode: str = "component") -> dict:
    """The TFDS example of one B-scan: one-hot masks, per-class labels and boxes (``box_mode``)."""
    size = labels.shape[0]
    mask = np.stack([labels == k + 1 for k in range(NUM_LABELS)], axis=-1)
    rng = sample_rng(seed, stable_int("boxes", s.id))
    coords, classes, boxes = [], [], np.zeros((size, size, NUM_LABELS), np.uint8)
    for k in range(NUM_LABELS):
        b = boxes_from_mask(mask[..., k], rng, margin=dataset_builders.BOX_MARGIN,
                            box_mode=box_mode)
        if b.shape[0]:
            boxes[..., k] = box_mask(b, size, size)
            coords.append(b)
            classes += [k] * b.shape[0]
    return {
        "image": image,
        "mask": mask.astype(np.uint8),
        "boxes": boxes,
        "box_coords": (np.concatenate(coords).astype(np.int32) if coords
                       else np.zeros((0, 4), np.int32)),
        "box_class": np.asarray(classes, np.int32),
        "label": mask.any(axis=(0, 1)).astype(np.uint8),
        "has_mask": True,
        **dataset_builders.sample_fields(s, cindex, data_dir, orig_hw),  # category '', malignant -1
        "volume": volume,
        "slice": np.int32(index),
    }


class RetouchFedmix(dataset_builders.FedMixBuilder):
    """RETOUCH training set: one client per vendor, B-scans as samples, K = 3; records add
    ``box_class`` int32 [nb] (of each ``box_coords`` row), ``volume`` text and ``slice`` int32."""

    LAYOUT = Retouch()
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()
    code_path = epath.Path(__file__)
    DROPS_EMPTY_SLICES = True
    HOMEPAGE = "https://retouch.grand-challenge.org"

    def _extra_features(self) -> dict:
        return {"box_class": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "volume": tfds.features.Text(),
                "slice": tfds.features.Tensor(shape=(), dtype=np.int32)}

    def _generate_examples(self, samples: list[Sample], split: str):
        data_dir, policy, scan, cindex = self._build_state
        cfg = self.builder_config
        meta = self.info.metadata["fedmix"]
        counts, dropped = collections.Counter(), collections.Counter()
        cache: dict[str, object] = {}
        client = None
        for s in samples:
            if s.client != client:   # records are grouped by client: keep one client's volumes
                cache.clear()
                client = s.client
            vol = s.group
            if vol not in cache:
                try:
                    cache[vol] = load_volume_pair(s.image_path, s.mask_paths[0], cfg.image_size,
                                                  cfg.channels, name=vol)
                except BadInputError as e:
                    cache[vol] = e
                    policy(e)   # once per volume; 'skip' drops all its B-scans
            if isinstance(cache[vol], BadInputError):
                continue
            images, labels, hw = cache[vol]
            z = int(s.id.rsplit("/", 1)[1])
            if cfg.drop_empty_slices and not labels[z].any():   # no fluid (the reference)
                dropped[s.client] += 1
                continue
            yield s.id, slice_example(s, images[z], labels[z], hw, cfg.seed, data_dir, cindex,
                                      vol, z, cfg.box_mode)
            counts[s.client] += 1
        meta["counts"][split] = {c: int(counts[c]) for c in scan.clients}
        meta.setdefault("dropped_empty", {})[split] = {c: int(dropped[c]) for c in scan.clients}
        for c in scan.clients:
            if counts[c] == 0:
                raise BadInputError(
                    f"client {c!r} is left with no {split} B-scans: {meta['found'][c]} B-scan(s) "
                    f"of it were found under {data_dir} and split by volume before decoding, and "
                    f"{len(policy.skipped)} bad volume(s) have been skipped so far; a vendor needs "
                    "at least 3 usable volumes to fill train/validation/test", data_dir)

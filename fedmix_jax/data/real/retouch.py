"""RETOUCH (retinal OCT fluid, 3 classes) for FedMix: layout scanner, TFDS builder, fixture writer.

The RETOUCH challenge training set (Bogunovic et al., IEEE TMI 2019;
https://retouch.grand-challenge.org)
holds 70 OCT volumes from three vendors, each with a manual reference segmentation of three fluid
types: label 1 = IRF (intraretinal fluid), 2 = SRF (subretinal fluid), 3 = PED (pigment epithelial
detachment), 0 = background. ``--config.data.name=retouch`` reads it as the paper does: one client
per vendor, in the reference's order cirrus / topcon / spectralis (default levels image / box /
pixel), every B-scan a 2D sample, classes ``irf, srf, ped`` as three sigmoid channels.

Layout (``data_dir`` is the folder the training-set archives were extracted into)::

    data_dir/
      RETOUCH-TrainingSet-Cirrus/        any folder whose name contains "cirrus" -> client cirrus
        TRAIN001/
          oct.mhd  oct.raw               the OCT volume (MetaImage header + raw data)
          reference.mhd  reference.raw   the label volume, same size, values 0-3
        TRAIN002/ ...
      RETOUCH-TrainingSet-Spectralis/    "spectralis" -> client spectralis
      RETOUCH-TrainingSet-Topcon/        "topcon"     -> client topcon

(the vendor folders may also sit one level deeper, e.g. ``data_dir/RETOUCH_train/...``). Volumes
are read by the strict MetaImage reader :mod:`fedmix_jax.data.real.metaimage` (``.raw``, ``.zraw``,
``.mha``; header, data file and sizes validated before anything is read; SimpleITK only writes the
fixture). A volume of ITK size (X, Y, Z) is the array [Z, Y, X]: Z B-scans
of Y (depth) x X (A-scans) pixels. Typical sizes: Cirrus 512 x 1024 x 128, Spectralis
512 x 496 x 49, Topcon 512 x 885 x 128 (or x 650).

Preprocessing: each B-scan is resized to ``image_size`` x ``image_size`` (bilinear, antialiased;
labels nearest). Intensities: uint8 volumes are kept; any other type (Spectralis is uint16) is
scaled per volume linearly from its [0.5, 99.5] percentile range to [0, 255] and clipped. Masks are
one-hot per class (``mask`` [S, S, 3]); the image label of a class is its presence in the resized
mask (so label, mask and box always agree); boxes are drawn per class from the resized mask with
the random 1-9 px margins (``box_mode``), of the whole B-scan, not the train-time crop.
``drop_empty_slices``: B-scans without fluid are not written (metadata ``dropped_empty``).

Splits are **by volume** (a volume's B-scans never straddle splits): the volume is the split group
of :func:`fedmix_jax.data.real.splits.assign_splits`, seeded and independent of file order. With the
default ``test_fraction=0.2`` that is 5 test volumes for each vendor of the full training set (as
the paper), then ``val_fraction`` of the rest for validation.

Bad input (``on_bad_input``; ``'skip'`` skips the whole volume and lists it in the metadata):
a volume folder without ``reference.mhd`` (missing reference volume) or without ``oct.mhd``; an
unreadable header or data file; OCT and reference volumes whose sizes differ; reference labels
outside 0-3 (or not integers); a volume that is not 3D.

Fixture (tests and build timing)::

    python -m fedmix_jax.data.real.retouch_fixture --out /tmp/retouch_fake --volumes 3    # tiny
    python -m fedmix_jax.data.real.retouch_fixture --out /tmp/retouch_big --volumes 2 --realistic
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
from fedmix_jax.data.real import layouts as dataset_layouts
from fedmix_jax.data.real import metaimage
from fedmix_jax.data.real.errors import BadInputError, BadInputPolicy
from fedmix_jax.data.real.scanning import Layout, Sample, Scan, normalized_name
from fedmix_jax.data.real.splits import stable_int

CLASS_NAMES = ("irf", "srf", "ped")
CLIENTS = ("cirrus", "topcon", "spectralis")          # the reference's order
LEVELS = ("image", "box", "pixel")                     # the paper's setting [I, B, L]
_VENDOR_TOKENS = {"cirrus": ("cirrus",), "topcon": ("topcon",),
                  "spectralis": ("spectralis", "heidelberg")}
_OCT_NAMES = ("oct.mhd", "oct.mha")
_REF_NAMES = ("reference.mhd", "reference.mha")
NUM_LABELS = len(CLASS_NAMES)


def import_sitk():
    try:
        import SimpleITK as sitk
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("RETOUCH volumes (.mhd/.raw) are read with SimpleITK: pip install "
                          "SimpleITK (or pip install 'fedmix_jax[retouch]')") from e
    return sitk


def read_volume_size(path: str) -> tuple[int, ...]:
    """The numpy shape [Z, Y, X] of a MetaImage volume, from its validated header (and the size
    of its data file; :func:`fedmix_jax.data.real.metaimage.read_header`)."""
    return metaimage.read_header(path).shape


def read_volume(path: str) -> np.ndarray:
    """A MetaImage volume as a numpy array [Z, Y, X] (its stored dtype), validated and finite."""
    return metaimage.read_volume(path)


def _fmt(shape) -> str:
    return " x ".join(str(v) for v in shape)


# ----------------------------------------------------------------------------------------------
# Layout


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
            for e in sorted(os.listdir(root)):
                p = os.path.join(root, e)
                if e.startswith(".") or not os.path.isdir(p):
                    continue
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
            for e in sorted(os.listdir(data_dir)):
                p = os.path.join(data_dir, e)
                if os.path.isdir(p) and not e.startswith("."):
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
        samples: list[Sample] = []
        for client in CLIENTS:
            if client in vendors:
                samples += self._scan_vendor(client, vendors[client], policy, warnings)
        clients = [c for c in CLIENTS if any(s.client == c for s in samples)]
        if not clients:
            raise self.not_found(f"no usable volume (a folder with oct.mhd and reference.mhd) in "
                                 f"{', '.join(vendors.values())}")
        return Scan(samples, clients, warnings)

    def _scan_vendor(self, client, vdir, policy, warnings):
        samples = []
        for vol in sorted(os.listdir(vdir)):
            vpath = os.path.join(vdir, vol)
            if vol.startswith(".") or not os.path.isdir(vpath):
                continue
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
                shape = read_volume_size(oct_path)
                ref_shape = read_volume_size(ref_path)
                if len(shape) != 3:
                    raise BadInputError(f"{oct_path} is not a 3D volume (size {_fmt(shape)})",
                                        oct_path)
                if shape != ref_shape:
                    raise BadInputError(
                        f"volume and label shapes differ in {client}/{vol}: oct {_fmt(shape)} vs "
                        f"reference {_fmt(ref_shape)} ([B-scans, depth, width])", ref_path)
            except BadInputError as e:
                policy(e)
                continue
            for z in range(shape[0]):
                samples.append(Sample(
                    id=f"{client}/{vol}/{z:03d}", client=client, stem=f"{vol}_{z:03d}",
                    image_path=oct_path, mask_paths=[ref_path], group=f"{client}/{vol}"))
        return samples


RETOUCH_LAYOUT = Retouch()


# ----------------------------------------------------------------------------------------------
# Decoding a volume


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
    """Read, check and resize one volume and its labels.

    Returns ``(images uint8 [Z, S, S, channels], labels uint8 [Z, S, S] in 0..3, (rows, cols))``;
    raises :class:`BadInputError` naming the volume for shapes that differ or labels outside 0-3.
    """
    vol = read_volume(oct_path)
    ref = read_volume(ref_path)
    name = name or os.path.dirname(oct_path)
    if vol.ndim != 3:
        raise BadInputError(f"{oct_path} is not a 3D volume (shape {_fmt(vol.shape)})", oct_path)
    if vol.shape != ref.shape:
        raise BadInputError(f"volume and label shapes differ in {name}: oct {_fmt(vol.shape)} vs "
                            f"reference {_fmt(ref.shape)} ([B-scans, depth, width])", ref_path)
    vals = np.unique(ref)
    bad = vals[(vals < 0) | (vals > NUM_LABELS) | (vals != np.round(vals))]
    if bad.size:
        raise BadInputError(
            f"labels outside 0-3 in {ref_path} ({name}): values {bad[:8].tolist()}; RETOUCH "
            "labels are 0 background, 1 IRF, 2 SRF, 3 PED", ref_path)
    if vol.dtype.kind == "c" or vol.dtype == bool:
        raise BadInputError(f"{oct_path}: unsupported voxel type {vol.dtype}", oct_path)
    u8 = _to_uint8(vol)
    ref = ref.astype(np.uint8)
    z, h, w = vol.shape
    images = np.empty((z, size, size), np.uint8)
    labels = np.empty((z, size, size), np.uint8)
    for i in range(z):
        images[i] = np.asarray(Image.fromarray(u8[i], "L").resize((size, size), Image.BILINEAR))
        labels[i] = np.asarray(Image.fromarray(ref[i], "L").resize((size, size), Image.NEAREST))
    images = np.repeat(images[..., None], int(channels), axis=-1)
    return images, labels, (h, w)


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
        "level": np.int32(s.level),
        "client": s.client,
        "client_index": np.int32(cindex[s.client]),
        "id": s.id,
        "stem": s.stem,
        "category": "",
        "malignant": np.int32(-1),
        "image_path": os.path.relpath(s.image_path, data_dir),
        "orig_size": np.array(orig_hw, np.int32),
        "volume": volume,
        "slice": np.int32(index),
    }


# ----------------------------------------------------------------------------------------------
# TFDS builder


class RetouchFedmix(dataset_builders.FedMixBuilder):
    """RETOUCH training set: one client per vendor, B-scans as samples, 3 classes (IRF/SRF/PED).

    Features are those of the other builders (see :mod:`.builders`) with K = 3, plus
    ``box_class`` int32 [nb] (the class of each row of ``box_coords``), ``volume`` (text,
    ``<client>/<volume folder>``) and ``slice`` (int32, the B-scan index in its volume).
    """

    LAYOUT = RETOUCH_LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()
    code_path = epath.Path(__file__)
    DROPS_EMPTY_SLICES = True

    def _info(self) -> tfds.core.DatasetInfo:
        info = super()._info()
        feats = dict(info.features)
        feats["box_class"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        feats["volume"] = tfds.features.Text()
        feats["slice"] = tfds.features.Tensor(shape=(), dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self, description=f"{self.LAYOUT.title}, for FedMix (fedmix_jax).",
            features=tfds.features.FeaturesDict(feats),
            homepage="https://retouch.grand-challenge.org", disable_shuffling=True,
            metadata=tfds.core.MetadataDict())

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
            got = cache[vol]
            if isinstance(got, BadInputError):
                continue
            images, labels, hw = got
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


def register() -> None:
    """Make ``--config.data.name=retouch`` known to the shared loader (idempotent)."""
    dataset_layouts.LAYOUTS.setdefault("retouch", RETOUCH_LAYOUT)
    dataset_builders.BUILDERS.setdefault("retouch", RetouchFedmix)


register()

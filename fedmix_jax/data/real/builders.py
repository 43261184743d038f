"""TensorFlow-free TFDS builders (``array_record``), one per layout (:data:`BUILDERS`: config
``name`` -> builder; RETOUCH's added by the package), their options (:class:`FedMixConfig`, named by
them: :func:`config_name`, :func:`make_config`) and their records (:func:`features`,
:func:`process_sample`). Details: docs/data.md ("The cache", "The records").
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import time

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from fedmix_jax.data.boxes import (box_mask, boxes_from_mask, check_box_mode, sample_rng,
                                   scale_boxes)
from fedmix_jax.data.real.breast_us import BreastUS
from fedmix_jax.data.real.errors import BadInputError, BadInputPolicy, log
from fedmix_jax.data.real.folders import Folders
from fedmix_jax.data.real.ham10000 import HAM10000
from fedmix_jax.data.real.imaging import load_image, load_mask, resize_mask
from fedmix_jax.data.real.scanning import Layout, Sample, drop_undecodable, source_fingerprint
from fedmix_jax.data.real.splits import SPLITS, assign_splits, rank_in_client, stable_int

ARRAY_RECORD = "array_record"
BOX_MARGIN = (1, 9)
_ENCODING = tfds.features.Encoding.ZLIB


def features(s: int, c: int, k: int, **extra) -> tfds.features.FeaturesDict:
    """The features of a record: S x S images, ``c`` channels, ``k`` classes, then ``extra``."""

    def u8(shape):
        return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=_ENCODING)

    return tfds.features.FeaturesDict({
        "image": u8((s, s, c)),
        "mask": u8((s, s, k)),
        "boxes": u8((s, s, k)),
        "box_coords": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
        "label": tfds.features.Tensor(shape=(k,), dtype=np.uint8),
        "has_mask": tfds.features.Tensor(shape=(), dtype=np.bool_),
        "level": tfds.features.Tensor(shape=(), dtype=np.int32),
        "client": tfds.features.Text(),
        "client_index": tfds.features.Tensor(shape=(), dtype=np.int32),
        "id": tfds.features.Text(),
        "stem": tfds.features.Text(),
        "category": tfds.features.Text(),
        "malignant": tfds.features.Tensor(shape=(), dtype=np.int32),
        "image_path": tfds.features.Text(),
        "orig_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
        **extra,
    })


def process_sample(s: Sample, size: int, channels: int, seed: int, data_dir: str,
                   cindex: dict, box_mode: str = "component"):
    """Decode one sample -> ``(example, label_disagrees_with_mask)``, or the
    :class:`BadInputError` describing why it is unusable (returned, not raised). Boxes come from
    ``s.boxes`` (scaled to S, rounded outwards), else from the resized mask (seeded margins)."""
    try:
        image, (h, w) = load_image(s.image_path, size, channels)
        masks = [load_mask(mp, (h, w), s.image_path) for mp in s.mask_paths]
        full = np.logical_or.reduce(masks) if masks else None
        has_mask = full is not None
        mask = resize_mask(full, size) if has_mask else np.zeros((size, size), bool)
        if s.boxes is not None:
            b = np.asarray(s.boxes, np.int64).reshape(-1, 4)
            outside = (b[:, 2] >= w) | (b[:, 3] >= h)
            if outside.any():
                src = s.boxes_source.split(" line ")[0]
                raise BadInputError(
                    f"box {b[outside][0].tolist()} for {s.image_path} lies outside the "
                    f"{w}x{h} image ({s.boxes_source})", src or s.image_path)
            boxes = scale_boxes(b, (h, w), (size, size))
        elif has_mask:
            rng = sample_rng(seed, stable_int("boxes", s.id))
            boxes = boxes_from_mask(mask, rng, margin=BOX_MARGIN, box_mode=box_mode)
        else:
            boxes = np.zeros((0, 4), np.int64)
        present = bool(full.any()) if has_mask else None
        label = int(s.label) if s.label is not None else int(bool(present))
        disagree = present is not None and s.label is not None and bool(s.label) != present
    except BadInputError as e:
        return e
    example = {
        "image": image,
        "mask": mask[..., None].astype(np.uint8),
        "boxes": box_mask(boxes, size, size)[..., None].astype(np.uint8),
        "box_coords": np.asarray(boxes, np.int32).reshape(-1, 4),
        "label": np.array([label], np.uint8),
        "has_mask": bool(has_mask),
        **sample_fields(s, cindex, data_dir, (h, w)),
    }
    return example, bool(disagree)


def sample_fields(s: Sample, cindex: dict, data_dir: str, orig_hw) -> dict:
    """The fields of a record that describe its sample (all but the pixels, boxes and label)."""
    return {"level": np.int32(s.level), "client": s.client,
            "client_index": np.int32(cindex[s.client]), "id": s.id, "stem": s.stem,
            "category": s.category, "malignant": np.int32(s.malignant),
            "image_path": os.path.relpath(s.image_path, data_dir),
            "orig_size": np.array(orig_hw, np.int32)}


@dataclasses.dataclass(eq=False)
class FedMixConfig(tfds.core.BuilderConfig):
    """Preprocessing and split options, named by them; build with :func:`make_config`."""

    image_size: int = 256
    channels: int = 1
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    on_bad_input: str = "fail"
    tag: str = ""
    box_mode: str = "component"
    drop_empty_slices: bool = False


#: The options of :class:`FedMixConfig` (its own fields but ``tag``), as the metadata records them.
OPTIONS = ("image_size", "channels", "seed", "test_fraction", "val_fraction", "on_bad_input",
           "box_mode", "drop_empty_slices")
_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FedMixConfig)
                    if f.name in OPTIONS + ("tag",)}


def _pct(f: float) -> str:
    return f"{100 * float(f):g}".replace(".", "p")


def config_name(**options) -> str:
    """The name of the config with ``options`` (:class:`FedMixConfig`'s fields but ``name``;
    defaults as there), which encodes every option: e.g. ``gray256_seed0_test20_val10`` (``rgb``
    for 3 channels, ``_skip``, ``_enclosing``, ``_dropempty``, ``_<tag>``)."""
    o = {**_CONFIG_DEFAULTS, **options}
    name = (f"{'gray' if int(o['channels']) == 1 else 'rgb'}{int(o['image_size'])}"
            f"_seed{int(o['seed'])}_test{_pct(o['test_fraction'])}_val{_pct(o['val_fraction'])}")
    suffixes = (str(o["on_bad_input"]).lower() == "skip" and "_skip",
                str(o["box_mode"]).lower() == "enclosing" and "_enclosing",
                bool(o["drop_empty_slices"]) and "_dropempty", bool(o["tag"]) and f"_{o['tag']}")
    return name + "".join(s for s in suffixes if s)


def new_config(**options) -> FedMixConfig:
    """A :class:`FedMixConfig` with ``options`` (:func:`config_name`'s arguments), named by them."""
    o = {**_CONFIG_DEFAULTS, **options}
    typed = {k: type(_CONFIG_DEFAULTS[k])(v) for k, v in o.items()}   # the fields' types
    s = typed["image_size"]
    return FedMixConfig(
        name=config_name(**o),
        description=(f"{'grayscale' if typed['channels'] == 1 else 'RGB'} {s}x{s}, split "
                     f"seed {o['seed']}, test {o['test_fraction']}, val {o['val_fraction']} of "
                     f"train, on_bad_input={o['on_bad_input']}, box_mode={o['box_mode']}"
                     + (", slices without foreground dropped" if o["drop_empty_slices"] else "")),
        **typed)


def built_splits(cfg) -> tuple[str, ...]:
    """The splits a config writes: ``train``, ``validation``/``test`` if their fraction is > 0."""
    return tuple(sp for sp, f in zip(SPLITS, (1, cfg.val_fraction, cfg.test_fraction)) if f > 0)


# TFDS warns "Using custom data configuration" for each config not predefined: ours, by design.
logging.getLogger("absl").addFilter(
    lambda record: not str(record.msg).startswith("Using custom data configuration"))


class FedMixBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared implementation; subclasses set ``LAYOUT``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [new_config(image_size=s, channels=c) for s, c in ((256, 1), (64, 1),
                                                                         (256, 3))]
    LAYOUT: Layout
    DROPS_EMPTY_SLICES = False   # whether it honours drop_empty_slices (RETOUCH)
    # TFDS would find the source file through the optional ``importlib_resources`` backport.
    code_path = epath.Path(__file__)
    HOMEPAGE = "https://arxiv.org/abs/2205.01840"

    def _extra_features(self) -> dict:
        return {}

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        s, c, k = cfg.image_size, cfg.channels, len(self.LAYOUT.class_names)
        return tfds.core.DatasetInfo(
            builder=self, description=f"{self.LAYOUT.title}, for FedMix (fedmix_jax).",
            features=features(s, c, k, **self._extra_features()), homepage=self.HOMEPAGE,
            disable_shuffling=True, metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        try:
            data_dir = os.fspath(dl_manager.manual_dir)
        except (AssertionError, ValueError) as e:
            raise self.LAYOUT.not_found(str(e).splitlines()[0]) from e
        t0 = time.time()
        policy = BadInputPolicy(cfg.on_bad_input)
        scan = drop_undecodable(self.LAYOUT.scan(data_dir, policy), policy, data_dir)
        for w in scan.warnings:
            log.warning("%s", w)
        items = ((s.id, s.client, s.group, bool(s.mask_paths)) for s in scan.samples)
        split_of = assign_splits(items, cfg.seed, cfg.test_fraction, cfg.val_fraction)
        cindex = {c: i for i, c in enumerate(scan.clients)}
        per_split = {sp: sorted((s for s in scan.samples if split_of[s.id] == sp),
                                key=lambda s: (cindex[s.client],
                                               rank_in_client(s.id, s.client, cfg.seed), s.id))
                     for sp in SPLITS}
        found = collections.Counter(s.client for s in scan.samples)
        meta = {
            "layout": self.LAYOUT.name,
            "clients": list(scan.clients),
            "class_names": list(self.LAYOUT.class_names),
            "counts": {},
            "found": {c: int(found[c]) for c in scan.clients},
            "skipped": policy.skipped,
            "warnings": scan.warnings,
            "source_dir": data_dir,
            "source_fingerprint": source_fingerprint(data_dir),
            "config": {f: getattr(cfg, f) for f in OPTIONS},
            "box_margin": list(BOX_MARGIN),
            "scan_seconds": round(time.time() - t0, 3),
        }
        self.info.metadata["fedmix"] = meta
        self._build_state = (data_dir, policy, scan, cindex)
        return {sp: self._generate_examples(per_split[sp], sp) for sp in built_splits(cfg)}

    def _generate_examples(self, samples: list[Sample], split: str):
        data_dir, policy, scan, cindex = self._build_state
        cfg = self.builder_config
        meta = self.info.metadata["fedmix"]
        counts = [0] * len(scan.clients)
        disagree = 0
        params = (cfg.image_size, cfg.channels, cfg.seed, data_dir, cindex, cfg.box_mode)
        for s in samples:   # serial: see docs/data.md
            res = process_sample(s, *params)
            if isinstance(res, BadInputError):
                policy(res)
                continue
            example, dis = res
            disagree += dis
            counts[cindex[s.client]] += 1
            yield s.id, example
        meta["counts"][split] = dict(zip(scan.clients, counts))
        if disagree:
            meta["warnings"].append(f"{split}: {disagree} image label(s) disagree with the mask "
                                    "(the label was kept)")
        for c, n in zip(scan.clients, counts):
            if n == 0:
                raise BadInputError(
                    f"client {c!r} is left with no {split} samples: {meta['found'][c]} sample(s) "
                    f"of it were found under {data_dir} and split before decoding, and "
                    f"{len(policy.skipped)} bad file(s) have been skipped so far; a client needs "
                    "at least 3 usable samples with masks (whole lesion groups for HAM10000) to "
                    "fill train/validation/test", data_dir)


class Ham10000Fedmix(FedMixBuilder):
    """HAM10000 with the Tschandl lesion masks; clients = the CSV's ``dataset`` column."""

    LAYOUT = HAM10000()
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()


class BreastUsFedmix(FedMixBuilder):
    """Breast ultrasound: BUSI, BUSIS and UDIAT Dataset B, one client each."""

    LAYOUT = BreastUS()
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()


class FolderFederation(FedMixBuilder):
    """A hospital's own data: one folder per client with images/, masks/ and optional CSVs."""

    LAYOUT = Folders()
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()


BUILDERS = {"ham10000": Ham10000Fedmix, "breast": BreastUsFedmix, "folders": FolderFederation}


def make_config(dataset: str, image_size: int = 256, channels: int = 1, seed: int = 0,
                test_fraction: float = 0.2, val_fraction: float = 0.1, on_bad_input: str = "fail",
                data_dir: str | None = None, box_mode: str = "component",
                drop_empty_slices: bool = False) -> FedMixConfig:
    """The builder config for these options (a predefined one when the name matches); raises
    ``ValueError`` for a bad option. ``data_dir`` keys the cache of ``dataset='folders'``."""
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(BUILDERS)} "
                         "(--config.data.name)")
    if int(channels) not in (1, 3):
        raise ValueError(f"--config.data.channels must be 1 or 3, got {channels}")
    if int(image_size) < 8:
        raise ValueError(f"--config.data.image_size must be >= 8, got {image_size}")
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"--config.data.{name} must be in [0, 1), got {f}")
    on_bad_input = str(on_bad_input).strip().lower()
    if on_bad_input not in ("fail", "skip"):
        raise ValueError(f"--config.data.on_bad_input must be 'fail' or 'skip', got "
                         f"{on_bad_input!r}")
    box_mode = check_box_mode(box_mode)
    if drop_empty_slices and not BUILDERS[dataset].DROPS_EMPTY_SLICES:
        raise ValueError(f"--config.data.drop_empty_slices=True is a RETOUCH option; the "
                         f"{dataset!r} loader keeps every image (set it to False)")
    tag = ""
    if dataset == "folders" and data_dir:   # a short hash of the absolute data_dir keys its cache
        p = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
        tag = "d" + hashlib.sha256(p.encode("utf-8")).hexdigest()[:10]
    options = dict(image_size=image_size, channels=channels, seed=seed, test_fraction=test_fraction,
                   val_fraction=val_fraction, on_bad_input=on_bad_input, box_mode=box_mode,
                   drop_empty_slices=drop_empty_slices, tag=tag)
    predefined = BUILDERS[dataset].builder_configs.get(config_name(**options))
    return predefined if predefined is not None else new_config(**options)

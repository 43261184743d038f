"""What every layout shares: the :class:`Sample` / :class:`Scan` records (nothing decoded),
the :class:`Layout` base class, walking a download's files (:func:`walk_data_files`,
:func:`source_fingerprint`), and pairing ``<stem>.*`` images with ``<stem>.*`` /
``<stem>_mask.*`` masks (:func:`pair_images_masks`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections import defaultdict

import numpy as np

from fedmix_jax.data.real.errors import (DATA_DIR_FLAG, BadInputError, BadInputPolicy,
                                         DatasetNotFoundError, log)
from fedmix_jax.data.real.files import Irregular, walk_files
from fedmix_jax.data.real.imaging import IMAGE_EXTENSIONS, is_image_file
from fedmix_jax.data.real.tables import HAM_CSV_NAMES, TABLE_EXTENSIONS


@dataclasses.dataclass
class Sample:
    """One sample as found on disk (nothing decoded yet)."""

    id: str                      # unique within the dataset
    client: str
    stem: str
    image_path: str
    mask_paths: list[str]        # merged by logical OR; [] = no mask
    group: str                   # split unit (never straddles splits)
    label: int | None = None     # image label (lesion present); None = derive from the mask
    level: int = -1              # per-sample level (folders' levels.csv); -1 = the config's
    boxes: np.ndarray | None = None   # user boxes [nb, 4] in original pixels; None = from mask
    boxes_source: str = ""       # "boxes.csv line N, ..." for error messages
    category: str = ""           # HAM: dx; BUSI: benign/malignant/normal
    malignant: int = -1          # 1 malignant, 0 benign/normal, -1 unknown


@dataclasses.dataclass
class Scan:
    samples: list[Sample]
    clients: list[str]
    warnings: list[str]


def normalized_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def walk_data_files(root: str) -> list[tuple[str, str]]:
    """(dirpath, filename) for every non-hidden file under root, deterministic order
    (:func:`~fedmix_jax.data.real.files.walk_files`). An entry that is not a regular file is
    listed only when named like an image or a table (reading it later is the bad-input error
    that names it); any other is logged and ignored."""
    irregular: list[Irregular] = []
    out = list(walk_files(root, irregular, keep_irregular=_data_name))
    for entry in irregular:
        log.warning("ignored %s: it is %s", entry.path, entry.what)
    return out


def _data_name(name: str) -> bool:
    """Named like a file some layout reads (an image or a table)."""
    return is_image_file(name) or os.path.splitext(name)[1].lower() in TABLE_EXTENSIONS \
        or name.lower() in HAM_CSV_NAMES


def source_fingerprint(data_dir: str) -> str:
    """``"<count>:<20 hex digits>"``, a hash of the relative paths and sizes of the image,
    volume and CSV files under ``data_dir`` (a load whose fingerprint changed rebuilds)."""
    h = hashlib.sha256()
    n = 0
    exts = set(IMAGE_EXTENSIONS) | {".csv", ".tab", ".tsv", ".mhd", ".mha", ".raw", ".zraw"}
    for dirpath, f in walk_data_files(data_dir):
        if os.path.splitext(f)[1].lower() in exts:
            p = os.path.join(dirpath, f)
            try:
                size = os.path.getsize(p)
            except OSError:
                size = -1
            h.update(f"{os.path.relpath(p, data_dir)}\x1f{size}\n".encode("utf-8", "replace"))
            n += 1
    return f"{n}:{h.hexdigest()[:20]}"


class Layout:
    """Base class: a published file layout; ``scan`` returns its :class:`Scan`."""

    name = ""                     # config name ('ham10000', 'breast', 'folders')
    title = ""
    tree = ""
    download = ""
    default_clients: tuple[str, ...] = ()
    default_levels: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ("lesion",)

    def instructions(self) -> str:
        return (f"Expected layout of {DATA_DIR_FLAG} for {self.title}:\n{self.tree.rstrip()}\n"
                f"Where to get it: {self.download}")

    def not_found(self, problem: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.title} data not found: {problem}\nSet {DATA_DIR_FLAG} to the folder holding "
            f"the manually downloaded files (nothing is downloaded at run time).\n"
            f"{self.instructions()}")

    def check_data_dir(self, data_dir) -> str:
        if data_dir is None or str(data_dir).strip() == "":
            raise self.not_found(f"{DATA_DIR_FLAG} is not set")
        data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
        if not os.path.exists(data_dir):
            raise self.not_found(f"{DATA_DIR_FLAG}={data_dir!r} does not exist")
        if not os.path.isdir(data_dir):
            raise self.not_found(f"{DATA_DIR_FLAG}={data_dir!r} is not a directory")
        try:
            entries = os.listdir(data_dir)
        except OSError as e:
            raise self.not_found(f"{DATA_DIR_FLAG}={data_dir!r} cannot be listed "
                                 f"({type(e).__name__}: {e.strerror or e})") from None
        if not any(not e.startswith(".") for e in entries):
            raise self.not_found(f"{DATA_DIR_FLAG}={data_dir!r} is empty")
        return data_dir

    def scan(self, data_dir: str, policy: BadInputPolicy) -> Scan:  # pragma: no cover
        raise NotImplementedError


def subdirs(root: str) -> list[tuple[str, str]]:
    """``(name, path)`` of the non-hidden folders in ``root``, sorted by name."""
    return [(e, os.path.join(root, e)) for e in sorted(os.listdir(root))
            if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]


def find_subdir(root: str, names: tuple[str, ...]) -> str | None:
    """The folder of ``root`` matching the first of ``names`` (ignoring case and punctuation)."""
    entries = {normalized_name(e): p for e, p in subdirs(root)}
    return next((entries[normalized_name(n)] for n in names if normalized_name(n) in entries),
                None)


def image_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, f in walk_data_files(root) if is_image_file(f)]


def pair_images_masks(client: str, image_dir: str, mask_dir: str | None,
                      policy: BadInputPolicy) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Stems -> image path, stems -> mask paths (``<stem>.*`` or ``<stem>_mask.*``)."""
    images: dict[str, list[str]] = defaultdict(list)
    for p in image_files(image_dir):
        images[os.path.splitext(os.path.basename(p))[0]].append(p)
    out_images = unique_paths("image id", images, policy, f"{client}/")
    masks: dict[str, list[str]] = defaultdict(list)
    if mask_dir is not None:
        for p in image_files(mask_dir):
            stem = os.path.splitext(os.path.basename(p))[0]
            base = stem
            if stem not in out_images:
                for suffix in ("_mask", "_gt", "_segmentation"):
                    if stem.lower().endswith(suffix) and stem[: -len(suffix)] in out_images:
                        base = stem[: -len(suffix)]
                        break
            if base not in out_images:
                policy(BadInputError(f"mask with no image: {p} (no image '{stem}.*' in "
                                     f"{image_dir})", p))
                continue
            masks[base].append(p)
    return out_images, {stem: [p] for stem, p in
                        unique_paths("mask for", masks, policy, f"{client}/").items()}


def unique_paths(kind: str, paths_by_key: dict[str, list[str]], policy: BadInputPolicy,
                 prefix: str = "") -> dict[str, str]:
    """``{key: its first path}``; a key with several paths is reported through ``policy``."""
    out = {}
    for key, paths in paths_by_key.items():
        if len(paths) > 1:
            policy(BadInputError(
                f"duplicate {kind} {prefix}{key}: {paths[0]} and {paths[1]}"
                f"{f' (+{len(paths) - 2} more)' if len(paths) > 2 else ''}; remove the copies "
                "(or use on_bad_input='skip' to keep the first)", paths[1]))
        out[key] = paths[0]
    return out

"""Scanners for the published layouts: which files make up which samples of which client.

A scanner lists and cross-checks files (names, CSVs, pairing of images and masks) without decoding
any pixels; decoding happens in the builder. It returns a :class:`Scan`: the :class:`Sample` s, the
clients in their canonical order and human-readable warnings (also stored in the cache metadata).
Structural problems go through the ``on_bad_input`` policy (see :mod:`.errors`): duplicate ids,
images without masks, masks without images, bad CSV rows. A missing or empty ``data_dir`` or a
missing top-level part of the layout raises :class:`DatasetNotFoundError`.

Layouts (``data_dir`` is ``--config.data.data_dir``, the folder you extracted the download into):

HAM10000 (``name='ham10000'``) -- see ``HAM10000.tree`` below. Images are found by name
(``ISIC_XXXXXXX.jpg``) anywhere under ``data_dir`` (so ``HAM10000_images_part_1/`` and ``_part_2/``
both work, as does one merged folder), masks by name (``ISIC_XXXXXXX_segmentation.png``) anywhere
under ``data_dir`` (e.g. ``HAM10000_segmentations_lesion_tschandl/``; symlinked folders are
followed). Clients come from the CSV's ``dataset`` column. Each image's group for splitting is its
``lesion_id``. The ``dx`` column gives ``category`` (the diagnosis) and ``malignant``
(nv/bkl/df/vasc -> 0, bcc/akiec/mel -> 1, anything else -> -1 with a warning). The image label is
lesion presence (from the mask).

Breast ultrasound (``name='breast'``): one sub-folder per source, matched case-insensitively:
``Dataset_BUSI_with_GT`` or ``BUSI`` -> client ``busi``; ``BUSIS`` -> ``busis``; ``UDIAT``,
``DatasetB`` or ``Dataset_B`` -> ``udiat``. BUSI: ``{benign,malignant,normal}/<name> (k).png`` with
``<name> (k)_mask.png`` and optional ``_mask_1.png``, ``_mask_2.png``... all merged by logical OR; the
image label is 0 for ``normal`` and 1 otherwise (a disagreement with the mask is reported as a
warning). UDIAT / BUSIS: an image folder (``original``, ``Original`` or ``images``) and a mask folder
(``GT`` or ``masks``) with matching stems (mask ``<stem>.*`` or ``<stem>_mask.*``); the image label
is lesion presence from the mask.

Folders (``name='folders'``), the format to prepare for your own data::

    data_dir/
      <client>/                 one folder per client (any name; clients are sorted by name)
        images/<stem>.png|jpg|jpeg|bmp|tif|tiff
        masks/<stem>.png        or <stem>_mask.png (any image type); binary {0,1} or {0,255}
        labels.csv              optional: stem,label       (label: 0/1, yes/no, present/absent,
                                                            normal (0), lesion (1))
        boxes.csv               optional: stem,x_min,y_min,x_max,y_max  (inclusive pixel
                                          coordinates of the original image; several rows per stem)
        levels.csv              optional: stem,level       (pixel|box|image|none; per-sample level,
                                          overrides the config's level for that client)

CSV headers are optional (a first row starting with ``stem`` is a header); a stem may be given
with its extension. Every image needs a mask, except samples whose ``levels.csv`` level is ``box``
(then it needs ``boxes.csv`` rows), ``image`` (then it needs a ``labels.csv`` label) or ``none``;
those mask-less samples are always put in the training split (validation/test need masks).
Boxes from ``boxes.csv`` replace the ones otherwise derived from the mask. A ``labels.csv`` label
that disagrees with a mask is kept and reported as a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import re
from collections import defaultdict

import numpy as np

from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, level_from_name
from fedmix_jax.data.real.errors import (DATA_DIR_FLAG, BadInputError, BadInputPolicy,
                                         DatasetNotFoundError, log)
from fedmix_jax.data.real.files import Irregular, open_regular, walk_files
from fedmix_jax.data.real.imaging import IMAGE_EXTENSIONS, is_image_file

# A CSV larger than this is refused (the HAM10000 metadata is 0.6 MB).
MAX_CSV_BYTES = 64 << 20
# Box coordinates must be below this (pixels); larger numbers are a broken row, not an image.
MAX_COORDINATE = 1 << 20
_TABLE_EXTENSIONS = (".csv", ".tsv", ".tab")


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


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _walk_files(root: str) -> list[tuple[str, str]]:
    """(dirpath, filename) for every non-hidden file under root, deterministic order.

    Symlinked folders are followed (each real folder once, so a link loop ends; links leading
    outside ``root`` are logged). Entries that are not regular files (FIFOs, sockets, devices,
    dangling links, link loops) are listed only when named like an image or a table (``.csv``,
    ``.tsv``, ``.tab``, HAM10000's metadata): they are never opened here, and reading them later
    (:func:`~fedmix_jax.data.real.files.open_regular`) is the bad-input error that names them.
    Any other such entry is logged and ignored.
    """
    irregular: list[Irregular] = []
    out = list(walk_files(root, irregular, keep_irregular=_data_name))
    for entry in irregular:
        log.warning("ignored %s: it is %s", entry.path, entry.what)
    return out


def _data_name(name: str) -> bool:
    """Named like a file some layout reads (an image or a table)."""
    return is_image_file(name) or os.path.splitext(name)[1].lower() in _TABLE_EXTENSIONS \
        or name.lower() in _HAM_CSV_NAMES


def source_fingerprint(data_dir: str) -> str:
    """A hash of the relative paths and sizes of the image and CSV files under ``data_dir``.

    Stored in the cache; a later load whose data_dir has a different fingerprint rebuilds.
    """
    h = hashlib.sha256()
    n = 0
    exts = set(IMAGE_EXTENSIONS) | {".csv", ".tab", ".tsv", ".mhd", ".mha", ".raw", ".zraw"}
    for dirpath, f in _walk_files(data_dir):
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
    """Base class: a published file layout (see module docstring)."""

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

    def default_levels_for(self, clients: list[str]) -> list[str]:
        if list(clients) == list(self.default_clients) and self.default_levels:
            return list(self.default_levels)
        return ["pixel"] * len(clients)

    def scan(self, data_dir: str, policy: BadInputPolicy) -> Scan:  # pragma: no cover
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# CSV helpers


def _read_rows(path: str) -> list[tuple[int, list[str]]]:
    """Non-empty, non-comment rows of a CSV/TSV file with their 1-based line numbers.

    The file must be a regular file of at most ``MAX_CSV_BYTES`` bytes of UTF-8 text (a BOM is
    allowed); anything else is a :class:`BadInputError` naming it.
    """
    with open_regular(path, "CSV file") as f:
        try:
            raw = f.read(MAX_CSV_BYTES + 1)
        except OSError as e:
            raise BadInputError(f"cannot read {path}: {type(e).__name__}: {e}", path) from e
    if len(raw) > MAX_CSV_BYTES:
        raise BadInputError(f"{path} is larger than {MAX_CSV_BYTES >> 20} MiB; not a CSV "
                            "table of this layout", path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadInputError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line "
                            f"{line}); save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)",
                            path) from None
    if "\x00" in text:
        raise BadInputError(f"{path} contains NUL bytes: not a text CSV file", path)
    first = text.split("\n", 1)[0]
    delim = "\t" if ("\t" in first and "," not in first) else ","
    rows = []
    try:
        for i, row in enumerate(csv.reader(text.splitlines(), delimiter=delim), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            rows.append((i, cells))
    except csv.Error as e:
        raise BadInputError(f"cannot parse {path}: {e}", path) from e
    return rows


def _read_table(path: str, columns: tuple[str, ...], policy: BadInputPolicy
                ) -> list[tuple[int, dict]]:
    """Rows as dicts over ``columns``; the header row is optional (first cell 'stem'). A row with
    too few cells is a bad row (``policy``: error, or a logged skip)."""
    rows = _read_rows(path)
    if not rows:
        return []
    first = [c.lower() for c in rows[0][1]]
    if first and first[0] == columns[0]:
        missing = [c for c in columns if c not in first]
        if missing:
            raise BadInputError(f"{path}: header {rows[0][1]} lacks column(s) {missing}; expected "
                                f"{','.join(columns)}", path)
        idx = [first.index(c) for c in columns]
        rows = rows[1:]
    else:
        idx = list(range(len(columns)))
    out = []
    for line, cells in rows:
        if len(cells) <= max(idx):
            policy(BadInputError(f"{path} line {line}: expected {len(columns)} columns "
                                 f"({','.join(columns)}), got {cells}", path))
            continue
        out.append((line, {c: cells[j] for c, j in zip(columns, idx)}))
    return out


# ----------------------------------------------------------------------------------------------
# HAM10000

HAM_CLIENTS = ("rosendahl", "vidir_modern", "vienna_dias", "vidir_molemax")
HAM_BENIGN = ("nv", "bkl", "df", "vasc")
HAM_MALIGNANT = ("bcc", "akiec", "mel")
_HAM_CSV_NAMES = ("ham10000_metadata.csv", "ham10000_metadata.tab", "ham10000_metadata.tsv",
                  "ham10000_metadata")
_HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dataset")


class HAM10000(Layout):
    name = "ham10000"
    title = "HAM10000 (with lesion masks)"
    tree = """\
    data_dir/
      HAM10000_metadata.csv          lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
      HAM10000_images_part_1/ISIC_0024306.jpg ...
      HAM10000_images_part_2/ISIC_0029306.jpg ...
      HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png ...
"""
    download = ("Harvard Dataverse, doi:10.7910/DVN/DBW86T (HAM10000_images_part_1.zip, "
                "HAM10000_images_part_2.zip, HAM10000_metadata, and "
                "HAM10000_segmentations_lesion_tschandl.zip); unzip all into data_dir")
    default_clients = HAM_CLIENTS
    default_levels = ("box", "box", "pixel", "box")

    def scan(self, data_dir, policy):
        data_dir = self.check_data_dir(data_dir)
        csv_paths, images, masks = [], defaultdict(list), defaultdict(list)
        for dirpath, f in _walk_files(data_dir):
            stem, ext = os.path.splitext(f)
            path = os.path.join(dirpath, f)
            if f.lower() in _HAM_CSV_NAMES:
                csv_paths.append(path)
            elif ext.lower() in IMAGE_EXTENSIONS:
                if stem.lower().endswith("_segmentation"):
                    masks[stem[: -len("_segmentation")]].append(path)
                elif stem.upper().startswith("ISIC_"):
                    images[stem].append(path)
        if not csv_paths:
            raise self.not_found(f"no HAM10000_metadata.csv under {data_dir}")
        if len(csv_paths) > 1:
            depth = sorted(csv_paths, key=lambda p: (p.count(os.sep), p))
            if depth[0].count(os.sep) == depth[1].count(os.sep):
                raise BadInputError(f"several metadata files under {data_dir}: {depth[0]} and "
                                    f"{depth[1]}; keep one", depth[1])
            csv_paths = depth[:1]
        csv_path = csv_paths[0]
        if not images:
            raise self.not_found(f"no ISIC_*.jpg images under {data_dir} (expected "
                                 "HAM10000_images_part_1/ and HAM10000_images_part_2/)")
        if not masks:
            raise self.not_found(f"no ISIC_*_segmentation.png masks under {data_dir} (expected "
                                 "HAM10000_segmentations_lesion_tschandl/)")

        def unique(kind, table):
            out = {}
            for key, paths in table.items():
                if len(paths) > 1:
                    policy(BadInputError(
                        f"duplicate {kind} id {key}: {paths[0]} and {paths[1]}"
                        f"{f' (+{len(paths) - 2} more)' if len(paths) > 2 else ''}; remove the "
                        "copies (or use on_bad_input='skip' to keep the first)", paths[1]))
                out[key] = paths[0]
            return out

        images, masks = unique("image", images), unique("mask", masks)

        rows = _read_rows(csv_path)
        if not rows:
            raise BadInputError(f"{csv_path} is empty", csv_path)
        header = [c.lower() for c in rows[0][1]]
        missing = [c for c in _HAM_COLUMNS if c not in header]
        if missing:
            raise BadInputError(f"{csv_path}: missing column(s) {missing} (header: {rows[0][1]})",
                                csv_path)
        col = {c: header.index(c) for c in _HAM_COLUMNS}
        warnings, samples, seen = [], [], {}
        unknown_dx = 0
        for line, cells in rows[1:]:
            if len(cells) < len(header):
                policy(BadInputError(f"{csv_path} line {line}: expected {len(header)} columns, got "
                                     f"{len(cells)}", csv_path))
                continue
            image_id, client = cells[col["image_id"]], cells[col["dataset"]]
            if not image_id or not client:
                policy(BadInputError(f"{csv_path} line {line}: empty image_id or dataset",
                                     csv_path))
                continue
            if image_id in seen:
                policy(BadInputError(f"duplicate image_id {image_id} in {csv_path} (lines "
                                     f"{seen[image_id]} and {line})", csv_path))
                continue
            seen[image_id] = line
            img = images.get(image_id)
            if img is None:
                policy(BadInputError(
                    f"image {image_id}.jpg listed in {csv_path} line {line} was not found under "
                    f"{data_dir} (expected in HAM10000_images_part_1/ or _part_2/)", csv_path))
                continue
            mask = masks.get(image_id)
            if mask is None:
                policy(BadInputError(
                    f"image with no mask: {img} (expected {image_id}_segmentation.png under "
                    f"{data_dir}, from HAM10000_segmentations_lesion_tschandl)", img))
                continue
            dx = cells[col["dx"]].lower()
            malignant = 1 if dx in HAM_MALIGNANT else 0 if dx in HAM_BENIGN else -1
            unknown_dx += malignant < 0
            samples.append(Sample(id=image_id, client=client, stem=image_id, image_path=img,
                                  mask_paths=[mask], group=cells[col["lesion_id"]] or image_id,
                                  category=dx, malignant=malignant))
        unlisted = len(set(images) - set(seen))
        if unlisted:
            warnings.append(f"{unlisted} ISIC_*.jpg image(s) under {data_dir} are not listed in "
                            f"{csv_path} and were not used")
        if unknown_dx:
            warnings.append(f"{unknown_dx} row(s) of {csv_path} have a dx outside "
                            f"{HAM_BENIGN + HAM_MALIGNANT}: malignant=-1")
        found = {s.client for s in samples}
        clients = [c for c in HAM_CLIENTS if c in found] + sorted(found - set(HAM_CLIENTS))
        return Scan(samples, clients, warnings)


# ----------------------------------------------------------------------------------------------
# Breast ultrasound

_BREAST_ALIASES = {
    "busi": ("Dataset_BUSI_with_GT", "BUSI"),
    "busis": ("BUSIS",),
    "udiat": ("UDIAT", "DatasetB", "Dataset_B", "BUS_Dataset_B", "UDIAT_Dataset_B"),
}
_IMAGE_DIRS = ("original", "images", "image", "imgs")
_MASK_DIRS = ("gt", "masks", "mask", "groundtruth", "ground_truth")
_BUSI_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


def _find_subdir(root: str, names: tuple[str, ...]) -> str | None:
    entries = {_norm(e): e for e in sorted(os.listdir(root))
               if os.path.isdir(os.path.join(root, e)) and not e.startswith(".")}
    for n in names:
        if _norm(n) in entries:
            return os.path.join(root, entries[_norm(n)])
    return None


def _image_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, f in _walk_files(root) if is_image_file(f)]


def _pair_images_masks(client: str, image_dir: str, mask_dir: str | None,
                       policy: BadInputPolicy) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Stems -> image path, stems -> mask paths (``<stem>.*`` or ``<stem>_mask.*``)."""
    images: dict[str, list[str]] = defaultdict(list)
    for p in _image_files(image_dir):
        images[os.path.splitext(os.path.basename(p))[0]].append(p)
    out_images = {}
    for stem, paths in images.items():
        if len(paths) > 1:
            policy(BadInputError(f"duplicate image id {client}/{stem}: {paths[0]} and {paths[1]}",
                                 paths[1]))
        out_images[stem] = paths[0]
    masks: dict[str, list[str]] = defaultdict(list)
    if mask_dir is not None:
        for p in _image_files(mask_dir):
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
    out_masks = {}
    for stem, paths in masks.items():
        if len(paths) > 1:
            policy(BadInputError(f"duplicate mask for {client}/{stem}: {paths[0]} and {paths[1]}",
                                 paths[1]))
        out_masks[stem] = paths[:1]
    return out_images, out_masks


class BreastUS(Layout):
    name = "breast"
    title = "Breast ultrasound (BUSI, BUSIS, UDIAT)"
    tree = """\
    data_dir/
      Dataset_BUSI_with_GT/         (or BUSI/)   -> client 'busi'
        benign/benign (1).png, benign (1)_mask.png, [benign (1)_mask_1.png ...]
        malignant/malignant (1).png, malignant (1)_mask.png
        normal/normal (1).png, normal (1)_mask.png
      BUSIS/                                     -> client 'busis'
        original/ (or Original/, images/)  case001.png ...
        GT/       (or masks/)              case001.png ...
      UDIAT/                        (or DatasetB/) -> client 'udiat'
        original/000001.png ...
        GT/000001.png ...
"""
    download = ("BUSI: Al-Dhabyani et al. 2020, https://scholar.cu.edu.eg/?q=afahmy/pages/dataset "
                "(Dataset_BUSI_with_GT.zip); BUSIS: Xian et al., http://cvprip.cs.usu.edu/busbench/ "
                "(on request); UDIAT Dataset B: Yap et al. 2017, "
                "http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php (on request)")
    default_clients = ("busi", "busis", "udiat")
    default_levels = ("image", "box", "pixel")

    def scan(self, data_dir, policy):
        data_dir = self.check_data_dir(data_dir)
        found = {c: _find_subdir(data_dir, a) for c, a in _BREAST_ALIASES.items()}
        found = {c: p for c, p in found.items() if p is not None}
        if not found:
            raise self.not_found(f"none of the folders {sum(_BREAST_ALIASES.values(), ())} in "
                                 f"{data_dir}")
        warnings = [f"no {c} folder ({' or '.join(_BREAST_ALIASES[c])}) in {data_dir}; client {c} "
                    "is absent" for c in _BREAST_ALIASES if c not in found]
        samples = []
        for client in self.default_clients:
            if client not in found:
                continue
            if client == "busi":
                samples += self._scan_busi(found[client], policy, warnings)
            else:
                samples += self._scan_pair(client, found[client], policy)
        clients = [c for c in self.default_clients if any(s.client == c for s in samples)]
        return Scan(samples, clients, warnings)

    def _scan_busi(self, root, policy, warnings):
        cats = {c: _find_subdir(root, (c,)) for c in ("benign", "malignant", "normal")}
        if not any(cats.values()):
            inner = _find_subdir(root, _BREAST_ALIASES["busi"])
            if inner is not None:
                return self._scan_busi(inner, policy, warnings)
            raise self.not_found(f"{root} has none of the folders benign/, malignant/, normal/")
        samples, seen = [], {}
        for cat, cdir in cats.items():
            if cdir is None:
                warnings.append(f"BUSI: no {cat}/ folder in {root}")
                continue
            images, masks = {}, defaultdict(list)
            for p in _image_files(cdir):
                stem = os.path.splitext(os.path.basename(p))[0]
                m = _BUSI_MASK.match(stem)
                if m:
                    masks[m.group("stem")].append(p)
                elif stem in images or stem in seen:
                    other = images.get(stem) or seen[stem]
                    policy(BadInputError(f"duplicate image id busi/{stem}: {other} and {p}", p))
                else:
                    images[stem] = p
            for stem, paths in masks.items():
                if stem not in images:
                    for p in paths:
                        policy(BadInputError(f"mask with no image: {p} (expected the image "
                                             f"'{stem}.png' next to it)", p))
            for stem, img in images.items():
                seen[stem] = img
                if stem not in masks:
                    policy(BadInputError(f"image with no mask: {img} (expected '{stem}_mask.png' "
                                         "next to it)", img))
                    continue
                samples.append(Sample(
                    id=f"busi/{stem}", client="busi", stem=stem, image_path=img,
                    mask_paths=sorted(masks[stem]), group=f"busi/{stem}",
                    label=0 if cat == "normal" else 1, category=cat,
                    malignant=1 if cat == "malignant" else 0))
        return samples

    def _scan_pair(self, client, root, policy):
        image_dir = _find_subdir(root, _IMAGE_DIRS)
        mask_dir = _find_subdir(root, _MASK_DIRS)
        if image_dir is None or mask_dir is None:
            raise self.not_found(f"{root} needs an image folder ({'/, '.join(_IMAGE_DIRS)}/) and "
                                 f"a mask folder ({'/, '.join(_MASK_DIRS)}/) for client {client}")
        images, masks = _pair_images_masks(client, image_dir, mask_dir, policy)
        samples = []
        for stem, img in sorted(images.items()):
            if stem not in masks:
                policy(BadInputError(f"image with no mask: {img} (expected {mask_dir}/{stem}.png)",
                                     img))
                continue
            samples.append(Sample(id=f"{client}/{stem}", client=client, stem=stem,
                                  image_path=img, mask_paths=masks[stem],
                                  group=f"{client}/{stem}"))
        return samples


# ----------------------------------------------------------------------------------------------
# Folders (a hospital's own data)

_POSITIVE = {"1", "true", "yes", "present", "positive", "abnormal", "lesion"}
_NEGATIVE = {"0", "false", "no", "absent", "negative", "normal", "none", "background", "healthy"}


class Folders(Layout):
    name = "folders"
    title = "Folder federation (one folder per client)"
    tree = """\
    data_dir/
      <client_a>/
        images/<stem>.png|jpg|bmp|tif    (PNG/JPG/BMP/TIFF)
        masks/<stem>.png                 (or <stem>_mask.png; binary {0,1} or {0,255})
        labels.csv   (optional)  stem,label                     label 0/1 or normal/lesion
        boxes.csv    (optional)  stem,x_min,y_min,x_max,y_max   several rows per stem allowed
        levels.csv   (optional)  stem,level                     pixel|box|image|none
      <client_b>/
        ...
"""
    download = "your own data: prepare it in this layout (see fedmix_jax/data/real/layouts.py)"

    def default_levels_for(self, clients):
        return ["pixel"] * len(clients)

    def scan(self, data_dir, policy):
        data_dir = self.check_data_dir(data_dir)
        clients, warnings = [], []
        for e in sorted(os.listdir(data_dir)):
            p = os.path.join(data_dir, e)
            if e.startswith(".") or not os.path.isdir(p):
                continue
            if _find_subdir(p, ("images",)) is None:
                warnings.append(f"ignored folder {p}: no images/ inside")
                log.warning("ignored folder %s: no images/ inside", p)
                continue
            clients.append(e)
        if not clients:
            raise self.not_found(f"no client folder with an images/ sub-folder in {data_dir}")
        samples = []
        for c in clients:
            samples += self._scan_client(c, os.path.join(data_dir, c), policy, warnings)
        return Scan(samples, clients, warnings)

    @staticmethod
    def _csv(cdir: str, name: str) -> str | None:
        for e in os.listdir(cdir):
            if e.lower() == name:
                return os.path.join(cdir, e)
        return None

    def _scan_client(self, client, cdir, policy, warnings):
        image_dir = _find_subdir(cdir, ("images",))
        mask_dir = _find_subdir(cdir, ("masks",))
        other = [f for _, f in _walk_files(image_dir) if not is_image_file(f)]
        if other:
            warnings.append(f"{len(other)} non-image file(s) in {image_dir} ignored (e.g. "
                            f"{other[0]})")
        images, masks = _pair_images_masks(client, image_dir, mask_dir, policy)

        def resolve(path, line, stem):
            if stem in images:
                return stem
            base = os.path.splitext(stem)[0]
            if base in images:
                return base
            policy(BadInputError(f"{path} line {line}: stem {stem!r} is not an image in "
                                 f"{image_dir}", path))
            return None

        labels, levels, boxes = {}, {}, defaultdict(list)
        path = self._csv(cdir, "labels.csv")
        if path:
            names = {n.lower() for n in self.class_names}
            for line, row in _read_table(path, ("stem", "label"), policy):
                stem = resolve(path, line, row["stem"])
                if stem is None:
                    continue
                v = row["label"].strip().lower()
                if v in _POSITIVE or v in names:
                    lab = 1
                elif v in _NEGATIVE:
                    lab = 0
                else:
                    policy(BadInputError(
                        f"{path} line {line}: label {row['label']!r} is not 0/1, yes/no, "
                        f"present/absent, normal or a class name {sorted(names)}", path))
                    continue
                if stem in labels:
                    policy(BadInputError(f"{path} line {line}: duplicate stem {stem!r}", path))
                    continue
                labels[stem] = lab
        path = self._csv(cdir, "levels.csv")
        if path:
            for line, row in _read_table(path, ("stem", "level"), policy):
                stem = resolve(path, line, row["stem"])
                if stem is None:
                    continue
                try:
                    lv = level_from_name(row["level"])
                except ValueError as e:
                    policy(BadInputError(f"{path} line {line}: {e}", path))
                    continue
                if stem in levels:
                    policy(BadInputError(f"{path} line {line}: duplicate stem {stem!r}", path))
                    continue
                levels[stem] = lv
        path = self._csv(cdir, "boxes.csv")
        if path:
            cols = ("stem", "x_min", "y_min", "x_max", "y_max")
            for line, row in _read_table(path, cols, policy):
                stem = resolve(path, line, row["stem"])
                if stem is None:
                    continue
                try:
                    b = [float(row[c]) for c in cols[1:]]
                    if not all(math.isfinite(v) for v in b):
                        raise ValueError("coordinates must be finite numbers")
                    if any(v < 0 or v >= MAX_COORDINATE for v in b):
                        raise ValueError(f"coordinates must be in [0, {MAX_COORDINATE}) pixels")
                    if b[0] > b[2] or b[1] > b[3]:
                        raise ValueError("need 0 <= x_min <= x_max and 0 <= y_min <= y_max")
                except ValueError as e:
                    policy(BadInputError(f"{path} line {line}: bad box {[row[c] for c in cols[1:]]}"
                                         f": {e}", path))
                    continue
                boxes[stem].append(([int(round(v)) for v in b], f"{path} line {line}"))

        samples = []
        for stem, img in sorted(images.items()):
            level = levels.get(stem, -1)
            mask_paths = masks.get(stem, [])
            if not mask_paths:
                hint = (f"expected {os.path.join(mask_dir or os.path.join(cdir, 'masks'), stem)}"
                        ".png or _mask.png")
                if level in (-1, PIXEL):
                    policy(BadInputError(
                        f"image with no mask: {img} ({hint}; a sample without a mask needs a "
                        f"box/image/none level in levels.csv)", img))
                    continue
                if level == BOX and stem not in boxes:
                    policy(BadInputError(f"image with no mask: {img} has level 'box' in "
                                         f"levels.csv but no rows in boxes.csv ({hint})", img))
                    continue
                if level == IMAGE and stem not in labels:
                    policy(BadInputError(f"image with no mask: {img} has level 'image' in "
                                         f"levels.csv but no label in labels.csv ({hint})", img))
                    continue
            b = boxes.get(stem)
            samples.append(Sample(
                id=f"{client}/{stem}", client=client, stem=stem, image_path=img,
                mask_paths=mask_paths, group=f"{client}/{stem}", label=labels.get(stem),
                level=level,
                boxes=None if b is None else np.array([x for x, _ in b], np.int64),
                boxes_source=", ".join(s for _, s in b) if b else ""))
        return samples


LAYOUTS = {cls.name: cls() for cls in (HAM10000, BreastUS, Folders)}

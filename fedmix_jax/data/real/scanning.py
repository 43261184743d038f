"""What every layout shares: :class:`Sample` / :class:`Scan` (nothing decoded), :class:`Layout`,
walking a download (:func:`walk_data_files`, :func:`source_fingerprint`), pairing images with
masks (:func:`pair_images_masks`), CSV tables (:func:`read_rows`, :func:`read_table`: a regular
file of at most :data:`MAX_CSV_BYTES` of UTF-8) and non-UTF-8 names (:func:`drop_undecodable`,
:func:`printable`). Details: docs/data.md.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from collections import defaultdict

import numpy as np

from fedmix_jax.data.real.errors import (DATA_DIR_FLAG, BadInputError, BadInputPolicy,
                                         DatasetNotFoundError, open_regular, walk_files)
from fedmix_jax.data.real.imaging import IMAGE_EXTENSIONS, is_image_file

MAX_CSV_BYTES = 64 << 20
TABLE_EXTENSIONS = (".csv", ".tsv", ".tab")
HAM_CSV_NAMES = ("ham10000_metadata.csv", "ham10000_metadata.tab", "ham10000_metadata.tsv",
                 "ham10000_metadata")

# Non-UTF-8 names (surrogate escapes in Python) cannot be written to the cache or hashed.
_FIX = "rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r DIR)"


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
    """(dirpath, filename) of every non-hidden file under root, sorted; an irregular entry is
    listed only when named like an image or a table (reading it is then the error), else logged."""
    return list(walk_files(root, keep_irregular=lambda name: (
        is_image_file(name) or name.lower() in HAM_CSV_NAMES
        or os.path.splitext(name)[1].lower() in TABLE_EXTENSIONS)))


def source_fingerprint(data_dir: str) -> str:
    """``"<count>:<20 hex digits>"``, a hash of the relative paths and sizes of the image,
    volume and CSV files under ``data_dir`` (a load whose fingerprint changed rebuilds)."""
    h = hashlib.sha256()
    exts = set(IMAGE_EXTENSIONS) | {".csv", ".tab", ".tsv", ".mhd", ".mha", ".raw", ".zraw"}
    paths = [os.path.join(d, f) for d, f in walk_data_files(data_dir)
             if os.path.splitext(f)[1].lower() in exts]
    for p in paths:
        try:
            size = os.path.getsize(p)
        except OSError:
            size = -1
        h.update(f"{os.path.relpath(p, data_dir)}\x1f{size}\n".encode("utf-8", "replace"))
    return f"{len(paths)}:{h.hexdigest()[:20]}"


class Layout:
    """A published file layout: ``scan`` lists and cross-checks its files without decoding pixels
    (bad files go to ``policy``; a missing ``data_dir`` or part raises :meth:`not_found`)."""

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
    return next((entries[k] for k in map(normalized_name, names) if k in entries), None)


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
            base = stem if stem in out_images else next(
                (stem[:-len(x)] for x in ("_mask", "_gt", "_segmentation")
                 if stem.lower().endswith(x) and stem[:-len(x)] in out_images), stem)
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


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """``path`` with the bytes of a non-UTF-8 name escaped (``\\xff``), safe to print and store."""
    return path if is_utf8(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


def drop_undecodable(scan: Scan, policy: BadInputPolicy, data_dir: str) -> Scan:
    """The scan without the samples whose id, client or file paths are not UTF-8 (each given to
    ``policy``); ``data_dir`` itself not UTF-8 is an error in both modes."""
    if not is_utf8(data_dir):
        raise BadInputError(f"the data folder name {printable(data_dir)!r} is not UTF-8; "
                            f"{_FIX}", printable(data_dir))
    kept = []
    for s in scan.samples:
        paths = [s.image_path, *s.mask_paths]
        bad = next((p for p in paths if not is_utf8(p)), None)
        if bad is None and all(is_utf8(t) for t in (s.id, s.client, s.stem, s.group)):
            kept.append(s)
            continue
        bad = bad or s.image_path
        policy(BadInputError(f"file or folder name is not UTF-8: {printable(bad)} "
                             f"(sample {printable(s.id)}); {_FIX}", printable(bad)))
    return dataclasses.replace(scan, samples=kept, clients=[printable(c) for c in scan.clients],
                               warnings=[printable(w) for w in scan.warnings])


def read_rows(path: str) -> list[tuple[int, list[str]]]:
    """``[(1-based line number, [cell, ...])]``: the non-empty, non-comment rows, cells stripped;
    comma-separated, or tab-separated when the first line has tabs and no commas (a BOM is
    allowed)."""
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
    try:
        rows = [(i, [c.strip() for c in row])
                for i, row in enumerate(csv.reader(text.splitlines(), delimiter=delim), start=1)]
    except csv.Error as e:
        raise BadInputError(f"cannot parse {path}: {e}", path) from e
    return [(i, cells) for i, cells in rows if any(cells) and not cells[0].startswith("#")]


def read_table(path: str, columns: tuple[str, ...], policy: BadInputPolicy
               ) -> list[tuple[int, dict]]:
    """Rows as dicts over ``columns``; the header row is optional (first cell 'stem'). A row with
    too few cells is a bad row (``policy``: error, or a logged skip)."""
    rows = read_rows(path)
    if not rows:
        return []
    first = [c.lower() for c in rows[0][1]]
    if first and first[0] == columns[0]:
        if missing := [c for c in columns if c not in first]:
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


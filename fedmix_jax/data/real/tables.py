"""CSV/TSV tables of the layouts (HAM10000's metadata; folders' labels/boxes/levels CSVs):
:func:`read_rows` reads the rows, :func:`read_table` maps them onto named columns. A table must
be a regular file of at most :data:`MAX_CSV_BYTES` of UTF-8 text, else a
:class:`~fedmix_jax.data.real.errors.BadInputError` naming it.
"""

from __future__ import annotations

import csv

from fedmix_jax.data.real.errors import BadInputError, BadInputPolicy
from fedmix_jax.data.real.files import open_regular

MAX_CSV_BYTES = 64 << 20
TABLE_EXTENSIONS = (".csv", ".tsv", ".tab")
HAM_CSV_NAMES = ("ham10000_metadata.csv", "ham10000_metadata.tab", "ham10000_metadata.tsv",
                 "ham10000_metadata")


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


def read_table(path: str, columns: tuple[str, ...], policy: BadInputPolicy
               ) -> list[tuple[int, dict]]:
    """Rows as dicts over ``columns``; the header row is optional (first cell 'stem'). A row with
    too few cells is a bad row (``policy``: error, or a logged skip)."""
    rows = read_rows(path)
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


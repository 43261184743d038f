"""File and folder names that are not UTF-8 (Python shows them with surrogate escapes, which
cannot be written to the cache or hashed): :func:`drop_undecodable` makes each such sample a
:class:`BadInputError` after the scan; :func:`printable` escapes a name's raw bytes
(``img\\xff002.png``) so that messages can always name the file.
"""

from __future__ import annotations

import dataclasses
import os

from fedmix_jax.data.real.errors import BadInputError, BadInputPolicy
from fedmix_jax.data.real.scanning import Scan

_FIX = "rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r DIR)"


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """``path`` with the bytes of a non-UTF-8 name escaped (``\\xff``), safe to print and store."""
    if is_utf8(path):
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
    clients = [printable(c) for c in scan.clients]
    return dataclasses.replace(scan, samples=kept, clients=clients,
                               warnings=[printable(w) for w in scan.warnings])

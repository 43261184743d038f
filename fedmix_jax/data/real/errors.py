"""Errors of the real-data sources (``ValueError`` s: :class:`DatasetNotFoundError`,
:class:`CacheDamagedError`, :class:`BadInputError`) and :class:`BadInputPolicy`, the
``on_bad_input`` policy (nothing is dropped silently). Details: docs/data_faults.md.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("fedmix_jax.data.real")

DATA_DIR_FLAG = "--config.data.data_dir"


class DatasetNotFoundError(ValueError):
    """The dataset's manual-download directory (or a required part of its layout) is missing."""


class _PathError(ValueError):
    """A ``ValueError`` about one file or folder: ``path``, kept when sent back from a worker."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)

    def __reduce__(self):
        return (type(self), (str(self), self.path))


class CacheDamagedError(_PathError):
    """The built cache could not be read back (a damaged record, a shard changed on disk);
    ``path`` is the cache's version directory. Rebuild it (``--config.data.rebuild=True``)."""


class BadInputError(_PathError):
    """An input file is unusable; ``path`` names it."""


class BadInputPolicy:
    """``on_bad_input``: ``'fail'`` raises, ``'skip'`` logs, records and counts (``skipped``, which
    goes to the cache's ``metadata.json``; thread-safe)."""

    def __init__(self, mode: str = "fail"):
        mode = str(mode).strip().lower()
        if mode not in ("fail", "skip"):
            raise ValueError(f"on_bad_input must be 'fail' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, err: BadInputError) -> None:
        if self.mode == "fail":
            raise err
        with self._lock:
            self.skipped.append({"path": err.path, "reason": str(err)})
            n = len(self.skipped)
        log.warning("on_bad_input='skip': skipping (%d so far): %s", n, err)

"""Errors raised by the real-data sources, and the fail/skip policy for bad input files.

:class:`DatasetNotFoundError` (the download or a required part of its layout is missing; the
message shows the expected layout), :class:`CacheDamagedError` (the built cache cannot be read
back) and :class:`BadInputError` (one unusable input file, ``err.path``) are ``ValueError`` s.
:class:`BadInputPolicy` applies ``on_bad_input``: ``'fail'`` raises, ``'skip'`` logs, records
and counts (the list goes to the cache's ``metadata.json``); nothing is dropped silently.
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
    """``on_bad_input`` handling: ``'fail'`` raises, ``'skip'`` logs, records and counts
    (thread-safe)."""

    def __init__(self, mode: str = "fail"):
        mode = str(mode).strip().lower()
        if mode not in ("fail", "skip"):
            raise ValueError(f"on_bad_input must be 'fail' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, err: BadInputError) -> None:
        """Handle one bad input: raise it (fail) or record it (skip)."""
        if self.mode == "fail":
            raise err
        with self._lock:
            self.skipped.append({"path": err.path, "reason": str(err)})
            n = len(self.skipped)
        log.warning("on_bad_input='skip': skipping (%d so far): %s", n, err)

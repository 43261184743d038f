"""Errors raised by the real-data sources, and the fail/skip policy for bad input files.

* :class:`DatasetNotFoundError` (a ``ValueError``): the manual-download directory is missing or
  empty, or a required top-level folder/file of the layout is missing. The message names the config
  field (``--config.data.data_dir``), shows the expected layout and says where to download the data.
* :class:`CacheDamagedError` (a ``ValueError``): the built ``array_record`` cache is damaged in a
  way the pre-read validation cannot see (a corrupted record); the loader rebuilds it once from
  ``data_dir`` when it can, otherwise the message says how to rebuild.
* :class:`BadInputError` (a ``ValueError``): one input file is unusable (unreadable image, mask of the
  wrong size, non-binary mask, image without mask, duplicate id, bad CSV row, ...) or a client is
  left empty. ``err.path`` is the offending file (also named in the message).

:class:`BadInputPolicy` applies ``on_bad_input``: ``'fail'`` (default) raises the
:class:`BadInputError`; ``'skip'`` logs a warning naming the file, records it and counts it (the list
ends up in the cache's ``metadata.json`` and is printed after the build). Nothing is ever dropped
silently.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("fedmix_jax.data.real")

DATA_DIR_FLAG = "--config.data.data_dir"


class DatasetNotFoundError(ValueError):
    """The dataset's manual-download directory (or a required part of its layout) is missing."""


class CacheDamagedError(ValueError):
    """The built cache could not be read back (a damaged record, a shard changed on disk);
    ``path`` is the cache's version directory. Rebuild it (``--config.data.rebuild=True``)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)

    def __reduce__(self):
        return (type(self), (str(self), self.path))


class BadInputError(ValueError):
    """An input file is unusable; ``path`` names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)

    def __reduce__(self):  # keep ``path`` when sent back from a worker process
        return (type(self), (str(self), self.path))


class BadInputPolicy:
    """``on_bad_input`` handling: ``'fail'`` raises, ``'skip'`` logs, records and counts.

    Thread-safe (decoding runs in a thread pool).
    """

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

    @property
    def count(self) -> int:
        return len(self.skipped)

"""Errors of the real-data sources (``ValueError`` s: :class:`DatasetNotFoundError`,
:class:`CacheDamagedError`, :class:`BadInputError`), :class:`BadInputPolicy` (``on_bad_input``:
nothing is dropped silently) and safe file access: :func:`walk_files` lists regular files (special
entries are logged, never opened), :func:`open_regular` opens only a regular file, never blocking
(``O_NONBLOCK``, then ``fstat``). Details: docs/data_faults.md.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from typing import Iterator

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

    def __init__(self, mode: str = "fail"):   # validated by make_config
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


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a directory"))


def describe_mode(mode: int) -> str:
    return next((what for is_kind, what in _KINDS if is_kind(mode)), "not a regular file")


def _link_problem(path: str, err: OSError) -> str:
    if os.path.islink(path):
        import errno  # noqa: PLC0415
        return "a symlink loop" if err.errno == errno.ELOOP else "a dangling symlink"
    return f"unreadable ({type(err).__name__}: {err.strerror or err})"


def walk_files(root: str, keep_irregular=lambda name: False) -> Iterator[tuple[str, str]]:
    """``(dirpath, filename)`` of every non-hidden regular file under ``root``, sorted, top-down:
    symlinked folders followed (one outside ``root`` logged), a folder visited once, ``__MACOSX``
    skipped. Other entries are never opened: listed if ``keep_irregular(name)``, else logged."""
    root_real = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    irregular: list[tuple[str, str]] = []   # (path, what it is)

    def visit(d: str):
        try:
            st = os.stat(d)
        except OSError as e:
            irregular.append((d, _link_problem(d, e)))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:
            log.warning("not following %s again: it leads to a folder already visited "
                        "(a symlink loop or a second link to the same folder)", d)
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise BadInputError(f"cannot list folder {d}: {type(e).__name__}: {e}", d) from e
        files, dirs = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                st = os.stat(e.path)          # follows symlinks
            except OSError as err:
                if keep_irregular(e.name):
                    files.append(e.name)
                else:
                    irregular.append((e.path, _link_problem(e.path, err)))
                continue
            if e.is_symlink():
                target = os.path.realpath(e.path)
                inside = target == root_real or target.startswith(root_real.rstrip(os.sep) + os.sep)
                if not inside:   # each e.path once: a folder is visited once
                    log.warning("following symlink %s -> %s (outside %s)", e.path, target, root)
            if stat.S_ISDIR(st.st_mode):
                if not e.name.startswith("__MACOSX"):
                    dirs.append(e.path)
            elif stat.S_ISREG(st.st_mode) or keep_irregular(e.name):
                files.append(e.name)
            else:
                irregular.append((e.path, describe_mode(st.st_mode)))
        for f in files:
            yield d, f
        for sub in dirs:
            yield from visit(sub)

    yield from visit(root)
    for path, what in irregular:
        log.warning("ignored %s: it is %s", path, what)


def open_regular(path: str, what: str = "file"):
    """Open ``path`` for binary reading if it is a regular file; else a :class:`BadInputError`
    naming it (FIFO, socket, device, directory, dangling link, link loop, ...), without blocking."""
    def refuse_special(mode: int) -> None:
        if not stat.S_ISREG(mode):
            raise BadInputError(f"cannot read {what} {path}: it is {describe_mode(mode)}, "
                                "not a regular file", path)

    try:  # refuse special files before opening them at all (opening a device can act)
        refuse_special(os.stat(path).st_mode)
    except OSError as e:
        raise BadInputError(f"cannot read {what} {path}: {_link_problem(path, e)}", path) from None
    try:  # O_NONBLOCK: if a FIFO replaced the file since, open() must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        problem = _link_problem(path, e) if os.path.islink(path) else \
            f"{type(e).__name__}: {e.strerror or e}"
        raise BadInputError(f"cannot read {what} {path}: {problem}", path) from None
    try:
        refuse_special(os.fstat(fd).st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

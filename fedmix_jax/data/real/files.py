"""Safe file-system access for the scanners: :func:`walk_files` lists regular files (each real
folder once; FIFOs, sockets, devices, dangling links and loops are logged, never opened),
:func:`open_regular` opens only a regular file, never blocking (``O_NONBLOCK``, then ``fstat``).
"""

from __future__ import annotations

import os
import stat
from typing import Iterator

from fedmix_jax.data.real.errors import BadInputError, log


def describe_mode(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _link_problem(path: str, err: OSError) -> str:
    if os.path.islink(path):
        import errno  # noqa: PLC0415
        return "a symlink loop" if err.errno == errno.ELOOP else "a dangling symlink"
    return f"unreadable ({type(err).__name__}: {err.strerror or err})"


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def walk_files(root: str, keep_irregular=lambda name: False) -> Iterator[tuple[str, str]]:
    """``(dirpath, filename)`` of every non-hidden regular file under ``root``, sorted, top-down:
    symlinked folders followed (one outside ``root`` logged), a folder visited once, ``__MACOSX``
    skipped. Other entries are never opened: listed if ``keep_irregular(name)``, else logged."""
    root_real = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    outside_logged: set[str] = set()
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
                if not _inside(target, root_real) and e.path not in outside_logged:
                    outside_logged.add(e.path)
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

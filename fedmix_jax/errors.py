"""Errors with a message for the user (``main`` prints it in one line, no traceback, and exits
with ``exit_code``: 2, or 1 for a run that diverged), and what an I/O or memory error means."""

from __future__ import annotations

import errno
import logging
import os
import re


class RunError(Exception):
    """An error with a message for the user (main prints it without a traceback); keyword
    ``details`` become attributes (``pid``, ``round``, ...)."""

    exit_code = 2

    def __init__(self, *args, **details):
        super().__init__(*args)
        self.__dict__.update(details)


class ConfigError(RunError, ValueError):
    """The config is invalid (e.g. a crop larger than the images)."""


class ConfigMismatchError(RunError, ValueError):
    """``workdir`` holds a run made with a different config."""


class CheckpointMismatchError(ConfigMismatchError):
    """A checkpoint in ``workdir`` holds arrays of another structure, shape or dtype."""


class DataError(RunError, ValueError):
    """The data could not be loaded (missing download, bad input file, bad data config)."""


class WorkdirError(RunError):
    """The workdir cannot be used: a file, not writable, full, or holding a damaged record."""


class WorkdirLockedError(WorkdirError):
    """Another run holds the workdir's lock; ``pid`` is its process id (None if unknown)."""

    pid: int | None = None


class CheckpointWriteError(WorkdirError):
    """A checkpoint could not be written; ``step``: its round, ``kept``: the newest complete one."""


class OutOfMemoryError(RunError):
    """The round (or the evaluation) does not fit in the accelerator's (or host's) memory."""


class TrainingDivergedError(RunError, FloatingPointError):
    """A client's training loss is NaN or infinite; ``round`` and ``clients`` say where."""

    exit_code = 1


# errno values that mean "the disk, not the program": the message names the cause.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
               errno.EIO)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # how TensorStore (orbax) reports errno
_ADVICE = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (disk quota)",
           errno.EROFS: "use a writable --workdir", errno.EACCES: "use a writable --workdir",
           errno.EPERM: "use a writable --workdir", errno.EFBIG: "free some space or raise the "
           "file size limit (ulimit -f)"}


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if empty), cut to ``limit``."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def disk_errno(e: BaseException) -> int | None:
    """The errno of an I/O error, from an ``OSError`` or TensorStore's message; else None."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    if m := _OS_ERROR_CODE.search(str(e)):
        return int(m.group(1))
    return next((code for code in DISK_ERRNOS if os.strerror(code) in str(e)), None)


def describe_os_error(e: BaseException) -> str:
    """``'No space left on device'``-style cause of an I/O error (first line of it otherwise)."""
    code = disk_errno(e)
    return first_line(e, 300) if code is None else os.strerror(code)


def disk_advice(e: BaseException) -> str:
    """What to do about an I/O error (``'free some space'``...), or ``''``."""
    return _ADVICE.get(disk_errno(e) or -1, "")


def is_out_of_memory(e: BaseException) -> bool:
    """True for XLA's RESOURCE_EXHAUSTED / out-of-memory errors and host ``MemoryError``."""
    text = str(e)       # XLA's errors are RuntimeErrors
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and not isinstance(e, RunError)
        and ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()))


_DAMAGED_DIRECTORIES: set[str] = set()     # of checkpoints already reported as damaged


def _not_a_late_read_error(record) -> bool:
    """False for asyncio's "... never retrieved" records naming a damaged checkpoint."""
    if "never retrieved" not in str(record.msg):
        return True
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(d in text for d in _DAMAGED_DIRECTORIES)


def silence_late_read_errors(directory: str) -> None:
    """Once a damaged checkpoint under ``directory`` was reported, asyncio's "... never retrieved"
    traces of TensorStore's remaining reads of it are not printed (every other record still is)."""
    logging.getLogger("asyncio").addFilter(_not_a_late_read_error)   # added once however often
    _DAMAGED_DIRECTORIES.update({os.path.abspath(directory), os.path.realpath(directory)})

"""What a run folder may hold: no symbolic links and no special files where the job writes.

A symbolic link where the job writes would make a write land elsewhere (a ``.lock`` linked to
``~/.bashrc`` would truncate it), and a FIFO in place of a file would block the job for ever.
:func:`refuse_links_and_special_files` checks each such entry with ``lstat`` before the job
writes anything, raising :class:`~fedmix_jax.errors.WorkdirError` in one line naming it (the lock
itself is opened with ``O_NOFOLLOW`` in :mod:`fedmix_jax.rundir`). The workdir itself may be a
link to a folder (the user's choice); a *dangling* link is named as such.
"""

from __future__ import annotations

import os
import stat

from fedmix_jax.errors import WorkdirError

# Files the job writes or reads at the top of a workdir, and its folders.
FILES = (".lock", "config.json", "metrics.jsonl", "summary.json")
FOLDERS = ("checkpoints", "damaged")


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((what for is_kind, what in _KINDS if is_kind(mode)), "not a regular file")


def _lstat(path: str):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise WorkdirError(f"cannot inspect {path}: {e.strerror or e}") from None


def _refuse(path: str, what: str, expected: str) -> None:
    raise WorkdirError(
        f"{path} is {what}, not {expected}: fedmix_jax never writes through links or into "
        "special files in a run folder; move it away (or replace it by the real "
        f"{expected.split()[-1]}) and rerun, or use another --workdir")


def refuse_links_and_special_files(workdir: str) -> None:
    """Raise :class:`WorkdirError` if an entry of ``workdir`` that the job writes is a link or
    not of its kind (files: regular files; folders: real folders, and each checkpoint inside
    ``checkpoints/`` a real folder)."""
    for names, is_kind, expected in ((FILES, stat.S_ISREG, "a regular file"),
                                     (FOLDERS, stat.S_ISDIR, "a folder")):
        for name in names:
            path = os.path.join(workdir, name)
            st = _lstat(path)
            if st is not None and not is_kind(st.st_mode):
                _refuse(path, _kind(st.st_mode), expected)
    path = os.path.join(workdir, "checkpoints")     # a real folder if it exists (checked above)
    try:
        entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    except OSError as e:
        raise WorkdirError(f"cannot list {path}: {e.strerror or e}") from None
    for entry in entries:
        sub = os.path.join(path, entry)
        st = _lstat(sub)
        if st is not None and stat.S_ISLNK(st.st_mode):
            _refuse(sub, "a symbolic link", "a checkpoint folder")


def describe_missing_workdir(path: str) -> str | None:
    """``'is a dangling symbolic link ...'`` when ``path`` is a link to nothing, else None."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"is a dangling symbolic link (to {target!r})"
    return None

"""What a run folder may hold: no symbolic links and no special files where the job writes.

The job writes ``.lock``, ``config.json``, ``metrics.jsonl``, ``summary.json``, the plots and
the folders ``checkpoints/<round>/`` and ``damaged/``. A symbolic link in one of those places
would make a write land elsewhere (a ``.lock`` linked to ``~/.bashrc`` would truncate it), and a
FIFO in place of a file would block the job for ever. :func:`refuse_links_and_special_files`
checks each of them with ``lstat`` (never following a link) before the job writes anything, and
raises :class:`~fedmix_jax.errors.WorkdirError` in one line naming the entry. The lock itself is
opened with ``O_NOFOLLOW`` (:mod:`fedmix_jax.rundir`), so a link swapped in after this check is
refused too.

The workdir itself may be a link to a folder (that is the user's choice of where the run lives);
a *dangling* link is named as such.
"""

from __future__ import annotations

import os
import stat

from fedmix_jax.errors import WorkdirError

# Files the job writes or reads at the top of a workdir, and its folders.
FILES = (".lock", "config.json", "metrics.jsonl", "summary.json")
FOLDERS = ("checkpoints", "damaged")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


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
    for name in FILES:
        path = os.path.join(workdir, name)
        st = _lstat(path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            _refuse(path, _kind(st.st_mode), "a regular file")
    for name in FOLDERS:
        path = os.path.join(workdir, name)
        st = _lstat(path)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            _refuse(path, _kind(st.st_mode), "a folder")
        if name != "checkpoints":
            continue
        try:
            entries = sorted(os.listdir(path))
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

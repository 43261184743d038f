"""The run folder (``--workdir``): its file names, lock, config record and safe writes.

:class:`WorkdirLock`; :func:`check_config`; :func:`check_usable` refuses a file, link or special
file where the job writes; writes never leave a half-written file. Details: docs/main_job.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import time

from fedmix_jax.errors import (ConfigMismatchError, WorkdirError, WorkdirLockedError,
                               describe_os_error, disk_advice)

try:
    import fcntl
except ImportError:  # pragma: no cover -- not POSIX: runs are not locked
    fcntl = None

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
DAMAGED_DIR = "damaged"      # damaged checkpoints and records are moved here, never deleted

# Config fields that may change between a run and its resumption: they do not change what is
# computed in a round (num_rounds may grow; how often / how many checkpoints; where the data cache
# lives; forcing a cache rebuild; what is done after the last round).
RESUMABLE_FIELDS = ("num_rounds", "checkpoint_every", "keep_checkpoints", "data.cache_dir",
                    "data.rebuild", "compilation_cache", "data.device_data_budget_gb",
                    "data.stream_block_steps", "train.cpu_devices", "data.compact",
                    "diagnostics", "fine_tune_epochs")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_TMP_SUFFIX = re.compile(r"\.tmp-\d+$")
# A link where the job writes would make a write land elsewhere (a ``.lock`` linked to
# ``~/.bashrc`` would truncate it), and a FIFO in place of a file would block the job for ever.
_ENTRIES = (((LOCK_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE), stat.S_ISREG, "a regular file"),
            ((CHECKPOINT_DIR, DAMAGED_DIR), stat.S_ISDIR, "a folder"))
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISDIR, "a folder"))


def resolve(workdir) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(workdir)))


def os_error(e: OSError, doing: str) -> WorkdirError:
    """A one-line :class:`WorkdirError` for an ``OSError`` raised while ``doing`` something."""
    advice = disk_advice(e)
    return WorkdirError(f"could not {doing}: {describe_os_error(e)}"
                        + (f"; {advice}" if advice else ""))


def _lstat(path: str):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise WorkdirError(f"cannot inspect {path}: {e.strerror or e}") from None


def _refuse(path: str, what: str, expected: str) -> None:
    raise WorkdirError(f"{path} is {what}, not {expected}: fedmix_jax never writes through links "
                       "or into special files in a run folder; move it away (or replace it by "
                       f"the real {expected.split()[-1]}) and rerun, or use another --workdir")


def refuse_links_and_special_files(workdir: str) -> None:
    """Raise :class:`WorkdirError` if an entry of ``workdir`` that the job writes (or a checkpoint
    folder) is a link or not of its kind. The workdir itself may be a link to a folder."""
    for names, is_kind, expected in _ENTRIES:
        for name in names:
            path = os.path.join(workdir, name)
            st = _lstat(path)
            if st is not None and not is_kind(st.st_mode):
                kind = next((what for is_k, what in _KINDS if is_k(st.st_mode)),
                            "not a regular file")
                _refuse(path, kind, expected)
    path = os.path.join(workdir, CHECKPOINT_DIR)    # a real folder if it exists (checked above)
    try:
        entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    except OSError as e:
        raise WorkdirError(f"cannot list {path}: {e.strerror or e}") from None
    for entry in entries:
        st = _lstat(os.path.join(path, entry))
        if st is not None and stat.S_ISLNK(st.st_mode):
            _refuse(os.path.join(path, entry), "a symbolic link", "a checkpoint folder")


def check_usable(workdir: str) -> None:
    """Refuse a workdir that is a file, under a file or a dangling link (before creating it)."""
    path = workdir
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path):
        what = "is a file"
        if os.path.islink(path) and not os.path.exists(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            what = f"is a dangling symbolic link (to {target!r})"
        if path != workdir:
            what = f"is under {path}, which {what}"
        raise WorkdirError(f"--workdir {workdir} {what}, not a folder; choose another --workdir")
    if path == workdir:
        refuse_links_and_special_files(workdir)


class WorkdirLock:
    """An exclusive ``fcntl.flock`` on ``<workdir>/.lock`` for one run; ``acquire`` creates the
    workdir and raises :class:`WorkdirLockedError` (the holder's PID) when another run holds it."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        check_usable(self.workdir)
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            raise os_error(e, f"create --workdir {self.workdir}") from None
        try:
            # never through a link (its target would be truncated), never blocking on a FIFO
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o644)
        except OSError as e:
            if os.path.islink(self.path):
                refuse_links_and_special_files(self.workdir)
            raise os_error(e, f"write into --workdir {self.workdir}") from None
        try:
            self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _lock(self, fd: int) -> None:
        """Lock the opened ``.lock`` and record this process in it."""
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            refuse_links_and_special_files(self.workdir)
            raise WorkdirError(f"{self.path} is not a regular file; remove it")
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                pid = holder.get("pid")
                who = f"PID {pid}" if pid else "another process"
                where = f" on {holder['host']}" if holder.get("host") else ""
                raise WorkdirLockedError(
                    f"--workdir {self.workdir} is in use by another run ({who}{where}, lock "
                    f"{self.path}); wait for it to end, stop it, or use another --workdir",
                    pid=pid) from None
            except OSError:  # a file system without flock (some network mounts): no lock
                pass
        refuse_links_and_special_files(self.workdir)   # again, now that no run can change it
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
                     + b"\n")
        except OSError as e:
            raise os_error(e, f"write into --workdir {self.workdir}") from None

    def release(self) -> None:
        """Release the lock (the file stays: removing it would race with a starting run)."""
        if self._fd is not None:
            try:
                if fcntl is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return data if isinstance(data, dict) else {}
    return {}


def remove_stale_temporaries(workdir: str) -> None:
    """Remove ``<file>.tmp-<pid>`` files of interrupted atomic writes (call under the lock)."""
    with contextlib.suppress(OSError):      # each one on its own; none if the listing fails
        paths = [os.path.join(workdir, n) for n in os.listdir(workdir) if _TMP_SUFFIX.search(n)]
        for path in filter(os.path.isfile, paths):
            with contextlib.suppress(OSError):
                os.remove(path)


def config_to_dict(config) -> dict:
    """A JSON round-tripped plain dict of ``config`` (tuples become lists)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=str))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(old: dict, new: dict, ignore=RESUMABLE_FIELDS) -> list[str]:
    """Human-readable ``field: old -> new`` lines for fields that differ (except ``ignore``)."""
    a, b = _flatten(old), _flatten(new)
    pairs = {key: (a.get(key, "<missing>"), b.get(key, "<missing>")) for key in set(a) | set(b)
             if key not in ignore}
    return [f"  {key}: {x!r} -> {y!r}" for key, (x, y) in sorted(pairs.items()) if x != y]


def read_config(workdir: str) -> dict | None:
    """The config recorded in ``<workdir>/config.json`` (None if there is none)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.lexists(path):
        return None
    fix = ("it records the config of the run in this workdir: restore it, or delete it (the "
           "checkpoints keep their own copy of the config, which is still checked), or use "
           "another --workdir")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column "
                           f"{e.colno}); {fix}") from None
    except UnicodeDecodeError:
        raise WorkdirError(f"{path} is not UTF-8 text; {fix}") from None
    except OSError as e:
        raise os_error(e, f"read {path}") from None
    if not isinstance(data, dict):
        raise WorkdirError(f"{path} does not hold a config (a JSON object); {fix}")
    return data


def _unread_fields(old: dict, new: dict) -> tuple[str, ...]:
    """Config fields neither run's strategy reads: ``weak.*`` when neither has weak-label losses
    (a run of ``fedmix`` resumes after a change to ``fedmix_plus``'s defaults)."""
    from fedmix_jax.strategies import get_strategy

    try:
        if any(get_strategy(str(c.get("strategy"))).weak is not None for c in (old, new)):
            return ()
    except ValueError:               # an unknown strategy: compare everything
        return ()
    return tuple(k for k in set(_flatten(old)) | set(_flatten(new)) if k.startswith("weak."))


def check_config(workdir: str, new: dict, old: dict | None, where: str) -> None:
    """Raise :class:`ConfigMismatchError` if ``old`` and ``new`` differ in a field the run reads."""
    if old is None:
        return
    if diffs := config_differences(old, new, RESUMABLE_FIELDS + _unread_fields(old, new)):
        raise ConfigMismatchError(
            f"workdir {workdir} already holds a run with a different config ({where}):\n"
            + "\n".join(diffs) + "\nThese fields change the computation, so the run cannot be "
            "resumed with them. Use a new --workdir (or delete this one); only "
            + ", ".join(RESUMABLE_FIELDS) + " may change when resuming (num_rounds may grow).")


def _no_follow(path: str, flags: int) -> int:
    """``open(..., opener=_no_follow)``: never through a symlink, never blocking on a FIFO."""
    return os.open(path, flags | _NOFOLLOW | _NONBLOCK, 0o666)


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (the old file stays intact if writing fails)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", opener=_no_follow) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise os_error(e, f"write {path}") from None


def unique_path(base: str) -> str:
    """``base``, else ``base-2``, ``base-3``, ...: the first path that does not exist."""
    path, k = base, 1
    while os.path.lexists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def move_aside(path: str, dest_dir: str, label: str) -> str:
    """Move ``path`` to ``<dest_dir>/<label>-<time>`` (kept for inspection); its new path."""
    os.makedirs(dest_dir, exist_ok=True)
    dest = unique_path(os.path.join(dest_dir, f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.replace(path, dest)
    return dest


__all__ = ["METRICS_FILE", "SUMMARY_FILE", "CONFIG_FILE", "CHECKPOINT_DIR", "config_to_dict",
           "config_differences"]

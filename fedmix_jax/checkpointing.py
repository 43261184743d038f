"""Checkpoints of a run (orbax ``CheckpointManager``), verified on restore: :class:`Checkpointer`.

Each checkpoint holds ``state``, ``best`` (the params selected so far) and ``extra`` (the caller's
JSON plus an integrity record of every array, sealed by its own SHA-256); a damaged one is moved
to ``damaged/``, never deleted. Details: docs/main_job.md ("Checkpoints and resuming").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fedmix_jax import rundir
from fedmix_jax.errors import (CheckpointMismatchError, CheckpointWriteError, RunError, disk_errno,
                               describe_os_error, disk_advice, first_line, silence_late_read_errors)

ITEMS = ("state", "best", "extra")
FORMAT = "fedmix_jax.checkpoint/2"
TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointDamagedError(Exception):
    """Checkpoint ``step`` cannot be trusted: ``reason`` says what failed."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"checkpoint {step} is damaged: {reason}")
        self.step, self.reason = step, reason


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_copy(tree):
    """Host (NumPy) copies of every leaf, independent of the (possibly donated) device buffers;
    typed PRNG keys are stored as their key data."""
    return jax.tree.map(lambda x: np.array(jax.random.key_data(x) if _is_key(x) else x,
                                           copy=True), tree)


def _host_target(tree):
    """NumPy placeholders with the shapes and dtypes of ``tree`` (orbax then restores NumPy)."""
    def zeros(x):
        if _is_key(x):
            x = jax.eval_shape(jax.random.key_data, x)
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # no device transfer
        return np.zeros(np.shape(x), dtype)

    return jax.tree.map(zeros, tree)


def _rewrap_keys(restored, target):
    return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
                        if _is_key(t) else r, restored, target)


def _digest(x: np.ndarray) -> str:
    flat = np.ascontiguousarray(x).reshape(-1)
    return hashlib.sha256(flat.view(np.uint8) if flat.size else b"").hexdigest()


def leaf_records(host_tree, digest: bool = True) -> list[list]:
    """``[path, dtype, shape, sha256]`` of every leaf of a host tree (the integrity record)."""
    leaves = jax.tree_util.tree_flatten_with_path(host_tree)[0]
    return [[jax.tree_util.keystr(p), str(x.dtype), list(x.shape), _digest(x) if digest else ""]
            for p, x in leaves]


def _sha(body) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def _seal(extra: dict, integrity: dict) -> dict:
    body = json.loads(json.dumps({"extra": extra, "integrity": integrity}))  # as it reads back
    return {"format": FORMAT, **body, "sha256": _sha(body)}


def _unseal(step: int, item) -> tuple[dict, dict | None]:
    """``(extra, integrity)`` of a stored JSON item; integrity None for a checkpoint written
    before integrity records existed."""
    if not isinstance(item, dict):
        raise CheckpointDamagedError(step, "its JSON record is not an object")
    if "round" in item and not {"format", "sha256", "integrity"} & item.keys():
        return item, None                                   # written by an older version
    if item.get("format") != FORMAT:
        raise CheckpointDamagedError(step, f"unknown record format {item.get('format')!r}")
    body = {"extra": item.get("extra"), "integrity": item.get("integrity")}
    if item.get("sha256") != _sha(body):
        raise CheckpointDamagedError(step, "its JSON record does not match its checksum")
    if not isinstance(body["extra"], dict) or not isinstance(body["integrity"], dict):
        raise CheckpointDamagedError(step, "its JSON record is incomplete")
    return body["extra"], body["integrity"]


def _short(e: BaseException) -> str:
    return type(e).__name__ + (f": {first_line(e, 160)}" if str(e).strip() else "")


def remove_temporaries(directory: str, settle_s: float = 0.0) -> list[str]:
    """Remove orbax's temporary folders of interrupted writes under ``directory`` (no save running);
    ``settle_s > 0``: again until none reappeared for ``settle_s`` (10 s at most; late writes)."""
    removed, first, deadline = [], True, time.monotonic() + 10.0
    while True:
        found = []
        for root, dirs, _ in os.walk(directory):    # nothing if the directory does not exist
            for d in [d for d in dirs if TMP_MARK in d]:
                found.append(os.path.join(root, d))
                shutil.rmtree(found[-1], ignore_errors=True)
                dirs.remove(d)
        removed += found
        if settle_s <= 0 or (not first and not found) or time.monotonic() > deadline:
            return removed
        first = False
        time.sleep(settle_s)


class Checkpointer:
    """Save / restore ``(state, best_params, extra)`` under ``directory`` (one subfolder per round,
    the newest ``max_to_keep`` kept; None: all; damaged ones moved to ``damaged`` next to it).
    ``async_save``: write in a background thread (the host copy is synchronous)."""

    def __init__(self, directory: str, max_to_keep: int | None = 2, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.damaged_dir = os.path.join(os.path.dirname(self.directory), rundir.DAMAGED_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        except OSError as e:
            raise CheckpointWriteError(f"could not create the checkpoint folder {self.directory}: "
                                       f"{describe_os_error(e)}", step=0, kept=None) from None
        self._pending: int | None = None
        self._failed_save = False

    @classmethod
    def for_workdir(cls, workdir: str, max_to_keep: int | None) -> "Checkpointer":
        """``<workdir>/checkpoints``, the temporary folders of interrupted writes removed first
        (call it under the workdir's lock: no other process may be saving there)."""
        remove_temporaries(os.path.join(workdir, rundir.CHECKPOINT_DIR))
        return cls(os.path.join(workdir, rundir.CHECKPOINT_DIR), max_to_keep=max_to_keep)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's round, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def kept_step(self) -> int | None:
        """The newest complete checkpoint on disk now (after any pending save has ended)."""
        with contextlib.suppress(OSError):
            return max((int(n) for n in os.listdir(self.directory)
                        if n.isdigit() and os.path.isdir(f"{self.directory}/{n}")), default=None)
        return None

    def save(self, step: int, state, best_params, extra: dict[str, Any]) -> None:
        """Start saving round ``step``; returns once the arrays are copied to host memory (and
        hashed). A failed earlier save raises :class:`CheckpointWriteError` here."""
        self.wait_until_finished()  # orbax would wait too; this names a failed earlier save
        host_state, host_best = _host_copy(state), _host_copy(best_params)
        integrity = {"state": leaf_records(host_state), "best": leaf_records(host_best)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                  best=ocp.args.StandardSave(host_best),
                                  extra=ocp.args.JsonSave(_seal(extra, integrity)))
        self._call(int(step), self._manager.save, int(step), args=args, force=True)
        self._pending = int(step)

    def wait_until_finished(self) -> None:
        """Block until a pending asynchronous save is complete (raises if it failed)."""
        self._call(self._pending, self._manager.wait_until_finished)
        self._pending = None

    def _call(self, step: int | None, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:   # close() removes the temporary folders this save left
            self._failed_save = True
            raise
        except RunError:
            raise
        except Exception as e:  # noqa: BLE001 -- only disk errors are translated
            if not isinstance(e, OSError) and disk_errno(e) is None:
                raise
            self._pending = None
            self._failed_save = True
            remove_temporaries(self.directory)
            kept = self.kept_step()
            advice = disk_advice(e) or "fix the cause"
            raise CheckpointWriteError(
                f"could not write the checkpoint of round {step} in {self.directory}: "
                f"{describe_os_error(e)}. The newest complete checkpoint is "
                f"{'none' if kept is None else f'round {kept} (intact)'}; {advice}, then rerun "
                "the same command to resume", step=int(step or 0), kept=kept) from None

    def read_extra(self, step: int) -> dict:
        """The caller's dict of round ``step``, checked against its seal (no arrays are read)."""
        return self._read_record(step)[0]

    def _read_record(self, step: int) -> tuple[dict, dict | None]:
        try:
            item = self._manager.restore(int(step), args=ocp.args.Composite(
                extra=ocp.args.JsonRestore())).extra
        except Exception as e:  # noqa: BLE001 -- anything unreadable is damage
            raise CheckpointDamagedError(step, f"its JSON record cannot be read ({_short(e)})") \
                from None
        return _unseal(step, item)

    def restore(self, step: int, state_target, best_target,
                check: Callable[[int, dict], None] | None = None) -> tuple[Any, Any, dict]:
        """``(state, best_params, extra)`` of round ``step`` in the targets' structure, shapes and
        dtypes, uncommitted on the default device (resumed runs reuse the compiled programs);
        ``check(step, extra)`` runs before the arrays are read. Raises CheckpointDamagedError
        (unreadable, failing verification) or CheckpointMismatchError (another structure)."""
        extra, integrity = self._read_record(step)
        if integrity is None:
            logging.warning("checkpoint %d in %s has no integrity record (written by an older "
                            "version); restored without verification", step, self.directory)
        if check is not None:
            check(step, extra)
        host_state, host_best = _host_target(state_target), _host_target(best_target)
        if integrity is not None:
            for name, target in (("state", host_state), ("best", host_best)):
                _check_structure(step, self.directory, name, integrity.get(name), target)
        try:
            restored = self._manager.restore(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(host_state),
                best=ocp.args.StandardRestore(host_best)))
            state, best = restored.state, restored.best
        except Exception as e:  # noqa: BLE001 -- a missing / truncated / garbled file
            silence_late_read_errors(self.directory)
            raise CheckpointDamagedError(step, f"its arrays cannot be read ({_short(e)})") \
                from None
        if integrity is not None:
            for name, tree in (("state", state), ("best", best)):
                for (path, _, _, want), (*_, got) in zip(integrity[name], leaf_records(tree)):
                    if want != got:
                        raise CheckpointDamagedError(
                            step, f"array {name}{path} does not match its SHA-256")
        return (jax.device_put(_rewrap_keys(state, state_target)),
                jax.device_put(_rewrap_keys(best, best_target)), extra)

    def restore_newest(self, state_target, best_target,
                       check: Callable[[int, dict], None] | None = None):
        """``(step, state, best, extra)`` of the newest checkpoint passing :meth:`restore`, or None;
        each damaged one met is named in one warning line and moved to :attr:`damaged_dir`."""
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                return step, *self.restore(step, state_target, best_target, check)
            except CheckpointDamagedError as e:
                logging.warning("%s; moved to %s, trying the previous checkpoint", e,
                                self._set_aside(step))
        if steps:       # each one was damaged
            logging.warning("no intact checkpoint in %s: starting from round 0", self.directory)
        return None

    def _set_aside(self, step: int) -> str:
        dest = rundir.move_aside(os.path.join(self.directory, str(step)), self.damaged_dir,
                                 f"checkpoint-{step}")
        self._manager.reload()
        return dest

    def close(self, raise_errors: bool = True) -> None:
        """Finish a pending save and release the manager's resources. With ``raise_errors``
        False (an error is already on its way up), a failed save is only logged."""
        try:
            self.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if raise_errors:
                self._close_manager()
                raise
            logging.warning("%s", e)
        self._close_manager()

    def _close_manager(self) -> None:
        with contextlib.suppress(Exception):   # a failed save was reported already
            self._manager.close()
        if self._failed_save:     # its writes may still recreate them
            remove_temporaries(self.directory, settle_s=0.3)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close(raise_errors=exc[0] is None)


def _check_structure(step: int, directory: str, name: str, records, target) -> None:
    """The saved leaves of item ``name`` must be the target's leaves (path, dtype, shape)."""
    if not isinstance(records, list):
        raise CheckpointDamagedError(step, f"its integrity record lacks '{name}'")
    want = [[r[0], r[1], list(r[2])] for r in records]
    have = [r[:3] for r in leaf_records(target, digest=False)]
    if want == have:
        return
    diff = [(w, h) for w, h in zip(want, have) if w != h]
    if len(want) == len(have) and diff[0][0][0] == diff[0][1][0]:
        (path, dtype, shape), (_, dtype_here, shape_here) = diff[0]
        detail = f"{name}{path} is {dtype}{shape} there, {dtype_here}{shape_here} here"
    else:
        detail = f"other arrays in '{name}': {len(want)} there, {len(have)} here"
    raise CheckpointMismatchError(
        f"checkpoint {step} in {directory} holds a state of another shape ({detail}): it was "
        "written by another model or version of fedmix_jax. Use a new --workdir (or delete "
        "this one)")

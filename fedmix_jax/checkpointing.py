"""A thin wrapper around orbax's ``CheckpointManager`` for the training loop.

One checkpoint (a directory ``<workdir>/checkpoints/<round>/``) holds three items:

* ``state`` -- the :class:`~fedmix_jax.federated.FedState` (global pair, client pairs, per-client
  Adam states, round counter, PRNG key);
* ``best`` -- the params selected so far by validation Dice (global model 1, or for ``local`` the
  stacked client models 1);
* ``extra`` -- a JSON-able dict (the best-validation tracker, the config, bookkeeping).

Saving is asynchronous but safe with the round's buffer donation: the arrays are first copied to
host memory (synchronously, as orbax itself does), and only those copies are written in the
background, so the next round may donate the device buffers at once. Orbax writes each checkpoint
into a temporary directory and renames it when complete, so an interrupted save never looks like a
checkpoint; leftover temporary directories are removed when the manager is opened again.
:meth:`Checkpointer.close` (also used on Ctrl-C) waits for a pending save to finish.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "best", "extra")


def _host_copy(tree):
    """Host (NumPy) copies of every leaf, independent of the (possibly donated) device buffers."""
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _host_target(tree):
    """NumPy placeholders with the shapes and dtypes of ``tree`` (orbax then restores NumPy)."""
    def zeros(x):
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # no device transfer
        return np.zeros(np.shape(x), dtype)

    return jax.tree.map(zeros, tree)


class Checkpointer:
    """Save / restore ``(state, best_params, extra)`` under ``directory`` (one subfolder per round).

    Args:
      directory: where checkpoints live (created if missing).
      max_to_keep: how many of the most recent checkpoints to keep (``None``: all).
      async_save: write in a background thread (the host copy is always synchronous).
    """

    def __init__(self, directory: str, max_to_keep: int | None = 2, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's round, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, best_params, extra: dict[str, Any]) -> None:
        """Start saving round ``step``; returns once the arrays are copied to host memory."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_host_copy(state)),
            best=ocp.args.StandardSave(_host_copy(best_params)),
            extra=ocp.args.JsonSave(extra))
        self._manager.save(int(step), args=args, force=True)

    def restore(self, step: int, state_target, best_target) -> tuple[Any, Any, dict]:
        """Restore round ``step`` into the tree structure, shapes and dtypes of the targets.

        Returns ``(state, best_params, extra)``; the arrays are put on the default device
        *uncommitted*, exactly like freshly initialised ones, so a resumed run reuses the
        programs compiled for a fresh run (committed arrays would trigger a recompilation).
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_host_target(state_target)),
            best=ocp.args.StandardRestore(_host_target(best_target)),
            extra=ocp.args.JsonRestore())
        restored = self._manager.restore(int(step), args=args)
        return (jax.device_put(restored.state), jax.device_put(restored.best),
                dict(restored.extra))

    def read_extra(self, step: int) -> dict:
        """Only the JSON item of round ``step`` (cheap; no arrays are read)."""
        restored = self._manager.restore(int(step), args=ocp.args.Composite(
            extra=ocp.args.JsonRestore()))
        return dict(restored.extra)

    def wait_until_finished(self) -> None:
        """Block until a pending asynchronous save is complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish a pending save and release the manager's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Checkpointer", "ITEMS"]

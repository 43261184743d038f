"""What a run prints while it works: absl log lines on stderr (:func:`setup_logging`, around a
progress bar, orbax's internal lines kept out) and the progress over rounds (:class:`Progress`)."""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import sys

import numpy as np
from absl import logging

_bar = None  # the active progress bar: log lines are written around it


class _Handler(py_logging.StreamHandler):
    """absl's format, to the *current* ``sys.stderr``, around an active tqdm bar."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.PythonFormatter())
        self.addFilter(_quiet_libraries)

    def emit(self, record) -> None:
        self.stream = sys.stderr
        bar = _bar
        with contextlib.nullcontext() if bar is None else bar.external_write_mode(file=sys.stderr):
            super().emit(record)


_LIBRARY_DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "tensorstore"))


def _quiet_libraries(record) -> bool:
    """Only orbax's / TensorStore's CRITICAL lines pass (the job reports failures in one line)."""
    path = record.pathname or ""
    return record.levelno >= py_logging.CRITICAL or not any(d in path for d in _LIBRARY_DIRS)


def _drop_late_tensorstore_noise() -> None:
    """Drop the 'Event loop is closed' tracebacks of TensorStore's late callbacks after a failed
    read of a damaged checkpoint; other unraisable exceptions are reported as before."""
    hook = sys.unraisablehook
    if getattr(hook, "_fedmix_filter", False):
        return

    def filtered(unraisable):
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)):
            hook(unraisable)

    filtered._fedmix_filter = True
    sys.unraisablehook = filtered


def setup_logging(verbosity: int = logging.INFO) -> None:
    """Show absl log lines of ``verbosity`` and above on stderr (idempotent), no orbax noise."""
    logger = logging.get_absl_logger()
    if not any(isinstance(h, _Handler) for h in logger.handlers):
        logger.addHandler(_Handler())
    # absl calls logging.basicConfig() on first use (a root handler): else every line twice
    logger.propagate = False
    logging.set_verbosity(verbosity)
    _drop_late_tensorstore_noise()


class Progress:
    """A tqdm bar over rounds, or (quiet) one log line per round."""

    def __init__(self, quiet: bool, start: int, total: int):
        global _bar
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="rounds", unit="round",
                            file=sys.stderr, dynamic_ncols=True)
            _bar = self.bar

    def update(self, rec: dict, num_rounds: int, last_dice: float | None) -> None:
        steps, loss, weak, rate = (np.asarray(rec[k]) for k in ("steps", "loss1", "weak",
                                                                  "selection_rate"))
        mean_loss = float(loss[steps > 0].mean()) if (steps > 0).any() else float("nan")
        sel = float(rate[weak > 0].mean()) if (weak > 0).any() else float("nan")
        dice = float("nan") if last_dice is None else last_dice
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.3f}", dice=f"{dice:.3f}", sel=f"{sel:.2f}",
                                 refresh=False)
            self.bar.update(1)
        else:
            msg = (f"round {rec['round']}/{num_rounds}  loss {mean_loss:.4f}  selection {sel:.2f}"
                   f"  {rec['round_time_s']:.2f} s")
            if "val_mean_dice" in rec:
                msg += (f"  val dice {rec['val_mean_dice']:.4f}"
                        f"  test dice {rec['test_mean_dice']:.4f}")
            logging.info("%s", msg)

    def close(self) -> None:
        global _bar
        if self.bar is not None:
            self.bar.close()
            if _bar is self.bar:
                _bar = None
            self.bar = None

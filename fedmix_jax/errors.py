"""Errors with a message for the user: ``main`` prints them in one line and exits with
``exit_code`` (2 for a user mistake, 1 for a run that diverged), without a traceback."""

from __future__ import annotations


class RunError(Exception):
    """An error with a message for the user (main prints it without a traceback)."""

    exit_code = 2


class ConfigError(RunError, ValueError):
    """The config is invalid (e.g. a crop larger than the images)."""


class ConfigMismatchError(RunError, ValueError):
    """``workdir`` holds a run made with a different config."""


class DataError(RunError, ValueError):
    """The data could not be loaded (missing download, bad input file, bad data config)."""


class TrainingDivergedError(RunError, FloatingPointError):
    """A client's training loss is NaN or infinite; ``round`` and ``clients`` say where."""

    exit_code = 1

    def __init__(self, message: str, round: int, clients: list[int]):  # noqa: A002
        super().__init__(message)
        self.round = round
        self.clients = clients

"""The job's settings around the round, typed and read once from the run's ``ConfigDict``
(:meth:`JobSettings.from_config`, the only reader of these fields): :class:`JobSettings` and
:class:`MemorySettings` (``config.data``'s result-neutral fields). Each default is written here
once; ``configs/*.py`` take theirs from these classes (:mod:`fedmix_jax.config_defaults`).
"""

from __future__ import annotations

import dataclasses

from fedmix_jax.errors import ConfigError
from fedmix_jax.round_selection import SELECT_ROUND_BY


def _field(config, key: str, default):
    """``config[key]`` where the ConfigDict has it and it is set, else ``default``."""
    if config is None or key not in config:
        return default
    value = config[key]
    return default if value is None and default is not None else value


@dataclasses.dataclass(frozen=True)
class MemorySettings:
    """How the data sits in device memory (``config.data``'s fields of the same names, each
    described in docs/main_job.md, "Configs"); none changes a result."""

    device_data_budget_gb: float | None = None
    stream_block_steps: int = 8
    pack_labels: bool = False
    compact: bool = True

    @classmethod
    def from_config(cls, data) -> "MemorySettings":
        """From ``config.data`` (a missing field: its default)."""
        convert = {"device_data_budget_gb": lambda v: None if v is None else float(v),
                   "stream_block_steps": int}
        try:
            return cls(**{f.name: convert.get(f.name, bool)(_field(data, f.name, f.default))
                          for f in dataclasses.fields(cls)})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid config: data: {e}") from None


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """What the job reads around the round: the config's ``eval_local_models``,
    ``fine_tune_epochs``, ``select_round_by`` (:data:`~fedmix_jax.round_selection.SELECT_ROUND_BY`),
    ``diagnostics``, ``compilation_cache`` ("default", a directory or "off")
    and ``train.cpu_devices`` (each in docs/main_job.md, "Configs"), and ``memory``
    (:class:`MemorySettings`). Raises :class:`~fedmix_jax.errors.ConfigError` for a value of the
    wrong type, a negative ``fine_tune_epochs`` or an unknown ``select_round_by``."""

    eval_local_models: bool = False
    fine_tune_epochs: int = 0
    select_round_by: str = "mean_dice"
    diagnostics: bool = False
    compilation_cache: str = "default"
    cpu_devices: int = 1
    memory: MemorySettings = MemorySettings()

    @classmethod
    def from_config(cls, config) -> "JobSettings":
        """From the run's ConfigDict (a missing field: its default)."""
        d = cls()
        try:
            cpu_devices = int(_field(config.get("train"), "cpu_devices", d.cpu_devices))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid config: train.cpu_devices: {e}") from None
        epochs = _field(config, "fine_tune_epochs", d.fine_tune_epochs)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"invalid config: fine_tune_epochs must be an integer >= 0 (0: off),"
                              f" got {epochs!r}")
        select_by = _field(config, "select_round_by", d.select_round_by)
        if select_by not in SELECT_ROUND_BY:
            raise ConfigError(f"invalid config: select_round_by must be one of "
                              f"{', '.join(SELECT_ROUND_BY)}, got {select_by!r}")
        cache = config.get("compilation_cache", d.compilation_cache)   # None: off, not default
        return cls(eval_local_models=bool(_field(config, "eval_local_models", d.eval_local_models)),
                   fine_tune_epochs=epochs, select_round_by=select_by,
                   diagnostics=bool(_field(config, "diagnostics", d.diagnostics)),
                   compilation_cache="off" if cache is None else str(cache),
                   cpu_devices=cpu_devices, memory=MemorySettings.from_config(config.get("data")))


__all__ = ["JobSettings", "MemorySettings"]

"""The job's settings around the round, typed: built once from the run's ``ConfigDict``.

:class:`~fedmix_jax.config.RoundConfig` is what the compiled round needs; these are what the job
around it reads (evaluation cadence, local models, diagnostics, the compilation cache, CPU
devices) and how the data sits in device memory (:class:`MemorySettings`, ``config.data``'s
result-neutral fields). Each default is written here once: ``configs/*.py`` take theirs from
these classes (:mod:`fedmix_jax.config_defaults`), and a ConfigDict without a field gets the same
default from :meth:`JobSettings.from_config`, the only reader of these fields.
"""

from __future__ import annotations

import dataclasses

from fedmix_jax.errors import ConfigError


def _field(config, key: str, default):
    """``config[key]`` where the ConfigDict has it and it is set, else ``default``."""
    if config is None or key not in config:
        return default
    value = config[key]
    return default if value is None and default is not None else value


@dataclasses.dataclass(frozen=True)
class MemorySettings:
    """How the data sits in device memory (``config.data``); none changes a result.

    device_data_budget_gb: GiB the training split may take on the device (None: no bound); a
      larger split streams block by block from the host or the array_record cache
      (docs/streaming.md).
    stream_block_steps: local steps per streamed block (device memory grows with it times the
      batch size).
    pack_labels: masks and boxes bit-packed, 8 pixels per byte (:mod:`fedmix_jax.data.federation`).
    compact: the splits read one client at a time go to the device without padding
      (:mod:`fedmix_jax.data.compact`).
    """

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
    """What the job reads around the round.

    eval_local_models: also test each client's local (pre-aggregation) model 1 on its own test
      split (``local_test_*`` keys).
    diagnostics: pseudo-label quality against the true masks in ``metrics.jsonl`` (``pl_*``;
      :mod:`fedmix_jax.diagnostics`; needs true masks for the weak samples).
    compilation_cache: "default" (``$FEDMIX_JAX_CACHE_DIR`` or ``~/.cache/fedmix_jax/jax_cache``),
      a directory, or "off" (:mod:`fedmix_jax.compilation_cache`).
    cpu_devices: CPU only: 0 = one JAX device per core (the clients side by side on them, the
      ``sharded`` executor when ``train.executor`` is "auto"); 1 = one device
      (:mod:`fedmix_jax.cpu_cores`).
    memory: :class:`MemorySettings` (``config.data``).
    """

    eval_local_models: bool = False
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
        cache = config.get("compilation_cache", d.compilation_cache)   # None: off, not default
        return cls(eval_local_models=bool(_field(config, "eval_local_models",
                                                 d.eval_local_models)),
                   diagnostics=bool(_field(config, "diagnostics", d.diagnostics)),
                   compilation_cache="off" if cache is None else str(cache),
                   cpu_devices=cpu_devices, memory=MemorySettings.from_config(config.get("data")))


__all__ = ["JobSettings", "MemorySettings"]

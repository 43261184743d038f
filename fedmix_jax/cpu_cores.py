"""A CPU's cores as JAX devices, so that clients train side by side instead of one after another.

``--config.train.cpu_devices=0`` asks JAX for one CPU device per usable core and runs the
``sharded`` executor over them (off by default: equal to one device only up to float rounding). The
count must be chosen before JAX starts its backends: call :func:`use_cpu_cores` right after the
imports (or set ``JAX_NUM_CPU_DEVICES``); too late, it logs so. Details: docs/cpu_speed.md.
"""
from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging
from jax._src import xla_bridge

from fedmix_jax.errors import ConfigError
from fedmix_jax.job_settings import JobSettings


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):      # not Linux
        return max(1, os.cpu_count() or 1)


def use_cpu_cores(count: int = 0) -> int:
    """Asks JAX for ``count`` CPU devices (``0``: one per usable core); returns how many it has.

    Leaves the count alone when ``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS`` choose it; once JAX's
    backends have started, logs a warning and returns the current count. Raises ``ValueError`` for
    ``count < 0``."""
    if count < 0:
        raise ValueError(f"cpu_devices must be >= 0 (0: one per core), got {count}")
    wanted = usable_cores() if count == 0 else int(count)
    env_chosen = ("JAX_NUM_CPU_DEVICES" in os.environ
                  or "--xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""))
    if xla_bridge.backends_are_initialized():
        have = len(jax.devices("cpu"))
        if have != wanted and not env_chosen:
            logging.warning("cpu_devices: JAX has already started with %d CPU device(s); %d can "
                            "only be asked for before the first JAX computation of the process "
                            "(see fedmix_jax.cpu_cores). Going on with %d.", have, wanted, have)
        return have
    if not env_chosen:
        jax.config.update("jax_num_cpu_devices", wanted)
    return len(jax.devices("cpu"))


def cpu_devices_from_config(config) -> int:
    """:func:`use_cpu_cores` for ``config.train.cpu_devices`` (absent or ``1``: nothing is asked,
    returns 1); a negative count raises :class:`~fedmix_jax.errors.ConfigError`."""
    setting = JobSettings.from_config(config).cpu_devices
    if setting == 1:
        return 1
    try:
        return use_cpu_cores(setting)
    except ValueError as e:
        raise ConfigError(f"invalid config: train.cpu_devices: {e}") from None


def executor_for_devices(round_config, config, num_clients: int):
    """``round_config`` with the ``sharded`` executor over ``min(devices, clients)`` CPU devices
    when ``train.cpu_devices`` asks for several, ``train.executor`` is ``"auto"`` and JAX has
    several CPU devices; otherwise ``round_config`` itself (``train.num_devices`` is kept)."""
    asked_auto = "executor" in config.train and str(config.train.executor) == "auto"
    if (JobSettings.from_config(config).cpu_devices == 1 or not asked_auto or num_clients < 2
            or jax.default_backend() != "cpu" or len(jax.devices()) < 2):
        return round_config
    num = round_config.num_devices or min(len(jax.devices()), num_clients)
    logging.info("cpu_devices: %d clients on %d CPU devices (executor sharded)", num_clients, num)
    return dataclasses.replace(round_config, executor="sharded", num_devices=num)

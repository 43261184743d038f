"""JAX's persistent compilation cache, on for the main job, ``compare``, notebooks and benchmarks.

XLA executables go to a directory on disk (:func:`resolve_cache_dir`), keyed by the program, the
JAX/XLA versions, the flags and the device, so a second process with the same shapes loads them
instead of compiling (about 20 s for the default job on a CPU). The directory is only ever added
to; delete it to reclaim the space. Measurements: docs/speed.md.

    from fedmix_jax import compilation_cache
    compilation_cache.enable()            # before the first jit call
"""
from __future__ import annotations

import os

import jax
from absl import logging


#: Environment variable that overrides the default location ("" / "off" / "none" disables).
ENV_VAR = "FEDMIX_JAX_CACHE_DIR"

_OFF = ("", "off", "none")


def resolve_cache_dir(cache_dir: str | None = "default") -> str | None:
    """The absolute directory :func:`enable` would use, or None if the cache is off.

    ``cache_dir``: a path, ``None`` / ``""`` / ``"off"`` / ``"none"`` (off), or ``"default"``
    (the ``FEDMIX_JAX_CACHE_DIR`` variable if set, else ``$XDG_CACHE_HOME/fedmix_jax/jax_cache``
    or ``~/.cache/fedmix_jax/jax_cache``).
    """
    if cache_dir == "default":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.environ.get(ENV_VAR, os.path.join(base, "fedmix_jax", "jax_cache"))
    if cache_dir is None or str(cache_dir).strip().lower() in _OFF:
        return None
    return os.path.abspath(os.path.expanduser(str(cache_dir)))


def _set_dir(path: str | None) -> None:
    if jax.config.jax_compilation_cache_dir == path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    try:  # the cache is initialised once per process, at the first compile: let it re-read
        from jax.experimental.compilation_cache import compilation_cache as cc

        cc.reset_cache()
    except Exception:  # noqa: BLE001 - older/newer JAX without reset_cache: the dir still applies
        pass


def enable(cache_dir: str | None = "default", *, min_compile_time_secs: float = 0.0,
           min_entry_size_bytes: int = 0) -> str | None:
    """Turns JAX's persistent compilation cache on, in ``cache_dir``; returns the absolute
    directory used, or None when the cache is off (then :func:`disable` is called).

    Call it before the programs you want cached are compiled; calling it again with another
    directory switches to it.

    Args:
      cache_dir: the directory (created if missing), ``"default"`` or off
        (:func:`resolve_cache_dir`).
      min_compile_time_secs: only programs that took at least this long to compile are written
        (JAX's default is 1 s; 0: every program, the many small ones of a run included).
      min_entry_size_bytes: only entries at least this large are written (0: all).
    """
    path = resolve_cache_dir(cache_dir)
    if path is None:
        disable()
        return None
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    jax.config.update("jax_enable_compilation_cache", True)
    _set_dir(path)
    return path


def disable() -> None:
    """Turns the persistent compilation cache off for the rest of the process."""
    jax.config.update("jax_enable_compilation_cache", False)
    _set_dir(None)


def enable_from_config(config) -> str | None:
    """:func:`enable` with ``config.compilation_cache`` ("default", a directory or "off") of a
    run's ConfigDict; a cache that cannot be used (e.g. a read-only home) is logged, not fatal."""
    from fedmix_jax.job_settings import JobSettings

    setting = JobSettings.from_config(config).compilation_cache
    try:
        path = enable(setting)
    except OSError as e:
        logging.warning("compilation cache %r not usable (%s); compiling without it", setting, e)
        return None
    if path:
        logging.info("compilation cache: %s", path)
    return path

"""JAX's persistent compilation cache, on for the main job, ``compare``, notebooks and benchmarks.

    from fedmix_jax import compilation_cache
    compilation_cache.enable()            # before the first jit call

Where it goes, what it keys on, what it saves: docs/speed.md ("No compile wait on the second run").
"""
from __future__ import annotations

import os

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from fedmix_jax.job_settings import JobSettings

#: Environment variable that overrides the default location ("" / "off" / "none" disables).
ENV_VAR = "FEDMIX_JAX_CACHE_DIR"


def resolve_cache_dir(cache_dir: str | None = "default") -> str | None:
    """The absolute directory :func:`enable` would use, or None if the cache is off.

    ``cache_dir``: a path, ``None`` / ``""`` / ``"off"`` / ``"none"`` (off), or ``"default"``
    (``$FEDMIX_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or ``~/.cache`` /fedmix_jax/jax_cache)."""
    if cache_dir == "default":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.environ.get(ENV_VAR, os.path.join(base, "fedmix_jax", "jax_cache"))
    if cache_dir is None or str(cache_dir).strip().lower() in ("", "off", "none"):
        return None
    return os.path.abspath(os.path.expanduser(str(cache_dir)))


def enable(cache_dir: str | None = "default") -> str | None:
    """Turns the cache on in ``cache_dir`` (created if missing; see :func:`resolve_cache_dir`)
    for every program, however quick to compile; returns the directory, or None (cache off)."""
    path = resolve_cache_dir(cache_dir)
    if path is not None:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_enable_compilation_cache", path is not None)
    if jax.config.jax_compilation_cache_dir != path:   # JAX reads it at the first compile: reset
        jax.config.update("jax_compilation_cache_dir", path)
        jax_cache.reset_cache()
    return path


def enable_from_config(config) -> str | None:
    """:func:`enable` with the run's ``config.compilation_cache``; an unusable cache (e.g. a
    read-only home) is logged, not fatal."""
    setting = JobSettings.from_config(config).compilation_cache
    try:
        path = enable(setting)
    except OSError as e:
        logging.warning("compilation cache %r not usable (%s); compiling without it", setting, e)
        return None
    if path:
        logging.info("compilation cache: %s", path)
    return path

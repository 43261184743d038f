"""fedmix_jax.compilation_cache: where the cache goes, that it is written and read back, off."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from fedmix_jax import compilation_cache as cc


@pytest.fixture
def restore_jax_config():
    keys = ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    jax_cache.reset_cache()     # the restored directory is re-read by the next compile


def test_resolve_default_env_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv(cc.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.resolve_cache_dir() == str(tmp_path / "xdg" / "fedmix_jax" / "jax_cache")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cc.resolve_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache",
                                                  "fedmix_jax", "jax_cache")
    monkeypatch.setenv(cc.ENV_VAR, str(tmp_path / "env"))
    assert cc.resolve_cache_dir() == str(tmp_path / "env")
    assert cc.resolve_cache_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")  # arg wins
    assert cc.resolve_cache_dir("default") == str(tmp_path / "env")
    for off in ("", "off", "OFF", "none"):
        monkeypatch.setenv(cc.ENV_VAR, off)
        assert cc.resolve_cache_dir() is None
        assert cc.resolve_cache_dir(off) is None
    assert cc.resolve_cache_dir(None) is None


def test_enable_writes_entries_and_off_does_not(tmp_path, restore_jax_config):
    path = cc.enable(str(tmp_path / "cache"))
    assert path == str(tmp_path / "cache") and jax.config.jax_compilation_cache_dir == path
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()
    assert os.listdir(path), "no cache entry written"
    assert cc.enable("off") is None
    assert jax.config.jax_compilation_cache_dir is None
    assert not jax.config.jax_enable_compilation_cache


def test_second_process_reads_the_cache(tmp_path):
    # A fresh process per run, as a user's second run: the second one loads the executable.
    script = (
        "import sys, jax, jax.numpy as jnp\n"
        "from fedmix_jax import compilation_cache as cc\n"
        "cc.enable(sys.argv[1])\n"
        "try:\n"
        "    from jax._src import monitoring  # JAX's own cache-hit events (internal API)\n"
        "except ImportError:\n"
        "    print('HITS -1'); sys.exit()\n"
        "hits = []\n"
        "monitoring.register_event_listener(lambda e, **k: hits.append(e)"
        " if 'cache_hits' in e else None)\n"
        "jax.jit(lambda x: jnp.cos(x) * 1.75 - 2)(jnp.arange(5.0)).block_until_ready()\n"
        "print('HITS', len(hits))\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    runs = [subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], env=env,
                           capture_output=True, text=True, check=True) for _ in range(2)]
    hits = [int(r.stdout.split("HITS")[1]) for r in runs]
    if -1 in hits:
        pytest.skip("this JAX has no jax._src.monitoring to count cache hits")
    assert hits[0] == 0 and hits[1] >= 1, (hits, runs[1].stderr[-2000:])

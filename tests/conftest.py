"""Suite-wide setup: the JAX persistent compilation cache of every job the tests run (in this
process and in the subprocesses they start) goes to a fresh temporary folder, unless
``FEDMIX_JAX_CACHE_DIR`` is already set. A cache left on the machine by other runs never reaches
the tests (in one run here, after several processes sharing ~/.cache/fedmix_jax had been killed,
jaxlib crashed while reading an entry back; with the cache emptied the same tests passed)."""

import atexit
import os
import shutil
import tempfile

if "FEDMIX_JAX_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="fedmix_jax_test_cache_")
    os.environ["FEDMIX_JAX_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)


def pytest_collection_modifyitems(session, config, items):
    """The Flower tests run last: they leave worker threads in the process, and a later XLA
    compilation (tests/test_streaming.py) crashed in one full run here with them alive."""
    items.sort(key=lambda item: "test_flower" in item.nodeid)


import gc

import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, JAX's in-memory caches of traced and compiled programs are
    emptied. Without this the suite's one process kept every executable it ever compiled (6.7 GB
    resident and growing by ~75 % of the suite) and XLA crashed (SIGSEGV) inside a later
    compilation, at the same test in three full runs; each module's programs are its own."""
    yield
    jax = __import__("sys").modules.get("jax")
    if jax is not None:
        jax.clear_caches()
    gc.collect()

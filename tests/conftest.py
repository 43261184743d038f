"""Suite-wide setup: the JAX persistent compilation cache of every job the tests run (in this
process and in the subprocesses they start) goes to a fresh temporary folder (under pytest-xdist:
a subfolder of it per worker), unless ``FEDMIX_JAX_CACHE_DIR`` is already set. A cache left on the
machine by other runs never reaches the tests (in one run here, after several processes sharing
~/.cache/fedmix_jax had been killed, jaxlib crashed while reading an entry back; with the cache
emptied the same tests passed)."""

import atexit
import os
import shutil
import tempfile

if "FEDMIX_JAX_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="fedmix_jax_test_cache_")
    os.environ["FEDMIX_JAX_CACHE_DIR"] = os.environ["FEDMIX_JAX_TEST_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)

# Under pytest-xdist (the README's test command) each worker gets a folder of its own in the
# suite's cache: JAX writes an entry with a plain write, and a worker could otherwise read another
# worker's half-written entry.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and os.environ["FEDMIX_JAX_CACHE_DIR"] == os.environ.get("FEDMIX_JAX_TEST_CACHE"):
    os.environ["FEDMIX_JAX_CACHE_DIR"] = os.path.join(os.environ["FEDMIX_JAX_TEST_CACHE"], _WORKER)
    os.makedirs(os.environ["FEDMIX_JAX_CACHE_DIR"], exist_ok=True)


def pytest_collection_modifyitems(session, config, items):
    """The Flower tests run last: they leave worker threads in the process, and a later XLA
    compilation (tests/test_streaming.py) crashed in one full run here with them alive."""
    items.sort(key=lambda item: "test_flower" in item.nodeid)


import gc

import pytest


def _memory_maps() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's limit vm.max_map_count), or None where
    /proc does not tell (not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            count = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            return count, int(f.read().strip())
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After a test module, once this process holds more than a third of the memory mappings the
    kernel allows, JAX's in-memory caches of traced and compiled programs are emptied. Each XLA:CPU
    executable keeps its own mappings; the suite's one process kept every executable it ever
    compiled, and at ~75 % of the suite (6.7 GB resident) XLA crashed with SIGSEGV inside a later
    compilation, at the same test in three full runs (vm.max_map_count 65530 here). Emptying the
    caches after every module instead cost recompilations; this does it only when needed."""
    yield
    maps = _memory_maps()
    jax = __import__("sys").modules.get("jax")
    if jax is not None and maps is not None and maps[0] > maps[1] // 3:
        jax.clear_caches()
        gc.collect()

"""Flower 1.42's fixed waits, capped for FedMix rounds — every such change in one place.

:func:`cap_supernode_sleeps` (the SuperNode's 3 s idle sleep, 0.5 s reply checks) and
:func:`cap_object_pulls` (the 1 s first back-off of object pulls) replace the module attributes
those Flower functions look up; any other Flower version is refused. Details:
docs/across_sites.md, docs/flower_upstream.md.
"""

from __future__ import annotations

import functools
import importlib
import time as _time

SUPPORTED_FLWR = ("1.42.",)
DEFAULT_CAP = 0.2

# (module, attribute): Flower's object-pull functions, as each hop looks them up.
_PULL_FUNCTIONS = (
    ("flwr.supernode.start_client_internal", "pull_objects"),           # SuperNode <- SuperLink
    ("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree"),  # ClientApp
    ("flwr.superlink.grid.http_grid", "pull_objects"),                  # ServerApp <- SuperLink
)


class _CappedSleep:
    """The ``time`` module inside one Flower module, but ``sleep(s)`` sleeps ``min(s, cap)``, or
    ``min(s, local_cap)`` for sub-second waits (the SuperNode's checks of its own memory)."""

    def __init__(self, cap: float, local_cap: float | None = None):
        self.cap = float(cap)
        self.local_cap = self.cap if local_cap is None else float(local_cap)

    def sleep(self, seconds: float) -> None:
        seconds = float(seconds)
        _time.sleep(min(seconds, self.cap if seconds >= 1 else self.local_cap))

    def __getattr__(self, name):
        return getattr(_time, name)


def check_flower_version() -> None:
    import flwr

    if not str(flwr.__version__).startswith(SUPPORTED_FLWR):
        raise RuntimeError(
            f"Flower {flwr.__version__} is not a version fedmix_jax.flower.latency was checked "
            f"against ({', '.join(v + 'x' for v in SUPPORTED_FLWR)}); install the pinned version "
            "(pip install -e '.[flower]') or run without the capped waits")


def _check_cap(cap: float) -> float:
    cap = float(cap)
    if not cap > 0:
        raise ValueError(f"the wait cap must be > 0 seconds, got {cap}")
    return cap


def cap_supernode_sleeps(cap: float = DEFAULT_CAP, local_cap: float | None = None) -> None:
    """Cap the SuperNode loop's 3 s idle sleep at ``cap`` s, and its 0.5 s checks of its own
    memory for the ClientApp's reply at ``local_cap`` (default ``cap``)."""
    cap = _check_cap(cap)
    local_cap = None if local_cap is None else _check_cap(local_cap)
    check_flower_version()
    loop = importlib.import_module("flwr.supernode.start_client_internal")
    loop.time = _CappedSleep(cap, local_cap)


def cap_pull(module, attr: str, cap: float) -> None:
    """Make Flower's object-pull function ``module.attr`` back off from ``cap`` s up to ``4 * cap``
    s, with no limit on tries (re-capping wraps the original once)."""
    fn = getattr(module, attr)
    original = getattr(fn, "_fedmix_original", fn)
    capped = functools.partial(original, initial_backoff=cap, backoff_cap=4 * cap,
                               max_tries_per_object=None)
    capped._fedmix_original = original  # type: ignore[attr-defined]
    setattr(module, attr, capped)


def cap_object_pulls(cap: float = DEFAULT_CAP) -> list[str]:
    """Start the object-pull back-off at ``cap`` s (Flower: 1 s) and cap it at ``4 * cap``
    (Flower: 10 s), for every hop importable in this process. Returns the patched names."""
    cap = _check_cap(cap)
    check_flower_version()
    patched = []
    for module_name, attr in _PULL_FUNCTIONS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cap_pull(module, attr, cap)
        patched.append(f"{module_name}.{attr}")
    return patched

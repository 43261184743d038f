"""Flower 1.42's fixed waits, capped for FedMix rounds — every such change in one place.

A FedMix round is one short exchange per site, so Flower's fixed waits, made for long idle runs,
dominate a deployed round (measured at the default synthetic size; docs/across_sites.md):

* the SuperNode sleeps **3 s** whenever it finds no message, and checks for its ClientApp's reply
  every 0.5 s (``flwr.supernode.start_client_internal``): the site that replies last is asleep
  when the next round's message arrives;
* a message's objects are pulled with an exponential back-off that starts at **1 s** when an
  object is not there yet (``flwr.supercore.inflatable.inflatable_utils.pull_objects``). Each
  hop makes that race: the SuperNode starts the ClientApp's task before it has received the
  objects, the SuperNode asks for objects the ServerApp is still uploading, the ServerApp asks
  for a reply's objects the SuperNode is still uploading. One round paid 1 + 2 s at one hop.

:func:`cap_supernode_sleeps` and :func:`cap_object_pulls` cap these waits at ``cap`` seconds
(default 0.2) in the process that calls them, by replacing the module attributes those Flower
functions look up; the protocol, TLS and authentication are untouched. The cost is a few more
small requests while waiting. Object pulls still give up after Flower's own ``PULL_MAX_TIME``
(not after a number of tries, which would shorten the time allowed for a large upload).

Only the Flower version the ``fedmix_jax[flower]`` extra pins is patched; another version is
refused with a message rather than patched blindly.
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
    """Stands in for the ``time`` module inside one Flower module: ``sleep(s)`` sleeps
    ``min(s, cap)``, or ``min(s, local_cap)`` for Flower's sub-second waits (the SuperNode's checks
    of its own memory for a reply); every other attribute is the real ``time`` module's."""

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
    """Cap the SuperNode loop's fixed sleeps at ``cap`` s: its 3 s idle sleep (then it asks the
    SuperLink again) and its 0.5 s checks of its own memory for the ClientApp's reply, which
    ``local_cap`` caps instead if given (a ClientApp in the same process replies in memory)."""
    cap = _check_cap(cap)
    local_cap = None if local_cap is None else _check_cap(local_cap)
    check_flower_version()
    loop = importlib.import_module("flwr.supernode.start_client_internal")
    loop.time = _CappedSleep(cap, local_cap)


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
        fn = getattr(module, attr)
        original = getattr(fn, "_fedmix_original", fn)
        capped = functools.partial(original, initial_backoff=cap, backoff_cap=4 * cap,
                                   max_tries_per_object=None)
        capped._fedmix_original = original  # type: ignore[attr-defined]
        setattr(module, attr, capped)
        patched.append(f"{module_name}.{attr}")
    return patched

"""Flower's SuperNode with FedMix's capped waits: ``python -m fedmix_jax.flower.supernode``.

This is ``flower-supernode`` itself (same arguments, TLS, authentication, isolation modes and node
config) with one more option, ``--poll-interval`` (seconds, default 0.2): Flower's fixed waits in
the SuperNode — 3 s when it finds no message, 0.5 s between checks for its ClientApp's reply, and
a 1 s first back-off when it pulls an object the ServerApp is still uploading — are capped at it
(see :mod:`fedmix_jax.flower.latency`). Log lines carry timestamps.

    python -m fedmix_jax.flower.supernode --poll-interval 0.2 --superlink ... (flower-supernode args)

The cost is one small HTTPS request to the SuperLink every ``poll-interval`` while a site is
idle. ``flower-supernode`` works too, with its 3 s waits.
"""

from __future__ import annotations

import argparse
import os
import sys

from fedmix_jax.flower.latency import DEFAULT_CAP, cap_object_pulls, cap_supernode_sleeps


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--poll-interval", type=float, default=DEFAULT_CAP)
    ours, rest = p.parse_known_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        cap_supernode_sleeps(ours.poll_interval)
        cap_object_pulls(ours.poll_interval)
    except (RuntimeError, ValueError) as e:
        print(f"fedmix_jax.flower.supernode: {e}", file=sys.stderr)
        return 2
    from flwr.supercore.logger import update_console_handler
    from flwr.supernode.cli import flower_supernode

    # Timestamps on every line (a site's operator reads these logs); colours only on a terminal.
    update_console_handler(timestamps=True, colored=sys.stderr.isatty())
    sys.argv = ["flower-supernode"] + rest
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())

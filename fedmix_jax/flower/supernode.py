"""Flower's SuperNode with FedMix's capped waits: ``python -m fedmix_jax.flower.supernode``.

``flower-supernode`` itself (same arguments) plus ``--poll-interval`` (s, default 0.2; 0: Flower's
own waits, :mod:`~fedmix_jax.flower.latency`), ``--clientapp-in-process`` (the ClientApp in a
thread of this process, :mod:`~fedmix_jax.flower.in_process_runtime`; implies ``--isolation
process``) and ``--clientapp-nice N``. Details: docs/across_sites.md.

    python -m fedmix_jax.flower.supernode --poll-interval 0.2 --superlink ...
"""

from __future__ import annotations

import argparse
import os
import sys

from fedmix_jax.flower.in_process_runtime import LOCAL_POLL, serve_in_process
from fedmix_jax.flower.latency import DEFAULT_CAP, cap_object_pulls, cap_supernode_sleeps


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--poll-interval", type=float, default=DEFAULT_CAP)
    p.add_argument("--clientapp-in-process", action="store_true")
    p.add_argument("--clientapp-nice", type=int, default=0)
    p.add_argument("--isolation", default=None)
    ours, rest = p.parse_known_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if ours.clientapp_in_process:
        if ours.isolation not in (None, "process"):
            print("fedmix_jax.flower.supernode: --clientapp-in-process runs the ClientApp in this "
                  f"process; it cannot be combined with --isolation {ours.isolation}",
                  file=sys.stderr)
            return 2
        ours.isolation = "process"
    if ours.isolation is not None:
        rest += ["--isolation", ours.isolation]
    try:
        if ours.poll_interval != 0:       # 0: Flower's own waits (3 s idle, 1 s first back-off)
            local = LOCAL_POLL if ours.clientapp_in_process else None
            cap_supernode_sleeps(ours.poll_interval, local_cap=local)
            cap_object_pulls(ours.poll_interval)
    except (RuntimeError, ValueError) as e:
        print(f"fedmix_jax.flower.supernode: {e}", file=sys.stderr)
        return 2
    from flwr.supercore.logger import update_console_handler
    from flwr.supernode.cli import flower_supernode

    if ours.clientapp_in_process:
        cli_module = sys.modules["flwr.supernode.cli.flower_supernode"]
        start = cli_module.start_client_internal

        def start_with_clientapp(*args, **kwargs):
            # The node state exists only inside flower_supernode(): start the loop on it first.
            serve_in_process(kwargs["state_factory"], nice=ours.clientapp_nice)
            return start(*args, **kwargs)

        cli_module.start_client_internal = start_with_clientapp

    # Timestamps on every line (a site's operator reads these logs); colours only on a terminal.
    update_console_handler(timestamps=True, colored=sys.stderr.isatty())
    sys.argv = ["flower-supernode"] + rest
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())

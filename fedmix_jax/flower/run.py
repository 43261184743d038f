"""Start a FedMix run on a SuperLink and exit with its outcome: ``python -m fedmix_jax.flower.run``.

``flwr run --stream`` exits 0 when its run fails; this runs ``flwr run ... --format json`` (same
arguments), streams ``flwr log`` until the SuperLink ends the stream (it does when the run
finishes), then asks ``flwr ls`` for the outcome and exits 0 for ``finished:completed``, 1 for any
other end, 2 when the run could not be started or read. While the logs stream, ``flwr ls`` runs
only every ``--stream-poll`` seconds (each call starts a Python process that imports Flower's CLI,
about 2 core-seconds: polled every 2 s it took a fifth of a 2-core machine from the sites).

    python -m fedmix_jax.flower.run fedmix_jax/flower/app my-federation --run-config run.toml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

COMPLETED = "finished:completed"


def _json_of(text: str) -> dict:
    """The last JSON object printed in ``text`` (Flower prints other lines before it)."""
    for start in reversed([i for i, ch in enumerate(text) if ch == "{"]):
        try:
            return json.loads(text[start:])
        except ValueError:
            continue
    raise ValueError("no JSON object in the output")


def _say(msg: str) -> None:
    print(f"[fedmix_jax.flower.run {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start(flwr: str, app: str, superlink: str, extra: list[str]) -> str:
    """``flwr run`` in JSON mode; returns the run id (RuntimeError with Flower's output)."""
    res = subprocess.run([flwr, "run", app, superlink, "--format", "json", *extra],
                         capture_output=True, text=True)
    try:
        out = _json_of(res.stdout)
    except ValueError:
        out = {}
    if res.returncode != 0 or not out.get("success") or not out.get("run-id"):
        raise RuntimeError(f"flwr run did not start the run (exit {res.returncode}): "
                           f"{(res.stdout + res.stderr).strip()[-2000:]}")
    return str(out["run-id"])


def status(flwr: str, superlink: str, run_id: str) -> tuple[str, str]:
    """``(status, details)`` of run ``run_id`` from ``flwr ls --format json``."""
    res = subprocess.run([flwr, "ls", superlink, "--run-id", run_id, "--format", "json"],
                         capture_output=True, text=True)
    runs = [r for r in _json_of(res.stdout).get("runs", []) if str(r.get("run-id")) == run_id]
    if res.returncode != 0 or not runs:
        raise RuntimeError(f"flwr ls did not report run {run_id}: {res.stdout[-500:]}")
    return str(runs[0].get("status", "")), str(runs[0].get("status-details", "") or "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("app")
    p.add_argument("superlink")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between status checks")
    p.add_argument("--stream-poll", type=float, default=60.0,
                   help="seconds between status checks while the run's logs stream")
    p.add_argument("--no-logs", action="store_true", help="do not stream the run's logs")
    p.add_argument("--flwr", default=None, help="the flwr executable (default: next to Python)")
    args, extra = p.parse_known_args(argv)
    flwr = args.flwr or os.path.join(os.path.dirname(sys.executable), "flwr")
    if not os.path.exists(flwr):
        flwr = shutil.which("flwr") or flwr
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        run_id = start(flwr, args.app, args.superlink, extra)
    except RuntimeError as e:
        _say(f"error: {e}")
        return 2
    _say(f"run {run_id} started")
    logs = None if args.no_logs else subprocess.Popen(
        [flwr, "log", run_id, args.superlink, "--stream"])
    last, failures, next_check = None, 0, 0.0
    try:
        while True:
            if logs is not None and logs.poll() is None and time.monotonic() < next_check:
                time.sleep(min(0.2, args.poll))      # the stream ends when the run finishes
                continue
            next_check = time.monotonic() + args.stream_poll
            try:
                state, details = status(flwr, args.superlink, run_id)
            except (RuntimeError, ValueError) as e:
                failures += 1
                if failures >= 5:
                    _say(f"error: the status of run {run_id} cannot be read: {e}")
                    return 2
            else:
                failures = 0
                if state != last:
                    _say(f"run {run_id}: {state}")
                last = state
                if state.startswith("finished"):
                    break
            time.sleep(args.poll)
    finally:
        if logs is not None and logs.poll() is None:
            time.sleep(min(args.poll, 2.0))       # the last log lines
            logs.terminate()
            try:
                logs.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logs.kill()
    if state == COMPLETED:
        return 0
    _say(f"error: run {run_id} ended {state}" + (f": {details}" if details else ""))
    return 1


if __name__ == "__main__":
    sys.exit(main())

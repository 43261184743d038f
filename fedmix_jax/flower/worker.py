"""A hospital's long-running site worker: data, compiled site function and state stay in memory.

Flower's deployment engine starts a fresh ClientApp process for every message, so a ClientApp
that computes would import JAX, load its data, trace and compile the site function in every
round. The worker is started once per site next to its SuperNode::

    python -m fedmix_jax.flower.worker --socket /var/run/fedmix/site.sock \\
        --node-config 'data="folders" data-dir="/data/hospital" state-dir="/data/fedmix_state"'
    flower-supernode ... --node-config '... worker="unix:/var/run/fedmix/site.sock"'

and the ClientApp (:mod:`fedmix_jax.flower.client_app`) then only relays: it hands the broadcast
arrays to the worker over a Unix socket (file mode 0600: only the site's own user can connect)
and returns the worker's answer. The worker compiles once, on its first round.

Wire format (both directions): an 8-byte big-endian length and a UTF-8 JSON header, then an
8-byte length and an ``.npz`` payload (``np.savez``; read with ``allow_pickle=False``). Nothing is
ever unpickled.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import socket
import struct
import sys
import tempfile
import time

import numpy as np

log = logging.getLogger("fedmix_jax.flower.worker")


# ------------------------------------------------------------------------------------------------
# wire format


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def send_frame(conn: socket.socket, header: dict, arrays: dict[str, np.ndarray] | None) -> None:
    buf = io.BytesIO()
    if arrays:
        np.savez(buf, **{f"a{i}": np.asarray(v) for i, v in enumerate(arrays.values())})
    body = buf.getvalue()
    keys = list(arrays) if arrays else []
    head = json.dumps(dict(header, _keys=keys)).encode()
    conn.sendall(struct.pack(">Q", len(head)) + head + struct.pack(">Q", len(body)) + body)


def recv_frame(conn: socket.socket) -> tuple[dict, dict[str, np.ndarray]]:
    (n,) = struct.unpack(">Q", _recv_exact(conn, 8))
    header = json.loads(_recv_exact(conn, n).decode())
    (m,) = struct.unpack(">Q", _recv_exact(conn, 8))
    arrays: dict[str, np.ndarray] = {}
    if m:
        with np.load(io.BytesIO(_recv_exact(conn, m)), allow_pickle=False) as z:
            keys = header.pop("_keys", [])
            arrays = {k: z[f"a{i}"] for i, k in enumerate(keys)}
    else:
        header.pop("_keys", None)
    return header, arrays


def _record_from(arrays: dict[str, np.ndarray]):
    from flwr.app import Array, ArrayRecord

    rec = ArrayRecord()
    for k, v in arrays.items():
        rec[k] = Array(np.asarray(v, order="C"))
    return rec


def _arrays_from(record) -> dict[str, np.ndarray]:
    return {k: record[k].numpy() for k in record.keys()}


# ------------------------------------------------------------------------------------------------
# client side (inside the ClientApp process)


class WorkerClient:
    """The ClientApp's handle on the site worker at ``address`` (``unix:/path``)."""

    remote = True

    def __init__(self, address: str, timeout: float = 24 * 3600.0):
        if not address.startswith("unix:"):
            raise ValueError(f"worker address must be unix:/path, got {address!r}")
        self.path = address[len("unix:"):]
        self.timeout = timeout
        self._info = None

    def _call(self, header: dict, arrays=None):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(self.timeout)
            conn.connect(self.path)
            send_frame(conn, header, arrays)
            reply, out = recv_frame(conn)
        if "error" in reply:
            raise RuntimeError(f"site worker: {reply['error']}")
        return reply, out

    def info(self, shared: str | None) -> dict:
        if self._info is None:
            self._info, _ = self._call({"op": "info", "shared": shared})
        return self._info

    def train_record(self, shared, arrays, round_index, run_name, key_data, cfg, send_model):
        reply, out = self._call({"op": "train", "shared": shared, "round": int(round_index),
                                 "run_name": run_name, "key": [int(x) for x in key_data],
                                 "lam": float(cfg["lam"]), "beta": float(cfg["beta"]),
                                 "learning_rate": float(cfg["learning-rate"]),
                                 "send_model": bool(send_model)}, _arrays_from(arrays))
        return (_record_from(out) if send_model else None), reply["report"]

    def evaluate_record(self, shared, arrays, round_index):
        reply, _ = self._call({"op": "evaluate", "shared": shared, "round": int(round_index)},
                              None if arrays is None else _arrays_from(arrays))
        return reply["scores"]


# ------------------------------------------------------------------------------------------------
# server side (the worker process)


class SiteWorker:
    """Serves one site: its :class:`~fedmix_jax.flower.local_site.LocalSite` and its state."""

    def __init__(self, node_config: dict):
        self.node_config = node_config
        self.site = None
        self.site_key = None       # what decided self.site's data (local_site.data_key)
        self.state = {}            # run name -> (round, SiteState)

    def _site(self, shared):
        from fedmix_jax.flower.local_site import (LocalSite, config_from_json, data_key,
                                                  load_site_data)

        key = data_key(self.node_config, shared)
        if self.site is None or key != self.site_key:
            self.site = LocalSite(load_site_data(self.node_config,
                                                 config_from_json(shared) if shared else None))
            self.site_key = key
        return self.site

    def _state_path(self, run_name: str):
        d = self.node_config.get("state-dir")
        if not d:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_name) or "run"
        return os.path.join(str(d), f"{safe}.npz")

    def handle(self, header: dict, arrays: dict) -> tuple[dict, dict | None]:
        op = header.get("op")
        shared = header.get("shared")
        site = self._site(shared)
        if op == "info":
            return site.info(shared), None
        if op == "train":
            return self._train(site, header, arrays)
        if op == "evaluate":
            return self._evaluate(site, header, arrays)
        raise ValueError(f"unknown op {op!r}")

    def _train(self, site, header, arrays):
        import jax

        from fedmix_jax.config import HParams
        from fedmix_jax.flower import _core, records
        from fedmix_jax.flower.local_site import load_state, save_state

        shared, r, run = header["shared"], int(header["round"]), header["run_name"]
        pair = records.record_to_pair(_record_from(arrays), site.template_pair(shared))
        state = None
        kept = self.state.get(run)
        if kept is not None and kept[0] == r - 1:
            state = kept[1]
        elif r > 1 and self._state_path(run):
            loaded = load_state(self._state_path(run), site.template_state(shared))
            if loaded is not None and loaded[0] == r - 1:
                state = loaded[1]
        if state is None and r > 1:
            log.warning("no site state of round %d: fresh Adam moments", r - 1)
        hp = HParams.create(lam=header["lam"], beta=header["beta"],
                            learning_rate=header["learning_rate"])
        t0 = time.perf_counter()
        state, report = site.train(shared, pair, state, _core.key_from_numpy(header["key"]), hp,
                                   _core.round_index(r))
        state = jax.device_get(state)
        self.state = {run: (r, state)}
        if self._state_path(run):
            save_state(self._state_path(run), r, state)
        log.info("round %d trained in %.2f s", r, time.perf_counter() - t0)
        rep = {k: (int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v))
               for k, v in report.items()}
        out = None
        if header.get("send_model", True):
            out = _arrays_from(records.pair_to_record(state.params))
        return {"report": rep}, out

    def _evaluate(self, site, header, arrays):
        from fedmix_jax.flower import records

        shared = header["shared"]
        if arrays:
            params1 = records.record_to_model(_record_from(arrays),
                                              site.template_pair(shared).model1)
        else:
            if not self.state:
                raise RuntimeError("no local model to evaluate")
            params1 = next(iter(self.state.values()))[1].params.model1
        return {"scores": site.evaluate(shared, params1)}, None


def parse_node_config(text: str) -> dict:
    """``'data="folders" site-index=0'`` (Flower's node-config syntax) -> dict."""
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text])) if text else {}


def serve(path: str, worker: SiteWorker) -> None:
    if os.path.exists(path):
        os.unlink(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind inside a private 0700 folder, make the socket 0600, then move it into place: the
    # socket never appears with wider rights. (Not through the umask, which is per process and
    # races when several workers start in threads of one process.)
    private = tempfile.mkdtemp(prefix=".worker-", dir=parent)
    try:
        staged = os.path.join(private, "s")
        srv.bind(staged)
        os.chmod(staged, 0o600)
        os.replace(staged, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    srv.listen(4)
    log.info("site worker listening on %s", path)
    print(f"[fedmix_jax.flower.worker] listening on {path}", file=sys.stderr, flush=True)
    try:
        while True:
            conn, _ = srv.accept()
            with conn:
                try:
                    header, arrays = recv_frame(conn)
                    reply, out = worker.handle(header, arrays)
                except Exception as e:  # noqa: BLE001 - reported to the ClientApp, logged here
                    log.exception("request failed")
                    reply, out = {"error": f"{type(e).__name__}: {e}"}, None
                try:
                    send_frame(conn, reply, out)
                except (BrokenPipeError, ConnectionError):
                    log.warning("ClientApp went away before the reply")
    finally:
        srv.close()
        if os.path.exists(path):
            os.unlink(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True, help="Unix socket path (created with mode 0600)")
    p.add_argument("--node-config", default="", help="the site's node config (as the SuperNode's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s worker] %(message)s")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    serve(args.socket, SiteWorker(parse_node_config(args.node_config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

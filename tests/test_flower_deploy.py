"""Flower's deployment engine on localhost: TLS and SuperNode authentication.

A SuperLink with TLS (test certificates from scripts/make_certs.sh) and
``--enable-supernode-auth``; the coordinator registers one site's public key; that site's
SuperNode joins (listed online), an unregistered SuperNode is refused (exit code 305). The
SuperLink is ``python -m fedmix_jax.flower.superlink``: from an address that is not an admin host
(127.0.0.2 here) the Control API refuses everything -- an outsider's own key cannot be registered
(its SuperNode is then refused too), no run can be listed or started -- while the Fleet API and
the health check still answer. Offline,
loopback only, telemetry off, no dependency installation; the site's SuperNode runs the
ClientApp in its own process (``--clientapp-in-process``). The full FedMix run on this engine is
scripts/deploy_localhost.sh (minutes; figures in docs/across_sites.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("flwr")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("ssh-keygen")
         and os.path.exists(os.path.join(BIN, "flower-superlink"))),
    reason="needs openssl, ssh-keygen and the flwr executables")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home):
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_HOME=str(home),
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    return env


def _wait_for(predicate, timeout: float, what: str):
    t_end = time.time() + timeout
    while time.time() < t_end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# The flwr CLI run as an outsider: every IPv4 connection it opens leaves from 127.0.0.2.
OUTSIDER_CLI = """
import socket, sys
_connect = socket.socket.connect
def connect(self, address):
    if self.family == socket.AF_INET:
        self.bind(("127.0.0.2", 0))
    return _connect(self, address)
socket.socket.connect = connect
from flwr.cli.app import app
sys.argv = ["flwr"] + sys.argv[1:]
app()
"""


def _https(link: str, path: str, cafile: str, source: str, method: str = "POST") -> str:
    """``"<status> <body>"`` of one request to ``https://link/path`` sent from ``source``."""
    import http.client
    import ssl

    host, port = link.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=30, source_address=(source, 0),
                                       context=ssl.create_default_context(cafile=cafile))
    try:
        conn.request(method, path, body=b"" if method == "POST" else None,
                     headers={"content-type": "application/protobuf"})
        r = conn.getresponse()
        return f"{r.status} {r.read()[:200]!r}"
    finally:
        conn.close()


def test_tls_and_only_registered_supernodes_join(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run(["bash", os.path.join(REPO, "scripts", "make_certs.sh"), str(certs), "1"],
                   check=True, capture_output=True)
    home = tmp_path / "flwr_home"
    home.mkdir()
    port = _free_port()
    link = f"127.0.0.1:{port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "t"\n\n[superlink.t]\naddress = "{link}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n')
    env = _env(home)
    procs = []

    def start(args, log):
        f = open(tmp_path / log, "w")
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        procs.append(p)
        return p

    try:
        start([sys.executable, "-m", "fedmix_jax.flower.superlink", "--admin-hosts", "127.0.0.1",
               "--ssl-ca-certfile", str(certs / "ca.crt"),
               "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile",
               str(certs / "server.key"), "--enable-supernode-auth",
               "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port",
               str(port), "--database", str(tmp_path / "state.db")], "superlink.log")
        _wait_for(lambda: "Application startup complete" in (tmp_path / "superlink.log")
                  .read_text(), 60, "the SuperLink")
        # Plain HTTP (no TLS) is not served.
        import ssl
        import urllib.request

        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://{link}/", timeout=5)
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        reg = subprocess.run([os.path.join(BIN, "flwr"), "supernode", "register",
                              str(certs / "site_0.pub"), "t"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert reg.returncode == 0, reg.stdout + reg.stderr
        # An outsider (127.0.0.2: not an admin host) cannot register its own key, list or start
        # runs; it still reaches the Fleet API (Flower answers it, not the guard) and the health
        # check.
        ca = str(certs / "ca.crt")
        out = subprocess.run([sys.executable, "-c", OUTSIDER_CLI, "supernode", "register",
                              str(certs / "intruder.pub"), "t"], env=env, capture_output=True,
                             text=True, timeout=120)
        said = out.stdout + out.stderr
        assert out.returncode != 0 and "registered successfully" not in said, said
        assert "403" in said or "orbidden" in said or "admin hosts" in said, said
        guard = "admin hosts only"
        for path in ("/v1/control/start-run", "/v1/control/list-runs", "/v1/runtime/get-run",
                     "/v1/fleet/../control/list-runs", "/docs"):
            got = _https(link, path, ca, "127.0.0.2")
            assert got.startswith("403") and guard in got, (path, got)
        assert _https(link, "/health", ca, "127.0.0.2", "GET").startswith("200")
        assert guard not in _https(link, "/v1/fleet/pull-messages", ca, "127.0.0.2")
        assert guard not in _https(link, "/v1/control/list-runs", ca, "127.0.0.1")
        _wait_for(lambda: "refused POST /v1/control/list-runs from 127.0.0.2" in
                  (tmp_path / "superlink.log").read_text(), 10, "the refusal's log line")

        def supernode(key, log, node_port, retries, command):
            return start(command + ["--superlink", link,
                          "--root-certificates", str(certs / "ca.crt"),
                          "--auth-supernode-private-key", str(certs / key),
                          "--node-config", 'data="synthetic" site-index=0',
                          "--host", "127.0.0.1", "--port", str(node_port),
                          "--max-retries", str(retries), "--max-wait-time", "30"], log)

        # The site runs the project's SuperNode entry point (Flower's with capped waits), with
        # the ClientApp in its own process (one process per site).
        supernode("site_0", "site_0.log", _free_port(), 5,
                  [sys.executable, "-m", "fedmix_jax.flower.supernode", "--poll-interval", "0.2",
                   "--clientapp-in-process"])
        intruder = supernode("intruder", "intruder.log", _free_port(), 1,
                             [os.path.join(BIN, "flower-supernode")])
        rc = intruder.wait(timeout=120)
        log = (tmp_path / "intruder.log").read_text()
        # Flower logs exit code 305 ("Failed to activate SuperNode"); the process exits non-zero.
        assert rc != 0 and "Exit Code: 305" in log and "Failed to activate" in log, log[-2000:]

        def online():
            out = subprocess.run([os.path.join(BIN, "flwr"), "supernode", "list", "t",
                                  "--format", "json"], env=env, capture_output=True, text=True,
                                 timeout=60).stdout
            return '"online"' in out

        _wait_for(online, 90, "the registered SuperNode to be online")
        _wait_for(lambda: "ClientApp tasks in its own process" in (tmp_path / "site_0.log")
                  .read_text(), 30, "the site's in-process ClientApp loop")
        # The SuperLink served requests (registration, activation, polls) without writing
        # Flower's per-request DEBUG records.
        link_log = (tmp_path / "superlink.log").read_text()
        assert "POST /v1/fleet/" in link_log and "DEBUG flwr" not in link_log, link_log[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

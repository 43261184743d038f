"""Flower's SuperLink for a federation of hospitals: ``python -m fedmix_jax.flower.superlink``.

``flower-superlink`` itself (same arguments) plus ``--admin-hosts`` (default ``127.0.0.1,::1``):
any request but the Fleet API's and ``/health`` from another address is answered ``403``
(:class:`AdminOnly`). Details: docs/across_sites.md ("Who can take part", "Security").

    python -m fedmix_jax.flower.superlink --admin-hosts 127.0.0.1 --ssl-ca-certfile ... \\
        --enable-supernode-auth --host 0.0.0.0 --port 9091 ...      (flower-superlink args)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
import types

log = logging.getLogger("fedmix_jax.flower")

PUBLIC_PREFIXES = ("/v1/fleet/", "/health")
DEFAULT_ADMIN_HOSTS = ("127.0.0.1", "::1")


def parse_hosts(text: str) -> frozenset[str]:
    """``"127.0.0.1, 10.0.0.5"`` → the set of normalised IP addresses; ValueError naming a value
    that is not an IP address (no host names: the check is on the peer's address)."""
    hosts = set()
    for item in str(text).replace(",", " ").split():
        try:
            hosts.add(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"--admin-hosts: {item!r} is not an IP address") from None
    if not hosts:
        raise ValueError("--admin-hosts: no address given")
    return frozenset(hosts)


def _peer(scope) -> str:
    """The client's address of an ASGI ``scope`` (IPv4-mapped IPv6 as IPv4); '' when unknown."""
    host = (scope.get("client") or ("", 0))[0] or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return str(getattr(ip, "ipv4_mapped", None) or ip)


class AdminOnly:
    """ASGI middleware: HTTP requests outside :data:`PUBLIC_PREFIXES` are served only to peers
    in ``admin_hosts``; others get ``403`` with a one-line JSON reason."""

    def __init__(self, app, admin_hosts: frozenset[str]):
        self.app, self.admin_hosts = app, admin_hosts

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            path = scope.get("path", "")
            public = path.startswith(PUBLIC_PREFIXES) and ".." not in path.split("/")
            peer = _peer(scope)
            if not public and peer not in self.admin_hosts:
                log.warning("refused %s %s from %s: only the admin hosts (%s) may use it",
                            scope.get("method", "?"), path, peer or "an unknown address",
                            ", ".join(sorted(self.admin_hosts)))
                body = json.dumps({"detail": "forbidden: the Control and Runtime APIs of this "
                                   "SuperLink serve its admin hosts only"}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--admin-hosts", default=",".join(DEFAULT_ADMIN_HOSTS))
    ours, rest = p.parse_known_args(argv)
    try:
        admin_hosts = parse_hosts(ours.admin_hosts)
    except ValueError as e:
        print(f"fedmix_jax.flower.superlink: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Flower logs every request at DEBUG ("may expose sensitive details"): the handler drops it.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO)
    import uvicorn
    from flwr.superlink import cli

    def run(app, *args, **kwargs):      # the CLI's one use of uvicorn: serve AdminOnly(app)
        return uvicorn.run(AdminOnly(app, admin_hosts), *args, **kwargs)

    sys.modules["flwr.superlink.cli.flower_superlink"].uvicorn = types.SimpleNamespace(run=run)
    print("fedmix_jax.flower.superlink: the Control and Runtime APIs answer only "
          + ", ".join(sorted(admin_hosts)), file=sys.stderr, flush=True)
    sys.argv = ["flower-superlink"] + rest
    cli.flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the coordinator finds its sites: the SuperNodes that joined, their checked declarations,
the federation's order (declared index, then name); and the short-interval exchange of messages
the ServerApp uses for every round."""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedmix_jax.flower.protocol import CONFIG_RECORD, INFO_RECORD
from fedmix_jax.flower.strategy import Site
from fedmix_jax.flower.validation import ReplyRejected, check_declaration

log = logging.getLogger("fedmix_jax.flower")


def send_and_receive(grid: Grid, messages, timeout: float, interval: float = 0.2) -> list:
    """Push ``messages``, pull their replies every ``interval`` s until all answered or ``timeout``
    (Flower's ``Grid.send_and_receive`` pulls every 3 s)."""
    pending = set(grid.push_messages(list(messages)))
    t_end = time.time() + timeout
    got = []
    while pending:
        replies = list(grid.pull_messages(pending))
        got.extend(replies)
        pending -= {m.metadata.reply_to_message_id for m in replies}
        if not pending or time.time() > t_end:
            break
        time.sleep(interval)
    return got


def parse_site_list(text: str) -> dict[int, str]:
    """The run config ``sites``, ``"name=node_id ..."`` (spaces or commas between entries) ->
    ``{node_id: name}``. ValueError naming an entry not ``name=integer`` or listed twice."""
    listed: dict[int, str] = {}
    for entry in str(text or "").replace(",", " ").split():
        name, sep, node = entry.partition("=")
        if not sep or not name or not node.strip().isdigit():
            raise ValueError(f"run config 'sites': entry {entry!r} is not name=node_id (the "
                             "node id that `flwr supernode register` printed)")
        node_id = int(node)
        if node_id in listed or name in listed.values():
            raise ValueError(f"run config 'sites': {entry!r} repeats a listed name or node id")
        listed[node_id] = name
    return listed


def _wait_for_nodes(grid: Grid, num: int, timeout: float, listed: dict[int, str]) -> list[int]:
    """The connected nodes once ``num`` (with a list: every listed node) are connected, or at
    ``timeout``; with a list, a node not on it is logged once and left out."""
    t_end = time.time() + timeout
    ignored: set[int] = set()
    while True:
        nodes = sorted(grid.get_node_ids())
        if listed:
            for node in set(nodes) - set(listed) - ignored:
                log.warning("node %s is not on the coordinator's site list: ignored (sent "
                            "nothing)", node)
                ignored.add(node)
            nodes = [n for n in nodes if n in listed]
        if len(nodes) >= max(num, 1) or time.time() > t_end:
            return nodes
        time.sleep(0.5)


def discover_sites(grid: Grid, shared_json: str, num_sites: int, join_timeout: float,
                   reply_timeout: float, min_sites: int = 1,
                   listed: dict[int, str] | None = None) -> tuple[list[Site], list[dict]]:
    """``(sites, checked declarations)`` of the (``listed``) nodes that joined, in order; a site
    with a bad, duplicate or minority declaration is excluded with one log line. RuntimeError
    when fewer than ``num_sites`` joined or fewer than ``min_sites`` remain."""
    listed = dict(listed or {})
    num_sites = num_sites or len(listed)
    nodes = _wait_for_nodes(grid, num_sites, join_timeout, listed)
    if num_sites and len(nodes) < num_sites:
        raise RuntimeError(f"only {len(nodes)} of {num_sites} sites joined within "
                           f"{join_timeout:.0f} s")
    msgs = [Message(content=RecordDict({CONFIG_RECORD: ConfigRecord(
        {"config-json": shared_json})}), dst_node_id=n, message_type="query.info")
        for n in nodes]
    found = []      # (node, checked declaration)
    for reply in send_and_receive(grid, msgs, reply_timeout):
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise ReplyRejected(f"site error: {reply.error.reason}")
            info = check_declaration(reply.content.config_records.get(INFO_RECORD)
                                     if reply.has_content() else None)
            if listed and info["site-name"] != listed.get(node):
                raise ReplyRejected(f"it declared the name {info['site-name']!r}, the "
                                    f"coordinator's list names it {listed.get(node)!r}")
        except ReplyRejected as e:
            log.warning("node %s excluded: bad declaration: %s", node, e)
            continue
        found.append((node, info))
    names = [info["site-name"] for _, info in found]
    for name in sorted({n for n in names if names.count(n) > 1}):
        log.warning("site name %r declared by %d nodes: all excluded", name, names.count(name))
    found = [f for f in found if names.count(f[1]["site-name"]) == 1]
    # Declared indices first (in order), then the others by name.
    found.sort(key=lambda f: (f[1]["site-index"] < 0, f[1]["site-index"], f[1]["site-name"]))
    if found:
        # The majority's image shape and classes (ties: the earliest).
        kinds = [(info["image-shape"], info["num-classes"]) for _, info in found]
        kind = max(kinds, key=lambda v: (kinds.count(v), -kinds.index(v)))
        for (_, info), k in zip(found, kinds):
            if k != kind:
                log.warning("site %s excluded: image shape %s / %d classes differ from the "
                            "other sites' %s / %d", info["site-name"], list(k[0]), k[1],
                            list(kind[0]), kind[1])
        found = [f for f, k in zip(found, kinds) if k == kind]
    sites = [Site(node, position, info["site-name"], info["num-train"], info["num-val"],
                  info["num-test"]) for position, (node, info) in enumerate(found)]
    if len(sites) < max(int(min_sites), 1):
        raise RuntimeError(f"only {len(sites)} sites declared themselves validly (min-sites "
                           f"{min_sites}, {len(nodes)} joined)")
    if num_sites and len(sites) < num_sites:
        log.warning("only %d of %d sites declared themselves validly: going on with them",
                    len(sites), num_sites)
    return sites, [info for _, info in found]

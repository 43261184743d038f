"""Run the ServerApp and the sites' ClientApps in one process, without a network or Ray.

:class:`LocalGrid` delivers each message to the site's ClientApp in a worker thread (the FedMix
code paths of a deployment; only the transport is a function call), for tests and demos:

    summary, pair, grid = run_local(4, {"config": "configs/synthetic.py",
                                        "overrides": "num_rounds=2 model.width=4"})
"""

from __future__ import annotations

import concurrent.futures
import math
import uuid
from typing import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid


class LocalGrid(Grid):
    """An in-process Grid over ``sites``, ``{node_id: (ClientApp, node config)}``; ``intercept``:
    optional ``f(node_id, message, reply) -> reply or None`` on every reply (tests)."""

    def __init__(self, sites: dict, *, intercept: Callable | None = None, run_config=None,
                 max_workers: int | None = None):
        from flwr.supercore.task_identity import TaskIdentity

        # Messages take their ids from the process's task identity: this process is the server.
        for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
            if getattr(TaskIdentity, attr) is None:
                setattr(TaskIdentity, attr, value)
        self._run = None
        self.sites = dict(sites)
        self.contexts = {n: Context(run_id=1, node_id=n, node_config=dict(cfg), state=RecordDict(),
                                    run_config=dict(run_config or {}))
                         for n, (_, cfg) in self.sites.items()}
        self.intercept = intercept
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers or len(self.sites) or 1)
        self._futures: dict[str, concurrent.futures.Future] = {}
        self.sent: list[Message] = []
        self.replies: list[Message] = []

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.sites)

    def _deliver(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        app, _ = self.sites[node]
        reply = app(msg, self.contexts[node])
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        if self.intercept is not None:
            reply = self.intercept(node, msg, reply)
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            self._futures[mid] = self._pool.submit(self._deliver, msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in list(message_ids):
            fut = self._futures.get(mid)
            if fut is not None and fut.done():
                del self._futures[mid]
                reply = fut.result()       # a ClientApp exception propagates (test failure)
                if reply is not None:
                    self.replies.append(reply)
                    out.append(reply)
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        from fedmix_jax.flower.server_app import send_and_receive

        return send_and_receive(self, messages, math.inf if timeout is None else timeout, 0.01)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def synthetic_sites(num_sites: int, client_app=None, **node_config) -> dict:
    """``{node_id: (ClientApp, node config)}`` for sites 0..num_sites-1 of the synthetic federation
    (node ids deliberately not in site order, as Flower's are random)."""
    if client_app is None:
        from fedmix_jax.flower.client_app import app as client_app
    ids = [1000 + 7919 * (num_sites - i) for i in range(num_sites)]
    return {n: (client_app, dict(data="synthetic", **{"site-index": i}, **node_config))
            for i, n in zip(range(num_sites), ids)}


def run_local(num_sites: int, run_config: dict, *, intercept: Callable | None = None,
              grid: LocalGrid | None = None, write_plots: bool = False):
    """The ServerApp's job over ``num_sites`` synthetic sites in this process: ``(summary, global
    ModelPair, grid)``; pass ``grid`` back to continue with the same sites (a server restart)."""
    from fedmix_jax.flower.server_app import run_server

    if grid is None:
        grid = LocalGrid(synthetic_sites(num_sites), intercept=intercept)
    summary, pair, _ = run_server(grid, dict(run_config, **{"num-sites": num_sites}),
                                  write_plots=write_plots, return_state=True)
    return summary, pair, grid

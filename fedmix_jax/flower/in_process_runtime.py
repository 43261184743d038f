"""The SuperNode's Runtime API called in its own process: the ClientApp runs inside the SuperNode.

:func:`serve_in_process` starts a thread that acquires the node's ClientApp tasks
(:func:`serve_tasks`) and runs each here (:func:`run_task`) through :class:`InProcessRuntime`,
Flower 1.42's ``RuntimeHttpClient`` as function calls. Details: docs/across_sites.md.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time

log = logging.getLogger("fedmix_jax.flower.in_process")

#: Seconds between the loop's checks for a task, and its local object pulls' back-off (no requests).
LOCAL_POLL = 0.02

# RuntimeHttpClient's methods -> the node's runtime handler (the heartbeat: the core's).
_HANDLERS = {"AcquireTask": "acquire_task", "PullTaskInput": "pull_task_input",
             "PullMessages": "pull_messages", "PullObject": "pull_object",
             "ConfirmMessageReceived": "confirm_message_received",
             "PushMessages": "push_messages", "PushObject": "push_object",
             "PushTaskOutput": "push_task_output", "SendTaskHeartbeat": "send_task_heartbeat"}


class InProcessRuntime:
    """Flower 1.42's ``RuntimeHttpClient`` as calls on the SuperNode's ``NodeState`` ``state``;
    ``token``: the task token the calls authenticate with (None for ``AcquireTask``)."""

    def __init__(self, state, token: str | None = None):
        self._state, self._token = state, token

    def with_token(self, token: str) -> "InProcessRuntime":
        return InProcessRuntime(self._state, token)

    def _task(self):
        from flwr.supercore.error import ApiErrorCode, FlowerError

        task = self._state.get_task_by_token(self._token) if self._token else None
        if task is None:
            raise FlowerError(ApiErrorCode.RUNTIME_AUTHENTICATION_FAILED,
                              "Runtime task-token authentication failed.")
        return task

    def __getattr__(self, name: str):
        if name not in _HANDLERS:
            raise AttributeError(name)
        from flwr.supercore.servicer.runtime import runtime_handlers as core
        from flwr.supernode.servicer.runtime import runtime_handlers as node

        if name == "AcquireTask":       # the one call without a task token
            return lambda request: node.acquire_task(request, self._state)
        handler = getattr(core if name == "SendTaskHeartbeat" else node, _HANDLERS[name])
        return lambda request: handler(request, self._state, self._task())

    def close(self) -> None:
        pass


def run_task(client, client_app) -> bool:
    """Pull one task's message and context through ``client`` (bound to the task's token), run
    the ClientApp here, push reply and context. Returns whether the ClientApp answered."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import (pull_task_input, push_message,
                                                      push_task_output)

    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details, ok = SubStatus.FAILED, "ClientApp task failed", False
    try:
        t_pull = time.perf_counter()
        message, context, _run, _fab = pull_task_input(client)
        t0 = time.perf_counter()
        reply = client_app(message=message, context=context)
        log.info("%s handled in %.2f s (its input pulled in %.2f s)",
                 message.metadata.message_type, time.perf_counter() - t0, t0 - t_pull)
        status, details, ok = SubStatus.COMPLETED, "", True
    except Exception as ex:  # noqa: BLE001 - reported to the server as an error reply
        log.exception("ClientApp raised")
        details = f"{type(ex)}:<'{ex}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                            reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                t_push = time.perf_counter()
                push_message(client, reply, context)
                log.info("reply pushed to the SuperNode in %.2f s", time.perf_counter() - t_push)
        finally:
            push_task_output(client=client, context=context, sub_status=status,
                             details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
    return ok


def serve_tasks(acquirer, client_for_token, poll_interval: float) -> None:
    """Acquire the node's ClientApp tasks through ``acquirer`` and run each through
    ``client_for_token(token)``, forever (a failure of the node's API is logged and retried)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType

    from fedmix_jax.flower.client_app import app as client_app
    from fedmix_jax.flower.site_state import keep_state_in_process

    keep_state_in_process()       # this process serves every message of its SuperNode
    request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])
    while True:
        try:
            res = acquirer.AcquireTask(request)
            if res.HasField("task") and res.token:
                run_task(client_for_token(res.token), client_app)
                continue
        except Exception:  # noqa: BLE001 - the node's API failed; keep serving
            log.exception("SuperNode Runtime API call failed; retrying")
            time.sleep(max(poll_interval, 1.0))
        time.sleep(poll_interval)


def serve_in_process(state_factory, nice: int = 0) -> threading.Thread:
    """Start the ClientApp loop in a daemon thread of this (the SuperNode's) process; returns it.
    ``nice`` (Linux): the thread's nice level (JAX's compute threads inherit it)."""
    from flwr.supernode.runtime import run_clientapp

    from fedmix_jax.flower.latency import cap_pull, check_flower_version

    # The ClientApp's object pulls read the node's own memory: LOCAL_POLL, not the network cap.
    check_flower_version()
    cap_pull(run_clientapp, "pull_and_inflate_object_from_tree", LOCAL_POLL)
    site_log = logging.getLogger("fedmix_jax.flower")
    if not site_log.handlers:     # the ClientApp's lines in the SuperNode's log, timestamped
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s clientapp] %(message)s"))
        site_log.addHandler(handler)
        site_log.setLevel(logging.INFO)
        site_log.propagate = False

    # Import what the loop needs in this thread: two threads importing at once can deadlock.
    for module in ("fedmix_jax.flower.client_app", "fedmix_jax.flower.local_site"):
        importlib.import_module(module)

    def loop() -> None:
        if nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(nice))
            except (AttributeError, OSError) as e:  # not Linux, or not permitted
                log.warning("could not set the ClientApp thread's nice level: %s", e)
        try:
            runtime = InProcessRuntime(state_factory.state())
            log.info("serving this SuperNode's ClientApp tasks in its own process")
            serve_tasks(runtime, runtime.with_token, LOCAL_POLL)
        except BaseException:  # noqa: BLE001 - a node without its ClientApp must not linger
            log.exception("the in-process ClientApp loop stopped; exiting the SuperNode")
            os._exit(1)

    thread = threading.Thread(target=loop, name="fedmix-clientapp", daemon=True)
    thread.start()
    return thread

"""A long-running ClientApp executor for a SuperNode in ``--isolation process`` mode.

Flower's SuperExec starts a fresh ``flwr-clientapp`` process for every message, so a JAX
ClientApp would import JAX, load its data, trace and compile in every round. With

    flower-supernode ... --isolation process --host 127.0.0.1 --port 9094
    python -m fedmix_jax.flower.warm_clientapp --runtime-api-address 127.0.0.1:9094

the SuperNode starts no executor itself; this process takes its place: it acquires the
SuperNode's ClientApp tasks one after another (as ``flower-superexec`` does) and runs each in
this same process with fedmix_jax's ClientApp (what ``flwr-clientapp`` does, without exiting).
The site's data, the compiled site function and the JAX runtime stay loaded between rounds.

It uses Flower 1.42's runtime client (``flwr.supernode.runtime.run_clientapp`` helpers); the
``fedmix_jax[flower]`` extra pins that version. Only the SuperNode's loopback Runtime API is
contacted. Every message runs the installed ``fedmix_jax.flower.client_app.app`` (the FAB of the
run only names it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

log = logging.getLogger("fedmix_jax.flower.warm")


def _runtime_client(address: str, interceptors):
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker())


def run_task(client, client_app) -> bool:
    """Pull one task's message and context through ``client`` (a Runtime API client bound to
    the task's token: HTTP, or :class:`~fedmix_jax.flower.in_process_runtime.InProcessRuntime`),
    run the ClientApp here, push reply and context."""
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
    """Acquire the SuperNode's ClientApp tasks through ``acquirer`` (its ``AcquireTask``) and run
    each with fedmix_jax's ClientApp through ``client_for_token(token)``, forever; ``poll_interval``
    s between checks while there is none. A task that fails is reported to the server as an
    error reply (:func:`run_task`); a failure of the node's API itself is logged and retried."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType

    from fedmix_jax.flower.client_app import app as client_app
    from fedmix_jax.flower.client_app import keep_state_in_process

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


def serve(address: str, poll_interval: float = 0.2) -> None:
    """Acquire and run the ClientApp tasks of the SuperNode at ``address`` (its HTTP Runtime
    API) forever (polling every ``poll_interval`` s; a task's message is pulled with the same
    capped back-off, see :mod:`fedmix_jax.flower.latency`)."""
    from fedmix_jax.flower.latency import cap_object_pulls

    cap_object_pulls(poll_interval)
    from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor,
                                             RuntimeVersionHttpInterceptor)
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor

    def client_for_token(token):
        return _runtime_client(address, [
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token)])

    client = _runtime_client(address, [RuntimeVersionHttpInterceptor(component_name="SuperExec")])
    print(f"[fedmix_jax.flower.warm_clientapp] serving the SuperNode at {address}",
          file=sys.stderr, flush=True)
    try:
        serve_tasks(client, client_for_token, poll_interval)
    finally:
        client.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                   help="the SuperNode's Runtime API (its --host:--port), loopback")
    p.add_argument("--poll-interval", type=float, default=0.2)
    args = p.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s warm] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    serve(args.runtime_api_address, args.poll_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())

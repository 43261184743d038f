"""A shared guard for tests that could hang (a FIFO read, a lock): SIGALRM fails the test."""

import signal

import pytest


def alarm_fixture(seconds: int):
    """An autouse fixture that raises ``TimeoutError`` in a test still running after
    ``seconds``; assign it to a module-level name: ``alarm = alarm_fixture(120)``."""

    @pytest.fixture(autouse=True)
    def alarm():
        def boom(*_):
            raise TimeoutError("test hung")
        old = signal.signal(signal.SIGALRM, boom)
        signal.alarm(seconds)
        yield
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

    return alarm

"""The head watchdog: a late upstream head gets its socket shut, an early one never."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

from chatd.sessions import HeadWatchdog


def test_a_call_past_its_deadline_has_its_socket_shut_and_is_told_so():
    watchdog = HeadWatchdog()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5)
        token = watchdog.watch(time.monotonic() + 0.2, SimpleNamespace(sock=ours))
        started = time.monotonic()
        assert ours.recv(1) == b""  # blocked until the watchdog shut the socket
        assert 0.15 <= time.monotonic() - started < 2
        assert watchdog.done(token) is True


def test_a_call_done_in_time_keeps_its_socket():
    watchdog = HeadWatchdog()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        token = watchdog.watch(time.monotonic() + 0.3, SimpleNamespace(sock=ours))
        assert watchdog.done(token) is False
        time.sleep(0.3 + 2 * HeadWatchdog.TICK)  # past the deadline, no longer watched
        theirs.sendall(b"x")
        ours.settimeout(2)
        assert ours.recv(1) == b"x"

"""chatd.relay ~~~ Open streams relayed by one event loop per worker, not a thread each.

A stream's set-up (its request, routing, the upstream call and its first event)
runs on a request thread like any call. Then, under chatd's gunicorn worker
(:mod:`chatd.worker`), the thread sends the response head, hands the stream to
this worker's :class:`Relay` and goes back to the pool. The relay's one thread
runs each open stream as a greenlet over one epoll: the code a piece goes
through is the same as on a request thread (the adapter's reader, the dialect's
renderer, :mod:`chatd.streaming`), only its waits differ. A read that would
block parks the stream's greenlet until its upstream socket is readable or its
deadline passes (:meth:`Relayed.recv`), and what the stream rendered meanwhile
goes out in one write first, so pieces that arrived together leave together.

Why: a thread per stream costs ~110 µs of CPU per piece in wake-ups and GIL
hand-offs at a thousand streams, and holds a thread (and its stack) for the
stream's whole length (README, "Concurrent streams"). Here one ``epoll_wait``
serves every stream that has bytes, and an open stream holds two sockets and
its Python objects.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import greenlet

log = logging.getLogger("chatd.relay")

# Set in the WSGI environ by chatd's worker when it can relay a stream on its
# event loop; the app (chatd.streaming) answers by setting RELAYED to the
# call's ``record.begin``, so the relay's log lines carry the request id. Here,
# not in chatd.streaming: gunicorn's master imports the worker, and with it
# this module, and should not import Flask and requests for two names.
CAN_RELAY = "chatd.can_relay"
RELAYED = "chatd.relayed"

# A client that reads nothing of its stream for this long is let go (its
# socket buffer full): on a thread it would hold the thread forever.
CLIENT_STALL_SECS = 120.0
# Most events taken per epoll_wait: more wait for the next round.
MAX_EVENTS = 512
# The loop wakes at least this often, to fire deadlines that are due and to
# measure how late it runs (``Relay.lag``).
TICK = 0.02
# The lag is a moving average: each tick's lateness weighs this much.
LAG_WEIGHT = 0.2
_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError)


class ClientGone(BaseException):
    """The client of a relayed stream left (or stalled past CLIENT_STALL_SECS).

    A BaseException on purpose: it unwinds the stream's generators (which close
    their upstream in ``finally``) without any ``except Exception`` of theirs,
    or a reader's ``except OSError``, taking it for the upstream's failure.
    """


def current() -> Relayed | None:
    """The relayed stream running now, or None on any other thread or greenlet."""
    running = greenlet.getcurrent()
    return running if type(running) is Relayed else None


class Relayed(greenlet.greenlet):
    """One stream on the relay: its client connection and its rendered body."""

    def __init__(
        self,
        relay: Relay,
        sock,
        body: Iterable[bytes],
        chunked: bool,
        done: Callable[[bool], None],
        begin: Callable[[], None] | None = None,
    ):
        super().__init__(self._relay, relay.hub)
        self.relay = relay
        self.sock = sock
        self.body = body
        self.chunked = chunked
        self.done = done
        self.begin = begin
        self.out: list[bytes] = []
        self.fds: set[int] = set()  # fds it watched: out of the epoll when it ends
        self.wait_fd = -1
        self.waiting = False
        self.until: float | None = None  # when the wait it is in times out
        self.timer_at: float | None = None  # when its entry in the timer heap is due

    # -- what the stream's code calls ----------------------------------------

    def recv(self, sock, size: int, until: float) -> bytes | None:
        """``sock.recv(size)`` for the stream's upstream; None once ``until`` passed.

        What the stream rendered so far goes to the client first.
        """
        if sock.getblocking():
            sock.setblocking(False)
        while True:
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                self.flush()
                if not self.wait(sock.fileno(), _READ, until):
                    return None
            try:
                return sock.recv(size)
            except _WOULD_BLOCK:
                continue  # a TLS record not whole yet, or a spurious wake-up
            except ssl.SSLWantWriteError:
                if not self.wait(sock.fileno(), _WRITE, until):
                    return None

    def flush(self) -> None:
        """Write what the stream rendered; raise ClientGone if the client left."""
        if not self.out:
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                view = view[sock.send(view) :]
                continue
            except _WOULD_BLOCK:
                pass
            except OSError:
                raise ClientGone() from None
            # CLIENT_STALL_SECS from now: any progress starts it again.
            if not self.wait(sock.fileno(), _WRITE, time.monotonic() + CLIENT_STALL_SECS):
                raise ClientGone()

    def wait(self, fd: int, events: int, until: float | None) -> bool:
        """Park until ``fd`` is ready (True) or ``until`` passes (False)."""
        relay = self.relay
        if relay.events.get(fd) != events:
            relay.watch(fd, events)
            self.fds.add(fd)
        relay.waiters[fd] = self
        self.wait_fd = fd
        self.until = until
        if until is not None and (self.timer_at is None or until < self.timer_at):
            relay.wake_at(until, self)
        self.waiting = True
        try:
            return relay.hub.switch()
        finally:
            self.waiting = False

    # -- the greenlet ---------------------------------------------------------

    def _relay(self) -> None:
        keep = False
        try:
            self.sock.setblocking(False)
            try:
                for data in self.body:
                    if data:
                        self.out.append(
                            b"%X\r\n%s\r\n" % (len(data), data) if self.chunked else data
                        )
            finally:
                # The body ended, and with it the upstream's socket (closed or
                # about to be): out of the epoll before another stream runs.
                self.relay.forget(self)
            if self.chunked:
                self.out.append(b"0\r\n\r\n")
            self.flush()
            keep = True
        except ClientGone:
            pass
        except Exception:
            log.exception("relaying a stream failed")
        finally:
            self.relay.forget(self)  # the client's socket, if the last write waited
            try:
                close = getattr(self.body, "close", None)
                if close is not None:
                    close()  # the upstream's connection, the access line, slots held
            except Exception:
                log.exception("closing a relayed stream failed")
            relay = self.relay
            relay.streams -= 1
            relay.count(-1)
            done, self.done = self.done, None
            # Its timer entry may outlive it by an idle timeout: let that hold
            # the greenlet only, not the stream's sockets, buffers and objects.
            self.body = self.sock = self.begin = None
            try:
                done(keep)
            except Exception:
                log.exception("ending a relayed stream failed")


class Relay:
    """One worker's stream relay: a thread, an epoll, a greenlet per stream."""

    def __init__(self):
        self.epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self._wake_read, select.EPOLLIN)
        self.incoming: deque = deque()
        self.waiters: dict[int, Relayed] = {}  # fd -> the stream that waits on it
        self.events: dict[int, int] = {}  # fd -> the events the epoll reports for it
        # (when, tie, stream): at most one live entry per stream, pushed when its
        # deadline comes nearer, not for each wait (an idle deadline only recedes).
        self.timers: list = []
        self._tie = itertools.count()
        self.streams = 0  # streams running (the relay thread's count)
        self.open = 0  # streams handed over and not ended (any thread: under _lock)
        self._lock = threading.Lock()
        self.hub: greenlet.greenlet | None = None
        #: How late the loop comes round, smoothed: above a few ms the relay is
        #: behind (its streams' pieces wait), whatever the cause (CPU, GIL, load).
        self.lag = 0.0
        self.dead = False
        #: Called (on the relay's thread) if the relay itself fails.
        self.on_death: Callable[[], None] | None = None
        self._started = threading.Event()

    def start(self, name: str = "chatd-relay") -> Relay:
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._started.wait()
        return self

    def add(
        self, sock, body: Iterable[bytes], chunked: bool, done, begin=None, counted=False
    ) -> None:
        """Relay ``body`` to ``sock`` (any thread); ``done(keep)`` runs on the relay's
        thread when it ends, ``keep`` true when the stream ended whole.
        ``counted``: the caller counted it in ``open`` already."""
        if not counted:
            self.count(1)
        self.incoming.append((sock, body, chunked, done, begin))
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass  # the loop is already due to wake

    def count(self, change: int) -> None:
        """(Any thread.) A stream more (1) or fewer (-1) in ``open``."""
        with self._lock:
            self.open += change

    # -- the relay thread only ------------------------------------------------

    def watch(self, fd: int, events: int) -> None:
        """Have the epoll report ``events`` on ``fd`` (level-triggered, so a stream
        waiting on the same socket again costs no system call)."""
        known = self.events.get(fd)
        try:
            if known is None:
                self.epoll.register(fd, events)
            else:
                self.epoll.modify(fd, events)
        except FileExistsError:
            self.epoll.modify(fd, events)
        except FileNotFoundError:
            self.epoll.register(fd, events)  # closed and reused since
        self.events[fd] = events

    def forget(self, stream: Relayed) -> None:
        """``stream`` is done with its fds: out of the epoll. An fd another stream
        waited on since (the number reused) is that stream's and stays."""
        for fd in stream.fds:
            if self.waiters.get(fd, stream) is not stream:
                continue
            self.waiters.pop(fd, None)
            if self.events.pop(fd, None) is not None:
                try:
                    self.epoll.unregister(fd)
                except OSError:
                    pass  # closed already, which took it out
        stream.fds.clear()

    def wake_at(self, when: float, stream: Relayed) -> None:
        stream.timer_at = when
        heapq.heappush(self.timers, (when, next(self._tie), stream))

    def _run(self) -> None:
        self.hub = greenlet.getcurrent()
        self._started.set()
        try:
            self._loop()
        except BaseException:
            # Every later stream would hang after its head: say so, and let the
            # worker be replaced rather than serve on with a dead relay.
            self.dead = True
            log.exception("the stream relay stopped")
            if self.on_death is not None:
                self.on_death()

    def _loop(self) -> None:
        poll = self.epoll.poll
        waiters = self.waiters
        wake_fd = self._wake_read
        tick = time.monotonic() + TICK
        while True:
            now = time.monotonic()
            if now >= tick:
                self.lag += LAG_WEIGHT * (now - tick - self.lag)
                tick = now + TICK
            timeout = tick - now
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - now))
            try:
                ready = poll(timeout, MAX_EVENTS)
            except InterruptedError:
                continue
            for fd, _ in ready:
                if fd == wake_fd:
                    self._take_incoming()
                    continue
                stream = waiters.get(fd)
                if stream is not None and stream.waiting and stream.wait_fd == fd:
                    self._resume(stream, True)
                elif fd in self.events:
                    # Ready while nobody waits on it (its stream waits on the
                    # other socket): out of the epoll until it is waited on
                    # again. Not just quieted: an error or hang-up is reported
                    # whatever events are asked for.
                    self._unwatch(fd)
            if self.timers:
                self._fire_timers()

    def _unwatch(self, fd: int) -> None:
        self.events.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass

    def _resume(self, stream: Relayed, *ready: bool) -> None:
        """Run ``stream`` until it waits or ends (``ready``: what its wait returns;
        none for its start)."""
        if stream.begin is not None:
            stream.begin()  # the stream's request id, for its log lines
        try:
            stream.switch(*ready)
        except Exception:
            # The greenlet catches its own failures; this is a bug in that.
            log.exception("a relayed stream failed")

    def _take_incoming(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while self.incoming:
            sock, body, chunked, done, begin = self.incoming.popleft()
            self.streams += 1
            stream = Relayed(self, sock, body, chunked, done, begin)
            self._resume(stream)

    def _fire_timers(self) -> None:
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            when, _, stream = heapq.heappop(timers)
            if stream.timer_at != when:
                continue  # superseded by a nearer one
            stream.timer_at = None
            if not stream.waiting or stream.until is None:
                continue  # it will push a new entry when it waits
            if stream.until <= now:
                self._resume(stream, False)
            else:
                self.wake_at(stream.until, stream)  # the deadline receded

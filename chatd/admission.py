"""chatd.admission ~~~ Whether this worker can take one more call: decided on what runs out.

A stream holds a thread, two sockets and some memory for its whole length, and
every piece it relays needs the CPU for a moment. A fixed count of calls alone
cannot tell when the CPU is what ran out: past that point every admitted stream
slows down together (the collapse issue 12 measured). So a call is admitted only
while all of these hold:

- a thread is free for it (``threads`` less RESERVED_THREADS kept for /health);
- the scheduling lag is low: a probe thread sleeps PROBE_SECONDS and notes how
  late it wakes. Late means the CPU or the GIL is saturated, and the streams
  already admitted would feel one more call;
- file descriptors are left (a stream needs two) and memory is available.

The probe thread does the measuring (a few µs every PROBE_SECONDS), so the check
on each call only reads its verdict and a counter. One :class:`Pressure` per
process, started in the process that first asks (a forked worker starts its own).
"""

from __future__ import annotations

import os
import resource
import threading
import time

# Threads per worker kept free of upstream calls, for /health and friends.
RESERVED_THREADS = 2
# How often the probe wakes; its lag is how late it wakes.
PROBE_SECONDS = 0.02
# Lag above this sheds new calls: admitted streams would start missing their pace.
MAX_LAG_SECONDS = 0.1
# The lag is a moving average over about this many probes (one late wake-up
# is noise; a run of them is saturation).
LAG_SMOOTHING = 5
# Descriptors kept free: a stream needs two, and logging and /metrics need some.
SPARE_FDS = 64
# Memory (MemAvailable) kept free of new calls.
MIN_AVAILABLE_BYTES = 64 * 1024 * 1024
# fds and memory change slowly: read them every this many probes.
SLOW_EVERY = 10


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Pressure:
    """What runs out in this process, measured by one daemon thread.

    ``reason`` is None while there is room, else a short phrase for the 503.
    """

    def __init__(
        self,
        probe_seconds: float = PROBE_SECONDS,
        max_lag: float = MAX_LAG_SECONDS,
        spare_fds: int = SPARE_FDS,
        min_available: int = MIN_AVAILABLE_BYTES,
    ):
        self.probe_seconds = probe_seconds
        self.max_lag = max_lag
        self.spare_fds = spare_fds
        self.min_available = min_available
        self.lag = 0.0
        self.reason: str | None = None
        self._slow_reason: str | None = None
        self._pid = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> Pressure:
        """Start the probe in this process, once (again in a forked child)."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self.lag = 0.0
                self.reason = None
                threading.Thread(target=self._run, name="chatd-pressure", daemon=True).start()
        return self

    def _run(self) -> None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        n = 0
        pid = self._pid
        while pid == os.getpid():
            before = time.monotonic()
            if self._stopped.wait(self.probe_seconds):
                return
            late = max(0.0, time.monotonic() - before - self.probe_seconds)
            self.lag += (late - self.lag) / LAG_SMOOTHING
            if n % SLOW_EVERY == 0:
                self._slow_reason = self._slow_check(limit)
            n += 1
            self.update()

    def stop(self) -> None:
        """Stop the probe thread (tests; a worker's lives as long as the process)."""
        self._stopped.set()

    def _slow_check(self, fd_limit: int) -> str | None:
        if fd_limit != resource.RLIM_INFINITY and _open_fds() > fd_limit - self.spare_fds:
            return f"file descriptors near the limit of {fd_limit}"
        available = _available_bytes()
        if available is not None and available < self.min_available:
            return f"less than {self.min_available >> 20} MiB of memory available"
        return None

    def update(self) -> None:
        """Set ``reason`` from the latest measurements (the probe calls it)."""
        if self.lag > self.max_lag:
            self.reason = f"CPU saturated (scheduling lag {self.lag * 1000:.0f} ms)"
        else:
            self.reason = self._slow_reason


#: This process's pressure; :meth:`Pressure.start` it where calls are served.
pressure = Pressure()


class Admission:
    """Calls in flight in this worker, admitted while a thread is free and nothing
    else ran out. ``acquire``/``release`` like the semaphore it replaces."""

    def __init__(self, capacity: int, pressure: Pressure | None = pressure):
        self.capacity = capacity
        self.pressure = pressure.start() if pressure is not None else None
        self.in_flight = 0
        self.reason = ""
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = False) -> bool:
        """Take a slot and return True, or return False with ``reason`` saying why not."""
        if blocking:
            raise ValueError("admission never waits: a call it cannot take gets a 503")
        with self._lock:
            if self.in_flight >= self.capacity:
                self.reason = f"chatd has {self.capacity} upstream calls in flight in this worker"
                return False
            busy = self.pressure.reason if self.pressure is not None else None
            # The first call always runs: with nothing in flight, shedding frees nothing.
            if busy and self.in_flight:
                self.reason = f"chatd is at capacity: {busy}"
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self.in_flight <= 0:
                raise ValueError("admission released more often than acquired")
            self.in_flight -= 1


# -- the end of a call's set-up -------------------------------------------------------

_set_up = threading.local()


def on_set_up(callback) -> None:
    """Call ``callback`` (once) when this thread's call goes upstream (the server's
    hook; None removes it)."""
    _set_up.callback = callback


def set_up_done(stream: bool = False) -> None:
    """Say this thread's call is going upstream: from here it may wait for long
    without the CPU (a model thinking). The adapter says so as it sends the
    call; the server (chatd.worker) then lets the next call start its set-up
    (a stream's a little later: its first event, often at once, costs CPU too).
    """
    callback = getattr(_set_up, "callback", None)
    if callback is not None:
        _set_up.callback = None
        callback(stream)

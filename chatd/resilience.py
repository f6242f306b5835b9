"""chatd.resilience ~~~ Per-provider policy: timeouts, retries, cooldown, in-flight limits.

State here lives in one gunicorn worker process, like Envoy's outlier
detection: each worker decides for itself, and nothing is shared between
workers or instances.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from chatd.config import Settings
from chatd.errors import ProviderBusy, ProviderCooling


@dataclass(frozen=True)
class Policy:
    """The resolved policy values for one provider."""

    timeout: float
    connect_timeout: float
    first_token_timeout: float
    idle_timeout: float
    retries: int
    retry_max_wait: float
    cooldown_failures: int
    cooldown: float
    max_in_flight: int
    queue_timeout: float

    @classmethod
    def for_provider(cls, settings: Settings, provider: str) -> Policy:
        value = settings.policy
        return cls(
            timeout=float(value(provider, "timeout_secs")),
            connect_timeout=float(value(provider, "connect_timeout_secs")),
            first_token_timeout=float(value(provider, "first_token_timeout_secs")),
            idle_timeout=float(value(provider, "idle_timeout_secs")),
            retries=int(value(provider, "retries")),
            retry_max_wait=float(value(provider, "retry_max_wait_secs")),
            cooldown_failures=int(value(provider, "cooldown_failures")),
            cooldown=float(value(provider, "cooldown_secs")),
            max_in_flight=int(value(provider, "max_in_flight")),
            queue_timeout=float(value(provider, "queue_timeout_secs")),
        )


# Exponential backoff with jitter, in seconds (0.25, 0.5, 1, ... at most 5), as
# Bifrost does: spread out, so retries from many threads do not arrive together.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 5.0


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based)."""
    if retry_after is not None:
        return retry_after
    backoff = min(BACKOFF_BASE * 2**attempt, BACKOFF_MAX)
    return backoff * random.uniform(0.8, 1.2)


class CircuitBreaker:
    """Cool a provider down after ``failures`` retryable failures in a row.

    Open: calls fail fast until the cooldown ends. Then one trial call is let
    through (half-open); its success closes the breaker, its failure opens it
    again for another cooldown.
    """

    def __init__(self, provider: str, failures: int, cooldown: float, gauge=None):
        self.provider = provider
        self.failures = failures
        self.cooldown = cooldown
        # A metrics gauge set to 1 while open (anything with .set()).
        self._gauge = gauge
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until = 0.0
        self._trial = False

    def before_call(self) -> None:
        """Raise ProviderCooling unless a call may go to the provider now."""
        if not self._open_until:  # closed: the common case takes no lock
            return
        with self._lock:
            now = time.monotonic()
            if not self._open_until:
                return
            if now < self._open_until or self._trial:
                wait = max(1, round(self._open_until - now)) if now < self._open_until else 1
                raise ProviderCooling(
                    f"provider {self.provider!r} is cooling down after "
                    f"{self.failures} failures in a row; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                    provider=self.provider,
                )
            self._trial = True  # this call is the one trial

    def release_trial(self) -> None:
        """End a trial call that never reached the provider (it proved nothing)."""
        if self._trial:
            with self._lock:
                self._trial = False

    def record_success(self) -> None:
        if self._consecutive or self._open_until:
            with self._lock:
                self._consecutive = 0
                if self._open_until and self._gauge is not None:
                    self._gauge.set(0)
                self._open_until = 0.0
                self._trial = False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._trial or self._consecutive >= self.failures:
                self._open_until = time.monotonic() + self.cooldown
                self._trial = False
                if self._gauge is not None:
                    self._gauge.set(1)

    def state(self) -> dict | None:
        """Return why the provider is unavailable, or None when it is not cooling."""
        open_until = self._open_until
        if not open_until:
            return None
        remaining = open_until - time.monotonic()
        return {"reason": "cooldown", "retry_after": max(0, round(remaining))}


class Bulkhead:
    """At most ``limit`` calls in flight; the next waits ``queue_timeout`` for a slot."""

    def __init__(self, provider: str, limit: int, queue_timeout: float, gauge=None):
        self.provider = provider
        self.limit = limit
        self.queue_timeout = queue_timeout
        self._slots = threading.BoundedSemaphore(limit) if limit else None
        # A metrics gauge of the calls in flight (anything with .inc() and .dec()).
        self._gauge = gauge
        self._lock = threading.Lock()
        self.in_flight = 0

    def acquire(self) -> None:
        """Take a slot, or raise ProviderBusy after waiting ``queue_timeout``."""
        if self._slots is not None and not self._slots.acquire(timeout=self.queue_timeout):
            raise ProviderBusy(
                f"provider {self.provider!r} has {self.limit} calls in flight "
                f"(max_in_flight); none finished within {self.queue_timeout:g} s",
                headers={"Retry-After": "1"},
                provider=self.provider,
            )
        with self._lock:
            self.in_flight += 1
        if self._gauge is not None:
            self._gauge.inc()

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
        if self._gauge is not None:
            self._gauge.dec()
        if self._slots is not None:
            self._slots.release()

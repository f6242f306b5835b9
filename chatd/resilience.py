"""chatd.resilience ~~~ The call's deadline, retries, cooldowns and in-flight limits.

Cooldown state lives on the board shared by the workers of one chatd
(:mod:`chatd.board`); in-flight limits are per worker process. Nothing is
shared between replicas.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from chatd import admission
from chatd.board import Board
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
    backoff = BACKOFF_BASE * 2 ** min(attempt, 8)
    # Jitter first, then the cap: the README promises never more than BACKOFF_MAX.
    return min(backoff * random.uniform(0.8, 1.2), BACKOFF_MAX)


@dataclass(frozen=True)
class Deadline:
    """One call's time budget, fixed at its arrival and passed down to every attempt.

    ``name`` and ``seconds`` say which setting set it, so a timeout names it.
    """

    at: float  # time.monotonic()
    name: str
    seconds: float

    @classmethod
    def after(cls, start: float, name: str, seconds: float) -> Deadline:
        return cls(start + seconds, name, seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def limit(self, seconds: float, name: str) -> tuple[float, str]:
        """The shorter of a phase's own limit and what is left of the call, and its name."""
        left = self.at - time.monotonic()
        return (seconds, name) if seconds <= left else (max(left, 0.0), self.name)


# What a failure cools down (UpstreamError.scope): the whole provider when it
# could not be reached, one of its models when it answered badly, else nothing.
PROVIDER = "provider"
MODEL = "model"


class Cooldowns:
    """Cool a provider, or one of its models, down after failures in a row.

    A key (a provider, or provider + model) with ``cooldown_failures`` failures
    in a row fails fast until its cooldown ends. Then one trial call is let
    through (one in all workers); its success clears the key, its failure opens
    another cooldown. The counts live on the shared :class:`chatd.board.Board`.
    """

    def __init__(self, board: Board, hosts: dict[str, str]):
        self.board = board
        # provider -> host[:port] of its base URL, named in a cooling 503.
        self.hosts = hosts

    @staticmethod
    def model_key(provider: str, model: str) -> str:
        return f"{provider}\0{model}"

    def before_call(self, provider: str, model: str, trial_secs: float) -> list[str]:
        """Raise ProviderCooling unless a call may go out now; return the trials it claimed."""
        model_key = self.model_key(provider, model)
        if self.board.clear_of(provider, model_key):
            return []
        claimed = []
        for key in (provider, model_key):
            entry = self.board.get(key)
            if entry is None or not entry.open_until:
                continue  # never cooled: maybe counting failures, still open
            now = time.monotonic()
            if entry.open_until > now or entry.trial_until > now:
                self.release(claimed)
                raise self._cooling(provider, model, key, entry, now)
            if not self.board.claim_trial(key, now + trial_secs):
                self.release(claimed)
                raise self._cooling(provider, model, key, self.board.get(key) or entry, now)
            claimed.append(key)
        return claimed

    def release(self, claimed: list[str]) -> None:
        for key in claimed:
            self.board.release_trial(key)

    def success(self, provider: str, model: str) -> None:
        model_key = self.model_key(provider, model)
        if self.board.clear_of(provider, model_key):
            return
        self.board.record_success(provider)
        self.board.record_success(model_key)

    def failure(self, provider: str, model: str, scope: str | None, policy: Policy, reason: str):
        """Count a failed attempt against what ``scope`` says failed (None: nothing)."""
        model_key = self.model_key(provider, model)
        if scope == PROVIDER:
            self.board.record_failure(provider, policy.cooldown_failures, policy.cooldown, reason)
            self.board.release_trial(model_key)
            return
        self.board.record_success(provider)  # it answered: the provider is up
        if scope == MODEL:
            self.board.record_failure(model_key, policy.cooldown_failures, policy.cooldown, reason)
        else:  # a 429 or another 4xx says nothing about the model's health
            self.board.release_trial(model_key)

    def _cooling(self, provider: str, model: str, key: str, entry, now: float):
        wait = max(1, math.ceil(entry.open_until - now))
        if entry.open_until <= now:  # another worker's trial call is in flight
            wait = 1
        ends = datetime.fromtimestamp(time.time() + max(0.0, entry.open_until - now), UTC)
        until = ends.isoformat(timespec="seconds").replace("+00:00", "Z")
        what = f"provider {provider!r}" if key == provider else f"model {model!r} of {provider!r}"
        host = self.hosts.get(provider, "")
        return ProviderCooling(
            f"{what} ({host}) is cooling down until {until} (retry in {wait} s) after "
            f"{entry.failures} failure(s) in a row; last: {entry.reason}",
            headers={"Retry-After": str(wait)},
            provider=provider,
            host=host,
            cooling=PROVIDER if key == provider else MODEL,
            cooling_until=until,
            last_failure=entry.reason,
        )

    def state(self, provider: str) -> dict | None:
        """Why ``provider`` is unavailable now (its own cooldown), or None; models cooling."""
        now = time.monotonic()
        entries = self.board.entries()
        found = {}
        own = entries.get(provider)
        if own is not None and own.open_until > now:
            found.update(
                reason="cooldown",
                retry_after=max(1, math.ceil(own.open_until - now)),
                last_failure=own.reason,
            )
        prefix = provider + "\0"
        models = {
            key[len(prefix) :]: max(1, math.ceil(entry.open_until - now))
            for key, entry in entries.items()
            if key.startswith(prefix) and entry.open_until > now
        }
        if models:
            found["models_cooling"] = models
        return found or None

    def cooling_providers(self) -> set[str]:
        """The providers cooling now (not their models), for the gauge."""
        now = time.monotonic()
        return {
            key
            for key, entry in self.board.entries().items()
            if "\0" not in key and entry.open_until > now
        }


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

    def acquire(self, deadline: Deadline | None = None) -> None:
        """Take a slot, or raise ProviderBusy after waiting ``queue_timeout`` (or
        what is left of the call, if less)."""
        wait = self.queue_timeout
        if deadline is not None:
            wait = max(0.0, min(wait, deadline.remaining()))
        if self._slots is not None and not self._slots.acquire(blocking=False):
            # Waiting for another call to finish costs no CPU: the worker may set
            # up its next call meanwhile (chatd.worker lets few set up at once).
            admission.set_up_done()
            if not self._slots.acquire(timeout=wait):
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

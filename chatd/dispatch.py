"""chatd.dispatch ~~~ One chat call, made resilient.

:meth:`Dispatcher.run` takes a request and an *attempt* (what to do with an
adapter: a whole call, or opening a stream) and wraps it in, from the outside in:

- admission (:mod:`chatd.admission`): at most ``threads - RESERVED_THREADS``
  calls at once in this worker, so /health and /chat/providers always find a
  thread, and none while the worker's CPU is saturated or its fds or memory run out;
- fallbacks: the request's ``fallbacks`` (or an alias's list) tried in order
  when a provider is unregistered, cooling, busy or failing; never after a
  400, never after the first streamed byte (the attempt returns before it);
- retries: a retryable failure is tried again after a backoff with jitter or
  the upstream's Retry-After, at most ``retries`` times, never past the deadline;
- cooldown and in-flight limits per provider (:mod:`chatd.resilience`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from chatd.adapters.base import ChatAdapter, UpstreamStream
from chatd.admission import RESERVED_THREADS, Admission
from chatd.config import Settings
from chatd.errors import (
    ChatdError,
    Overloaded,
    ProviderBusy,
    ProviderCooling,
    ProviderDisabled,
    ProviderNotFound,
    UpstreamError,
)
from chatd.metrics import Metrics
from chatd.neutral import ChatRequest
from chatd.observability import CallRecord
from chatd.registry import Registry
from chatd.resilience import Bulkhead, CircuitBreaker, retry_delay
from chatd.routing import Route

log = logging.getLogger("chatd.dispatch")

# Failures after which the next candidate in a fallback list is tried.
MOVE_ON = (ProviderNotFound, ProviderDisabled, ProviderCooling, ProviderBusy, UpstreamError)

Attempt = Callable[[ChatAdapter, Route], object]


@dataclass
class Outcome:
    """What served a call: the attempt's result, the adapter and route, what was tried."""

    result: object
    adapter: ChatAdapter
    route: Route
    tried: list[str]

    @property
    def model(self) -> str:
        return self.tried[-1]


class Dispatcher:
    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics | None = None):
        self.registry = registry
        self.aliases = settings.aliases
        self.breakers: dict[str, CircuitBreaker] = {}
        self.bulkheads: dict[str, Bulkhead] = {}
        for name, adapter in registry.adapters.items():
            policy = adapter.policy
            cooling = metrics.cooldown.labels(name) if metrics else None
            in_flight = metrics.in_flight.labels(name) if metrics else None
            self.breakers[name] = CircuitBreaker(
                name, policy.cooldown_failures, policy.cooldown, gauge=cooling
            )
            self.bulkheads[name] = Bulkhead(
                name, policy.max_in_flight, policy.queue_timeout, gauge=in_flight
            )
            if cooling is not None:
                cooling.set(0)
        self.capacity = max(1, settings.threads - RESERVED_THREADS)
        self._admission = Admission(self.capacity)

    def candidates(self, request: ChatRequest) -> list[str]:
        """The model names to try, in order: an alias's list, then the request's fallbacks."""
        names = list(self.aliases.get(request.model, (request.model,)))
        names.extend(request.fallbacks or ())
        return names

    def run(self, request: ChatRequest, attempt: Attempt, record: CallRecord) -> Outcome:
        """Serve ``request`` with ``attempt``; raise the last failure if nothing could.

        ``record`` is filled in as it goes: provider, upstream time, retries, what was tried.
        """
        record.model = request.model
        request.request_id = record.request_id
        if not self._admission.acquire(blocking=False):
            raise Overloaded(self._admission.reason, headers={"Retry-After": "1"})
        try:
            outcome = self._run(request, attempt, record)
        except BaseException:
            self._admission.release()
            raise
        self._hold_until_done(outcome.result, self._admission.release)
        return outcome

    def _run(self, request: ChatRequest, attempt: Attempt, record: CallRecord) -> Outcome:
        names = self.candidates(request)
        tried = record.tried
        for name in names:
            route = self.registry.router.resolve(name)
            tried.append(name)
            record.provider = route.provider
            try:
                adapter = self.registry.get(route.provider, route.upstream_model)
                result = self._attempts(adapter, route, attempt, record)
                return Outcome(result, adapter, route, tried)
            except MOVE_ON as e:
                if isinstance(e, UpstreamError) and e.request_rejected:
                    raise
                if len(tried) == len(names):
                    if len(names) > 1:
                        e.headers["X-Chatd-Fallbacks"] = ", ".join(tried)
                    raise
                log.warning(
                    "fallback: %s failed (%s); trying %s", name, e.message, names[len(tried)]
                )
        raise AssertionError("unreachable: there is always one candidate")

    def _attempts(self, adapter: ChatAdapter, route: Route, attempt: Attempt, record: CallRecord):
        policy = adapter.policy
        breaker = self.breakers[route.provider]
        bulkhead = self.bulkheads[route.provider]
        deadline = time.monotonic() + policy.timeout
        for n in range(policy.retries + 1):
            breaker.before_call()
            try:
                bulkhead.acquire()
            except ProviderBusy:
                breaker.release_trial()
                raise
            started = time.monotonic()
            try:
                result = attempt(adapter, route)
            except UpstreamError as e:
                record.upstream_secs += time.monotonic() - started
                bulkhead.release()
                if e.is_provider_fault:
                    breaker.record_failure()
                else:
                    breaker.record_success()  # it answered: it is up
                delay = retry_delay(n, e.retry_after)
                if (
                    not e.retryable
                    or n == policy.retries
                    or delay > policy.retry_max_wait
                    or time.monotonic() + delay >= deadline
                ):
                    raise
                log.warning(
                    "retry %d/%d of %s/%s in %.2f s after: %s",
                    n + 1,
                    policy.retries,
                    route.provider,
                    route.upstream_model,
                    delay,
                    e.message,
                )
                time.sleep(delay)
                record.retries += 1
                continue
            except BaseException:
                bulkhead.release()
                breaker.release_trial()
                raise
            now = time.monotonic()
            record.upstream_secs += now - started
            if isinstance(result, UpstreamStream):
                record.stream = True
                record.first_token_secs = now - record.started
            breaker.record_success()
            self._hold_until_done(result, bulkhead.release)
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _hold_until_done(result, release: Callable[[], None]) -> None:
        """Release now, or, for a stream, when the stream closes."""
        if isinstance(result, UpstreamStream):
            result.on_close(release)
        else:
            release()

    def status(self, name: str) -> dict:
        """Cooldown and in-flight state of provider ``name``, for /chat/providers."""
        bulkhead = self.bulkheads[name]
        state = {"in_flight": bulkhead.in_flight, "max_in_flight": bulkhead.limit}
        cooling = self.breakers[name].state()
        if cooling:
            state.update(cooling)
        return state


__all__ = ["ChatdError", "Dispatcher", "Outcome"]

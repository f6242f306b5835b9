"""chatd.dispatch ~~~ One chat call, made resilient.

:meth:`Dispatcher.run` takes a request and an *attempt* (what to do with an
adapter: a whole call, or opening a stream) and wraps it in, from the outside in:

- one deadline per call, fixed at its arrival (:meth:`Dispatcher.deadline`)
  and passed to every attempt: no retry, fallback or queue wait gets a new one;
- admission (:mod:`chatd.admission`): at most ``threads - RESERVED_THREADS``
  calls at once in this worker, so /health and /chat/providers always find a
  thread, and none while the worker's CPU is saturated or its fds or memory run out;
- fallbacks: the request's ``fallbacks`` (or an alias's list) tried in order
  when a provider is unregistered, cooling, busy or failing; never after a
  400, never after the first streamed byte (the attempt returns before it);
- retries: a retryable failure is tried again after a backoff with jitter or
  the upstream's Retry-After, at most ``retries`` times, never past the deadline;
  an answer after chatd retried says ``x-should-retry: false``;
- cooldown per provider or model, shared by the workers, and in-flight limits
  per provider (:mod:`chatd.resilience`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from chatd.adapters.base import ChatAdapter, UpstreamStream
from chatd.admission import RESERVED_THREADS, Admission
from chatd.board import Board, inherited_board
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
from chatd.resilience import Bulkhead, Cooldowns, Deadline, retry_delay
from chatd.routing import Route

log = logging.getLogger("chatd.dispatch")

# Failures after which the next candidate in a fallback list is tried.
MOVE_ON = (ProviderNotFound, ProviderDisabled, ProviderCooling, ProviderBusy, UpstreamError)

# What to do with an adapter within the call's deadline: a whole call, or opening a stream.
Attempt = Callable[[ChatAdapter, Route, Deadline], object]


@dataclass
class Outcome:
    """What served a call: the attempt's result, the adapter and route, what was tried,
    and the upstream time of the attempt that served (no queueing, no retry sleeps)."""

    result: object
    adapter: ChatAdapter
    route: Route
    tried: list[str]
    upstream_secs: float = 0.0

    @property
    def model(self) -> str:
        return self.tried[-1]


def _not_found_or_down(error: Exception) -> bool:
    """The upstream said "not found", or could not be reached (no status, worth a retry)."""
    if not isinstance(error, UpstreamError):
        return False
    status = error.details.get("upstream_status")
    return status == 404 or (status is None and error.retryable)


class Dispatcher:
    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics | None = None):
        self.registry = registry
        self.aliases = settings.aliases
        self.settings = settings
        self.bulkheads: dict[str, Bulkhead] = {}
        hosts = {}
        for name, adapter in registry.adapters.items():
            policy = adapter.policy
            in_flight = metrics.in_flight.labels(name) if metrics else None
            self.bulkheads[name] = Bulkhead(
                name, policy.max_in_flight, policy.queue_timeout, gauge=in_flight
            )
            # The adapter's host: never the user:password a URL may carry.
            hosts[name] = adapter.host
        self.cooldowns = Cooldowns(inherited_board() or Board(), hosts)
        if metrics is not None:
            metrics.watch_cooldowns(registry.names(), self.cooldowns.cooling_providers)
        # Each provider's two call budgets, resolved once (not per request).
        self._budgets = {
            name: (adapter.policy.timeout, adapter.policy.first_token_timeout)
            for name, adapter in registry.adapters.items()
        }
        self.capacity = max(1, settings.threads - RESERVED_THREADS)
        self._admission = Admission(self.capacity)

    def route(self, name: str) -> Route:
        """Resolve ``name`` fully: its provider, its model id, and (for a provider
        whose wire format depends on the model) a format chatd speaks.

        :raises BadRequest: the name is malformed, or its model family is not spoken.
        """
        route = self.registry.router.resolve(name)
        spec = self.registry.specs.get(route.provider)
        if spec is not None and spec.wire_rules:
            spec.wire_for(route.upstream_model)
        return route

    def candidates(self, request: ChatRequest) -> list[str]:
        """The model names to try, in order: an alias's list, then the request's fallbacks."""
        names = list(self.aliases.get(request.model, (request.model,)))
        names.extend(request.fallbacks or ())
        return names

    def deadline(self, request: ChatRequest, provider: str, arrival: float) -> Deadline:
        """The call's one budget, from its arrival: timeout_secs for a whole answer,
        first_token_timeout_secs to a stream's first event (the first candidate's values)."""
        budgets = self._budgets.get(provider)
        if budgets is None:  # an unregistered provider: its 404 comes before any wait
            budgets = self._budgets[provider] = (
                float(self.settings.policy(provider, "timeout_secs")),
                float(self.settings.policy(provider, "first_token_timeout_secs")),
            )
        if request.stream:
            return Deadline.after(arrival, "first_token_timeout_secs", budgets[1])
        return Deadline.after(arrival, "timeout_secs", budgets[0])

    def run(self, request: ChatRequest, attempt: Attempt, record: CallRecord) -> Outcome:
        """Serve ``request`` with ``attempt``; raise the last failure if nothing could.

        ``record`` is filled in as it goes: provider, upstream time, retries, what was tried.
        """
        record.model = request.model
        request.request_id = record.request_id
        # Every name is resolved before any upstream call: a bad fallback is a 400 now.
        routes = [(name, self.route(name)) for name in self.candidates(request)]
        if not self._admission.acquire(blocking=False):
            raise Overloaded(self._admission.reason, headers={"Retry-After": "1"})
        try:
            outcome = self._run(request, routes, attempt, record)
        except BaseException:
            self._admission.release()
            raise
        self._hold_until_done(outcome.result, self._admission.release)
        return outcome

    def _run(self, request, routes, attempt: Attempt, record: CallRecord) -> Outcome:
        deadline = self.deadline(request, routes[0][1].provider, record.started)
        tried = record.tried
        for name, route in routes:
            tried.append(name)
            record.provider = route.provider
            try:
                adapter = self.registry.get(route.provider, route.upstream_model)
                result, secs = self._attempts(adapter, route, attempt, record, deadline)
                return Outcome(result, adapter, route, tried, secs)
            except MOVE_ON as e:
                if _not_found_or_down(e):
                    hint = self.registry.router.no_prefix_hint(name)
                    e.message = f"{e.message}; {hint}" if hint else e.message
                last = len(tried) == len(routes)
                out_of_time = not last and deadline.remaining() <= 0
                if (isinstance(e, UpstreamError) and e.request_rejected) or last or out_of_time:
                    if record.retries:
                        # chatd already retried: a client's retries would multiply them.
                        e.headers["x-should-retry"] = "false"
                    if len(routes) > 1 and len(tried) > 1:
                        e.headers["X-Chatd-Fallbacks"] = ", ".join(tried)
                    raise
                log.warning(
                    "fallback: %s failed (%s); trying %s", name, e.message, routes[len(tried)][0]
                )
        raise AssertionError("unreachable: there is always one candidate")

    def _attempts(
        self, adapter: ChatAdapter, route: Route, attempt: Attempt, record: CallRecord, deadline
    ):
        policy = adapter.policy
        provider, model = route.provider, route.upstream_model
        cooldowns = self.cooldowns
        bulkhead = self.bulkheads[provider]
        for n in range(policy.retries + 1):
            claimed = cooldowns.before_call(provider, model, max(0.0, deadline.remaining()))
            try:
                bulkhead.acquire(deadline)
            except ProviderBusy:
                cooldowns.release(claimed)
                raise
            started = time.monotonic()
            try:
                result = attempt(adapter, route, deadline)
            except UpstreamError as e:
                secs = time.monotonic() - started
                record.upstream_secs += secs
                bulkhead.release()
                cooldowns.failure(provider, model, e.scope, policy, e.message)
                delay = retry_delay(n, e.retry_after)
                if (
                    not e.retryable
                    or n == policy.retries
                    or delay > policy.retry_max_wait
                    or time.monotonic() + delay >= deadline.at
                ):
                    raise
                log.warning(
                    "retry %d/%d of %s/%s in %.2f s after: %s",
                    n + 1,
                    policy.retries,
                    provider,
                    model,
                    delay,
                    e.message,
                )
                time.sleep(delay)
                record.retries += 1
                continue
            except BaseException:
                bulkhead.release()
                cooldowns.release(claimed)
                raise
            now = time.monotonic()
            record.upstream_secs += now - started
            if isinstance(result, UpstreamStream):
                record.stream = True
                record.first_token_secs = now - record.started
            cooldowns.success(provider, model)
            self._hold_until_done(result, bulkhead.release)
            return result, now - started
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
        cooling = self.cooldowns.state(name)
        if cooling:
            state.update(cooling)
        return state


__all__ = ["ChatdError", "Dispatcher", "Outcome"]

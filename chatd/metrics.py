"""chatd.metrics ~~~ Prometheus metrics, correct across gunicorn workers.

Under gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before any worker starts, so each worker writes its values to
files there and ``/metrics`` sums them (prometheus_client's multiprocess mode);
a dead worker's files are marked dead when it exits. Without that variable
(tests, the Flask dev server) the values stay in this process.

Label sets are bounded: routes are the app's own rules, providers are the
configured ones, and model names past :data:`MAX_MODELS` distinct ones per worker
are counted as ``other``, and each is cut to :data:`MAX_LABEL_LENGTH`
characters, so no client can grow the series, or /metrics, without limit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

MAX_MODELS = 100
# Label values are cut to this length too, so a label cannot be large either.
MAX_LABEL_LENGTH = 128
# Upstream calls take from milliseconds (cached, local) to minutes (reasoning).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# chatd's own share should stay well under a millisecond.
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    """The metrics of one app; registered on a registry of its own (tests build many apps)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "chatd_requests",
            "Requests answered, by route, provider and status",
            ["route", "provider", "status"],
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "chatd_upstream_latency_seconds",
            "Time spent waiting on the upstream per request, retries included",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "chatd_overhead_seconds",
            "chatd's own time per non-streaming request: total minus upstream",
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "chatd_time_to_first_token_seconds",
            "From the request to the first streamed piece from the upstream",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "chatd_tokens",
            "Tokens in (prompt) and out (completion), as the upstream counted them",
            ["provider", "model", "direction"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "chatd_in_flight",
            "Upstream calls in flight",
            ["provider"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        # Cooling providers, read from the shared board at scrape time (set by the
        # dispatcher), so a cooldown that ended shows 0 without waiting for a call.
        self.cooling: Callable[[], set[str]] = set
        self._providers: tuple[str, ...] = ()
        self._models: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._children: dict[tuple, object] = {}

    def child(self, metric, *labels):
        """Return ``metric.labels(*labels)``, looked up once per label set."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def model_label(self, provider: str, model: str) -> str:
        """Return ``model`` as a label value (cut to MAX_LABEL_LENGTH), or "other"
        once MAX_MODELS are known."""
        if len(model) > MAX_LABEL_LENGTH:
            model = model[: MAX_LABEL_LENGTH - 1] + "~"
        key = (provider, model)
        if key in self._models:
            return model
        with self._lock:
            if len(self._models) >= MAX_MODELS:
                return "other"
            self._models.add(key)
        return model

    def watch_cooldowns(self, providers, cooling: Callable[[], set[str]]) -> None:
        """Report ``chatd_provider_cooldown`` for ``providers`` from ``cooling()``."""
        self._providers = tuple(providers)
        self.cooling = cooling

    def collect(self):
        """The cooldown gauge, computed now (this object is a collector)."""
        gauge = GaugeMetricFamily(
            "chatd_provider_cooldown",
            "1 while a provider cools down (shared by the workers)",
            labels=["provider"],
        )
        cooling = self.cooling()
        for provider in self._providers:
            gauge.add_metric([provider], 1.0 if provider in cooling else 0.0)
        yield gauge

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text, summed over every worker when under gunicorn."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = CollectorRegistry()
            registry.register(_Everything(self.registry))
        registry.register(self)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Everything:
    """A collector of everything on another registry (to add the cooldown gauge to it)."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self):
        return self._registry.collect()

"""chatd.registry ~~~ The providers this process can call, built once at start-up.

A provider is registered when it needs no key or its key resolved; one
without a key is left out, so a request for it is a clean 404 naming the env
var to set, never a failure at call time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from chatd.adapters import ADAPTERS, ChatAdapter
from chatd.config import Settings, resolve_key
from chatd.errors import ProviderDisabled, ProviderNotFound, UpstreamError, add_secrets
from chatd.providers import ProviderSpec
from chatd.resilience import Policy
from chatd.routing import Router
from chatd.sessions import make_session

log = logging.getLogger("chatd.registry")

# Model lists are fetched with a short timeout and reused for a minute: they
# change rarely, and /v1/models must not wait on a slow provider.
MODELS_TIMEOUT = 5.0
MODELS_TTL = 60.0


@dataclass(frozen=True)
class Unregistered:
    """Why a known provider is not registered: it has no key."""

    key_env: str
    key_file: str

    def hint(self) -> str:
        where = f"set {self.key_env}"
        if self.key_file:
            where += f" (or add it to {self.key_file})"
        return where


def key_headers(spec: ProviderSpec, key: str) -> dict[str, str]:
    """The headers that carry ``key`` the way ``spec`` says the vendor takes it."""
    headers = {}
    if spec.auth in ("bearer", "both"):
        headers["Authorization"] = f"Bearer {key}"
    if spec.auth in ("x-api-key", "both"):
        headers["x-api-key"] = key
    return headers


class Registry:
    """Registered providers by name, with cached availability probes."""

    def __init__(
        self,
        adapters: Mapping[str, ChatAdapter],
        *,
        specs: Mapping[str, ProviderSpec] | None = None,
        by_wire: Mapping[str, Mapping[str, ChatAdapter]] | None = None,
        disabled: frozenset[str] = frozenset(),
        unregistered: Mapping[str, Unregistered] | None = None,
        key_sources: Mapping[str, str] | None = None,
        probe_ttl: float = 5.0,
    ):
        self._adapters = dict(adapters)
        self.specs = dict(specs or {})
        # Every adapter of a provider, by wire format (OpenCode needs several).
        self._by_wire = {name: dict(wires) for name, wires in (by_wire or {}).items()}
        self.router = Router(self.specs.values())
        self.disabled = disabled
        self.unregistered = dict(unregistered or {})
        self.key_sources = dict(key_sources or {})
        self._probe_ttl = probe_ttl
        self._probes: dict[str, tuple[float, bool]] = {}
        self._models: tuple[float, list[dict]] | None = None
        # One refresh at a time: the others serve the last list (or wait for the first).
        self._models_lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._adapters)

    @property
    def adapters(self) -> Mapping[str, ChatAdapter]:
        return self._adapters

    def get(self, name: str, model: str | None = None) -> ChatAdapter:
        """Return the adapter for ``name`` (for its ``model``, when its wire format
        depends on the model).

        :raises ProviderNotFound: the provider has no key, so it is not registered.
        :raises ProviderDisabled: the provider is listed in ``disabled_providers``.
        :raises BadRequest: the model's family uses a format chatd does not speak.
        """
        adapter = self._adapters.get(name)
        if adapter is None:
            missing = self.unregistered.get(name)
            hint = f": {missing.hint()}" if missing else ""
            raise ProviderNotFound(f"provider {name!r} is not configured{hint}", provider=name)
        if name in self.disabled:
            raise ProviderDisabled(
                f"provider {name!r} is disabled by disabled_providers", provider=name
            )
        wires = self._by_wire.get(name)
        if model is not None and wires is not None and self.specs[name].wire_rules:
            return wires[self.specs[name].wire_for(model)]
        return adapter

    def available(self, name: str) -> bool:
        """Return whether ``name`` can take calls now (probe answers cached for a few seconds)."""
        if name in self.disabled or name not in self._adapters:
            return False
        now = time.monotonic()
        cached = self._probes.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        ok = self._adapters[name].probe()
        self._probes[name] = (now + self._probe_ttl, ok)
        return ok

    def list_models(self) -> list[dict]:
        """Return every enabled provider's models as OpenAI model objects, ids as chatd routes them.

        Providers are asked at once; one that fails is skipped and logged. While
        one thread refreshes the list, the others answer with the previous one
        (or wait for the first), so a burst of listings costs one set of calls.
        """
        cached = self._models
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if not self._models_lock.acquire(blocking=cached is None):
            return cached[1]
        try:
            cached = self._models
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]  # refreshed while this thread waited
            return self._fetch_models()
        finally:
            self._models_lock.release()

    def _fetch_models(self) -> list[dict]:
        now = time.monotonic()
        names = [name for name in self._adapters if name not in self.disabled]

        def fetch(name: str) -> list[dict]:
            try:
                ids = self._adapters[name].list_models(MODELS_TIMEOUT)
            except UpstreamError as e:
                log.warning("model list skipped: %s", e.message)
                return []
            # Named as chatd routes them: the row's prefix, which need not be "<name>/".
            prefix = self.specs[name].model_prefix if name in self.specs else f"{name}/"
            return [
                {"id": f"{prefix}{model}", "object": "model", "created": 0, "owned_by": name}
                for model in ids
            ]

        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            models = [model for listed in pool.map(fetch, names) for model in listed]
        self._models = (now + MODELS_TTL, models)
        return models

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.session.close()


def build_registry(settings: Settings, environ: Mapping[str, str] | None = None) -> Registry:
    """Resolve every provider's key and build its adapters (one per wire format it
    needs, sharing one session) for each that has one."""
    environ = os.environ if environ is None else environ
    adapters: dict[str, ChatAdapter] = {}
    by_wire: dict[str, dict[str, ChatAdapter]] = {}
    unregistered: dict[str, Unregistered] = {}
    key_sources: dict[str, str] = {}
    for name, spec in settings.specs.items():
        headers = dict(spec.headers)
        if spec.key_env is not None:
            key, source = resolve_key(spec.key_env, spec.key_file, environ)
            if not key:
                unregistered[name] = Unregistered(spec.key_env, spec.key_file)
                log.info("provider %s not registered: no key in %s", name, spec.key_env)
                continue
            headers.update(key_headers(spec, key))
            key_sources[name] = source
            # From now on no upstream text reaches a client or the log with it.
            add_secrets(key)
        session = make_session(headers, pool_size=settings.threads)
        policy = Policy.for_provider(settings, name)
        by_wire[name] = {
            wire: ADAPTERS[wire](
                name,
                spec.url,
                session,
                policy=policy,
                max_response_bytes=settings.max_response_bytes,
                probe_path=spec.probe_path,
                probe_timeout=settings.probe_timeout_secs,
            )
            for wire in spec.wires()
        }
        adapters[name] = by_wire[name][spec.wire]
    return Registry(
        adapters,
        specs=settings.specs,
        by_wire=by_wire,
        disabled=frozenset(settings.disabled_providers),
        unregistered=unregistered,
        key_sources=key_sources,
        probe_ttl=settings.probe_ttl_secs,
    )

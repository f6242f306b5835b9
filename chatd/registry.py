"""chatd.registry ~~~ The providers this process can call, built once at start-up.

A provider is registered when it needs no key or its key resolved; one
without a key is left out, so a request for it is a clean 404 naming the env
var to set, never a failure at call time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from chatd.adapters import ADAPTERS, ChatAdapter
from chatd.config import Settings, resolve_key
from chatd.errors import ProviderDisabled, ProviderNotFound, UpstreamError, add_secrets
from chatd.providers import KNOWN_PROVIDERS
from chatd.resilience import Policy
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


class Registry:
    """Registered providers by name, with cached availability probes."""

    def __init__(
        self,
        adapters: Mapping[str, ChatAdapter],
        *,
        disabled: frozenset[str] = frozenset(),
        unregistered: Mapping[str, Unregistered] | None = None,
        key_sources: Mapping[str, str] | None = None,
        probe_ttl: float = 5.0,
    ):
        self._adapters = dict(adapters)
        self.disabled = disabled
        self.unregistered = dict(unregistered or {})
        self.key_sources = dict(key_sources or {})
        self._probe_ttl = probe_ttl
        self._probes: dict[str, tuple[float, bool]] = {}
        self._models: tuple[float, list[dict]] | None = None

    def names(self) -> list[str]:
        return list(self._adapters)

    @property
    def adapters(self) -> Mapping[str, ChatAdapter]:
        return self._adapters

    def get(self, name: str) -> ChatAdapter:
        """Return the adapter for ``name``.

        :raises ProviderNotFound: the provider has no key, so it is not registered.
        :raises ProviderDisabled: the provider is listed in ``disabled_providers``.
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

        Providers are asked at once; one that fails is skipped and logged.
        """
        now = time.monotonic()
        if self._models is not None and self._models[0] > now:
            return self._models[1]
        names = [name for name in self._adapters if name not in self.disabled]

        def fetch(name: str) -> list[dict]:
            try:
                ids = self._adapters[name].list_models(MODELS_TIMEOUT)
            except UpstreamError as e:
                log.warning("model list skipped: %s", e.message)
                return []
            return [
                {"id": f"{name}/{model}", "object": "model", "created": 0, "owned_by": name}
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
    """Resolve every known provider's key and build an adapter for each that has one."""
    environ = os.environ if environ is None else environ
    adapters: dict[str, ChatAdapter] = {}
    unregistered: dict[str, Unregistered] = {}
    key_sources: dict[str, str] = {}
    for name, spec in KNOWN_PROVIDERS.items():
        headers = {}
        if spec.default_key_env is not None:
            key_env, key_file = settings.key_location(name)
            key, source = resolve_key(key_env, key_file, environ)
            if not key:
                unregistered[name] = Unregistered(key_env, key_file)
                log.info("provider %s not registered: no key in %s", name, key_env)
                continue
            headers["Authorization"] = f"Bearer {key}"
            key_sources[name] = source
            # From now on no upstream text reaches a client or the log with it.
            add_secrets(key)
        adapters[name] = ADAPTERS[spec.wire](
            name,
            settings.url(name),
            make_session(headers, pool_size=settings.threads),
            policy=Policy.for_provider(settings, name),
            max_response_bytes=settings.max_response_bytes,
            probe_path=spec.probe_path,
            probe_timeout=settings.probe_timeout_secs,
        )
    return Registry(
        adapters,
        disabled=frozenset(settings.disabled_providers),
        unregistered=unregistered,
        key_sources=key_sources,
        probe_ttl=settings.probe_ttl_secs,
    )

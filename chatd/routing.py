"""chatd.routing ~~~ Model name in, provider and upstream model id out.

A :class:`Router` is built once from the provider rows: a known prefix wins
(the longest, when one is a prefix of another), then a routing suffix
(``:cloud``), and anything else goes to the local Ollama, as the seed does.
Tested as a table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from chatd.errors import BadRequest
from chatd.providers import DEFAULT_PROVIDER, KNOWN_PROVIDERS, ProviderSpec, strip_cloud_suffix


class Route(NamedTuple):
    provider: str
    upstream_model: str


class Router:
    """Resolves model names for a set of provider rows."""

    def __init__(self, specs: Iterable[ProviderSpec]):
        specs = list(specs)
        self.prefixes = sorted(
            ((spec.model_prefix, spec) for spec in specs), key=lambda p: -len(p[0])
        )
        self.suffixes = [(spec.suffix, spec) for spec in specs if spec.suffix]
        self.default = next((s for s in specs if s.name == DEFAULT_PROVIDER), None)

    def known_prefixes(self) -> list[str]:
        return sorted(prefix for prefix, _ in self.prefixes)

    def resolve(self, name: str) -> Route:
        """Return the provider for model ``name`` and the model id to send it.

        :raises BadRequest: the name has a prefix but no model after it, or
            breaks its provider's naming rule.
        """
        for prefix, spec in self.prefixes:
            if name.startswith(prefix):
                return self._route(spec, name[len(prefix) :], name, prefix)
        for suffix, spec in self.suffixes:
            if name.endswith(suffix):
                return self._route(spec, name[: -len(suffix)], name, suffix)
        return Route(self.default.name if self.default else DEFAULT_PROVIDER, name)

    def no_prefix_hint(self, name: str) -> str | None:
        """Say that ``name`` matched no provider's prefix or suffix, for when the
        local Ollama, where such names go as the seed routes them, cannot serve it.

        ``openai/gpt-4o`` or a typo (``openruoter/x/y``) would otherwise fail
        with Ollama's bare "not found". None when a prefix or suffix matched.
        """
        if any(name.startswith(prefix) for prefix, _ in self.prefixes) or any(
            name.endswith(suffix) for suffix, _ in self.suffixes
        ):
            return None
        known = ", ".join(self.known_prefixes())
        return (
            f"no provider prefix matched {name!r}, so it went to the local Ollama (known: {known})"
        )

    @staticmethod
    def _route(spec: ProviderSpec, model: str, name: str, affix: str) -> Route:
        if spec.model_rule is not None:
            try:
                model = spec.model_rule(model)
            except BadRequest as e:
                raise BadRequest(f"model: {e.message}, got {name!r}") from None
        if not model:
            raise BadRequest(f"model: {name!r} names no model beside {affix!r}")
        return Route(spec.name, model)


_BUILTIN = Router(KNOWN_PROVIDERS.values())


def resolve_model(name: str) -> Route:
    """Resolve ``name`` with the built-in provider rows (see :class:`Router`)."""
    return _BUILTIN.resolve(name)


__all__ = ["Route", "Router", "resolve_model", "strip_cloud_suffix"]

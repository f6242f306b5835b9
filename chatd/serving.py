"""chatd.serving ~~~ The configuration gunicorn's master accepted, handed to its workers.

``gunicorn.conf.py`` runs in the master at start and again on every SIGHUP.
Each time it calls :func:`accept`, which loads the config and checks it whole
(settings, inbound tokens, exposure for the binds in use) before it replaces
:data:`current`. Workers are forked from the master, so ``chatd.wsgi`` builds
its app from :data:`current` rather than reading the files again: a config
broken between start and reload is refused by the master, logged, and the
workers keep serving the last good one (like ``nginx -s reload``), instead of
failing to boot and taking the master down with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chatd.config import (
    ConfigError,
    Settings,
    check_exposure,
    check_keys,
    effective_tokens,
    load_settings,
)


@dataclass(frozen=True)
class Serving:
    """Settings and inbound tokens, checked together."""

    settings: Settings
    tokens: tuple[str, ...]


# What the workers serve; None until the master accepted a config.
current: Serving | None = None
# The addresses gunicorn listens on, once it started (set by its on_starting hook).
binds: list[str] = []


def check(environ: Mapping[str, str], extra_binds=()) -> Serving:
    """Load and check the config as a worker would use it; raise ConfigError if unusable."""
    settings = load_settings(environ=environ)
    # A malformed key fails here, in one line naming its env var, not in each
    # worker's boot with a traceback that would print it.
    check_keys(settings, environ)
    tokens = effective_tokens(settings.auth, environ)
    # Both the binds in use (a --bind flag survives reloads) and the config's own.
    check_exposure([*extra_binds, settings.bind], settings.auth, tokens, settings.source)
    return Serving(settings, tokens)


def accept(environ: Mapping[str, str]) -> tuple[Serving, str | None]:
    """Return (what to serve, why the new config was refused or None).

    :raises ConfigError: the config is unusable and there is no earlier one to keep.
    """
    global current
    try:
        candidate = check(environ, binds)
    except ConfigError as e:
        if current is None:
            raise
        return current, str(e)
    current = candidate
    return candidate, None

"""chatd.config ~~~ Settings, loaded and checked once at start-up.

The ``[chatd]`` table of a TOML file (field names as the Go original's), then
``CHATD_<FIELD>`` environment overrides, into one frozen :class:`Settings`.
Provider keys are not settings: :func:`resolve_key` reads them from the
environment, or from a dotenv fallback file, when the registry is built, so a
``Settings`` never holds a secret. Anything wrong stops start-up with one
:class:`ConfigError` line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from dotenv import dotenv_values

from chatd.errors import BadRequest
from chatd.providers import (
    AUTH_SCHEMES,
    KNOWN_PROVIDERS,
    ROW_FIELDS,
    UNSUPPORTED,
    WIRES,
    ProviderSpec,
    declare,
)
from chatd.routing import Router

log = logging.getLogger("chatd.config")

DEFAULT_CONFIG_PATH = "config/chatd.toml"
MIB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")
# chatd's own retries per call; see _check_policy.
MAX_RETRIES = 2


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class AuthSettings:
    """The [auth] table: who may call chatd."""

    # Env var holding one or more tokens, comma separated (several let keys rotate).
    token_env: str = ""
    # File holding tokens, comma or newline separated, read at start-up and on SIGHUP.
    token_file: str = ""
    # Without tokens chatd binds only to loopback, unless this says otherwise.
    allow_unauthenticated: bool = False
    # Whether /metrics needs a token too.
    protect_metrics: bool = True


@dataclass(frozen=True)
class Settings:
    # Where gunicorn listens. Loopback by default: beyond it, [auth] tokens are required.
    bind: str = "127.0.0.1:8080"
    # gunicorn worker processes, and threads per worker (one thread per call in flight).
    workers: int = 2
    threads: int = 1536
    # The whole non-streaming upstream call may take this long.
    timeout_secs: float = 300.0
    # Connecting must not take longer than this.
    connect_timeout_secs: float = 10.0
    # From sending the call to the first byte of the answer (or the first
    # streamed piece); a local Ollama loading a model needs more (see providers.py).
    first_token_timeout_secs: float = 120.0
    # Longest gap between two streamed pieces.
    idle_timeout_secs: float = 60.0
    # Retries of a call that failed before any byte reached the client.
    retries: int = 1
    # Longest wait before a retry; an upstream Retry-After above it is not waited for.
    retry_max_wait_secs: float = 10.0
    # This many retryable failures in a row cool a provider down for cooldown_secs.
    cooldown_failures: int = 5
    cooldown_secs: float = 30.0
    # Calls in flight to one provider; 0 means only `threads` limits them.
    max_in_flight: int = 0
    # How long a call over max_in_flight waits for a slot before a 503.
    queue_timeout_secs: float = 5.0
    # Request bodies above this get 413 before they are read whole.
    max_request_bytes: int = 4 * MIB
    # Upstream answers above this are refused with 502; reading stops there.
    max_response_bytes: int = 32 * MIB
    # /chat/providers probes Ollama-native upstreams with this timeout and caches the answer.
    probe_timeout_secs: float = 1.0
    probe_ttl_secs: float = 5.0
    log_level: str = "info"
    # "text" or "json": one structured line per request either way.
    log_format: str = "text"
    # Proxies in front (nginx: 1) whose X-Forwarded-For is believed for the client address.
    trusted_proxies: int = 0
    # On SIGTERM or SIGHUP, calls and streams in flight get this long to finish.
    graceful_timeout_secs: float = 60.0
    # The seed's flat keys for the built-in providers: base URLs (the public
    # endpoints by default), key env vars and dotenv files. The general form is
    # [chatd.providers.<name>] url / key_env / key_file, which wins.
    ollama_url: str = KNOWN_PROVIDERS["ollama"].url
    ollama_cloud_url: str = KNOWN_PROVIDERS["ollama_cloud"].url
    openrouter_url: str = KNOWN_PROVIDERS["openrouter"].url
    opencode_url: str = KNOWN_PROVIDERS["opencode"].url
    opencode_go_url: str = KNOWN_PROVIDERS["opencode_go"].url
    kimi_url: str = KNOWN_PROVIDERS["kimi"].url
    ollama_cloud_key_env: str = "OLLAMA_API_KEY"
    ollama_cloud_key_file: str = ""
    openrouter_key_env: str = "OPENROUTER_API_KEY"
    openrouter_key_file: str = ""
    opencode_key_env: str = "OPENCODE_API_KEY"
    opencode_key_file: str = ""
    opencode_go_key_env: str = "OPENCODE_API_KEY"
    opencode_go_key_file: str = ""
    kimi_key_env: str = "KIMI_API_KEY"
    kimi_key_file: str = ""
    # Registered providers that answer 503 until removed from this list.
    disabled_providers: tuple[str, ...] = ()
    # [chatd.providers.<name>]: a built-in row's fields changed, or a new provider
    # declared (ROW_FIELDS), and per-provider values of the POLICY_FIELDS.
    providers: Mapping[str, Mapping] = field(default_factory=dict)
    # [chatd.aliases]: a model name standing for a list tried in order.
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # [auth]: inbound bearer tokens.
    auth: AuthSettings = field(default_factory=lambda: AuthSettings())
    # The file these settings came from, and the fields it (or CHATD_*) set.
    source: str = "<defaults>"
    explicit: frozenset[str] = frozenset()

    @cached_property
    def specs(self) -> dict[str, ProviderSpec]:
        """Every provider row: the built-in ones with the flat keys and
        [chatd.providers] applied, then the ones declared in the config."""
        specs = {}
        for name, builtin in KNOWN_PROVIDERS.items():
            flat = {}
            for key in ("url", "key_env", "key_file"):
                value = getattr(self, f"{name}_{key}", None)
                if value is not None:
                    flat[key] = value
            specs[name] = declare(name, {**flat, **self.providers.get(name, {})})
            if specs[name] == builtin:
                specs[name] = builtin
        for name, values in self.providers.items():
            if name not in specs:
                specs[name] = declare(name, values)
        return specs

    def url(self, provider: str) -> str:
        return self.specs[provider].url

    def key_location(self, provider: str) -> tuple[str, str]:
        """Return (env var, dotenv file) for ``provider``'s key."""
        spec = self.specs[provider]
        return spec.key_env or "", spec.key_file

    def policy(self, provider: str, name: str) -> float:
        """Return ``name`` for ``provider``: its [chatd.providers] value, else an
        explicit [chatd] value, else the provider's built-in default, else ours."""
        override = self.providers.get(provider, {})
        if name in override:
            return override[name]
        if name not in self.explicit:
            default = self.specs[provider].defaults.get(name)
            if default is not None:
                return default
        return getattr(self, name)


# What [chatd.providers.<name>] may set.
POLICY_FIELDS = (
    "timeout_secs",
    "connect_timeout_secs",
    "first_token_timeout_secs",
    "idle_timeout_secs",
    "retries",
    "retry_max_wait_secs",
    "cooldown_failures",
    "cooldown_secs",
    "max_in_flight",
    "queue_timeout_secs",
)
_TABLES = ("providers", "aliases", "auth")
_FIELDS = {
    f.name: f
    for f in dataclasses.fields(Settings)
    if f.name not in ("source", "explicit", *_TABLES)
}


def _check_type(name: str, value, where: str):
    default = _FIELDS[name].default
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {name} must be a list of strings")
        return tuple(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {name} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {name} must be a finite number, got {value}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string")
    return value


def _from_env(name: str, raw: str, where: str):
    """Parse a ``CHATD_<FIELD>`` value into the field's type."""
    default = _FIELDS[name].default
    if isinstance(default, tuple):
        return tuple(v.strip() for v in raw.split(",") if v.strip())
    try:
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if isinstance(default, int):
            return int(raw)
    except ValueError:
        raise ConfigError(f"{where}: {name} must be a finite number, got {raw!r}") from None
    return raw


def _check_policy(values: Mapping, where: str) -> None:
    for name in ("workers", "threads", "max_request_bytes", "max_response_bytes"):
        if name in values and values[name] < 1:
            raise ConfigError(f"{where}: {name} must be at least 1")
    for name in (
        "timeout_secs",
        "connect_timeout_secs",
        "first_token_timeout_secs",
        "idle_timeout_secs",
        "probe_timeout_secs",
        "cooldown_secs",
    ):
        if name in values and values[name] <= 0:
            raise ConfigError(f"{where}: {name} must be greater than 0")
    for name in (
        "probe_ttl_secs",
        "retries",
        "retry_max_wait_secs",
        "max_in_flight",
        "queue_timeout_secs",
    ):
        if name in values and values[name] < 0:
            raise ConfigError(f"{where}: {name} must not be negative")
    if "cooldown_failures" in values and values["cooldown_failures"] < 1:
        raise ConfigError(f"{where}: cooldown_failures must be at least 1")
    # With an OpenAI SDK's 2 retries on top, one client call costs at most
    # 1 + MAX_RETRIES upstream calls: chatd answers x-should-retry: false once it
    # retried (README, "Retries and the client's retries").
    if "retries" in values and values["retries"] > MAX_RETRIES:
        raise ConfigError(f"{where}: retries must be at most {MAX_RETRIES}")


# An HTTP header name (RFC 9110 token) and a value with no control characters
# and no surrounding white space.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VISIBLE = r"[\x21-\x7e\x80-\uffff]"
HEADER_VALUE = re.compile(rf"(?:{_VISIBLE}(?:[\x20-\x7e\x80-\uffff]*{_VISIBLE})?)?")
# A provider name: it also makes the default prefix "<name>/" and metric labels.
PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _check_row(name: str, value, place: str):
    """Check one row field of [chatd.providers.<name>]."""
    if name in ("headers", "wire_rules"):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{place}: {name} must be a table of strings")
        if name == "wire_rules":
            for wire in value.values():
                if wire not in WIRES and not wire.startswith(UNSUPPORTED):
                    raise ConfigError(f"{place}: wire_rules: unknown wire format {wire!r}")
        if name == "headers":
            if any(k.lower() in ("authorization", "x-api-key") for k in value):
                raise ConfigError(f"{place}: headers must not carry a key; use key_env and auth")
            for header, text in value.items():
                # What requests would refuse when a worker builds its session:
                # caught here, a reload with a typo is refused, not fatal.
                if not HEADER_NAME.fullmatch(header) or not HEADER_VALUE.fullmatch(text):
                    raise ConfigError(f"{place}: headers: {header!r} is not a valid header")
        return dict(value)
    if not isinstance(value, str):
        raise ConfigError(f"{place}: {name} must be a string")
    if name == "url" and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{place}: url must be an http:// or https:// URL")
    if name == "wire" and value not in WIRES:
        raise ConfigError(f"{place}: wire must be one of {', '.join(WIRES)}")
    if name == "auth" and value not in AUTH_SCHEMES:
        raise ConfigError(f"{place}: auth must be one of {', '.join(AUTH_SCHEMES)}")
    if name == "prefix" and not value:
        raise ConfigError(f"{place}: prefix must not be empty")
    return value


def _parse_providers(table, where: str) -> dict[str, dict]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [chatd.providers] must be a table of tables")
    providers = {}
    for provider, values in table.items():
        place = f"{where}: [chatd.providers.{provider}]"
        if not isinstance(values, dict):
            raise ConfigError(f"{place} must be a table")
        if provider not in KNOWN_PROVIDERS:
            if not PROVIDER_NAME.fullmatch(provider):
                raise ConfigError(
                    f"{place}: a provider name is lower-case letters, digits, - and _"
                )
            missing = [name for name in ("url", "wire") if name not in values]
            if missing:
                raise ConfigError(
                    f"{place}: a new provider needs {' and '.join(missing)} "
                    f"(built-in: {', '.join(KNOWN_PROVIDERS)})"
                )
        checked = {}
        for name, value in values.items():
            if name in ROW_FIELDS:
                checked[name] = _check_row(name, value, place)
            elif name in POLICY_FIELDS:
                checked[name] = _check_type(name, value, place)
            else:
                raise ConfigError(f"{place} has unknown field {name!r}")
        _check_policy(checked, place)
        providers[provider] = checked
    return providers


def _parse_aliases(table, where: str) -> dict[str, tuple[str, ...]]:
    place = f"{where}: [chatd.aliases]"
    if not isinstance(table, dict):
        raise ConfigError(f"{place} must be a table")
    aliases = {}
    for alias, models in table.items():
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) and m for m in models)
        ):
            raise ConfigError(f"{place}: {alias} must be a non-empty list of model names")
        if alias in models:
            raise ConfigError(f"{place}: {alias} must not list itself")
        aliases[alias] = tuple(models)
    return aliases


def _parse_auth(table, where: str, environ: Mapping[str, str]) -> AuthSettings:
    place = f"{where}: [auth]"
    if not isinstance(table, dict):
        raise ConfigError(f"{place} must be a table")
    fields = {f.name: f.default for f in dataclasses.fields(AuthSettings)}
    values = {}
    for name, value in table.items():
        if name not in fields:
            raise ConfigError(f"{place} has unknown field {name!r}")
        if type(value) is not type(fields[name]):
            kind = "true or false" if isinstance(fields[name], bool) else "a string"
            raise ConfigError(f"{place}: {name} must be {kind}")
        values[name] = value
    auth = AuthSettings(**values)
    if auth.token_file and not os.path.isfile(auth.token_file):
        raise ConfigError(f"{place}: token_file {auth.token_file} does not exist")
    # Naming a token source that holds no token is a mistake, never "no auth":
    # serving and `chatd check-config` both refuse it, on any bind.
    if (auth.token_env or auth.token_file) and not effective_tokens(auth, environ):
        sources = " or ".join(
            s
            for s in (
                auth.token_env and f"token_env {auth.token_env}",
                auth.token_file and f"token_file {auth.token_file}",
            )
            if s
        )
        raise ConfigError(f"{place}: {sources} holds no token")
    return auth


def is_loopback(bind: str) -> bool:
    """Whether a gunicorn bind address (HOST:PORT, [::1]:PORT, unix:PATH) is reachable
    only from this machine."""
    if bind.startswith("unix:"):
        return True
    host = bind.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def effective_tokens(auth: AuthSettings, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Return the inbound tokens: the env var's, then the token file's, each stripped.

    The one place that decides whether chatd has auth: start-up, ``--bind``
    overrides, reloads and :func:`chatd.app.create_app` all ask it. ``","``,
    blanks or an empty file are zero tokens.

    :raises ConfigError: the token file cannot be read, or a token holds a
        control character (never the token itself in the message).
    """
    raw = environ.get(auth.token_env, "") if auth.token_env else ""
    if auth.token_file:
        try:
            with open(auth.token_file, encoding="utf-8") as f:
                raw += "," + f.read()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise ConfigError(f"[auth]: cannot read token_file: {reason}") from None
    tokens = tuple(t.strip() for t in raw.replace("\n", ",").split(",") if t.strip())
    for token in tokens:
        if not is_clean_secret(token):
            where = auth.token_env if auth.token_env else auth.token_file
            raise ConfigError(
                f"[auth]: a token from {where} holds whitespace or control characters"
            )
    return tokens


def is_clean_secret(value: str) -> bool:
    """Whether ``value`` can travel in a header: printable, no whitespace inside."""
    return value.isprintable() and not any(c.isspace() for c in value)


def check_exposure(binds, auth: AuthSettings, tokens: tuple[str, ...], where: str) -> None:
    """Refuse to serve beyond loopback with zero effective tokens, unless told to.

    ``tokens`` is what :func:`effective_tokens` returned for ``auth``.
    """
    if auth.allow_unauthenticated or tokens:
        return
    exposed = [bind for bind in binds if not is_loopback(bind)]
    if exposed:
        raise ConfigError(
            f"{where}: bind {exposed[0]} is reachable from other machines and [auth] has "
            "no tokens; set [auth] token_env or token_file, or allow_unauthenticated = true"
        )


def _validate(settings: Settings, environ: Mapping[str, str]) -> None:
    where = settings.source
    _check_policy(dataclasses.asdict(settings), where)
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"{where}: log_format must be text or json")
    if settings.trusted_proxies < 0:
        raise ConfigError(f"{where}: trusted_proxies must not be negative")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"{where}: log_level must be one of {', '.join(LOG_LEVELS)}")
    specs = settings.specs
    for provider in KNOWN_PROVIDERS:
        if not settings.url(provider).startswith(("http://", "https://")):
            raise ConfigError(f"{where}: {provider}_url must be an http:// or https:// URL")
    prefixes: dict[str, str] = {}
    for spec in specs.values():
        other = prefixes.setdefault(spec.model_prefix, spec.name)
        if other != spec.name:
            raise ConfigError(
                f"{where}: providers {other} and {spec.name} share the prefix {spec.model_prefix!r}"
            )
    # Alias entries are resolved now, with every provider row (declared ones
    # too), not when a call first reaches them (a 400 after upstream calls).
    router = Router(specs.values())
    for alias, models in settings.aliases.items():
        for model in models:
            try:
                route = router.resolve(model)
                specs[route.provider].wire_for(route.upstream_model)
            except BadRequest as e:
                raise ConfigError(f"{where}: [chatd.aliases]: {alias}: {e.message}") from None
    for provider in settings.disabled_providers:
        if provider not in specs:
            raise ConfigError(
                f"{where}: disabled_providers names unknown provider {provider!r} "
                f"(known: {', '.join(specs)})"
            )
    if ":" not in settings.bind and not settings.bind.startswith("unix:"):
        raise ConfigError(f"{where}: bind must be HOST:PORT or unix:PATH")
    check_exposure([settings.bind], settings.auth, effective_tokens(settings.auth, environ), where)


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (else ``$CHATD_CONFIG``, else the default file).

    :raises ConfigError: the file cannot be read, or a field is unknown or of the wrong type.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get("CHATD_CONFIG") or DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None

    # The file may be shared with other services (the lakehouse config is):
    # only the [chatd] table is ours, and in it every key must be known.
    table = document.get("chatd", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [chatd] must be a table")
    values = {}
    for name, value in table.items():
        if name == "providers":
            values[name] = _parse_providers(value, path)
        elif name == "aliases":
            values[name] = _parse_aliases(value, path)
        elif name not in _FIELDS:
            raise ConfigError(f"{path}: [chatd] has unknown field {name!r}")
        else:
            values[name] = _check_type(name, value, f"{path}: [chatd]")
    for name in _FIELDS:
        raw = environ.get(f"CHATD_{name.upper()}")
        if raw is not None:
            values[name] = _from_env(name, raw, f"CHATD_{name.upper()}")

    explicit = frozenset(values) - set(_TABLES)
    values["auth"] = _parse_auth(document.get("auth", {}), path, environ)
    settings = Settings(source=path, explicit=explicit, **values)
    _validate(settings, environ)
    return settings


def resolve_key(env_name: str, file_path: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """Return ``(key, where it came from)``; the key is "" when there is none.

    The env var named ``env_name`` wins; when it is empty, the dotenv file
    ``file_path`` is consulted for the same name. A missing file means no key;
    an unreadable one is logged (never its contents) and also means no key.

    :raises ConfigError: the key holds whitespace or a control character.
    """
    key = environ.get(env_name, "").strip() if env_name else ""
    if key:
        _check_key(key, f"env {env_name}")
        return key, f"env {env_name}"
    if not file_path or not env_name or not os.path.exists(file_path):
        return "", ""
    if not os.path.isfile(file_path):
        log.warning("cannot read key file %s: not a file", file_path)
        return "", ""
    try:
        key = (dotenv_values(file_path).get(env_name) or "").strip()
    except (OSError, UnicodeDecodeError) as e:
        log.warning("cannot read key file %s: %s", file_path, type(e).__name__)
        return "", ""
    if not key:
        return "", ""
    _check_key(key, f"{env_name} in {file_path}")
    return key, f"file {file_path}"


def _check_key(key: str, where: str) -> None:
    # A newline in a key would be refused by requests later, with the key in the
    # traceback: refuse it here, naming where it came from and never the value.
    if not is_clean_secret(key):
        raise ConfigError(f"{where}: the key holds whitespace or control characters")


def check_keys(settings: Settings, environ: Mapping[str, str]) -> None:
    """Resolve every provider's key once, so a malformed one stops start-up here.

    :raises ConfigError: naming the env var (or file) of a key that holds
        whitespace or a control character, never the key.
    """
    for spec in settings.specs.values():
        if spec.key_env is not None:
            resolve_key(spec.key_env, spec.key_file, environ)

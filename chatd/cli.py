"""chatd.cli ~~~ The ``chatd`` command: serve under gunicorn, or check a config.

``chatd --config PATH`` checks the config, then replaces itself with gunicorn
running on ``gunicorn.conf.py`` (so signals reach gunicorn's master directly);
arguments it does not know are passed on to gunicorn (``--bind``, ``--workers``).
``chatd check-config --config PATH`` prints what the config resolves to;
``chatd --version`` prints chatd's version (not gunicorn's).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from chatd import __version__
from chatd.config import ConfigError, effective_tokens, load_settings, resolve_key


def default_gunicorn_config() -> str | None:
    """Return ./gunicorn.conf.py, else the one shipped beside the package source."""
    for candidate in (Path("gunicorn.conf.py"), Path(__file__).parent.parent / "gunicorn.conf.py"):
        if candidate.is_file():
            return str(candidate.resolve())
    return None


def key_fingerprint(key: str) -> str:
    """A short digest that tells keys apart without revealing them."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def check_config(path: str | None) -> int:
    """Print the resolved providers, URLs and key sources (never keys); 0 when usable."""
    settings = load_settings(path)
    print(f"config: {settings.source}")
    print(f"bind: {settings.bind}  workers: {settings.workers}  threads: {settings.threads}")
    for name, spec in settings.specs.items():
        if spec.key_env is None:
            state = "registered (no key needed)"
        else:
            key, source = resolve_key(spec.key_env, spec.key_file, os.environ)
            state = (
                f"registered, key from {source} ({key_fingerprint(key)})"
                if key
                else f"not registered: no key in {spec.key_env}"
            )
        if name in settings.disabled_providers:
            state += ", disabled"
        wires = "+".join(spec.wires())
        print(f"{name:13} {spec.model_prefix:14} {wires:9} {spec.url}  {state}")
    auth = settings.auth
    tokens = effective_tokens(auth, os.environ)
    if tokens:
        prints = ", ".join(key_fingerprint(t) for t in tokens)
        print(
            f"auth: {len(tokens)} token(s) ({prints}); /metrics protected: {auth.protect_metrics}"
        )
    else:
        print("auth: none (loopback only)" if not auth.allow_unauthenticated else "auth: none")
    for alias, models in settings.aliases.items():
        print(f"alias {alias}: {', '.join(models)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The subcommand is picked off by hand: argparse would take the value of a
    # gunicorn flag it does not know (--bind HOST:PORT) for a positional.
    command = argv.pop(0) if argv and argv[0] in ("serve", "check-config") else "serve"
    parser = argparse.ArgumentParser(
        prog="chatd",
        usage="chatd [serve|check-config] [--config PATH] [gunicorn flags...]",
        description="Run the chatd LLM dispatcher under gunicorn.",
        epilog="Other arguments are passed on to gunicorn (e.g. --bind 127.0.0.1:9000).",
    )
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    parser.add_argument(
        "--config", help="TOML config (default: $CHATD_CONFIG or config/chatd.toml)"
    )
    parser.add_argument(
        "--gunicorn-config", help="gunicorn config file (default: gunicorn.conf.py)"
    )
    args, gunicorn_args = parser.parse_known_args(argv)

    try:
        if command == "check-config":
            return check_config(args.config)
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"chatd: {e}", file=sys.stderr)
        return 1

    conf = args.gunicorn_config or default_gunicorn_config()
    if conf is None:
        print("chatd: no gunicorn.conf.py found; pass --gunicorn-config", file=sys.stderr)
        return 1
    os.environ["CHATD_CONFIG"] = os.path.abspath(settings.source)
    # gunicorn's own script, not `-m gunicorn`: on USR2 the master re-executes
    # its argv, and `python .../gunicorn/__main__.py` would put gunicorn's
    # package directory first on sys.path (its `http` hides the stdlib's).
    script = Path(sys.executable).parent / "gunicorn"
    runner = [str(script)] if script.is_file() else ["-m", "gunicorn"]
    argv = [sys.executable, *runner, "-c", conf, *gunicorn_args]
    os.execv(sys.executable, argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

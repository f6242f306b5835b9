"""load_settings and resolve_key: TOML, CHATD_* overrides, keys from env or dotenv."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from chatd.config import ConfigError, Settings, load_settings, resolve_key


def write(tmp_path, text: str, name: str = "chatd.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_when_there_is_no_chatd_table(tmp_path):
    settings = load_settings(write(tmp_path, "[gateway]\nport = 1\n"), environ={})
    assert settings.bind == "127.0.0.1:8080"
    assert settings.max_request_bytes == 4 * 1024 * 1024
    assert settings.ollama_cloud_url == "https://ollama.com"
    assert settings.openrouter_url == "https://openrouter.ai/api/v1"
    assert settings.opencode_url == "https://opencode.ai/zen/v1"
    assert settings.kimi_url == "https://api.kimi.com/coding/v1"
    assert (settings.ollama_cloud_key_env, settings.openrouter_key_env) == (
        "OLLAMA_API_KEY",
        "OPENROUTER_API_KEY",
    )
    assert (settings.opencode_key_env, settings.kimi_key_env) == (
        "OPENCODE_API_KEY",
        "KIMI_API_KEY",
    )
    # The README's Configuration table, row by row.
    assert (settings.workers, settings.threads) == (2, 1536)
    assert (settings.timeout_secs, settings.connect_timeout_secs) == (300, 10)
    assert (settings.first_token_timeout_secs, settings.idle_timeout_secs) == (120, 60)
    assert (settings.retries, settings.retry_max_wait_secs) == (1, 10)
    assert (settings.cooldown_failures, settings.cooldown_secs) == (5, 30)
    assert (settings.max_in_flight, settings.queue_timeout_secs) == (0, 5)
    assert settings.max_response_bytes == 32 * 1024 * 1024
    assert (settings.probe_timeout_secs, settings.probe_ttl_secs) == (1.0, 5.0)
    assert settings.opencode_go_url == "https://opencode.ai/zen/go/v1"
    assert settings.graceful_timeout_secs == 60


def test_values_come_from_the_chatd_table(tmp_path):
    path = write(
        tmp_path,
        """
[chatd]
bind = "127.0.0.1:3110"
timeout_secs = 42
ollama_url = "http://10.0.0.5:11434"
kimi_key_env = "MY_KIMI"
kimi_key_file = "/etc/lakehouse/.env"
max_request_bytes = 16777216
disabled_providers = ["kimi"]

[chatd.providers.openrouter]
retries = 2

[chatd.aliases]
fast = ["ollama/qwen2.5:7b", "openrouter/qwen/qwen-2.5-7b-instruct"]
""",
    )
    settings = load_settings(path, environ={})
    assert settings.bind == "127.0.0.1:3110"
    assert settings.timeout_secs == 42.0
    assert settings.ollama_url == "http://10.0.0.5:11434"
    assert settings.key_location("kimi") == ("MY_KIMI", "/etc/lakehouse/.env")
    assert settings.max_request_bytes == 16777216
    assert settings.disabled_providers == ("kimi",)
    assert settings.policy("openrouter", "retries") == 2
    assert settings.policy("kimi", "retries") == 1
    assert settings.aliases["fast"][0] == "ollama/qwen2.5:7b"


def test_env_overrides_the_file(tmp_path):
    path = write(tmp_path, "[chatd]\ntimeout_secs = 42\n")
    environ = {"CHATD_TIMEOUT_SECS": "7", "CHATD_DISABLED_PROVIDERS": "kimi, opencode"}
    settings = load_settings(path, environ=environ)
    assert settings.timeout_secs == 7.0
    assert settings.disabled_providers == ("kimi", "opencode")


def test_chatd_config_names_the_file(tmp_path):
    path = write(tmp_path, '[chatd]\nbind = "127.0.0.1:9"\n')
    assert load_settings(environ={"CHATD_CONFIG": path}).bind == "127.0.0.1:9"


def test_provider_defaults_give_way_to_explicit_values(tmp_path):
    # The local Ollama's own first-token default (a model load is slow)...
    assert (
        load_settings(write(tmp_path, ""), environ={}).policy("ollama", "first_token_timeout_secs")
        == 300.0
    )
    # ...yields to an explicit [chatd] value, which [chatd.providers.<name>] beats.
    explicit = load_settings(
        write(tmp_path, "[chatd]\nfirst_token_timeout_secs = 20\n", "b.toml"), environ={}
    )
    assert explicit.policy("ollama", "first_token_timeout_secs") == 20.0
    assert explicit.policy("kimi", "first_token_timeout_secs") == 20.0


@pytest.mark.parametrize(
    "text, field",
    [
        ('[chatd]\ntimeout_secs = "soon"\n', "timeout_secs"),
        ("[chatd]\nmax_request_bytes = true\n", "max_request_bytes"),
        ('[chatd]\ndisabled_providers = "kimi"\n', "disabled_providers"),
        ('[chatd]\ndisabled_providers = ["nobody"]\n', "disabled_providers"),
        ("[chatd]\ntimeout_sec = 5\n", "timeout_sec"),
        ('[chatd]\nkimi_url = "ftp://kimi"\n', "kimi_url"),
        ("[chatd]\nretries = -1\n", "retries"),
        ("[chatd]\nretries = 3\n", "retries"),
        ("[chatd.providers.kimi]\nretries = 3\n", "retries"),
        ("[chatd]\ntimeout_secs = nan\n", "timeout_secs"),
        ("[chatd]\nidle_timeout_secs = inf\n", "idle_timeout_secs"),
        ("[chatd.providers.kimi]\ncooldown_secs = inf\n", "cooldown_secs"),
        ('[chatd.aliases]\nfast = ["ollama/x", "openrouter/no-vendor"]\n', "openrouter/no-vendor"),
        ('[chatd.aliases]\nfast = ["kimi/"]\n', "kimi/"),
        ('[chatd]\nlog_format = "xml"\n', "log_format"),
        ("[chatd.providers.nobody]\nretries = 1\n", "nobody"),
        ("[chatd.providers.kimi]\nbind = 1\n", "bind"),
        ('[chatd.aliases]\nfast = "ollama/x"\n', "fast"),
        ('[chatd]\nbind = "0.0.0.0:8080"\n', "[auth]"),
        ("[auth]\ntoken_env = 5\n", "token_env"),
        ("[chatd\n", "TOML"),
    ],
)
def test_a_bad_config_names_the_file_and_the_field(tmp_path, text, field):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert path in str(raised.value)
    assert field in str(raised.value)


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "NaN"])
def test_a_non_finite_number_from_the_environment_is_a_config_error(tmp_path, raw):
    path = write(tmp_path, "[chatd]\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={"CHATD_TIMEOUT_SECS": raw})
    assert "CHATD_TIMEOUT_SECS" in str(raised.value)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_settings(str(tmp_path / "nope.toml"), environ={})
    assert "nope.toml" in str(raised.value)


def test_shipped_configs_load():
    assert load_settings("config/chatd.toml", environ={}).bind.startswith("127.0.0.1:")
    lakehouse = load_settings("config/lakehouse.example.toml", environ={})
    assert lakehouse.kimi_key_file == "/etc/lakehouse/.env"


# -- keys ------------------------------------------------------------------------


def test_the_env_var_wins(tmp_path):
    env_file = write(tmp_path, "KIMI_API_KEY=from-file\n", ".env")
    assert resolve_key("KIMI_API_KEY", env_file, {"KIMI_API_KEY": "from-env"}) == (
        "from-env",
        "env KIMI_API_KEY",
    )


@pytest.mark.parametrize(
    "content",
    ["KIMI_API_KEY=abc\n", 'export KIMI_API_KEY="abc"\n', "OTHER=1\nKIMI_API_KEY='abc'\n"],
)
def test_an_empty_env_var_falls_back_to_the_dotenv_file(tmp_path, content):
    env_file = write(tmp_path, content, ".env")
    key, source = resolve_key("KIMI_API_KEY", env_file, {"KIMI_API_KEY": ""})
    assert key == "abc"
    assert source == f"file {env_file}"


def test_no_key_anywhere(tmp_path):
    env_file = write(tmp_path, "OTHER_KEY=x\n", ".env")
    assert resolve_key("KIMI_API_KEY", env_file, {}) == ("", "")
    assert resolve_key("KIMI_API_KEY", str(tmp_path / "missing.env"), {}) == ("", "")
    assert resolve_key("KIMI_API_KEY", "", {}) == ("", "")


def test_an_unreadable_key_file_is_logged_without_its_contents(tmp_path, caplog):
    env_file = tmp_path / "bad.env"
    env_file.write_bytes(b"KIMI_API_KEY=secret-in-a-broken-file\xff\xfe\n")
    with caplog.at_level(logging.WARNING, logger="chatd.config"):
        assert resolve_key("KIMI_API_KEY", str(env_file), {}) == ("", "")
    assert "cannot read key file" in caplog.text
    assert "secret-in-a-broken-file" not in caplog.text


def test_a_directory_as_key_file_is_no_key(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="chatd.config"):
        assert resolve_key("KIMI_API_KEY", str(tmp_path), {}) == ("", "")
    assert "cannot read key file" in caplog.text


def test_settings_never_hold_a_key():
    names = {name.lower() for name in Settings.__dataclass_fields__}
    assert not any(name.endswith("_key") or name == "key" for name in names)


def test_loading_config_does_not_import_prometheus_client():
    """gunicorn.conf.py loads the config in the master before it sets
    PROMETHEUS_MULTIPROC_DIR; prometheus_client picks its value class at import,
    so importing it there first would leave every worker's metrics unshared."""
    import subprocess
    import sys

    # chatd.worker too: gunicorn's master imports the worker class before on_starting.
    code = (
        "import sys, chatd.config, chatd.routing, chatd.worker;"
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "False", result.stderr


def test_worker_connections_stay_below_the_open_files_limit(tmp_path):
    """Each connection is a descriptor: gunicorn.conf.py raises the soft limit to
    the hard one and keeps worker_connections below it."""
    import resource
    import subprocess
    import sys

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 400))

    code = (
        "import runpy, resource; g = runpy.run_path('gunicorn.conf.py');"
        "print(g['worker_connections'], resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    config = write(tmp_path, "[chatd]\nthreads = 1536\n")
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=low_limit,
        env={**os.environ, "CHATD_CONFIG": str(config)},
        cwd=Path(__file__).resolve().parent.parent,
    )
    connections, soft = (int(v) for v in done.stdout.split()[-2:])
    assert soft == 400  # raised to the hard limit
    assert connections == 400 - 256  # not 2 x 1536

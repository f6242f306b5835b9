"""Run chatd for real: gunicorn on a free loopback port, stopped whatever happens.

Used by the live tests (and shaped so the benchmark can use it too)::

    with run_chatd(config_path, env) as chatd:
        requests.post(chatd.url + "/chat", json=...)
        chatd.log_text()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without provider keys or CHATD_* settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("CHATD_") or k.endswith("_API_KEY") or k.lower().endswith("_proxy"))
    }
    env.update(extra)
    return env


class LiveChatd:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process = process
        self.url = url
        self.log_path = log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_config(path: Path, **fields) -> Path:
    """Write a [chatd] TOML table of ``fields``."""
    lines = ["[chatd]"]
    for name, value in fields.items():
        if isinstance(value, str):
            lines.append(f'{name} = "{value}"')
        elif isinstance(value, list | tuple):
            lines.append(
                f"{name} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]"
            )
        else:
            lines.append(f"{name} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


# The console script of the chatd installed beside this Python.
CHATD_SCRIPT = Path(sys.executable).parent / "chatd"


def chatd_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``chatd ARGS`` to its end (a check, or a start-up that must fail)."""
    return subprocess.run(
        [str(CHATD_SCRIPT), *args], capture_output=True, text=True, timeout=20, cwd=ROOT, env=env
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Send ``sig`` and wait ``timeout`` seconds; kill what is still running after that."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.contextmanager
def run_chatd(
    config_path: Path, env: dict[str, str], *args: str, workers: int = 1, output: int | None = None
):
    """Start ``chatd --config config_path`` under gunicorn; stop it on exit. Its
    stdout and stderr go to a log file, or to the descriptor ``output``."""
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="chatd-live-", suffix=".log", delete=False)
    command = [
        str(CHATD_SCRIPT),
        "--config",
        str(config_path),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        *args,
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log_file if output is None else output,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"chatd exited {process.returncode}: {Path(log_file.name).read_text()}"
                )
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # still booting, or loaded
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chatd did not start: {Path(log_file.name).read_text()}")
            time.sleep(0.1)
        yield LiveChatd(process, url, Path(log_file.name))
    finally:
        stop(process)
        log_file.close()


@contextlib.contextmanager
def fake_providers():
    """One fake upstream per provider, each replying with "from <provider>"."""
    from tests.fakes import FakeOllama, FakeOpenAI

    with (
        FakeOllama("from local ollama") as ollama,
        FakeOllama("from ollama cloud") as ollama_cloud,
        FakeOpenAI("from openrouter") as openrouter,
        FakeOpenAI("from opencode") as opencode,
        FakeOpenAI("from kimi") as kimi,
    ):
        yield {
            "ollama": ollama,
            "ollama_cloud": ollama_cloud,
            "openrouter": openrouter,
            "opencode": opencode,
            "kimi": kimi,
        }


def provider_urls(fakes: dict) -> dict[str, str]:
    """The [chatd] URL fields pointing each provider at its fake (with the real path prefixes)."""
    return {
        "ollama_url": fakes["ollama"].url,
        "ollama_cloud_url": fakes["ollama_cloud"].url,
        "openrouter_url": fakes["openrouter"].url + "/api/v1",
        "opencode_url": fakes["opencode"].url + "/zen/v1",
        "opencode_go_url": fakes["opencode"].url + "/zen/go/v1",
        "kimi_url": fakes["kimi"].url + "/coding/v1",
    }


def wait_for(condition, seconds: float, what: str, log=None, every: float = 0.1):
    """Poll ``condition`` until it is truthy (its value is returned) or ``seconds``
    pass (the test fails, naming ``what``, with the tail of ``log()`` if given)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}" + (f"; log:\n{log()[-3000:]}" if log else ""))

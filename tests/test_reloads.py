"""Nothing an operator does by accident takes chatd down (issue 10, item 6).

A chatd started the documented way (`chatd --config`, two workers) gets a
SIGHUP with a broken config, a worker killed after its metrics directory was
removed, and a USR2 upgrade followed by TERM of the old master, and must serve
throughout. Its TMPDIR is private, so the metrics directories it makes (or
must not make) can be counted.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests

from chatd import serving
from chatd.config import ConfigError
from tests.conftest import TEST_KEYS
from tests.live import chatd_cli, clean_env, provider_urls, run_chatd, wait_for, write_config

MESSAGES = [{"role": "user", "content": "hi"}]


def serves(url: str) -> bool:
    response = requests.post(
        url + "/chat", json={"model": "llama3.2", "messages": MESSAGES}, timeout=10
    )
    return response.status_code == 200


def serves_throughout(url: str, seconds: float) -> None:
    """Every call for ``seconds`` is answered 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert serves(url)
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("chatd-metrics-*"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "zombie"
        not in Path(f"/proc/{pid}/status").read_text().lower().split("state:")[1].split("\n")[0]
    )


def test_check_config_and_refused_starts_make_no_metrics_directory(fakes, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = clean_env(**TEST_KEYS, TMPDIR=str(tmp))
    good = write_config(tmp_path / "good.toml", **provider_urls(fakes))
    assert chatd_cli("check-config", "--config", str(good), env=env).returncode == 0
    refused = chatd_cli("--config", str(good), "--bind", "0.0.0.0:1", env=env)
    assert refused.returncode != 0 and "[auth]" in refused.stderr + refused.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[chatd]\ntiemout_secs = 5\n")
    assert chatd_cli("--config", str(broken), env=env).returncode != 0
    assert metrics_dirs(tmp) == []


def test_sighup_broken_config_worker_death_and_usr2_never_stop_serving(fakes, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    path = write_config(tmp_path / "chatd.toml", threads=8, **provider_urls(fakes))
    good = path.read_text()
    env = clean_env(**TEST_KEYS, TMPDIR=str(tmp))
    new_master = None
    with run_chatd(path, env, workers=2) as chatd:
        master = chatd.process.pid
        wait_for(lambda: len(children(master)) == 2, 10, "two workers")
        (metrics,) = metrics_dirs(tmp)

        # SIGHUP with a typo: refused, logged, the old config keeps serving.
        path.write_text(good + "tiemout_secs = 5\n")
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: "reload refused" in chatd.log_text(), 10, "the refusal in the log")
        assert "tiemout_secs" in chatd.log_text()
        serves_throughout(chatd.url, 2.0)
        assert chatd.process.poll() is None
        wait_for(lambda: len(children(master)) == 2, 10, "two new workers")
        path.write_text(good)

        # The metrics directory removed, then a worker killed: recreated, still serving.
        shutil.rmtree(metrics)
        os.kill(children(master)[0], signal.SIGKILL)
        wait_for(metrics.is_dir, 10, "the metrics directory again")
        wait_for(lambda: len(children(master)) == 2, 10, "a new worker")
        serves_throughout(chatd.url, 1.0)
        assert chatd.process.poll() is None

        # USR2 then TERM of the old master: the new one takes over.
        os.kill(master, signal.SIGUSR2)
        # The new master is the old one's child with workers of its own.
        new_master = wait_for(
            lambda: next((p for p in children(master) if children(p)), None),
            20,
            "the new master",
            chatd.log_text,
        )
        wait_for(lambda: len(children(new_master)) == 2, 20, "the new master's workers")
        serves_throughout(chatd.url, 1.0)
        os.kill(master, signal.SIGTERM)
        chatd.process.wait(20)
        serves_throughout(chatd.url, 1.5)
        assert metrics.exists() is False  # the old master removed its own...
        assert len(metrics_dirs(tmp)) == 1  # ...and the new one has its own
    try:
        assert alive(new_master)
    finally:
        os.kill(new_master, signal.SIGTERM)
        wait_for(lambda: not alive(new_master), 20, "the new master to stop")
    assert metrics_dirs(tmp) == []


def test_a_reload_that_drops_auth_while_exposed_is_refused(tmp_path, monkeypatch):
    with_auth = tmp_path / "auth.toml"
    with_auth.write_text('[chatd]\n[auth]\ntoken_env = "CHATD_T"\n')
    environ = {"CHATD_CONFIG": str(with_auth), "CHATD_T": "tok-1"}
    monkeypatch.setattr(serving, "current", None)
    monkeypatch.setattr(serving, "binds", ["0.0.0.0:8080"])  # as gunicorn's --bind said
    accepted, refused = serving.accept(environ)
    assert refused is None and accepted.tokens == ("tok-1",)

    without = tmp_path / "open.toml"
    without.write_text("[chatd]\n")
    kept, refused = serving.accept({**environ, "CHATD_CONFIG": str(without)})
    assert kept is accepted and serving.current is accepted  # the old auth keeps working
    assert "0.0.0.0:8080" in refused and "[auth]" in refused

    monkeypatch.setattr(serving, "current", None)
    with pytest.raises(ConfigError):  # at start there is nothing to keep
        serving.accept({**environ, "CHATD_CONFIG": str(without)})

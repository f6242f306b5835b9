"""chatd behind a real nginx, configured with the shipped deploy/nginx/chatd.conf.

nginx comes from Debian's packages; the fixture installs it when it is missing,
so this runs on a fresh machine as it does here. Everything listens on loopback,
and the client connects from 127.0.0.5 so the log can tell it from nginx (127.0.0.1).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import requests

from tests.conftest import TEST_KEYS
from tests.live import (
    ROOT,
    clean_env,
    free_port,
    provider_urls,
    run_chatd,
    stop,
    write_config,
)

CLIENT_ADDRESS = "127.0.0.5"
MESSAGES = [{"role": "user", "content": "hi"}]


def nginx_binary() -> str:
    """Return nginx's path, installing Debian's package first if it is missing."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found:
        return found
    # RUNLEVEL=1: the package's scripts must not start a system nginx on port 80.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq"]
    subprocess.run([*apt, "update"], check=True, timeout=300, env=env, capture_output=True)
    subprocess.run(
        [*apt, "install", "-y", "--no-install-recommends", "nginx"],
        check=True,
        timeout=600,
        env=env,
        capture_output=True,
    )
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert found, "nginx did not install"
    return found


@pytest.fixture(scope="module")
def chatd(fakes, tmp_path_factory):
    path = write_config(
        tmp_path_factory.mktemp("nginx-chatd") / "chatd.toml",
        trusted_proxies=1,
        log_format="json",
        **provider_urls(fakes),
    )
    with run_chatd(path, clean_env(**TEST_KEYS)) as chatd:
        yield chatd


@pytest.fixture(scope="module")
def nginx(chatd, tmp_path_factory):
    binary = nginx_binary()
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = (ROOT / "deploy/nginx/chatd.conf").read_text()
    chatd_port = chatd.url.rsplit(":", 1)[1]
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{chatd_port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    assert f"127.0.0.1:{port}" in site and chatd_port in site
    (prefix / "chatd.conf").write_text(site)
    (prefix / "nginx.conf").write_text(
        f"""
worker_processes 1;
daemon off;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}  # room for the 300 drippers
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/chatd.conf;
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (prefix / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
        yield port
    finally:
        stop(process, signal.SIGQUIT, 10)  # nginx's graceful shutdown


def request(port, method, path, body=None, headers=None):
    """One call to nginx from CLIENT_ADDRESS; returns (response, connection)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(CLIENT_ADDRESS, 0)
    )
    payload = json.dumps(body).encode() if body is not None else None
    connection.request(
        method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})}
    )
    return connection.getresponse(), connection


def test_a_call_through_nginx(nginx, fakes):
    response, connection = request(
        nginx,
        "POST",
        "/chat",
        {"model": "kimi/k2", "messages": MESSAGES},
        {"X-Request-ID": "through-nginx-1"},
    )
    body = json.loads(response.read())
    connection.close()
    assert response.status == 200
    assert body["provider"] == "kimi" and body["message"]["content"] == "from kimi"
    assert response.getheader("X-Request-ID") == "through-nginx-1"
    assert fakes["kimi"].chat_requests()[-1].headers["X-Request-ID"] == "through-nginx-1"


def test_a_stream_through_nginx_arrives_unbuffered(nginx, fakes):
    fakes["ollama"].behave("ok", pieces=["a", "b", "c", "d", "e"], interval=0.3)
    response, connection = request(
        nginx, "POST", "/chat", {"model": "llama3.2", "messages": MESSAGES, "stream": True}
    )
    assert response.status == 200
    started, arrivals, buffer = time.monotonic(), [], b""
    while time.monotonic() - started < 10:
        chunk = response.read1(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if b'"content"' in event:
                arrivals.append(time.monotonic() - started)
    connection.close()
    fakes["ollama"].behave("ok")
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] > 0.9  # buffered, they would land together


def test_the_log_has_the_client_address_nginx_saw(nginx, chatd):
    response, connection = request(
        nginx,
        "POST",
        "/chat",
        {"model": "llama3.2", "messages": MESSAGES},
        # A client's own X-Forwarded-For is not believed: nginx appends the real one.
        {"X-Request-ID": "client-address-1", "X-Forwarded-For": "6.6.6.6"},
    )
    response.read()
    connection.close()
    time.sleep(0.1)
    lines = [json.loads(line) for line in chatd.log_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "client-address-1"]
    assert access and access[-1]["client"] == CLIENT_ADDRESS


def test_a_dripped_body_through_nginx_starves_nothing(nginx, chatd):
    """nginx buffers the body (proxy_request_buffering on): drippers never reach chatd."""
    from tests.test_hostile import DRIP_CONNECTIONS, DRIP_SECONDS, DRIP_STARTS, Drippers

    times = []
    with Drippers(nginx, DRIP_STARTS["body"], DRIP_CONNECTIONS, DRIP_SECONDS) as drippers:
        while drippers.thread.is_alive():
            for method, path, body in (
                ("GET", "/health", None),
                ("POST", "/chat", {"model": "kimi/k2", "messages": MESSAGES}),
            ):
                started = time.monotonic()
                response, connection = request(nginx, method, path, body)
                response.read()
                connection.close()
                assert response.status == 200
                times.append(time.monotonic() - started)
            time.sleep(0.5)
    assert len(times) >= 20
    assert max(times) < 1.0, sorted(times)[-5:]

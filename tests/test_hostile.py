"""Hostile input, for real: what an attacker's first tries get from chatd.

Each section replays one attack from issue 9 (auth that could open by
accident, input built to reach a 500, keys echoed back, forged log lines,
bloated metrics, memory and slow-client exhaustion) against the validators,
the Flask app and a live gunicorn on loopback, bounded in count and time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatd.app import create_app
from chatd.config import ConfigError, Settings, effective_tokens, load_settings
from chatd.errors import BadRequest
from chatd.resilience import Deadline
from chatd.validation import ChatRequest, build_chat_request, build_openai_request, parse_json
from tests.conftest import TEST_KEYS, TEST_URLS
from tests.live import chatd_cli, clean_env, free_port, provider_urls, run_chatd, write_config

MESSAGES = [{"role": "user", "content": "hi"}]


# -- auth decides once and fails closed ---------------------------------------------


@pytest.mark.parametrize(
    "env_value, file_text, expected",
    [
        (",", None, ()),
        (" , ,\n", None, ()),
        (None, "", ()),
        (None, "\n,\n", ()),
        (" a1 ,b2", None, ("a1", "b2")),
        (None, "c3\nd4\n", ("c3", "d4")),
        ("a1", "c3", ("a1", "c3")),
    ],
)
def test_effective_tokens_strip_and_count_blanks_as_none(tmp_path, env_value, file_text, expected):
    from chatd.config import AuthSettings

    token_file = ""
    if file_text is not None:
        token_file = str(tmp_path / "tokens")
        (tmp_path / "tokens").write_text(file_text)
    auth = AuthSettings(token_env="T" if env_value is not None else "", token_file=token_file)
    assert effective_tokens(auth, {"T": env_value or ""}) == expected


def _auth_config(tmp_path, auth_lines: str, **fields):
    path = write_config(tmp_path / "chatd.toml", **fields)
    with open(path, "a") as f:
        f.write("\n[auth]\n" + auth_lines)
    return path


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_token_source_without_tokens_refuses_to_start_and_to_check(tmp_path, source):
    empty = tmp_path / "empty-tokens"
    empty.write_text("\n")
    lines = 'token_env = "CHATD_TEST_TOKENS"\n' if source == "env" else f'token_file = "{empty}"\n'
    path = _auth_config(tmp_path, lines)
    env = clean_env(CHATD_TEST_TOKENS=",")
    served = chatd_cli("--config", str(path), "--bind", f"127.0.0.1:{free_port()}", env=env)
    checked = chatd_cli("check-config", "--config", str(path), env=env)
    # Serving and check-config agree: both refuse, with the same reason.
    assert served.returncode != 0 and checked.returncode != 0
    for result in (served, checked):
        assert "holds no token" in result.stderr


def test_bind_override_without_tokens_refuses_to_start(tmp_path):
    path = _auth_config(tmp_path, "protect_metrics = true\n")
    for args, env in (
        (("--bind", f"0.0.0.0:{free_port()}"), clean_env()),
        ((), clean_env(CHATD_BIND=f"0.0.0.0:{free_port()}")),
    ):
        result = chatd_cli("--config", str(path), *args, env=env)
        assert result.returncode != 0
        assert "0.0.0.0" in result.stderr and "[auth]" in result.stderr


def test_create_app_refuses_a_non_loopback_bind_without_tokens():
    base = Settings(bind="0.0.0.0:8080", **TEST_URLS)
    with pytest.raises(ConfigError, match="0.0.0.0:8080"):
        create_app(base, environ={})
    # The one explicit way out, and tokens, are both accepted.
    allowed = dataclasses.replace(
        base, auth=dataclasses.replace(base.auth, allow_unauthenticated=True)
    )
    assert create_app(allowed, environ={}).extensions["chatd"].authenticated is False
    tokened = dataclasses.replace(base, auth=dataclasses.replace(base.auth, token_env="T"))
    assert create_app(tokened, environ={"T": "tok-9"}).extensions["chatd"].authenticated


def test_a_worker_refuses_to_serve_beyond_loopback_without_tokens(monkeypatch, tmp_path):
    """post_worker_init checks the binds gunicorn really has (after a reload too)."""
    import runpy
    from types import SimpleNamespace

    # Else the config would make a metrics directory for this whole test process.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    conf = runpy.run_path("gunicorn.conf.py")
    app = create_app(Settings(**TEST_URLS), environ={})
    worker = SimpleNamespace(wsgi=app, cfg=SimpleNamespace(bind=["0.0.0.0:9"]))
    with pytest.raises(ConfigError, match="0.0.0.0:9"):
        conf["post_worker_init"](worker)
    worker.cfg.bind = ["127.0.0.1:9"]
    conf["post_worker_init"](worker)


def test_token_file_tokens_guard_a_live_chatd(tmp_path, fakes):
    tokens = tmp_path / "tokens"
    tokens.write_text("\n file-token-5c1e \n\n")
    path = write_config(tmp_path / "chatd.toml", **provider_urls(fakes))
    with open(path, "a") as f:
        f.write(f'\n[auth]\ntoken_file = "{tokens}"\n')
    with run_chatd(path, clean_env()) as chatd:
        body = {"model": "llama3.2", "messages": MESSAGES}
        assert requests.post(chatd.url + "/chat", json=body, timeout=10).status_code == 401
        assert requests.get(chatd.url + "/metrics", timeout=10).status_code == 401
        good = {"Authorization": "Bearer file-token-5c1e"}
        response = requests.post(chatd.url + "/chat", json=body, headers=good, timeout=10)
        assert response.status_code == 200


@pytest.mark.parametrize("bad", ["sk-abc\ndef", "sk-abc def", "sk-\x01abc"])
def test_a_malformed_key_stops_start_up_naming_the_env_var_not_the_key(tmp_path, bad):
    path = write_config(tmp_path / "chatd.toml")
    env = clean_env(KIMI_API_KEY=bad)
    for args in (("--bind", f"127.0.0.1:{free_port()}"), ()):
        command = (
            ("check-config", "--config", str(path)) if not args else ("--config", str(path), *args)
        )
        result = chatd_cli(*command, env=env)
        assert result.returncode != 0
        assert "KIMI_API_KEY" in result.stderr
        assert "Traceback" not in result.stderr
        for piece in ("sk-abc", "def", "\x01abc"):
            assert piece not in result.stderr + result.stdout


def test_load_settings_keeps_secrets_out_of_its_errors(tmp_path):
    path = write_config(tmp_path / "chatd.toml")
    with open(path, "a") as f:
        f.write('\n[auth]\ntoken_env = "T"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(str(path), environ={"T": "tok en"})
    assert "tok" not in str(raised.value).replace("token", "")
    assert load_settings(str(path), environ={"T": "tok-1", **TEST_KEYS}).auth.token_env == "T"


# -- fields chatd owns cannot be overridden ----------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "format",
        "fallbacks",
        "max_tokens",
        "options",
    ],
)
def test_options_may_not_set_a_field_chatd_owns(client, name):
    body = {"model": "kimi/cheap", "messages": MESSAGES, "options": {name: "expensive"}}
    response = client.post("/chat", json=body)
    assert response.status_code == 400
    assert repr(name) in response.json["error"]["message"]


@pytest.mark.parametrize("name", ["max_completion_tokens", "request_id"])
def test_v1_unknown_fields_cannot_smuggle_an_owned_one(client, name):
    body = {"model": "kimi/cheap", "messages": MESSAGES, "max_tokens": 3}
    if name == "max_completion_tokens":
        body["max_completion_tokens"] = 7
    else:
        body[name] = "x"
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.json


def test_native_options_still_pass(client, upstream):
    import responses as rsps_lib

    upstream.add(
        rsps_lib.POST,
        "http://kimi.test/coding/v1/chat/completions",
        json={"choices": [{"message": {"role": "assistant", "content": "ok"}}], "usage": {}},
    )
    body = {"model": "kimi/k2", "messages": MESSAGES, "options": {"top_k": 4, "user": "u"}}
    assert client.post("/chat", json=body).status_code == 200
    sent = json.loads(upstream.calls[0].request.body)
    assert sent["model"] == "k2" and sent["top_k"] == 4


# -- no input reaches a 500 ----------------------------------------------------------


def _deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = {"a": [value]}
    return value


HOSTILE_BODIES = {
    "image_url string": {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]
    },
    "text part without text": {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    "tool_calls string": {"messages": [{"role": "assistant", "content": "", "tool_calls": "abc"}]},
    "tool_calls [1]": {"messages": [{"role": "assistant", "content": "", "tool_calls": [1]}]},
    "tool_calls function null": {
        "messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": None}]}]
    },
    "tool_calls arguments number": {
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "f", "arguments": 5}}],
            }
        ]
    },
    "images not strings": {"messages": [{"role": "user", "content": "x", "images": [1]}]},
    "deep options": {"options": _deep(150)},
    "deep message extra": {"messages": [{"role": "user", "content": "x", "extra": _deep(150)}]},
    "deep tools": {"tools": [_deep(150)]},
    "deep format": {"format": _deep(150)},
    "model with CRLF": {"model": "kimi/k2\r\nX-Evil: 1", "fallbacks": ["opencode/x"]},
    "fallback with LF": {"fallbacks": ["opencode/x\nforged"]},
    "1 MiB model": {"model": "kimi/" + "m" * (1 << 20), "fallbacks": ["opencode/x"]},
    "non-ASCII model": {"model": "kimi/k\u2028"},
    "too many fallbacks": {"fallbacks": ["opencode/x"] * 9},
}


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
def test_malformed_shapes_are_400_naming_the_field(client, path, case):
    body = {"model": "kimi/k2", "messages": MESSAGES, **HOSTILE_BODIES[case]}
    if path.startswith("/v1") and "options" in body:
        # /v1 has no `options`: fields it does not know travel there instead.
        body["metadata"] = body.pop("options")
    # The stdlib encoder: orjson (the test client's) refuses the deep bodies.
    response = client.post(path, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.json
    assert response.json["error"]["type"] == "invalid_request"
    assert len(response.get_data()) < 4096


def test_v1_json_schema_that_is_not_an_object_is_400(client):
    body = {
        "model": "kimi/k2",
        "messages": MESSAGES,
        "response_format": {"type": "json_schema", "json_schema": "s"},
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "json_schema" in response.json["error"]["message"]


def test_options_nested_just_under_the_bound_are_accepted():
    from chatd.validation import MAX_DEPTH

    body = {"model": "m", "messages": MESSAGES, "options": {"o": _deep(MAX_DEPTH // 2 - 1)}}
    assert build_chat_request(body).options == body["options"]


# -- property-based: any JSON in, a ChatRequest or a BadRequest out ---------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
_keys = st.sampled_from(
    [
        "model",
        "messages",
        "options",
        "tools",
        "tool_choice",
        "format",
        "fallbacks",
        "stream",
        "stop",
        "seed",
        "max_tokens",
        "temperature",
        "response_format",
        "stream_options",
        "max_completion_tokens",
        "role",
        "content",
        "tool_calls",
        "image_url",
        "function",
    ]
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system", "x"])},
    optional={
        "content": _json
        | st.lists(st.dictionaries(st.sampled_from(["type", "text", "image_url"]), _json)),
        "tool_calls": _json
        | st.lists(
            st.dictionaries(
                st.sampled_from(["id", "function"]),
                _json | st.dictionaries(st.sampled_from(["name", "arguments"]), _json),
            )
        ),
        "images": _json,
    },
)
# Bodies near the real shape, so the checks past the first field are reached too.
_bodies = (
    _json
    | st.fixed_dictionaries(
        {"model": st.text(max_size=20) | _json, "messages": st.lists(_message, max_size=3) | _json},
        optional={
            key: _json
            for key in [
                "options",
                "tools",
                "tool_choice",
                "format",
                "fallbacks",
                "stream",
                "stop",
                "response_format",
                "stream_options",
            ]
        },
    )
    | st.dictionaries(_keys, _json, max_size=6)
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies)
def test_validators_answer_a_request_or_a_bad_request(body):
    for build in (build_chat_request, lambda b: build_openai_request(b)[0]):
        try:
            assert isinstance(build(body), ChatRequest)
        except BadRequest:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | _json.map(lambda v: json.dumps(v).encode()))
def test_parse_json_answers_a_value_or_a_bad_request(data):
    try:
        parse_json(data)
    except BadRequest:
        pass


BODY_ROUTES = [
    "/chat",
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/api/chat",
    "/api/generate",
]


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        # deep inside a field each dialect passes on (options, a tool's schema)
        {
            "model": "llama3.2",
            "max_tokens": 10,
            "stream": False,
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"a": _nested(300)},
            "tools": [{"name": "t", "input_schema": {"a": _nested(300)}}],
        },
        # a control character in the model name
        {
            "model": "llama3.2\nINJECT",
            "max_tokens": 10,
            "stream": False,
            "messages": [{"role": "user", "content": "hi"}],
        },
    ],
    ids=["nested 300 deep", "newline in model"],
)
def test_every_body_route_refuses_what_would_reach_a_500(client, path, body):
    """The depth and model-name checks hold for every dialect, not only /chat and /v1."""
    # The stdlib encodes any depth (orjson, like chatd, would refuse it).
    response = client.post(path, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.get_data()[:300]


def test_a_bounded_fuzz_of_every_body_route_never_answers_500(make_app):
    """Random bodies through the whole app (no upstream answers: any call is a 502)."""
    app = make_app(retries=0, connect_timeout_secs=0.2)
    client = app.test_client()
    seen = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(_bodies, st.sampled_from(BODY_ROUTES))
    def fuzz(body, path):
        response = client.post(path, data=json.dumps(body), content_type="application/json")
        seen.append(response.status_code)
        assert response.status_code < 500 or response.status_code in (502, 503, 504), (
            path,
            body,
            response.get_data()[:300],
        )
        assert response.is_json or response.is_streamed

    fuzz()
    assert seen and 400 in seen


# -- keys never leave ------------------------------------------------------------


@pytest.fixture(scope="module")
def live(fakes, tmp_path_factory):
    """A gunicorn with text logs (the format a forged line would fool) and no tokens."""
    path = write_config(
        tmp_path_factory.mktemp("hostile") / "chatd.toml",
        timeout_secs=5.0,
        retries=0,
        threads=8,
        **provider_urls(fakes),
    )
    with run_chatd(path, clean_env(**TEST_KEYS), workers=2) as chatd:
        yield chatd


@pytest.mark.parametrize("as_json", [True, False], ids=["json envelope", "plain text"])
@pytest.mark.parametrize("status", [400, 503])
def test_an_upstream_echoing_the_key_never_gets_it_to_the_client_or_the_log(
    live, fakes, status, as_json
):
    fakes["kimi"].behave("echo_auth", status=status, json=as_json)
    for path in ("/chat", "/v1/chat/completions"):
        response = requests.post(
            live.url + path, json={"model": "kimi/k2", "messages": MESSAGES}, timeout=10
        )
        assert response.status_code == 502, response.text
        assert "[redacted]" in response.text
        key = TEST_KEYS["KIMI_API_KEY"]
        assert key not in response.text
    # The log is written when the response is; poll briefly for the access line.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "[redacted]" not in live.log_text():
        time.sleep(0.1)
    for key in TEST_KEYS.values():
        assert key not in live.log_text()


# -- stream framing is linear in the bytes read --------------------------------------


def test_a_stream_without_newlines_is_framed_in_linear_time(app):
    adapter = app.extensions["chatd"].registry.adapters["kimi"]
    adapter.max_response_bytes = 64 << 20
    piece = b"x" * 1024
    count = 8 * 1024  # 8 MiB in 1 KiB reads: quadratic copying would move ~32 GiB
    adapter._stream_reads = lambda response, deadline: iter([b"a\r\nb", *([piece] * count), b"\nc"])
    started = time.process_time()
    deadline = Deadline.after(time.monotonic(), "first_token_timeout_secs", 60.0)
    lines = list(adapter._lines(None, deadline))
    # A hang guard, not a benchmark: linear takes well under a second.
    assert time.process_time() - started < 5
    assert lines[0] == b"a" and lines[2] == b"c"
    assert lines[1] == b"b" + piece * count


# -- logs and metrics cannot be forged or bloated ----------------------------------


def test_a_control_character_in_the_path_cannot_forge_a_log_line(live):
    forged = "INFO chatd.access [x] POST /chat 200 provider=kimi"
    raw = "/chat%0a" + forged.replace(" ", "%20") + "%0d%1b"
    response = requests.get(live.url + raw, timeout=5)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "\\x0aINFO" not in live.log_text():
        time.sleep(0.1)
    lines = live.log_text().splitlines()
    assert any("GET /chat\\x0aINFO" in line for line in lines)
    assert not any(line.startswith("INFO chatd.access") for line in lines)
    assert "\x1b" not in live.log_text()


def test_text_log_escapes_upstream_text_too(caplog):
    import logging

    from chatd.observability import TextFormatter

    record = logging.LogRecord("chatd.x", logging.WARNING, "f", 1, "a %s", ("b\nc\r\u2028",), None)
    record.request_id = "-"
    line = TextFormatter("%(message)s").format(record)
    assert line == "a b\\x0ac\\x0d\\u2028"


def test_metric_labels_are_bounded_in_length_and_count():
    from chatd.metrics import MAX_LABEL_LENGTH, MAX_MODELS, Metrics

    metrics = Metrics()
    labels = {metrics.model_label("kimi", f"kimi/{i}-" + "m" * 500) for i in range(MAX_MODELS + 20)}
    assert len(labels) == MAX_MODELS + 1 and "other" in labels
    assert max(len(label) for label in labels) <= MAX_LABEL_LENGTH


def test_the_model_label_is_the_model_that_served(live, fakes):
    fakes["kimi"].behave("status", status=503, body={"error": "down"})
    body = {"model": "kimi/k-down", "messages": MESSAGES, "fallbacks": ["opencode/served-9"]}
    response = requests.post(live.url + "/chat", json=body, timeout=10)
    assert response.status_code == 200 and response.json()["model"] == "served-9"
    assert response.headers["X-Chatd-Fallbacks"] == "kimi/k-down, opencode/served-9"
    text = requests.get(live.url + "/metrics", timeout=5).text
    assert 'model="opencode/served-9"' in text
    assert 'model="kimi/k-down"' not in text


def test_long_model_names_cannot_bloat_metrics(live):
    before = len(requests.get(live.url + "/metrics", timeout=5).content)
    for i in range(20):
        body = {"model": f"opencode/{i}-" + "m" * 490, "messages": MESSAGES}
        assert requests.post(live.url + "/chat", json=body, timeout=10).status_code == 200
    after = len(requests.get(live.url + "/metrics", timeout=5).content)
    # 20 new model labels over two token directions, each at most 128 characters.
    assert after - before < 20 * 2 * 400


# -- proxy headers and gunicorn's own answers ------------------------------------------


def _raw(live, request: bytes) -> tuple[int, dict, bytes]:
    """Send ``request`` as is and return (status, headers, body) of the answer."""
    host, port = live.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("value", ["/nope", "/health"])
def test_a_client_sent_script_name_is_ignored(live, value):
    response = requests.get(live.url + "/health", headers={"SCRIPT_NAME": value}, timeout=5)
    assert response.status_code == 200


GUNICORN_ERRORS = [
    (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    (b"NOT A REQUEST\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
]


@pytest.mark.parametrize(
    "request_bytes, status",
    GUNICORN_ERRORS,
    ids=["bad header", "bad request line", "uri too long", "too many headers"],
)
def test_gunicorns_own_errors_are_json(live, request_bytes, status):
    got, headers, body = _raw(live, request_bytes)
    assert got == status
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    # The types the README's error table names for gunicorn's own answers.
    assert (
        error["type"]
        == {400: "invalid_request", 414: "uri_too_long", 431: "headers_too_large"}[status]
    )
    assert error["message"]


# -- slow clients starve nothing -----------------------------------------------------

DRIP_CONNECTIONS = 300
DRIP_SECONDS = 20
# Where each kind of drip starts: a head never finished, or a whole head and a
# body of which one byte a second arrives.
DRIP_STARTS = {
    "head": b"POST /chat HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    "body": b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n{",
}


class Drippers:
    """``count`` loopback connections sending ``start`` then one byte a second, in one thread.

    Bounded by ``seconds``; every socket is closed when it ends or on exit.
    """

    def __init__(self, port: int, start: bytes, count: int, seconds: float):
        import threading

        self.port, self.start, self.count, self.seconds = port, start, count, seconds
        self.sockets: list = []
        self.refused = 0  # connections chatd closed (a 408 past its deadline)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(self.start)
            self.sockets.append(sock)
        ends = time.monotonic() + self.seconds
        while not self.stopped.wait(1.0) and time.monotonic() < ends:
            for sock in list(self.sockets):
                try:
                    sock.send(b"a")
                except OSError:
                    self.sockets.remove(sock)
                    self.refused += 1
                    sock.close()

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while len(self.sockets) < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.sockets) == self.count, "the drip connections did not open"
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(10)
        for sock in self.sockets:
            sock.close()


def _timed(call) -> float:
    started = time.monotonic()
    response = call()
    assert response.status_code == 200, response.text[:300]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def shipped(fakes, tmp_path_factory):
    """chatd with the shipped defaults (workers, threads, timeouts), on loopback."""
    path = write_config(tmp_path_factory.mktemp("shipped") / "chatd.toml", **provider_urls(fakes))
    with run_chatd(path, clean_env(**TEST_KEYS), workers=2) as chatd:
        yield chatd


@pytest.mark.parametrize("kind", list(DRIP_STARTS))
def test_slow_clients_starve_nothing_straight_at_gunicorn(shipped, kind):
    port = int(shipped.url.rsplit(":", 1)[1])
    body = {"model": "kimi/k2", "messages": MESSAGES}
    times = []
    probe = socket.create_connection(("127.0.0.1", port), timeout=DRIP_SECONDS + 5)
    probe.sendall(DRIP_STARTS[kind])
    with Drippers(port, DRIP_STARTS[kind], DRIP_CONNECTIONS, DRIP_SECONDS) as drippers:
        # Through the whole drip: the head deadline (10 s) passes in it for "head".
        while drippers.thread.is_alive():
            times.append(_timed(lambda: requests.get(shipped.url + "/health", timeout=5)))
            times.append(_timed(lambda: requests.post(shipped.url + "/chat", json=body, timeout=5)))
            time.sleep(0.5)
    assert len(times) >= 20
    assert max(times) < 1.0, sorted(times)[-5:]
    if kind != "head":
        probe.close()
    else:
        # Past head_timeout_secs, the head drippers were answered 408 and closed.
        assert drippers.refused == DRIP_CONNECTIONS
        # ...with chatd's JSON error body, as every non-2xx.
        with probe:
            answer = probe.recv(4096)
        head, _, error = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(error)["error"]["type"] == "request_timeout"


# -- bounded memory per request ---------------------------------------------------------

MIB = 1 << 20


def worker_pids(chatd) -> list[int]:
    """The gunicorn workers of a live chatd (the master's children)."""
    pid = chatd.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _peak_growth(chatd, send) -> int:
    """Run ``send`` and return how much the workers' peak RSS (VmHWM) grew over their RSS."""
    pids = worker_pids(chatd)
    before = {}
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before[pid] = _status(pid, "VmRSS")
    send()
    return sum(max(_status(pid, "VmHWM") - before[pid], 0) for pid in pids)


def _body_of(piece: bytes, size: int, head=b'{"model":"kimi/k2","messages":[', tail=b"]}") -> bytes:
    """A body of ``size`` bytes: head, then ``piece`` repeated, comma-separated, then tail."""
    count = (size - len(head) - len(tail)) // (len(piece) + 1)
    return head + b",".join([piece] * count) + tail


EXPLODING = {
    "nested empty lists": _body_of(b"[]", 4 * MIB, b'{"model":"kimi/k2","options":{"a":[', b"]}}"),
    "empty objects": _body_of(b"{}", 4 * MIB, b'{"model":"kimi/k2","options":{"a":[', b"]}}"),
    "tiny messages": _body_of(b'{"role":"user","content":""}', 4 * MIB),
    "floats": _body_of(b"1.5", 4 * MIB, b'{"model":"kimi/k2","options":{"a":[', b"]}}"),
}


@pytest.mark.parametrize("case", list(EXPLODING))
def test_a_body_built_to_explode_is_refused_before_parsing(shipped, case):
    body = EXPLODING[case]
    assert len(body) <= 4 * MIB  # within the shipped max_request_bytes
    answers = []

    def send():
        headers = {"Content-Type": "application/json"}
        answers.append(requests.post(shipped.url + "/chat", data=body, headers=headers, timeout=30))

    growth = _peak_growth(shipped, send)
    assert answers[0].status_code == 413, answers[0].text[:300]
    assert "too dense" in answers[0].json()["error"]["message"]
    assert growth < 16 * len(body), growth // MIB


def test_a_dense_body_under_the_bound_is_parsed_within_it(shipped):
    # Short strings: estimated at 9.6x their size, under the 10x bound, so this one is parsed.
    body = _body_of(
        b'"xxxxxxxxxx"', 4 * MIB, b'{"model":"kimi/k2","messages":[],"options":{"a":[', b"]}}"
    )
    answers = []

    def send():
        headers = {"Content-Type": "application/json"}
        answers.append(requests.post(shipped.url + "/chat", data=body, headers=headers, timeout=30))

    growth = _peak_growth(shipped, send)
    assert answers[0].status_code == 400, answers[0].text[:300]  # parsed: messages is empty
    assert growth < 16 * len(body), growth // MIB


def test_eight_exploding_bodies_at_once_stay_under_256_mib(shipped):
    from concurrent.futures import ThreadPoolExecutor

    bodies = [EXPLODING[case] for case in EXPLODING] * 3
    statuses = []

    def send():
        headers = {"Content-Type": "application/json"}
        with ThreadPoolExecutor(8) as pool:
            posts = pool.map(
                lambda b: requests.post(shipped.url + "/chat", data=b, headers=headers, timeout=30),
                bodies[:8],
            )
            statuses.extend(response.status_code for response in posts)

    growth = _peak_growth(shipped, send)
    assert statuses == [413] * 8
    assert growth < 256 * MIB, growth // MIB


# -- the attacks replayed: the service is healthy after -----------------------------------


REPLAY_CONCURRENCY = 4


def _replay(chatd):
    """Each attack of issue 9 once, bounded in count and time, on loopback."""
    from concurrent.futures import ThreadPoolExecutor

    port = int(chatd.url.rsplit(":", 1)[1])
    headers = {"Content-Type": "application/json"}
    with (
        Drippers(port, DRIP_STARTS["head"], 50, 2) as heads,
        Drippers(port, DRIP_STARTS["body"], 50, 2) as bodies,
    ):
        while heads.thread.is_alive() or bodies.thread.is_alive():  # each ends after 2 s
            time.sleep(0.1)
    for case in HOSTILE_BODIES:
        body = {"model": "kimi/k2", "messages": MESSAGES, **HOSTILE_BODIES[case]}
        response = requests.post(
            chatd.url + "/chat", data=json.dumps(body), headers=headers, timeout=10
        )
        assert response.status_code == 400, (case, response.text[:200])
    with ThreadPoolExecutor(REPLAY_CONCURRENCY) as pool:
        posts = pool.map(
            lambda b: requests.post(chatd.url + "/chat", data=b, headers=headers, timeout=30),
            list(EXPLODING.values()),
        )
        assert {response.status_code for response in posts} == {413}
    for request_bytes, status in GUNICORN_ERRORS:
        assert _raw(chatd, request_bytes)[0] == status
    forged = requests.get(chatd.url + "/chat%0aINFO%20chatd.access", timeout=5)
    assert forged.status_code == 404


def _open_fds_and_threads(chatd) -> tuple[int, int]:
    pids = worker_pids(chatd)
    return (
        sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids),
        sum(len(os.listdir(f"/proc/{pid}/task")) for pid in pids),
    )


def test_after_the_attacks_the_service_is_healthy(shipped):
    # Once to let gthread start the threads this needs, then again: the second
    # replay (100 drip connections, ~40 requests) must leave no fd behind, and
    # threads only as gthread's pool keeps them: at most one per request that
    # was in flight at once (REPLAY_CONCURRENCY), never one per connection.
    _replay(shipped)
    baseline = _open_fds_and_threads(shipped)
    _replay(shipped)
    threads_bound = baseline[1] + REPLAY_CONCURRENCY
    deadline = time.monotonic() + 20
    now = _open_fds_and_threads(shipped)
    while time.monotonic() < deadline and (now[0] > baseline[0] or now[1] > threads_bound):
        time.sleep(0.2)
        now = _open_fds_and_threads(shipped)
    assert now[0] <= baseline[0] and now[1] <= threads_bound, (baseline, now)
    assert requests.get(shipped.url + "/health", timeout=5).status_code == 200
    body = {"model": "kimi/k2", "messages": MESSAGES}
    assert requests.post(shipped.url + "/chat", json=body, timeout=10).status_code == 200


def test_the_parse_cost_bound_spares_small_and_plain_bodies():
    from chatd.errors import TooComplex
    from chatd.memory import FREE_COST, check_parse_cost

    check_parse_cost(b"[" * (224 << 10))  # under 224 KiB: never refused, whatever its shape
    with pytest.raises(TooComplex):
        check_parse_cost(b"[" * (FREE_COST // 70))
    plain = _body_of(b'{"role":"user","content":"' + b"word " * 40 + b'"}', 4 * MIB)
    check_parse_cost(plain)  # a real conversation is ~3x its size parsed

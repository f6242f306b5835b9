"""Claude Code, unchanged, through chatd: a print-mode answer and one tool round trip.

``@anthropic-ai/claude-code`` is installed with npm into a cache outside the
repo (reused when present); the test skips only when npm is missing or the
registry cannot be reached. Claude Code runs with a fresh ``HOME`` and
``ANTHROPIC_BASE_URL`` pointed at chatd under gunicorn, in front of the
scripted Ollama-wire and OpenAI-wire fakes of test_dialect_anthropic.

What Claude Code 2.1.197 sends, as observed: ``HEAD /`` with no key (its
warm-up), then per turn ``POST /v1/messages?beta=true`` with headers
``x-api-key``, ``anthropic-version: 2023-06-01``, ``anthropic-beta:
claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,...``,
``x-app: cli``, ``User-Agent: claude-cli/2.1.197``, ``X-Claude-Code-Session-Id``,
``X-Stainless-*``; a ~77 kB body with keys context_management, max_tokens
(32000), messages, metadata (user_id), model, output_config ({"effort": "high"}),
stream (always true), system (a list of text blocks with cache_control),
thinking ({"type": "adaptive"}), tools (24, no server tools), and, for a model
name it does not know, a trailing message with role "system".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_KEYS
from tests.fakes_wire import FakeAnthropic
from tests.live import clean_env, run_chatd, write_config
from tests.test_dialect_anthropic import LIVE_MODELS, ScriptedOllama, ScriptedOpenAI

CACHE = Path.home() / ".cache" / "chatd-tests" / "claude-code"
CLAUDE = CACHE / "node_modules" / ".bin" / "claude"
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 180
TOKEN = "claude-code-test-token-41d"


def claude_binary() -> Path:
    """Claude Code from the cache, installed there first if need be; skip without npm."""
    if CLAUDE.exists():
        return CLAUDE
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install @anthropic-ai/claude-code")
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(CACHE),
                "@anthropic-ai/claude-code",
            ],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install did not finish in {INSTALL_TIMEOUT}s: is the registry reachable?")
    if done.returncode != 0 or not CLAUDE.exists():
        text = done.stderr + done.stdout
        if any(
            sign in text
            for sign in ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN", "network")
        ):
            pytest.skip(f"the npm registry is unreachable: {text.strip()[-300:]}")
        pytest.fail(f"npm install @anthropic-ai/claude-code failed: {text.strip()[-1000:]}")
    return CLAUDE


@pytest.fixture(scope="module")
def claude():
    return claude_binary()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with (
        ScriptedOllama("from local ollama") as ollama,
        ScriptedOpenAI("from openrouter") as openrouter,
    ):
        path = write_config(
            tmp_path_factory.mktemp("claude-code") / "chatd.toml",
            timeout_secs=10.0,
            threads=8,
            ollama_url=ollama.url,
            openrouter_url=openrouter.url + "/api/v1",
        )
        with open(path, "a") as f:
            f.write('\n[auth]\ntoken_env = "CHATD_TEST_TOKENS"\n')
        env = clean_env(OPENROUTER_API_KEY=TEST_KEYS["OPENROUTER_API_KEY"], CHATD_TEST_TOKENS=TOKEN)
        with run_chatd(path, env, workers=1) as chatd:
            chatd.fakes = {"ollama": ollama, "openai": openrouter}
            yield chatd


@pytest.fixture(params=sorted(LIVE_MODELS))
def wire(request, live):
    fake = live.fakes[request.param]
    fake.behave()
    yield LIVE_MODELS[request.param], fake
    fake.first = fake.after_tool = None


def run_claude(
    claude: Path, live, model: str, prompt: str, home: Path
) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": live.url,
        "ANTHROPIC_API_KEY": TOKEN,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    command = [str(claude), "-p", prompt, "--model", model, "--allowedTools", "Read"]
    return subprocess.run(
        command, cwd=home, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )


def test_claude_code_prints_the_upstreams_answer(claude, live, wire, tmp_path):
    model, fake = wire
    fake.first = {"text": "Answer relayed by chatd."}
    done = run_claude(claude, live, model, "say something", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Answer relayed by chatd." in done.stdout
    sent = fake.chat_requests()[-1].json
    assert sent["stream"] is True and len(sent["tools"]) > 5
    assert sent["messages"][0]["role"] == "system"  # Claude Code's system blocks, folded


def test_claude_code_completes_a_tool_round_trip(claude, live, wire, tmp_path):
    model, fake = wire
    notes = tmp_path / "notes.txt"
    notes.write_text("the secret word is pelican\n")
    fake.first = {"text": "", "tool": ("Read", {"file_path": str(notes)})}
    fake.after_tool = {"text": "Done: the file was read."}
    before = len(fake.chat_requests())
    done = run_claude(claude, live, model, "read notes.txt", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done: the file was read." in done.stdout
    turns = [r.json for r in fake.chat_requests()[before:]]
    assert len(turns) >= 2
    # The second turn carried Claude Code's tool_result as a tool turn with the file's text.
    tool_turns = [m for m in turns[-1]["messages"] if m["role"] == "tool"]
    assert tool_turns and "pelican" in str(tool_turns[-1]["content"])


class TalkingAnthropic(FakeAnthropic):
    """An Anthropic-wire fake that answers in text, never with a tool call."""

    def tool_to_call(self, body):
        return None


def test_claude_code_through_an_anthropic_wire_provider_gets_the_upstreams_own_stream(
    claude, tmp_path
):
    """Anthropic client, Anthropic upstream: Claude Code's body and the upstream's
    events pass through chatd (thinking signatures included)."""
    with TalkingAnthropic("Relayed from an Anthropic upstream.", thinking="hm") as fake:
        path = write_config(tmp_path / "chatd.toml", timeout_secs=10.0, threads=8)
        with open(path, "a") as f:
            f.write(
                f'\n[chatd.providers.claude]\nwire = "anthropic"\nurl = "{fake.url}/v1"\n'
                'key_env = "CLAUDE_KEY"\nauth = "x-api-key"\n'
                '\n[auth]\ntoken_env = "CHATD_TEST_TOKENS"\n'
            )
        env = clean_env(CLAUDE_KEY="upstream-key-1234", CHATD_TEST_TOKENS=TOKEN)
        fake.behave(pieces=["Relayed from ", "an Anthropic upstream."])
        with run_chatd(path, env, workers=1) as live:
            home = tmp_path / "home"
            home.mkdir()
            done = run_claude(claude, live, "claude/claude-sonnet-4-6", "say something", home)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Relayed from an Anthropic upstream." in done.stdout
        recorded = fake.chat_requests()[-1]
        assert recorded.headers["x-api-key"] == "upstream-key-1234"
        sent = recorded.json
        # Claude Code's own body: system blocks with cache_control, its thinking setting.
        assert sent["model"] == "claude-sonnet-4-6" and sent["stream"] is True
        assert isinstance(sent["system"], list) and "thinking" in sent

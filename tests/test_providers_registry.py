"""The provider registry: GALLEY_PROVIDERS, console rows with encrypted keys, routing of
`<provider>/<model>` ids, refusal of unserved models at create time, and Claude through the
anthropic SDK's own Bedrock and Vertex clients (the request shape that reaches a loopback server)."""

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from anthropic._constants import ANTHROPIC_API_VERSION

from api.errors import ApiError
from providers import registry, services
from providers.config import ProviderConfigError, providers_parse
from providers.models import ModelProvider
from sessions.models import Session
from tests.harness_helpers import events_of, make_session, say, step
from tests.live import free_port
from tests.openai_server import scripted_openai, text

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_registry(settings: Any) -> Iterator[None]:
    settings.GALLEY_PROVIDERS = []
    settings.GALLEY_MODEL_RETRY_BASE_SECONDS = 0.01
    settings.GALLEY_MODEL_MAX_RETRIES = 1
    registry.reset()
    yield
    registry.reset()


def _env(settings: Any, *entries: dict[str, Any], environ: dict[str, str] | None = None) -> None:
    settings.GALLEY_PROVIDERS = providers_parse(json.dumps(list(entries)), environ or {})
    registry.reset()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "not valid JSON"),
        ('{"name": "x"}', "must be a JSON list"),
        ('[{"name": "Bad Name", "type": "openai", "models": ["a"]}]', "GALLEY_PROVIDERS[0].name"),
        ('[{"name": "x", "type": "cohere", "models": ["a"]}]', "GALLEY_PROVIDERS[0].type"),
        ('[{"name": "x", "type": "openai"}]', "GALLEY_PROVIDERS[0].models"),
        ('[{"name": "x", "type": "openai", "models": ["a"], "api_key": "sk"}]', "api_key_env"),
        ('[{"name": "x", "type": "openai", "models": ["a"], "api_key_env": "NOPE"}]', "NOPE is not set"),
        ('[{"name": "anthropic", "type": "anthropic", "models": ["a"]}]', "is taken"),
        ('[{"name": "x", "type": "vertex", "models": ["a"]}]', "region and project_id"),
        ('[{"name": "x", "type": "openai", "models": [{"id": "a", "input_price": -1}]}]', "input_price"),
        (
            '[{"name": "x", "type": "bedrock", "models": "list", "region": "us-east-1"}]',
            "openai providers only",
        ),
    ],
)
def test_galley_providers_refuses_a_bad_value_naming_it(value: str, message: str) -> None:
    with pytest.raises(ProviderConfigError, match=re.escape(message)):
        providers_parse(value, {})


def test_the_settings_module_fails_loudly_on_a_bad_galley_providers() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "GALLEY_PROVIDERS": '[{"name": "x", "type": "nope", "models": ["a"]}]'}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'galley.settings'; django.setup()",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "GALLEY_PROVIDERS[0].type" in out.stderr


def test_model_ids_route_to_their_provider(settings: Any) -> None:
    _env(
        settings,
        {"name": "local", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["qwen3"]},
    )
    assert registry.route("claude-sonnet-4-6").provider is None
    assert registry.route("anthropic/claude-opus-4-7").provider is None
    found = registry.route("local/qwen3")
    assert found.provider is not None and found.provider.name == "local" and found.upstream == "qwen3"
    assert registry.route("local/org/model:tag").upstream == "org/model:tag"  # only the first slash splits
    with pytest.raises(registry.UnknownModel, match="no provider is named 'nope'"):
        registry.route("nope/qwen3")
    with pytest.raises(registry.UnknownModel, match="names no provider"):
        registry.route("gpt-4o")


def test_agents_create_refuses_a_model_no_provider_serves_and_lists_the_choices(
    settings: Any, workspace: Any
) -> None:
    from agents.services import agent_create, agent_update

    _env(
        settings,
        {"name": "local", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["qwen3"]},
    )
    agent = agent_create(workspace=workspace, body={"name": "a", "model": "local/qwen3"})
    assert agent_create(workspace=workspace, body={"name": "b", "model": "claude-haiku-4-5"})
    for body, field in (
        ({"name": "c", "model": "local/qwen-typo"}, "model"),
        ({"name": "c", "model": "gpt-4o"}, "model"),
        ({"name": "c", "model": {"id": "elsewhere/x"}}, "model"),
        (
            {
                "name": "c",
                "model": "claude-haiku-4-5",
                "multiagent": {"type": "coordinator", "agents": [{"type": "advisor", "model": "qwen3"}]},
            },
            "multiagent.agents[0].model",
        ),
    ):
        with pytest.raises(ApiError) as caught:
            agent_create(workspace=workspace, body=body)
        message = caught.value.message
        assert caught.value.status == 400 and message.startswith(f"{field}: ")
        assert "local/qwen3" in message or "It serves: local/qwen3" in message
    with pytest.raises(ApiError, match="model: 'local/typo'"):
        agent_update(agent=agent, body={"version": 1, "model": "local/typo"})


def test_list_from_the_servers_models(settings: Any, workspace: Any) -> None:
    from agents.services import agent_create

    with scripted_openai(models=("llama3.2:3b", "qwen3:8b")) as server:
        _env(settings, {"name": "ollama", "type": "openai", "base_url": server.base_url, "models": "list"})
        agent_create(workspace=workspace, body={"name": "a", "model": "ollama/qwen3:8b"})
        with pytest.raises(
            ApiError, match="does not serve 'mistral'. It serves: ollama/llama3.2:3b, ollama/qwen3:8b"
        ):
            agent_create(workspace=workspace, body={"name": "b", "model": "ollama/mistral"})
        assert registry.choices()[-1] == "ollama/<any model its /models lists>"
        assert server.paths.count("/v1/models") == 1  # listed once, then cached
    registry.reset()
    with pytest.raises(ApiError, match="cannot be listed: Could not reach provider 'ollama'"):
        agent_create(workspace=workspace, body={"name": "c", "model": "ollama/qwen3:8b"})


def test_a_console_provider_keeps_its_key_encrypted_and_routes_calls(settings: Any) -> None:
    with scripted_openai(api_key="sk-console-777") as server:
        row = services.provider_create(
            data={
                "name": "together",
                "type": "openai",
                "base_url": server.base_url,
                "api_key": "sk-console-777",
                "headers": {"X-Title": "Galley"},
                "models": [{"id": "gpt-test", "input_price": 0.2, "output_price": 0.6}],
            }
        )
        stored = ModelProvider.objects.values().get(pk=row.pk)
        assert "sk-console-777" not in json.dumps(stored, default=str)
        assert stored["header_names"] == ["X-Title"]
        session = make_session(model="together/gpt-test")
        server.push(text("Hi from together.", prompt_tokens=1000, completion_tokens=1000))
        say(session, "Hi")
        step(session)
        assert events_of(session, "agent.message")[0].payload["content"][0]["text"] == "Hi from together."
        assert server.headers[-1]["x-title"] == "Galley"
        assert Session.objects.get(pk=session.pk).token_cost_micros == 800
        # An update without a key keeps the stored one.
        services.provider_update(
            provider=row, data={"type": "openai", "base_url": server.base_url, "models": ["gpt-test"]}
        )
        assert services.provider_test(name="together").ok
        services.provider_update(
            provider=row,
            data={"type": "openai", "base_url": server.base_url, "models": ["gpt-test"], "api_key": "wrong"},
        )
        result = services.provider_test(name="together")
        assert not result.ok and "rejected the API key (401)" in result.message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "anthropic", "type": "openai", "models": ["a"]}, "name"),
        ({"name": "ok", "type": "nope", "models": ["a"]}, "type"),
        ({"name": "ok", "type": "openai", "models": []}, "models"),
        ({"name": "ok", "type": "openai", "base_url": "ftp://x", "models": ["a"]}, "base_url"),
        ({"name": "ok", "type": "bedrock", "models": ["a"]}, "region"),
    ],
)
def test_a_console_provider_with_bad_fields_is_refused_and_nothing_is_stored(
    data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProviderConfigError, match=f"^{field}"):
        services.provider_create(data=data)
    assert not ModelProvider.objects.exists()


def test_the_connection_test_makes_one_tiny_call(settings: Any) -> None:
    with scripted_openai() as server:
        _env(
            settings, {"name": "local", "type": "openai", "base_url": server.base_url, "models": ["gpt-test"]}
        )
        server.push(text("OK"))
        result = services.provider_test(name="local")
        assert result.ok and "'OK'" in result.message
        assert server.requests[-1]["max_tokens"] == 5
        server.models = ()
        result = services.provider_test(name="local")
        assert not result.ok and "does not exist" in result.message


class _Recorder:
    """A loopback server for the Bedrock and Vertex clients: records what arrives; answers Vertex
    with a Messages API stream and Bedrock with an error (its event-stream framing is not faked)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.port = free_port()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if "streamRawPredict" in self.path:
                    frames = [
                        {
                            "type": "message_start",
                            "message": {
                                "id": "msg_1",
                                "type": "message",
                                "role": "assistant",
                                "model": "claude-sonnet-4-6",
                                "content": [],
                                "stop_reason": None,
                                "stop_sequence": None,
                                "usage": {"input_tokens": 12, "output_tokens": 1},
                            },
                        },
                        {
                            "type": "content_block_start",
                            "index": 0,
                            "content_block": {"type": "text", "text": ""},
                        },
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": "Hello from Vertex."},
                        },
                        {"type": "content_block_stop", "index": 0},
                        {
                            "type": "message_delta",
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 4},
                        },
                        {"type": "message_stop"},
                    ]
                    data = "".join(f"event: {f['type']}\ndata: {json.dumps(f)}\n\n" for f in frames).encode()
                    content_type, status = "text/event-stream", 200
                else:
                    data = json.dumps(
                        {"message": "The security token included in the request is invalid."}
                    ).encode()
                    content_type, status = "application/json", 403
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    yield server
    server.stop()


def test_claude_on_vertex_goes_through_the_anthropic_vertex_client(
    settings: Any, recorder: _Recorder
) -> None:
    _env(
        settings,
        {
            "name": "vertex",
            "type": "vertex",
            "base_url": f"http://127.0.0.1:{recorder.port}/v1",
            "api_key_env": "VERTEX_TOKEN",
            "region": "europe-west1",
            "project_id": "my-project",
            "models": ["claude-sonnet-4-6"],
        },
        environ={"VERTEX_TOKEN": "ya29.token"},
    )
    session = make_session(model="vertex/claude-sonnet-4-6")
    say(session, "Hi")
    step(session)
    path, headers, body = recorder.requests[0]
    where = "/v1/projects/my-project/locations/europe-west1/publishers/anthropic/models"
    assert path == f"{where}/claude-sonnet-4-6:streamRawPredict"
    assert headers["authorization"] == "Bearer ya29.token"
    assert body["anthropic_version"] == ANTHROPIC_API_VERSION  # in the body, where Vertex wants it
    assert "model" not in body and body["stream"] is True
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert events_of(session, "agent.message")[0].payload["content"][0]["text"] == "Hello from Vertex."
    end = events_of(session, "span.model_request_end")[0]
    assert end.payload["model_usage"]["input_tokens"] == 12


def test_claude_on_bedrock_sends_the_bedrock_request_and_reports_its_error(
    settings: Any, recorder: _Recorder
) -> None:
    _env(
        settings,
        {
            "name": "bedrock",
            "type": "bedrock",
            "base_url": f"http://127.0.0.1:{recorder.port}",
            "api_key_env": "BEDROCK_KEY",
            "region": "us-east-1",
            "models": ["anthropic.claude-sonnet-4-6-v1:0"],
        },
        environ={"BEDROCK_KEY": "bedrock-api-key"},
    )
    session = make_session(model="bedrock/anthropic.claude-sonnet-4-6-v1:0")
    say(session, "Hi")
    step(session)
    path, headers, body = recorder.requests[0]
    assert path == "/model/anthropic.claude-sonnet-4-6-v1:0/invoke-with-response-stream"
    assert headers["authorization"] == "Bearer bedrock-api-key"
    assert body["anthropic_version"] == ANTHROPIC_API_VERSION and "model" not in body
    row = Session.objects.get(pk=session.pk)
    assert row.status == "idle" and row.stop_reason == {"type": "retries_exhausted"}
    message = events_of(session, "session.error")[-1].payload["error"]["message"]
    assert message.startswith("Provider 'bedrock': ") and "403" in message and "security token" in message
    assert "bedrock-api-key" not in message


def test_a_provider_without_its_key_fails_the_turn_naming_it(settings: Any) -> None:
    _env(
        settings,
        {"name": "nokey", "type": "anthropic", "base_url": "http://127.0.0.1:9", "models": ["claude-x"]},
    )
    session = make_session(model="nokey/claude-x")
    say(session, "Hi")
    step(session)
    message = events_of(session, "session.error")[-1].payload["error"]["message"]
    assert message == "Provider 'nokey' has no API key configured: the model cannot be called"


def test_a_session_whose_model_lost_its_provider_fails_the_turn_cleanly(settings: Any) -> None:
    session = make_session(model="removed/some-model")
    say(session, "Hi")
    step(session)
    row = Session.objects.get(pk=session.pk)
    assert row.status == "idle"
    message = events_of(session, "session.error")[-1].payload["error"]["message"]
    assert "no provider is named 'removed'" in message


def test_a_sessions_model_override_is_checked_like_an_agents(settings: Any, workspace: Any) -> None:
    from agents.models import Environment
    from agents.services import agent_create
    from api.ids import new_id
    from sessions.services import session_create

    _env(
        settings,
        {"name": "local", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["qwen3"]},
    )
    agent = agent_create(workspace=workspace, body={"name": "a", "model": "claude-haiku-4-5"})
    environment = Environment.objects.create(
        id=new_id("env"),
        workspace=workspace,
        name="e",
        config={"type": "cloud", "networking": {"type": "unrestricted"}},
    )
    override = {"type": "agent_with_overrides", "id": agent.pk}
    with pytest.raises(ApiError, match="^agent.model: 'local/qwen4'"):
        session_create(
            workspace=workspace,
            body={"agent": {**override, "model": "local/qwen4"}, "environment_id": environment.pk},
        )
    assert not Session.objects.exists()
    session = session_create(
        workspace=workspace,
        body={"agent": {**override, "model": "local/qwen3"}, "environment_id": environment.pk},
    )
    assert session.agent_snapshot["model"]["id"] == "local/qwen3"

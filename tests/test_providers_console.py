"""The console's providers page (admins only), its connection test, and the agent form's model
picker grouped by provider."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from accounts.models import Role
from providers import registry
from providers.config import providers_parse
from providers.models import ModelProvider
from tests.console_factories import client_for
from tests.openai_server import ScriptedOpenAI, scripted_openai, text

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sk-console-page-secret-31337"


@pytest.fixture
def server(settings: Any) -> Iterator[ScriptedOpenAI]:
    settings.GALLEY_PROVIDERS = []
    registry.reset()
    with scripted_openai(api_key=SECRET, models=("gpt-test", "qwen3:8b")) as scripted:
        yield scripted
    registry.reset()


def _add(client: Any, server: ScriptedOpenAI, **extra: str) -> Any:
    data = {
        "name": "local",
        "type": "openai",
        "base_url": server.base_url,
        "api_key": SECRET,
        "headers": "X-Title: Galley\nHTTP-Referer: https://galley.example",
        "models": "gpt-test input=0.5 output=1.5 window=64000\nqwen3:8b images=no",
        **extra,
    }
    return client.post("/providers", data)


def test_only_admins_reach_the_providers_page(workspace: Any) -> None:
    admin, editor, viewer = (client_for(workspace, role) for role in (Role.ADMIN, Role.EDITOR, Role.VIEWER))
    assert admin.get("/providers").status_code == 200
    assert editor.get("/providers").status_code == 403 and viewer.get("/providers").status_code == 403
    assert editor.post("/providers", {"name": "x"}).status_code == 403
    assert 'href="/providers" ' in admin.get("/").content.decode()
    assert 'href="/providers" ' not in viewer.get("/").content.decode()


def test_an_admin_adds_a_provider_whose_key_is_never_shown_again(
    workspace: Any, server: ScriptedOpenAI
) -> None:
    client = client_for(workspace, Role.ADMIN)
    response = _add(client, server)
    assert response.status_code == 302
    row = ModelProvider.objects.get(name="local")
    assert row.served_models[0] == {
        "id": "gpt-test",
        "input_price": 0.5,
        "output_price": 1.5,
        "context_window": 64000,
        "images": True,
    }
    assert row.served_models[1]["images"] is False
    assert SECRET not in json.dumps(ModelProvider.objects.values().get(pk=row.pk), default=str)
    for url in ("/providers", "/providers/local/edit", "/agents/new"):
        page = client.get(url).content.decode()
        assert SECRET not in page and "galley.example" not in page, url
    edit = client.get("/providers/local/edit").content.decode()
    assert "HTTP-Referer, X-Title" in edit and "gpt-test input=0.5 output=1.5 window=64000" in edit
    # Saving the form without a key keeps the stored one.
    response = client.post(
        "/providers/local/edit",
        {"type": "openai", "base_url": server.base_url, "models": "gpt-test\nqwen3:8b"},
    )
    assert response.status_code == 302
    server.push(text("OK"))
    result = client.post("/providers/local/test", HTTP_HX_REQUEST="true").content.decode()
    assert "Connected: gpt-test answered &#x27;OK&#x27;" in result
    assert server.headers[-1]["authorization"] == f"Bearer {SECRET}"
    assert server.headers[-1]["x-title"] == "Galley"


def test_the_connection_test_shows_the_providers_own_error(workspace: Any, server: ScriptedOpenAI) -> None:
    client = client_for(workspace, Role.ADMIN)
    _add(client, server, api_key="sk-wrong")
    result = client.post("/providers/local/test", HTTP_HX_REQUEST="true").content.decode()
    assert "rejected the API key (401)" in result and "Incorrect API key provided." in result
    assert "sk-wrong" not in result
    # Without htmx the result comes back as a message on the page.
    page = client.post("/providers/local/test", follow=True).content.decode()
    assert "rejected the API key (401)" in page


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"name": "Not A Name"}, "name", "lowercase letters"),
        ({"name": "anthropic"}, "name", "default Anthropic provider"),
        ({"models": ""}, "models", "list the models it serves"),
        ({"models": "gpt-test price=3"}, "models", "line 1"),
        ({"headers": "no colon here"}, "headers", "Name: value"),
        ({"base_url": "localhost:11434"}, "base_url", "http(s) URL"),
    ],
)
def test_a_bad_provider_form_is_refused_naming_the_field(
    workspace: Any, server: ScriptedOpenAI, extra: dict[str, str], field: str, message: str
) -> None:
    response = _add(client_for(workspace, Role.ADMIN), server, **extra)
    assert response.status_code == 400
    page = response.content.decode()
    assert f'id="{field}-error"' in page and message in page
    assert SECRET not in page
    assert not ModelProvider.objects.exists()


def test_the_model_picker_groups_models_by_provider(
    workspace: Any, server: ScriptedOpenAI, settings: Any
) -> None:
    settings.GALLEY_PROVIDERS = providers_parse(
        json.dumps([{"name": "ollama", "type": "openai", "base_url": server.base_url, "models": "list"}]), {}
    )
    server.api_key = None
    client = client_for(workspace, Role.ADMIN)
    _add(client, server)
    page = client.get("/agents/new").content.decode()
    assert '<optgroup label="Anthropic (default provider)">' in page
    assert '<optgroup label="ollama (OpenAI-compatible (Chat Completions))">' in page
    assert '<option value="ollama/qwen3:8b"' in page
    assert '<option value="local/gpt-test"' in page
    assert page.index("Anthropic (default provider)") < page.index("ollama (") < page.index("local (")
    providers_page = client.get("/providers").content.decode()
    assert "GALLEY_PROVIDERS" in providers_page and "listed by the server" in providers_page


def test_an_agent_made_in_the_console_on_a_provider_model_and_a_typo_refused(
    workspace: Any, server: ScriptedOpenAI
) -> None:
    client = client_for(workspace, Role.ADMIN)
    _add(client, server)
    form = {"name": "cheap", "model": "local/qwen3:8b", "effort": "high", "system": ""}
    response = client.post("/agents/new", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    refused = client.post("/agents/new", {**form, "name": "typo", "model_other": "local/qwen3:9b"})
    assert refused.status_code == 400
    assert "does not serve &#x27;qwen3:9b&#x27;" in refused.content.decode()


def test_a_removed_provider_disappears_from_the_registry(workspace: Any, server: ScriptedOpenAI) -> None:
    client = client_for(workspace, Role.ADMIN)
    _add(client, server)
    assert client.post("/providers/local/delete").status_code == 302
    assert not ModelProvider.objects.exists()
    with pytest.raises(registry.UnknownModel):
        registry.route("local/gpt-test")

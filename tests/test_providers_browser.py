"""The providers page in a real headless Chromium against a live Galley: an admin adds an
OpenAI-compatible provider, tests the connection (htmx shows the server's answer, then its error
for a wrong key), and picks one of its models in the agent form, grouped by provider."""

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import LiveGalley, live_galley
from tests.openai_server import ScriptedOpenAI, scripted_openai, text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "browser-test-password"
KEY = "sk-browser-provider-key-5150"


@pytest.fixture(scope="module")
def local() -> Iterator[ScriptedOpenAI]:
    with scripted_openai(api_key=KEY, models=("gpt-test", "qwen3:8b")) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def server(local: ScriptedOpenAI) -> Iterator[LiveGalley]:
    with live_galley(worker=False) as live:
        live.manage(
            "shell",
            "-c",
            "from accounts.services import user_create; "
            f"user_create(username='admin', password='{PASSWORD}', role='admin')",
        )
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from tests.test_browser_console import CHROMIUM_ARGS

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_an_admin_adds_a_provider_tests_it_and_picks_its_model(
    browser: Any, server: LiveGalley, local: ScriptedOpenAI
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(server.base_url + "/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(server.base_url + "/")
    assert "providers page" in page.locator("#provider-banner").inner_text()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Providers").click()
    page.wait_for_url(server.base_url + "/providers")
    page.get_by_label("Name", exact=True).fill("local")
    page.get_by_label("Type").select_option("openai")
    page.get_by_label("Base URL").fill(local.base_url)
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("Models it serves").fill("gpt-test input=0.5 output=1.5\nqwen3:8b images=no")
    page.get_by_role("button", name="Add provider").click()
    page.wait_for_url(server.base_url + "/providers")
    assert "Provider 'local' added" in page.content()
    assert KEY not in page.content()

    local.push(text("OK"))
    page.get_by_role("button", name="Test the connection to local").click()
    result = page.locator("#test-result-local")
    result.wait_for()
    assert "Connected: gpt-test answered 'OK'" in result.inner_text()
    assert page.url == server.base_url + "/providers"  # htmx swapped the result in place

    page.get_by_role("link", name="Edit").click()
    page.wait_for_url(re.compile(r"/providers/local/edit$"))
    assert page.get_by_label("API key").input_value() == ""  # never shown again
    page.get_by_label("API key").fill("sk-wrong")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(server.base_url + "/providers")
    page.get_by_role("button", name="Test the connection to local").click()
    page.locator("#test-result-local.error").wait_for()
    assert "rejected the API key (401)" in page.locator("#test-result-local").inner_text()

    page.goto(server.base_url + "/agents/new")
    picker = page.get_by_label("Model", exact=True)
    groups = picker.locator("optgroup").evaluate_all("nodes => nodes.map(n => n.label)")
    assert groups == ["Anthropic (default provider)", "local (OpenAI-compatible (Chat Completions))"]
    picker.select_option("local/qwen3:8b")
    page.get_by_label("Name", exact=True).fill("cheap helper")
    page.get_by_role("button", name=re.compile("Create agent")).click()
    page.wait_for_url(re.compile(r"/agents/agent_"))
    assert "local/qwen3:8b" in page.content()
    page.close()

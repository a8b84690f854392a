"""The webhooks and deployments pages in a real headless Chromium against a live Galley: an admin
registers an endpoint (secret shown once), sends a test event that a loopback receiver gets and
the delivery log shows, rotates the secret; an editor's deployment runs now and links its session."""

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import LiveGalley, live_galley
from tests.model_server import ScriptedModel, scripted_model, text
from tests.test_browser_console import ADMIN_PASSWORD, _login, _shot
from tests.test_browser_console import browser as browser  # noqa: F401  (the shared Chromium fixture)
from tests.webhook_receiver import webhook_receiver

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model() as scripted:
        yield scripted


@pytest.fixture(scope="module")
def server(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-scripted",
        "ANTHROPIC_BASE_URL": model.base_url,
        "GALLEY_WEBHOOK_ALLOW_PRIVATE": "1",
        "GALLEY_WEBHOOK_SWEEP_SECONDS": "0.5",
    }
    with live_galley(extra_env=env) as live:
        live.manage(
            "shell",
            "-c",
            "from accounts.services import user_create; "
            f"user_create(username='admin', password='{ADMIN_PASSWORD}', role='admin')",
        )
        yield live


def test_webhook_endpoint_test_event_and_rotation(browser: Any, server: LiveGalley) -> None:
    page = _login(browser, server)
    with webhook_receiver() as rx:
        page.get_by_role("link", name="Webhooks").click()
        page.get_by_label("URL").fill(rx.url)
        page.get_by_label("Name (optional)").fill("slack bot")
        page.locator('input[name="enabled_events"][value="*"]').check()
        page.get_by_role("button", name="Create endpoint").click()
        secret = page.locator("#signing-secret").inner_text().strip()
        assert secret.startswith("whsec_")
        page.get_by_role("link", name="Open the endpoint").click()
        assert secret not in page.content()
        page.get_by_role("button", name="Send a test event").click()
        received = rx.wait_for(lambda seen: len(seen) == 1, timeout=30)
        client = server.client()
        event = client.beta.webhooks.unwrap(received[0].body, headers=received[0].headers, key=secret)
        assert event.data.type == "webhook_endpoint.test"
        page.reload()
        log = page.locator("#deliveries")
        log.get_by_text("delivered").wait_for()
        assert "webhook_endpoint.test" in log.inner_text() and "200" in log.inner_text()
        _shot(page, "webhook")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Rotate secret").click()
        new = page.locator("#signing-secret").inner_text().strip()
        assert new.startswith("whsec_") and new != secret


def test_deployment_run_now_links_its_session(browser: Any, server: LiveGalley, model: ScriptedModel) -> None:
    client = server.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"reporter-{suffix}", model="claude-sonnet-4-6")
    client.beta.environments.create(name=f"reporter-env-{suffix}")
    model.push(text("All green."))
    page = _login(browser, server)
    page.get_by_role("link", name="Deployments").click()
    page.get_by_label("Name").fill("nightly report")
    page.get_by_label("Agent (latest version)").select_option(label=agent.name)
    page.get_by_label("Environment").select_option(label=f"reporter-env-{suffix}")
    page.get_by_label("First message of each session").fill("Write the nightly report.")
    page.get_by_label("Timezone").fill("Europe/Paris")
    page.get_by_role("button", name="Create deployment").click()
    page.get_by_role("button", name="Run now").click()
    link = page.locator("#runs a").first
    session_id = link.inner_text().strip()
    assert session_id.startswith("sesn_")
    _shot(page, "deployment")
    link.click()
    page.wait_for_url(f"**/sessions/{session_id}")
    assert client.beta.sessions.retrieve(session_id).deployment_id is not None

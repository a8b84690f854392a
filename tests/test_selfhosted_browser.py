"""A self_hosted environment's console page in headless Chromium against a live Galley: an admin
creates a key (shown once), a worker polls with it, and the queue section updates by itself; the
"Check workers" healthcheck is answered by the SDK's own worker, or times out without one."""

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.live import LiveGalley, live_galley
from tests.test_browser_console import ADMIN_PASSWORD, CHROMIUM_ARGS, WAIT_MS, _shot
from tests.test_selfhosted_sdk import BackgroundWorker

HEALTHCHECK_TIMEOUT = 4

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveGalley]:
    with live_galley({"GALLEY_HEALTHCHECK_TIMEOUT_SECONDS": str(HEALTHCHECK_TIMEOUT)}) as live:
        live.manage(
            "shell",
            "-c",
            "from accounts.services import user_create; "
            f"user_create(username='admin', password='{ADMIN_PASSWORD}', role='admin')",
        )
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _admin_page(browser: Any, server: LiveGalley) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(server.base_url + "/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(server.base_url + "/")
    return page


def test_an_admin_creates_a_key_and_watches_a_worker_take_the_queue(browser: Any, server: LiveGalley) -> None:
    client = server.client()
    environment = client.beta.environments.create(name="laptops", config={"type": "self_hosted"})
    agent = client.beta.agents.create(name="remote", model="claude-sonnet-4-6")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    page = _admin_page(browser, server)
    page.goto(f"{server.base_url}/sessions/{session.id}")
    assert "Waiting for a worker since" in page.locator("#worker-wait").inner_text()  # nobody polls yet
    page.goto(f"{server.base_url}/environments/{environment.id}")
    assert page.locator("#build").count() == 0  # no sandbox build for a self-hosted environment
    assert session.id in page.locator("#work-items").inner_text()

    page.get_by_label("New key name").fill("my laptop")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_url(f"{server.base_url}/environments/{environment.id}#keys")
    raw = page.locator("#raw-env-key").inner_text().strip()
    assert raw.startswith("sk-galley-env-")
    assert "my laptop" in page.locator("#env-keys").inner_text()

    worker = anthropic.Anthropic(base_url=server.base_url, auth_token=raw, max_retries=0)
    worker.api_key = None
    item = worker.beta.environments.work.poll(environment.id, block_ms=500, anthropic_worker_id="laptop-1")
    assert item is not None and item.data.id == session.id
    worker.beta.environments.work.ack(item.id, environment_id=environment.id)
    # The queue section refreshes itself: the worker shows up, the item is acknowledged.
    page.locator("#workers", has_text="laptop-1").wait_for()
    page.locator("#work-items", has_text="starting").wait_for()
    _shot(page, "environment-self-hosted")

    page.reload()
    assert page.locator("#raw-env-key").count() == 0  # the raw key was shown once
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke my laptop").click()
    page.locator("#env-keys", has_text="revoked").wait_for()
    with pytest.raises(anthropic.AuthenticationError):
        worker.beta.environments.work.stats(environment.id)
    page.goto(f"{server.base_url}/sessions/{session.id}")
    page.locator("#worker-wait").wait_for(state="hidden")  # a worker holds the session now
    page.close()


def test_check_workers_is_answered_by_the_sdk_worker_or_times_out_without_one(
    browser: Any, server: LiveGalley
) -> None:
    client = server.client()
    environment = client.beta.environments.create(name="check-me", config={"type": "self_hosted"})
    key = server.manage("create_environment_key", environment.id, "box").stdout.strip().splitlines()[-1]
    page = _admin_page(browser, server)
    url = f"{server.base_url}/environments/{environment.id}"
    page.goto(url)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    # No worker polls: the check waits, then says nobody answered, with no reload.
    page.get_by_role("button", name="Check workers").click()
    page.locator('#healthcheck-result[data-status="waiting"]').wait_for()
    page.locator('#healthcheck-result[data-status="no_answer"]').wait_for(
        timeout=(HEALTHCHECK_TIMEOUT + 20) * 1000
    )
    assert f"no worker answered within {HEALTHCHECK_TIMEOUT} s" in page.locator("#healthcheck").inner_text()

    # The SDK's own worker, unmodified, picks the next check up, skips it and stops it.
    with BackgroundWorker(
        server, strict=False, environment_id=environment.id, environment_key=key, worker_id="laptop-hc-1"
    ):
        page.get_by_role("button", name="Check workers").click()
        page.locator('#healthcheck-result[data-status="answered"]').wait_for(timeout=60_000)
    text = page.locator("#healthcheck").inner_text()
    assert "answered by laptop-hc-1 in" in text and " ms" in text
    assert navigations == []  # htmx swapped the section; the page never reloaded
    _shot(page, "environment-healthcheck")
    page.close()

"""The memory store pages in a real headless Chromium against a live Galley: create a store and a
memory, edit it, see the version diff, redact the old version."""

from typing import Any

import pytest

from tests.live import LiveGalley
from tests.test_browser_console import _login, _shot, browser, model, server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_create_edit_diff_and_redact_a_memory(browser: Any, server: LiveGalley) -> None:  # noqa: F811
    page = _login(browser, server)
    page.get_by_role("link", name="Memory").click()
    page.get_by_label("New store name").fill("Browser notes")
    page.get_by_label("Description").fill("Notes kept by the browser test")
    page.get_by_role("button", name="Create store").click()
    page.get_by_role("heading", name="Browser notes").wait_for()

    page.get_by_label("Path").fill("/todo/today.md")
    page.get_by_label("Content").fill("buy milk\ncall Ana")
    page.get_by_role("button", name="Save memory").click()
    page.get_by_role("heading", name="/todo/today.md").wait_for()

    page.get_by_label("Content").fill("buy milk\ncall Bo")
    page.get_by_role("button", name="Save").click()
    page.locator(".diff .del", has_text="call Ana").wait_for()
    page.locator(".diff .add", has_text="call Bo").wait_for()
    _shot(page, "memory")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Redact").click()
    page.get_by_text("content and path removed").wait_for()

    page.get_by_role("link", name="Browser notes").click()
    page.get_by_role("link", name="/todo/").click()
    page.get_by_role("link", name="/todo/today.md").wait_for()
    page.close()

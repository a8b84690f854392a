"""The skills page in a real headless Chromium against a live Galley: upload a skill folder (the
browser's own folder picker sends each file's relative path), read its SKILL.md and files, and pick
it on the agent form."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveGalley, live_galley
from tests.test_browser_console import ADMIN_PASSWORD, CHROMIUM_ARGS, SHOTS, WAIT_MS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveGalley]:
    with live_galley(worker=False) as live:
        live.manage(
            "shell",
            "-c",
            "from accounts.services import user_create; "
            f"user_create(username='admin', password='{ADMIN_PASSWORD}', role='admin')",
        )
        yield live


@pytest.fixture(scope="module")
def page(server: LiveGalley) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(server.base_url + "/login")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(ADMIN_PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(server.base_url + "/")
            yield page
        finally:
            chromium.close()


def test_upload_a_skill_folder_view_it_and_pick_it_for_an_agent(
    page: Any, server: LiveGalley, tmp_path: Path
) -> None:
    folder = tmp_path / "trip-planner"
    (folder / "scripts").mkdir(parents=True)
    (folder / "SKILL.md").write_text(
        "---\nname: trip-planner\ndescription: Plans trips with a day-by-day itinerary.\n---\n"
        "# Trip planner\nAsk for dates.\n"
    )
    (folder / "scripts" / "days.py").write_text("print('day 1')\n")
    page.get_by_role("link", name="Skills").click()
    page.wait_for_url(server.base_url + "/skills")
    page.get_by_label("Display name (optional)").fill("Trip planner")
    page.get_by_label("Folder").set_input_files(folder)
    page.get_by_role("button", name="Upload skill").click()
    page.wait_for_url(lambda url: "/skills/skill_" in url)
    assert page.locator("h1").inner_text().startswith("Trip planner")
    assert "# Trip planner" in page.locator("#skill-file").inner_text()
    page.get_by_role("link", name="scripts/days.py").click()
    assert "print('day 1')" in page.locator("#skill-file").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "skill.png"), full_page=True)

    page.goto(server.base_url + "/agents/new")
    picker = page.get_by_label("Trip planner (trip-planner)")
    assert picker.count() == 1
    assert page.get_by_label("Spreadsheets (xlsx)").count() == 1

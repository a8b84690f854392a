"""Cost analytics, budget banners, the credential form per kind and the error summary's focus in a
real headless Chromium against a live Galley (the harness of tests/test_browser_console.py)."""

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import LiveGalley
from tests.test_browser_console import (  # noqa: F401 (fixtures)
    _login,
    _shot,
    browser,
    failed_request,
    model,
    server,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SEED = """
from django.contrib.auth.models import User
from accounts.models import ApiKey
from accounts.services import workspace_get_default
from costs.models import WorkspaceBudget
from tests.console_factories import make_agent, make_environment, make_session
ws = workspace_get_default()
admin = User.objects.get(username='admin')
key, _raw = ApiKey.generate(workspace=ws, name='reports', created_by=admin)
agent = make_agent(ws, name='Quarterly research assistant')
env = make_environment(ws, name='costs-env')
make_session(ws, agent, env, title='Big one', api_key=key, input_tokens=1234567, output_tokens=8910,
             token_cost_micros=8_000_000)
make_session(ws, make_agent(ws, name='Triage bot'), env, title='Small one', token_cost_micros=500_000)
WorkspaceBudget.objects.update_or_create(workspace=ws, defaults={'monthly_cents': 1000, 'warn_percent': 80})
"""


@pytest.fixture(scope="module")
def seeded(server: LiveGalley) -> LiveGalley:  # noqa: F811
    server.manage("shell", "-c", SEED)
    return server


class _Problems:
    """Console errors, page errors, failed requests and error statuses over a page's navigations
    (the 400 of a failed form submit is expected where a test says so)."""

    def __init__(self, page: Any) -> None:
        self.found: list[str] = []
        self.expected_400 = 0
        page.on("console", lambda m: m.type == "error" and self.found.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.found.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _failed(self, request: Any) -> None:
        problem = failed_request(request)
        if problem is not None:
            self.found.append(problem)

    def _response(self, response: Any) -> None:
        if response.status == 400 and self.expected_400 > 0:
            self.expected_400 -= 1
        elif response.status >= 400:
            self.found.append(f"{response.status}: {response.url}")

    def check(self) -> None:
        # Chromium logs the expected 400 document as a console error ("Failed to load resource").
        assert [p for p in self.found if "status of 400" not in p] == []


@pytest.fixture
def admin_page(browser: Any, seeded: LiveGalley) -> Iterator[tuple[Any, _Problems]]:  # noqa: F811
    page = _login(browser, seeded)
    problems = _Problems(page)
    yield page, problems
    problems.check()
    page.close()


def test_analytics_reads_like_a_report_with_presets_groups_charts_and_the_banner(
    admin_page: tuple[Any, _Problems], seeded: LiveGalley
) -> None:
    page, _problems = admin_page
    page.goto(seeded.base_url + "/analytics?group=agent")
    banner = page.locator("#budget-banner")
    assert "Budget warning." in banner.inner_text() and "85%" in banner.inner_text()
    assert page.locator("#total-cost").inner_text() == "$8.50"
    assert page.locator("#total-tokens").inner_text() == "1,234,567 / 8,910"
    assert page.locator(".charts figure svg").count() == 3
    for chart, unit in (("#spend-chart", "USD"), ("#token-chart", "tokens"), ("#latency-chart", "seconds")):
        assert page.locator(f"{chart} text.axis-unit").text_content() == unit
    texts = "els => els.map(e => e.textContent)"
    ticks = page.locator("#spend-chart text.tick").evaluate_all(texts)
    assert ticks == ["$0.00", "$4.00", "$8.00"]
    labels = page.locator("#spend-chart text.label").evaluate_all(texts)
    assert any(label.startswith("Quarterly") for label in labels) and "Triage bot" in labels
    assert page.locator("#cost-table td", has_text="Quarterly research assistant").count() == 1
    _shot(page, "analytics-costs")

    page.get_by_role("link", name="Last 7 days").click()
    page.wait_for_url(re.compile(r"preset=7d"))
    assert page.get_by_role("link", name="Last 7 days").get_attribute("aria-current") == "true"
    assert "grouped by agent" in page.locator("#range").inner_text()
    page.get_by_label("Group by").select_option("user")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"group=user"))
    assert page.locator("#cost-table th").first.inner_text() == "User"
    assert page.locator("#cost-table td", has_text=re.compile(r"^admin$")).count() == 1

    page.goto(seeded.base_url + "/sessions")  # the banner is on every page of the workspace
    assert page.locator("#budget-banner").count() == 1

    page.set_viewport_size({"width": 390, "height": 900})  # a phone: the report fits its width
    page.goto(seeded.base_url + "/analytics?preset=30d&group=agent")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the cost page overflows a narrow screen: {width}px"
    assert page.locator("#spend-chart svg").bounding_box()["width"] <= 390
    _shot(page, "analytics-narrow")


def _kinds_visible(page: Any) -> dict[str, bool]:
    fields = ("bearer-url", "oauth-url", "env-name")
    return {field: page.locator(f"#{field}").is_visible() for field in fields}


def _vault_page(page: Any, live: LiveGalley, name: str) -> None:
    page.goto(live.base_url + "/vaults")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create vault").click()
    page.wait_for_url(re.compile(r"/vaults/vlt_"))


@pytest.mark.parametrize("javascript", [True, False])
def test_the_credential_form_shows_only_the_chosen_kinds_fields(
    browser: Any,  # noqa: F811
    seeded: LiveGalley,
    javascript: bool,
) -> None:
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems = _Problems(page)
    page.goto(seeded.base_url + "/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("browser-test-password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(seeded.base_url + "/")
    _vault_page(page, seeded, f"Kinds {javascript}")
    assert _kinds_visible(page) == {"bearer-url": False, "oauth-url": False, "env-name": False}
    page.get_by_label("Bearer token for an MCP server").check()
    assert _kinds_visible(page) == {"bearer-url": True, "oauth-url": False, "env-name": False}
    page.get_by_label("OAuth access token for an MCP server").check()
    assert _kinds_visible(page) == {"bearer-url": False, "oauth-url": True, "env-name": False}
    assert page.locator("#oauth-refresh_token").is_visible() and page.locator("#oauth-client_id").is_visible()
    page.get_by_label("Secret for the sandbox").check()
    assert _kinds_visible(page) == {"bearer-url": False, "oauth-url": False, "env-name": True}
    if javascript:
        _shot(page, "credential-form")
    page.get_by_label("Variable name").fill("GH_TOKEN")
    page.get_by_label("Secret value").fill("ghp-browser-secret")
    page.locator("#env-hosts").fill("api.github.com")
    page.get_by_role("button", name="Save credential").click()
    page.get_by_text("Credential saved.").wait_for()
    assert page.locator("table td", has_text="GH_TOKEN").count() == 1
    assert "ghp-browser-secret" not in page.content()
    problems.check()
    context.close()


def test_a_failed_submit_focuses_the_error_summary_whose_links_focus_the_field(
    admin_page: tuple[Any, _Problems], seeded: LiveGalley
) -> None:
    page, problems = admin_page
    _vault_page(page, seeded, "Focus")
    page.get_by_label("Bearer token for an MCP server").check()
    page.get_by_label("MCP server URL").first.fill("ftp://nope")
    page.get_by_label("Token", exact=True).fill("tok-browser")
    problems.expected_400 += 1
    page.get_by_role("button", name="Save credential").click()
    page.wait_for_selector("#error-summary")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'error-summary'")
    assert "must be an http(s) URL" in page.locator("#bearer-url-error").inner_text()
    assert page.locator("#bearer-url").is_visible()  # the chosen kind stays chosen
    assert "tok-browser" not in page.content()
    page.locator("#error-summary a").first.click()
    assert page.evaluate("document.activeElement.id") == "bearer-url"

    page.goto(seeded.base_url + "/analytics")
    page.get_by_label("Monthly workspace budget (USD)").fill("lots")
    problems.expected_400 += 1
    page.get_by_role("button", name="Save budgets").click()
    page.wait_for_function("document.activeElement && document.activeElement.id === 'error-summary'")
    page.locator("#error-summary a", has_text="enter an amount").click()
    assert page.evaluate("document.activeElement.id") == "b-monthly"
    _shot(page, "error-summary", full_page=False)

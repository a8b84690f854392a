"""The console in a real headless Chromium against a live Galley (Daphne + a real Celery worker)
and the scripted model: log in, build an agent with the form, start a session, watch the answer
arrive live, approve a tool confirmation, step through the trace replay, open cost analytics.
Takes a screenshot of every main page: into var/screenshots/ on every run, and into docs/screenshots/
(the README's pictures) when GALLEY_UPDATE_SCREENSHOTS=1 (`make screenshots`)."""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveGalley, live_galley
from tests.model_server import ScriptedModel, scripted_model, text, tool_call

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_ROOT = Path(__file__).resolve().parent.parent
SHOTS = _ROOT / ("docs" if os.environ.get("GALLEY_UPDATE_SCREENSHOTS") == "1" else "var") / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_PASSWORD = "browser-test-password"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model() as scripted:
        yield scripted


@pytest.fixture(scope="module")
def server(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {"ANTHROPIC_API_KEY": "sk-ant-scripted", "ANTHROPIC_BASE_URL": model.base_url}
    with live_galley(extra_env=env) as live:
        live.manage(
            "shell",
            "-c",
            (
                "from accounts.services import user_create; "
                f"user_create(username='admin', password='{ADMIN_PASSWORD}', role='admin'); "
                f"user_create(username='viv', password='{ADMIN_PASSWORD}', role='viewer')"
            ),
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


def _seeded(server: LiveGalley, code: str) -> str:
    """Runs `code` in the live server's `manage.py shell`; returns the last line it printed."""
    return str(server.manage("shell", "-c", code).stdout.strip().splitlines()[-1])


def _login(browser: Any, server: LiveGalley, username: str = "admin", width: int = 1280) -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(server.base_url + "/")
    assert "/login" in page.url
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(server.base_url + "/")
    return page


def _shot(page: Any, name: str, *, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def failed_request(request: Any) -> str | None:
    """What a failed request of the page says, or None for the one failure that is nobody's: the page's
    icon, still loading when a form submit navigates away, is cancelled by Chromium (net::ERR_ABORTED)."""
    if request.url.endswith("/favicon.svg") and "ERR_ABORTED" in (request.failure or ""):
        return None
    return f"request failed: {request.url} ({request.failure})"


class _Watch:
    """Fails the test on a navigation, a console error or a failed request of the page it watches."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.evaluate("window.__galleyStayed = true")
        self.page = page
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: (problem := failed_request(r)) and self.problems.append(problem))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status}: {r.url}"))

    def check(self) -> None:
        assert self.page.evaluate("window.__galleyStayed === true"), "the page navigated"
        assert self.problems == []


def _newest_in_view(page: Any) -> None:
    """The newest chat item is on screen, above the dock (composer and approval cards)."""
    box = page.evaluate(
        """() => { const items = document.querySelectorAll('#chat > .msg');
        const last = items[items.length - 1].getBoundingClientRect();
        const dock = document.getElementById('dock').getBoundingClientRect();
        return {top: last.top, bottom: last.bottom, dock: dock.top, height: window.innerHeight}; }"""
    )
    assert box["bottom"] > 0 and box["top"] < box["dock"] + 1 and box["bottom"] <= box["height"], box


def test_build_agent_run_session_approve_tool_and_replay(
    browser: Any, server: LiveGalley, model: ScriptedModel
):
    page = _login(browser, server)
    _shot(page, "overview-empty")
    assert page.locator("#provider-banner").count() == 0  # a model provider is configured

    # An environment, with the form.
    page.goto(server.base_url + "/environments/new")
    page.get_by_label("Name", exact=True).fill("default")
    page.get_by_role("button", name="Create environment").click()
    page.wait_for_url(re.compile(r"/environments/env_"))
    _shot(page, "environment")

    # An agent, with the form: bash needs approval.
    page.goto(server.base_url + "/agents/new")
    page.get_by_label("Name", exact=True).fill("Shell helper")
    page.get_by_label("Instructions (system prompt)").fill("You help with shell tasks.")
    page.get_by_label("Permission for bash").select_option("always_ask")
    _shot(page, "agent-form")
    page.get_by_role("button", name="Create agent").click()
    page.wait_for_url(re.compile(r"/agents/agent_"))
    assert page.locator("h1").inner_text().startswith("Shell helper")

    # Start a session; the first answer comes after the page has loaded, so it arrives live.
    model.push(
        tool_call(
            "bash",
            {"command": "echo hello-from-sandbox"},
            say="Let me run that.",
            delay=1.5,
            usage={"input_tokens": 900, "output_tokens": 40},
        ),
        text(
            "All done: the command printed hello-from-sandbox.",
            usage={"input_tokens": 1100, "output_tokens": 30},
        ),
    )
    _shot(page, "agent")
    # Another tab on the session list: the new session shows up there without a reload.
    listing = _login(browser, server)
    listing.goto(server.base_url + "/sessions")
    listing_watch = _Watch(listing)
    page.get_by_label("Title").fill("Say hello")
    page.get_by_label("First message").fill("Please run echo hello-from-sandbox")
    page.get_by_role("button", name="Start session").click()
    page.wait_for_url(re.compile(r"/sessions/sesn_"))
    session_url = page.url
    page.wait_for_selector("#chat[data-connected='1']")
    watch = _Watch(page)  # from here on, every action stays on this page
    page.get_by_text("Let me run that.").wait_for()
    page.get_by_text("The agent wants to run bash.").wait_for()
    page.wait_for_function(
        "document.getElementById('session-status').textContent.trim() === 'waiting for you'"
    )
    assert page.locator(".msg.tool .perm.ask", has_text="needs approval").count() == 1
    assert page.locator(".msg.tool code.one-line", has_text="echo hello-from-sandbox").count() == 1
    _newest_in_view(page)
    _shot(page, "session-confirmation", full_page=False)

    page.get_by_role("button", name="Approve").click()
    page.get_by_text("All done: the command printed hello-from-sandbox.").wait_for()
    page.wait_for_function("document.getElementById('session-status').textContent.trim() === 'idle'")
    page.wait_for_function("document.getElementById('session-usage').textContent.startsWith('2000 in')")
    assert page.get_by_text("You approved a tool call.").count() == 1
    assert page.locator(".msg.tool .perm.ok", has_text="approved").count() == 1  # not "needs approval"
    # The call and its result each show a one-line summary.
    assert page.locator(".msg.tool code.one-line", has_text="hello-from-sandbox").count() == 2
    _newest_in_view(page)

    # A follow-up from the composer: sent without a reload, the composer clears, the answer streams in.
    model.push(text("Second answer, typed live.", delay=1.0))
    page.get_by_label("Message").fill("And now?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("document.getElementById('composer-text').value === ''")
    page.wait_for_function("!document.getElementById('working').hidden")
    page.get_by_text("Second answer, typed live.").wait_for()
    page.wait_for_function("document.getElementById('working').hidden")
    _newest_in_view(page)
    assert page.url == session_url
    watch.check()
    listing.get_by_role("link", name="Say hello").wait_for()
    listing_watch.check()
    listing.close()
    _shot(page, "session", full_page=False)

    # The trace: roll-ups equal to the session's usage, a timeline, a turn tree, and the replay.
    usage = page.locator("#session-usage").inner_text()
    tokens_in, tokens_out = (int(n) for n in re.findall(r"(\d+) (?:in|out)", usage))
    page.get_by_role("link", name="Trace replay").click()
    page.wait_for_url(re.compile(r"/trace"))
    trace_watch = _Watch(page)
    page.wait_for_selector("#trace-total-tokens")
    assert page.locator("#trace-total-tokens").inner_text() == f"{tokens_in:,} / {tokens_out:,}"
    assert page.locator(".tturn").count() == 2  # two user messages, two turns
    bars = page.locator(".waterfall .wf-bar")
    assert bars.and_(page.locator(".model")).count() >= 3 and bars.and_(page.locator(".tool")).count() == 1
    assert page.locator("#trace-total-wait").inner_text() != "0 ms"  # the approval is waiting time
    page.locator(".waterfall .wf-bar.tool").click()
    page.wait_for_function("document.querySelector('.tnode.tool').closest('.tturn').open")
    assert "echo hello-from-sandbox" in page.locator(".tnode.tool summary").inner_text()
    position = page.locator("#trace-pos")
    page.wait_for_function("document.getElementById('trace-pos').textContent.startsWith('Event ')")
    found = re.search(r"of (\d+)", position.inner_text())
    assert found is not None
    total = int(found.group(1))
    assert total >= 8
    statuses = int(page.locator("[data-kind-count=status]").inner_text().strip("()"))
    assert statuses > 0 and page.locator(".tev.k-status").count() == 0  # hidden by default: not drawn
    shown = total - statuses
    assert page.locator(".tev.current:visible").count() == 1  # the newest shown event
    page.get_by_role("button", name="First event").click()
    assert position.inner_text().startswith("Event 1 of")
    page.get_by_role("button", name="Next event").click()
    assert page.locator(".tev.current").count() == 1
    page.get_by_role("button", name="Expand all").click()
    assert page.locator(".lanes details[open]").count() == shown
    assert page.locator(".tev.k-span .meta", has_text="latency").count() >= 2
    page.get_by_role("button", name="Collapse all").click()
    assert page.locator(".lanes details[open]").count() == 0
    page.get_by_label("Status changes").check()
    assert page.locator(".tev.k-status:visible").count() == statuses
    page.get_by_label("Search events").fill("hello-from-sandbox")
    page.wait_for_function("document.querySelectorAll('.tev:not([hidden])').length < 6")
    page.get_by_label("Search events").fill("")
    page.evaluate("window.scrollTo(0, 0)")
    _shot(page, "trace", full_page=False)
    page.get_by_role("button", name="Copy the whole trace as markdown").click()
    trace_watch.check()
    page.goto(re.sub(r"#.*$", "", page.url) + "#seq-3")  # a deep link
    page.reload()
    page.wait_for_function("document.getElementById('trace-pos').textContent.startsWith('Event 3 of')")

    # Cost analytics shows the session's spend.
    page.goto(server.base_url + "/analytics")
    assert page.locator("#total-cost").inner_text() != "$0.00"
    assert page.locator("#cost-table tbody tr").count() >= 1
    assert page.locator(".chart svg").count() == 3  # spend, tokens, latency
    _shot(page, "analytics")

    for url, name in [
        ("/", "overview"),
        ("/sessions", "sessions"),
        ("/agents", "agents"),
        ("/environments", "environments"),
        ("/api-keys", "api-keys"),
        ("/users", "users"),
        ("/vaults", "vaults"),
    ]:
        page.goto(server.base_url + url)
        _shot(page, name)
    page.close()


def test_a_failed_start_shows_the_error_summary_on_the_field_and_keeps_the_form(
    browser: Any, server: LiveGalley
):
    agent_id = _seeded(
        server,
        (
            "from accounts.services import workspace_get_default; "
            "from tests.console_factories import make_agent, make_environment; "
            "from vaults.models import Vault; "
            "ws = workspace_get_default(); make_environment(ws, name='start-env'); "
            "a = make_agent(ws, name='Start form'); "
            "Vault.objects.create(id='vlt_start_keep', workspace=ws, display_name='Keep'); "
            "Vault.objects.create(id='vlt_start_gone', workspace=ws, display_name='Going away'); "
            "print(a.pk)"
        ),
    )
    page = _login(browser, server)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: (problem := failed_request(r)) and problems.append(problem))
    page.goto(f"{server.base_url}/agents/{agent_id}")
    page.get_by_label("Title").fill("Kept title")
    page.get_by_label("First message").fill("Kept message")
    page.locator("#start-more summary").click()
    page.get_by_label("Going away").check()
    page.get_by_label("Budget in USD").fill("0.001")
    page.get_by_label("Metadata").fill("team=blue")

    def start() -> int:
        with page.expect_response(lambda r: r.url.endswith("/start")) as answer:
            page.get_by_role("button", name="Start session").click()
        page.wait_for_load_state()
        return int(answer.value.status)

    # A budget the server refuses: the page comes back with the summary focused and the form as it was.
    assert start() == 400
    page.wait_for_function("document.activeElement && document.activeElement.id === 'error-summary'")
    assert "use whole cents" in page.locator("#budget_usd-error").inner_text()
    assert page.locator("#s-budget").is_visible()  # the section holding it is open
    assert page.get_by_label("Title").input_value() == "Kept title"
    assert page.get_by_label("First message").input_value() == "Kept message"
    assert page.get_by_label("Metadata").input_value() == "team=blue"
    assert page.get_by_label("Budget in USD").input_value() == "0.001"
    assert page.get_by_label("Going away").is_checked() and not page.get_by_label("Keep").is_checked()
    assert page.locator(".flash, .messages").count() == 0
    page.locator("#error-summary a").first.click()
    assert page.evaluate("document.activeElement.id") == "s-budget"
    _shot(page, "start-session-error", full_page=False)

    # A vault archived since the page loaded: the error is on the vaults.
    server.manage(
        "shell",
        "-c",
        (
            "from django.utils import timezone; from vaults.models import Vault; "
            "Vault.objects.filter(pk='vlt_start_gone').update(archived_at=timezone.now())"
        ),
    )
    page.get_by_label("Budget in USD").fill("2.50")
    assert start() == 400
    page.wait_for_function("document.activeElement && document.activeElement.id === 'error-summary'")
    assert "is archived" in page.locator("#vault_ids-error").inner_text()
    assert page.get_by_label("Going away").count() == 0  # no longer offered
    page.locator("#error-summary a").first.click()
    assert page.evaluate("document.activeElement.name") == "vault_ids"

    # Corrected, it starts.
    page.get_by_label("First message").fill("")
    assert start() == 302
    page.wait_for_url(re.compile(r"/sessions/sesn_"))
    assert page.locator("h1").inner_text().startswith("Kept title")
    assert problems == []
    page.close()


def test_trace_of_10000_events_filters_steps_and_scrubs(browser: Any, server: LiveGalley):
    """A 10,000-event trace: the page draws what is in view, filters, searches, steps and scrubs
    through all of it, and the tree's roll-ups cover every turn."""
    session_id = _seeded(
        server,
        (
            "from accounts.services import workspace_get_default; "
            "from tests.console_factories import add_turns, make_session; "
            "s = make_session(workspace_get_default(), title='Ten thousand events'); "
            "add_turns(s, 1250); print(s.pk)"
        ),
    )
    page = _login(browser, server)
    page.goto(f"{server.base_url}/sessions/{session_id}/trace")
    watch = _Watch(page)
    position = page.locator("#trace-pos")
    page.wait_for_function(
        "document.getElementById('trace-pos').textContent.startsWith('Event 9999 of 10000')"
    )
    assert page.locator("#trace-total-tokens").inner_text() == "125,000 / 12,500"
    page.wait_for_function("document.querySelectorAll('.tturn').length === 1250")  # drawn in chunks
    assert page.locator(".tturn[open] .tnode.tool summary").text_content().startswith("bash: echo item-1249")
    assert page.locator(".tnode").count() == 2  # only the open turn's requests and calls are drawn
    counts = {
        k: page.locator(f"[data-kind-count={k}]").inner_text()
        for k in ("message", "tool", "span", "error", "status")
    }
    assert counts == {
        "message": "(2,500)",
        "tool": "(2,497)",
        "span": "(2,500)",
        "error": "(3)",
        "status": "(2,500)",
    }
    drawn = page.locator(".tev").count()
    assert 0 < drawn < 1000  # rows in view, not 7,500
    assert page.locator(".tev.current").count() == 1 and page.locator(".tev.k-status").count() == 0

    # Errors only: three events, stepped through in order.
    for label in ("Messages", "Tool calls", "Model requests"):
        page.get_by_label(label).uncheck()
    page.wait_for_function("document.querySelectorAll('.tev').length === 3")
    assert page.locator(".tev.k-error").count() == 3
    page.get_by_role("button", name="First event").click()
    assert position.inner_text() == "Event 62 of 10000 · agent.tool_result"
    page.get_by_role("button", name="Next event").click()
    assert position.inner_text().startswith("Event 4062 of 10000")
    page.locator("#trace-scrub").fill("2")
    assert position.inner_text().startswith("Event 8062 of 10000")
    assert page.locator("#seq-8062.current").count() == 1

    # Everything again, searched; then the first and the last of 10,000 events.
    for label in ("Messages", "Tool calls", "Model requests", "Status changes"):
        page.get_by_label(label).check()
    page.get_by_label("Search events").fill("Question 1249")
    page.wait_for_function("document.querySelectorAll('.tev').length === 1")
    assert position.inner_text() == "Event 9993 of 10000 · user.message"
    page.get_by_label("Search events").fill("")
    page.get_by_role("button", name="First event").click()
    assert position.inner_text().startswith("Event 1 of 10000")
    assert page.locator("#seq-1.current").is_visible() and page.locator("#seq-10000").count() == 0
    page.get_by_role("button", name="Last event").click()
    assert page.locator("#seq-10000.current").is_visible() and page.locator("#seq-1").count() == 0
    page.get_by_role("button", name="Previous event").click()
    assert position.inner_text() == "Event 9999 of 10000 · span.model_request_end"
    page.locator("#seq-9999 summary").click()  # its JSON is fetched when opened
    page.wait_for_function(
        "document.querySelector('#seq-9999 pre')?.textContent.includes('model_request_start_id')"
    )

    # The waterfall merges what a pixel cannot tell apart; a bar leads to its turn in the tree.
    bars = page.locator(".waterfall .wf-bar.tool")
    assert 0 < bars.count() < 1250
    bars.first.click()
    page.wait_for_function("document.querySelector('.tnode.tool') && document.getElementById('node-5')")
    # A turn is drawn lazily (content-visibility): its text is there once the next frame has laid it out.
    page.wait_for_function(
        "document.querySelector('#node-5 summary').innerText.startsWith('bash: echo item-0')"
    )
    watch.check()
    page.close()


LIVE_EVENTS = """
from django.utils import timezone
from sessions.models import Session
from tests.console_factories import add_events, text
s = Session.objects.get(pk={session_id!r})
question, _run, span, said, use = add_events(s, [
    ("user.message", {{"content": text("Live question")}}),
    ("session.status_running", {{}}),
    ("span.model_request_start", {{}}),
    ("agent.message", {{"content": text("Live answer")}}),
    ("agent.tool_use", {{"name": "bash", "input": {{"command": "echo live"}}}}),
], at=timezone.now())
add_events(s, [
    ("agent.tool_result", {{"tool_use_id": use.id, "content": text("live")}}),
    ("span.model_request_end", {{"model_request_start_id": span.id, "model_usage": {{"input_tokens": 5}}}}),
], at=timezone.now())
"""


def test_a_running_sessions_trace_gains_new_events_in_place(browser: Any, server: LiveGalley):
    """While a session runs, the trace page asks for what is new and adds it: the turn the reader
    opened stays open, the page stays where it was scrolled, the replay's cursor stays put, and the
    turns that did not change are the same elements as before (not redrawn)."""
    session_id = _seeded(
        server,
        (
            "import datetime as dt; from django.utils import timezone; "
            "from accounts.services import workspace_get_default; "
            "from tests.console_factories import add_turns, make_session; "
            # A lease held by nobody real keeps the sweeper from stepping it: only this test writes.
            "s = make_session(workspace_get_default(), title='Live trace', status='running', "
            "lease_owner='browser-test', lease_expires_at=timezone.now() + dt.timedelta(hours=1)); "
            "add_turns(s, 30); print(s.pk)"
        ),
    )
    page = _login(browser, server)
    polls: list[str] = []
    page.on("request", lambda r: "/trace/data.json" in r.url and polls.append(r.url))
    page.goto(f"{server.base_url}/sessions/{session_id}/trace")
    watch = _Watch(page)
    page.wait_for_function("document.querySelectorAll('.tturn').length === 30")
    page.get_by_role("button", name="First event").click()
    page.get_by_role("button", name="Next event").click()
    position = page.locator("#trace-pos")
    assert position.inner_text().startswith("Event 3 of 240")  # status events are hidden
    # The reader opens turn 3 and its model request, and scrolls it to the top of the window.
    page.locator("#turn-main-3 > summary").click()
    page.locator("#turn-main-3 .tnode.model > summary").click()
    page.evaluate(
        """() => { document.querySelectorAll('.tturn').forEach(t => { t.dataset.kept = '1'; });
        const turn = document.getElementById('turn-main-3');
        window.scrollTo(0, window.scrollY + turn.getBoundingClientRect().top - 40); }"""
    )
    before = page.evaluate(
        "() => ({y: window.scrollY, top: document.getElementById('turn-main-3').getBoundingClientRect().top})"
    )
    asked = len(polls)
    server.manage("shell", "-c", LIVE_EVENTS.format(session_id=session_id))
    page.wait_for_function("document.querySelectorAll('.tturn').length === 31")
    page.wait_for_function("document.getElementById('trace-pos').textContent.includes('of 247')")
    new_turn = page.locator("#turn-main-31")
    assert new_turn.locator("summary").first.text_content().startswith("Turn 31: Live question")
    page.wait_for_function(
        # textContent: the turn is below the window, so (content-visibility) it has no innerText yet.
        "document.querySelector('#turn-main-31 .tnode.tool summary')"
        ".textContent.startsWith('bash: echo live')"
    )
    assert page.locator("#trace-total-tokens").inner_text() == "3,005 / 300"
    # What the reader had: the open turn and node, the scroll, the replay's cursor.
    assert page.evaluate("document.getElementById('turn-main-3').open")
    assert page.evaluate("document.querySelector('#turn-main-3 .tnode.model').open")
    after = page.evaluate(
        "() => ({y: window.scrollY, top: document.getElementById('turn-main-3').getBoundingClientRect().top})"
    )
    assert abs(after["y"] - before["y"]) <= 1 and abs(after["top"] - before["top"]) <= 1, (before, after)
    assert position.inner_text().startswith("Event 3 of 247")
    # Incremental: the thirty turns already drawn are the same elements; the polls asked for what is new.
    assert page.locator(".tturn[data-kept='1']").count() == 30
    assert polls[0].endswith("/trace/data.json") and all("?after=240" in url for url in polls[1:asked])
    assert any("?after=240" in url for url in polls[asked:])
    if not any("?after=247" in url for url in polls):  # the page keeps asking from where it is
        page.wait_for_event("request", lambda r: "?after=247" in r.url)
    watch.check()
    page.close()


def test_narrow_screen_and_viewer(browser: Any, server: LiveGalley):
    page = _login(browser, server, username="viv", width=390)
    page.goto(server.base_url + "/sessions")
    rows = page.locator("table tbody tr")
    if rows.count():
        # The conversation of the first test when it ran (the README's picture), else any session.
        shown = page.get_by_role("link", name="Say hello")
        (shown if shown.count() else rows.first.get_by_role("link")).click()
        page.wait_for_url(re.compile(r"/sessions/sesn_"))
        assert page.locator("#composer-text").count() == 0  # viewers read, never act
        assert page.get_by_role("button", name="Approve").count() == 0
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"page overflows a narrow screen: {width}px"
    _shot(page, "session-narrow")
    page.goto(server.base_url + "/vaults")
    assert page.get_by_text("This needs the admin role").count() == 1
    page.close()


def test_no_provider_banner_where_sessions_start(browser: Any):
    with live_galley(worker=False) as live:
        live.manage(
            "shell",
            "-c",
            (
                "from accounts.services import user_create; "
                f"user_create(username='admin', password='{ADMIN_PASSWORD}', role='admin')"
            ),
        )
        page = _login(browser, live)
        banner = page.locator("#provider-banner")
        assert "No model provider is configured" in banner.inner_text()
        assert "ANTHROPIC_API_KEY" in banner.inner_text()
        page.goto(live.base_url + "/agents/new")
        assert page.locator("#provider-banner").count() == 1
        page.close()

"""Cost analytics people can read (money, counts, names, units, presets, groups, the token and
latency charts), workspace budgets (the admin form, the banners, the per-session default that new
sessions get), the credential form per kind and the error summary of console forms."""

import datetime as dt
import re

import pytest
from django.utils import timezone

from accounts.models import ApiKey, Role
from console.analytics import NO_USER, compact, usd
from costs.models import WorkspaceBudget
from sessions.models import Session
from tests.console_factories import (
    add_events,
    client_for,
    make_agent,
    make_environment,
    make_session,
    make_user,
)

pytestmark = pytest.mark.django_db


def test_money_always_has_two_decimals_and_separators():
    assert usd(0) == "$0.00"
    assert usd(4_200) == "<$0.01"  # never "$0.00" for money spent
    assert usd(5_000) == "$0.01"  # half a cent rounds up
    assert usd(19_990_000) == "$19.99"
    assert usd(1_234_567_890) == "$1,234.57"
    assert usd(-2_500_000) == "-$2.50"
    assert [compact(v) for v in (0, 950, 12_500, 1_243_477)] == ["0", "950", "12.5k", "1.24M"]


def test_a_spend_axis_under_ten_cents_is_labelled_finer_than_cents(workspace):
    from console.analytics import usd_tick

    assert [usd_tick(8_000_000)(v) for v in (0, 4.0, 8.0)] == ["$0.00", "$4.00", "$8.00"]
    assert [usd_tick(7_900)(v) for v in (0, 0.0079)] == ["$0.0000", "$0.0079"]  # not "$0.01"
    make_session(workspace, token_cost_micros=7_900)
    page = client_for(workspace, Role.VIEWER).get("/analytics?group=agent").content.decode()
    spend = page[page.index('id="spend-chart"') : page.index('id="token-chart"')]
    assert ">$0.0079</text>" in spend and "&lt;$0.01</text>" not in spend


def test_analytics_formats_numbers_names_agents_and_labels_the_axes(workspace):
    agent = make_agent(workspace, name="Quarterly research assistant")
    make_session(
        workspace, agent, input_tokens=1_234_567, output_tokens=8_910, token_cost_micros=1_234_567_890
    )
    page = client_for(workspace, Role.VIEWER).get("/analytics?group=agent").content.decode()
    assert 'id="total-cost">$1,234.57<' in page
    assert 'id="total-tokens">1,234,567 / 8,910<' in page
    table = page[page.index('id="cost-table"') :]
    assert "<td>Quarterly research assistant</td>" in table  # the name, not "(agent_…)"
    assert agent.pk not in table
    assert "$1,234.57</td>" in table and "1,234,567</td>" in table
    # Three charts with their units; the bar's tooltip has the full name and the formatted value.
    for chart, unit in (("spend-chart", "USD"), ("token-chart", "tokens"), ("latency-chart", "seconds")):
        svg = page[page.index(f'id="{chart}"') :]
        svg = svg[: svg.index("</svg>")]
        assert f'<text class="axis-unit" x="4" y="12">{unit}</text>' in svg, chart
    spend = page[page.index('id="spend-chart"') :]
    assert "<title>Quarterly research assistant: $1,234.57</title>" in spend
    assert "<title>Quarterly research assistant: 1,243,477</title>" in page  # all tokens
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', spend[: spend.index("</svg>")])
    assert ticks == ["$0.00", "$617.28", "$1,234.57"]
    tokens = page[page.index('id="token-chart"') :]
    token_ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', tokens[: tokens.index("</svg>")])
    assert token_ticks == ["0", "622k", "1.24M"]


def test_two_agents_of_the_same_name_are_told_apart(workspace):
    first, second = make_agent(workspace, name="Helper"), make_agent(workspace, name="Helper")
    make_session(workspace, first, token_cost_micros=1_000_000)
    make_session(workspace, second, token_cost_micros=2_000_000)
    page = client_for(workspace, Role.VIEWER).get("/analytics?group=agent").content.decode()
    assert f"Helper ({first.pk})" in page and f"Helper ({second.pk})" in page


def test_an_unknown_group_is_an_error_not_a_report_by_day(workspace):
    make_session(workspace, token_cost_micros=1_000_000)
    client = client_for(workspace, Role.VIEWER)
    response = client.get("/analytics?group=user_name")
    page = response.content.decode()
    assert response.status_code == 400
    assert "Unknown grouping &#x27;user_name&#x27;" in page
    assert 'id="error-summary"' in page and 'href="#group-error"' in page and 'id="group-error"' in page
    assert 'id="cost-table"' not in page and "<svg" not in page  # no report that could be misread
    csv = client.get("/analytics.csv?group=user_name")
    assert csv.status_code == 400 and b"group: Unknown grouping" in csv.content
    bad_preset = client.get("/analytics?preset=90d")
    assert bad_preset.status_code == 400 and b"Unknown range" in bad_preset.content


def test_group_by_user_names_who_started_the_session_or_owns_its_key(workspace):
    from costs.models import SessionStarter

    alice = make_user(workspace, Role.EDITOR, "alice")
    key, _raw = ApiKey.generate(workspace=workspace, name="alice's key", created_by=alice)
    make_session(workspace, api_key=key, token_cost_micros=3_000_000)
    make_session(workspace, token_cost_micros=1_000_000)  # e.g. a deployment's: nobody started it
    # Bob starts one in the console, with the start form.
    bob = client_for(workspace, Role.EDITOR)
    agent = make_agent(workspace, name="Bobs agent")
    env = make_environment(workspace, name="bob-env")
    assert bob.post(f"/agents/{agent.pk}/start", {"environment_id": env.pk}).status_code == 302
    started = Session.objects.get(agent=agent)
    assert SessionStarter.objects.get(session=started).user.username == "editor-user"
    Session.objects.filter(pk=started.pk).update(token_cost_micros=5_000_000)
    page = client_for(workspace, Role.VIEWER).get("/analytics?group=user").content.decode()
    table = page[page.index('id="cost-table"') :]
    assert "<th>User</th>" in table
    assert "<td>alice</td>" in table and "$3.00</td>" in table
    assert "<td>editor-user</td>" in table and "$5.00</td>" in table
    assert f"<td>{NO_USER}</td>" in table and "$1.00</td>" in table
    csv = client_for(workspace, Role.ADMIN).get("/analytics.csv?group=user").content.decode()
    assert any(line.startswith("alice,1,") for line in csv.splitlines())


def test_presets_pick_the_range(workspace):
    now = timezone.now()
    make_session(
        workspace, title="three days ago", created_at=now - dt.timedelta(days=3), token_cost_micros=1_000_000
    )
    make_session(
        workspace, title="ten days ago", created_at=now - dt.timedelta(days=10), token_cost_micros=2_000_000
    )
    make_session(
        workspace, title="forty days ago", created_at=now - dt.timedelta(days=40), token_cost_micros=4_000_000
    )
    client = client_for(workspace, Role.VIEWER)
    today = now.date()
    week = client.get("/analytics?preset=7d").content.decode()
    assert 'id="total-cost">$1.00<' in week
    assert f'value="{(today - dt.timedelta(days=6)).isoformat()}"' in week  # the form shows the range
    assert 'href="/analytics?preset=7d&amp;group=day" aria-current="true"' in week
    month = client.get("/analytics?preset=30d").content.decode()
    assert 'id="total-cost">$3.00<' in month
    mtd = client.get("/analytics?preset=mtd&group=agent").content.decode()
    assert f'value="{today.replace(day=1).isoformat()}"' in mtd
    expected = sum(
        micros
        for days, micros in ((3, 1_000_000), (10, 2_000_000))
        if (now - dt.timedelta(days=days)).date() >= today.replace(day=1)
    )
    assert f'id="total-cost">{usd(expected)}<' in mtd


def test_latency_chart_is_the_mean_model_request_time_per_day(workspace):
    session = make_session(workspace, token_cost_micros=10_000)
    now = timezone.now().replace(microsecond=0)
    # Five minutes ago, but never yesterday: the chart's day is the session's (created now).
    start = max(now - dt.timedelta(minutes=5), now.replace(hour=0, minute=0, second=0))
    for begin, seconds in ((start, 2.0), (start + dt.timedelta(minutes=1), 4.0)):
        [span] = add_events(session, [("span.model_request_start", {})], at=begin)
        add_events(
            session,
            [("span.model_request_end", {"model_request_start_id": span.id, "model_usage": {}})],
            at=begin + dt.timedelta(seconds=seconds),
        )
    page = client_for(workspace, Role.VIEWER).get("/analytics").content.decode()
    latency = page[page.index('id="latency-chart"') :]
    assert "2 requests" in latency[:300]
    day = start.date().isoformat()
    assert f"<title>{day}: 3.00 s</title>" in latency


def test_only_admins_set_budgets_and_bad_amounts_are_named(workspace):
    viewer = client_for(workspace, Role.VIEWER)
    assert viewer.post("/analytics/budgets", {"monthly": "100"}).status_code == 403
    assert 'name="monthly"' not in viewer.get("/analytics").content.decode()
    admin = client_for(workspace, Role.ADMIN)
    bad = admin.post("/analytics/budgets", {"monthly": "lots", "session": "2.50", "warn_percent": "80"})
    page = bad.content.decode()
    assert bad.status_code == 400
    assert 'id="error-summary"' in page and 'href="#budget_monthly-error"' in page
    assert 'id="budget_monthly-error"' in page and "Enter an amount in US dollars" in page
    assert 'value="lots"' in page  # what was typed stays, to correct it
    assert not WorkspaceBudget.objects.exists()
    for body, message in (
        ({"monthly": "10", "warn_percent": "120"}, b"Enter a whole percentage"),
        ({"session": "0.001"}, b"Use whole cents"),
        ({"session": "-3"}, b"Must be more than $0.00"),
        ({"session": "1e12"}, b"Must be at most $1,000,000,000"),
    ):
        response = admin.post("/analytics/budgets", body)
        assert response.status_code == 400 and message in response.content, body
    ok = admin.post("/analytics/budgets", {"monthly": "$1,200", "session": "2.50", "warn_percent": "75%"})
    assert ok.status_code == 302
    budget = WorkspaceBudget.objects.get(workspace=workspace)
    assert (budget.monthly_cents, budget.session_default_cents, budget.warn_percent) == (120_000, 250, 75)
    page = admin.get("/analytics").content.decode()
    assert 'value="1,200.00"' in page and 'value="2.50"' in page and 'value="75"' in page
    assert "Monthly budget: $1,200.00 (warning at 75%)" in viewer.get("/analytics").content.decode()
    admin.post("/analytics/budgets", {"monthly": "", "session": "", "warn_percent": "80"})
    budget.refresh_from_db()
    assert budget.monthly_cents is None and budget.session_default_cents is None


def test_budget_banners_on_every_page_past_the_threshold(workspace):
    WorkspaceBudget.objects.create(workspace=workspace, monthly_cents=1_000, warn_percent=80)
    client = client_for(workspace, Role.VIEWER)
    session = make_session(workspace, token_cost_micros=7_000_000)
    assert b"budget-banner" not in client.get("/").content  # $7 of $10: under 80%
    last_month = timezone.now().replace(day=1) - dt.timedelta(days=2)
    make_session(workspace, created_at=last_month, token_cost_micros=50_000_000)  # not this month
    assert b"budget-banner" not in client.get("/").content
    Session.objects.filter(pk=session.pk).update(token_cost_micros=8_500_000)
    for url in ["/", "/sessions", "/agents", "/analytics", "/memory"]:
        page = client.get(url).content.decode()
        assert 'class="banner warn" role="status" id="budget-banner"' in page, url
        assert "spent $8.50 this month, 85% of its monthly budget of $10.00" in page, url
    Session.objects.filter(pk=session.pk).update(token_cost_micros=10_500_000)
    page = client.get("/sessions").content.decode()
    assert 'class="banner danger" role="alert" id="budget-banner"' in page
    assert "Over budget." in page and "$10.50" in page and "(105%)" in page
    # Another workspace's budget is not this one's.
    from accounts.models import Workspace

    other = Workspace.objects.create(name="other")
    assert b"budget-banner" not in client_for(other, Role.ADMIN).get("/").content


def test_the_default_session_budget_applies_to_sessions_created_without_one(workspace, api_key):
    WorkspaceBudget.objects.create(workspace=workspace, session_default_cents=250)
    agent = make_agent(workspace)
    env = make_environment(workspace)
    limit = {"type": "limit", "max_list_cost": {"amount": "250", "currency": "USD"}}
    from django.test import Client

    api = Client(headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"})
    created = api.post(
        "/v1/sessions", {"agent": agent.pk, "environment_id": env.pk}, content_type="application/json"
    )
    assert created.status_code == 200, created.content
    assert created.json()["budget"] == limit
    explicit = {"type": "limit", "max_list_cost": {"amount": "900", "currency": "USD"}}
    own = api.post(
        "/v1/sessions",
        {"agent": agent.pk, "environment_id": env.pk, "budget": explicit},
        content_type="application/json",
    )
    assert own.json()["budget"] == explicit  # a session's own budget wins
    nulled = api.post(
        "/v1/sessions",
        {"agent": agent.pk, "environment_id": env.pk, "budget": None},
        content_type="application/json",
    )
    # null is the wire's "no budget" (as on update, which could remove the default anyway): uncapped.
    assert nulled.status_code == 200 and nulled.json()["budget"] is None
    # The console's start form, left without a budget.
    editor = client_for(workspace, Role.EDITOR)
    started = editor.post(f"/agents/{agent.pk}/start", {"environment_id": env.pk, "message": "hi"})
    assert started.status_code == 302, started.content
    newest = Session.objects.order_by("-created_at").first()
    assert newest is not None and newest.budget == limit


def test_a_default_budget_is_refused_for_a_model_without_a_list_price(workspace, api_key):
    WorkspaceBudget.objects.create(workspace=workspace, session_default_cents=250)
    agent = make_agent(workspace, model="claude-unpriced-9")
    env = make_environment(workspace)
    from django.test import Client

    api = Client(headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"})
    response = api.post(
        "/v1/sessions", {"agent": agent.pk, "environment_id": env.pk}, content_type="application/json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and "workspace's default session budget" in body["error"]["message"]


# --- credential form per kind --------------------------------------------------------------------


def _vault(workspace):
    from vaults.models import Vault

    admin = client_for(workspace, Role.ADMIN)
    admin.post("/vaults", {"display_name": "Prod"})
    return admin, Vault.objects.get()


def test_the_credential_form_has_one_field_group_per_kind(workspace):
    admin, vault = _vault(workspace)
    page = admin.get(f"/vaults/{vault.pk}").content.decode()
    for kind in ("static_bearer", "mcp_oauth", "environment_variable"):
        assert f'id="k-{kind}" name="type" value="{kind}"' in page
        assert f'class="kind-fields" data-kind="{kind}"' in page
    css = b"".join(admin.get("/static/console/console.css").streaming_content).decode()
    assert "form.kinds:has(#k-mcp_oauth:checked) .kind-fields:not([data-kind=mcp_oauth])" in css


def test_an_oauth_credential_with_refresh_from_the_form(workspace):
    from vaults.models import Credential

    admin, vault = _vault(workspace)
    response = admin.post(
        f"/vaults/{vault.pk}",
        {
            "type": "mcp_oauth",
            "oauth-url": "https://mcp.example.com/mcp",
            "oauth-access_token": "at-SECRET",
            "oauth-expires_at": "2099-01-01T00:00:00Z",
            "oauth-refresh_token": "rt-SECRET",
            "oauth-client_id": "galley",
            "oauth-token_endpoint": "https://auth.example.com/token",
            "oauth-token_endpoint_auth": "client_secret_post",
            "oauth-client_secret": "cs-SECRET",
            "oauth-scope": "read",
            # Another kind's fields are not this credential's.
            "bearer-url": "https://other.example.com/",
            "env-name": "IGNORED",
        },
    )
    assert response.status_code == 302, response.content
    credential = Credential.objects.get()
    assert credential.auth_type == "mcp_oauth"
    public = credential.auth_public
    assert public["mcp_server_url"] == "https://mcp.example.com/mcp"
    assert public["refresh"]["client_id"] == "galley" and public["refresh"]["scope"] == "read"
    assert public["refresh"]["token_endpoint_auth"] == {"type": "client_secret_post"}
    secret = credential.secret()
    assert (secret["access_token"], secret["refresh_token"], secret["client_secret"]) == (
        "at-SECRET",
        "rt-SECRET",
        "cs-SECRET",
    )
    page = admin.get(f"/vaults/{vault.pk}").content.decode()
    assert "SECRET" not in page


def test_credential_errors_sit_on_their_field_and_never_echo_a_secret(workspace):
    admin, vault = _vault(workspace)
    bad_url = admin.post(
        f"/vaults/{vault.pk}",
        {"type": "static_bearer", "bearer-url": "ftp://nope", "bearer-token": "tok-SECRET"},
    )
    page = bad_url.content.decode()
    assert bad_url.status_code == 400
    assert 'id="bearer-url-error"' in page and "auth.mcp_server_url: must be an http(s) URL" in page
    assert 'href="#bearer-url-error"' in page and 'aria-describedby="bearer-url-error"' in page
    assert 'value="ftp://nope"' in page and "tok-SECRET" not in page
    assert 'id="k-static_bearer" name="type" value="static_bearer" checked' in page  # the kind stays chosen
    env = admin.post(
        f"/vaults/{vault.pk}", {"type": "environment_variable", "env-name": "1BAD", "env-value": "v-SECRET"}
    )
    assert env.status_code == 400 and b'id="env-name-error"' in env.content and b"v-SECRET" not in env.content
    half = admin.post(
        f"/vaults/{vault.pk}",
        {"type": "mcp_oauth", "oauth-url": "https://mcp.example.com/", "oauth-client_id": "x"},
    )
    body = half.content.decode()
    assert half.status_code == 400
    assert 'id="oauth-access_token-error"' in body and 'id="oauth-refresh_token-error"' in body
    assert "There are 2 problems" in body
    none = admin.post(f"/vaults/{vault.pk}", {"display_name": "x"})
    assert none.status_code == 400 and b'id="type-error"' in none.content


def test_every_failed_form_gets_a_summary_linked_to_its_fields(workspace):
    admin = client_for(workspace, Role.ADMIN)
    for url, body, key in (
        ("/agents/new", {"name": ""}, "name"),
        ("/environments/new", {"name": ""}, "name"),
        ("/vaults", {"display_name": ""}, "display_name"),
        ("/api-keys", {"name": ""}, "name"),
        ("/users", {"username": "", "password": "", "role": "admin"}, "username"),
    ):
        response = admin.post(url, body)
        page = response.content.decode()
        assert response.status_code == 400, url
        summary = page[page.index('id="error-summary"') :]
        assert 'tabindex="-1"' in page[page.index('<div class="error-summary"') :][:120], url
        assert f'href="#{key}-error" data-field="{key}"' in summary, url
    ok = admin.get("/agents/new").content.decode()
    assert "error-summary" not in ok


def test_every_form_message_has_the_anchor_the_summary_links_to():
    """The summary links to `#<field>-error`: each template that shows `errors.<field>` gives that
    message the id (directly or through _err.html), so the link lands next to the field."""
    from pathlib import Path

    templates = Path(__file__).resolve().parent.parent / "templates" / "console"
    missing = []
    for path in sorted(templates.glob("*.html")):
        text = path.read_text()
        for key in sorted(set(re.findall(r"\berrors\.([a-z_]+)", text))):
            included = re.search(rf'_err\.html" with err=errors\.{key} id="{key}"', text)
            if f'id="{key}-error"' not in text and not included:
                missing.append(f"{path.name}: errors.{key}")
    assert missing == []

"""Console pages and actions: login, roles enforced on the server, and what each page shows."""

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey, Membership, Role
from sessions.models import Session
from tests.console_factories import (
    PASSWORD,
    add_events,
    client_for,
    fast_passwords,  # noqa: F401
    make_agent,
    make_session,
    make_user,
    text,
)

pytestmark = pytest.mark.django_db

READ_PAGES = ["/", "/sessions", "/analytics", "/analytics.csv"]
ADMIN_PAGES = ["/api-keys", "/users"]


def test_pages_redirect_to_login_when_logged_out(workspace):
    session = make_session(workspace)
    client = Client()
    for url in [*READ_PAGES, *ADMIN_PAGES, f"/sessions/{session.pk}", f"/sessions/{session.pk}/trace"]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login?next="), url


def test_login_with_good_password_then_logout(workspace):
    make_user(workspace, Role.VIEWER, "vera")
    client = Client()
    bad = client.post("/login", {"username": "vera", "password": "nope"})
    assert bad.status_code == 400
    assert b"Please enter a correct username and password" in bad.content
    ok = client.post("/login", {"username": "vera", "password": PASSWORD, "next": "/sessions"})
    assert ok.status_code == 302 and ok["Location"] == "/sessions"
    assert client.get("/sessions").status_code == 200
    assert client.post("/logout").status_code == 302
    assert client.get("/sessions").status_code == 302


def test_login_ignores_an_offsite_next(workspace):
    make_user(workspace, Role.VIEWER, "vera")
    response = Client().post(
        "/login", {"username": "vera", "password": PASSWORD, "next": "https://evil.example/"}
    )
    assert response["Location"] == "/"


def test_user_without_membership_is_refused(workspace):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="loner", password=PASSWORD)
    client = Client()
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 403
    assert b"not a member" in response.content


@pytest.mark.parametrize("role", [Role.ADMIN, Role.EDITOR, Role.VIEWER])
def test_every_role_reads_sessions_traces_and_analytics(workspace, role):
    session = make_session(workspace, title="Weekly report")
    client = client_for(workspace, role)
    for url in [
        *READ_PAGES,
        f"/sessions/{session.pk}",
        f"/sessions/{session.pk}/trace",
        f"/sessions/{session.pk}/trace.json",
    ]:
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("role", [Role.EDITOR, Role.VIEWER])
def test_only_admins_see_admin_pages(workspace, role):
    client = client_for(workspace, role)
    for url in ADMIN_PAGES:
        assert client.get(url).status_code == 403, url
    key, _raw = ApiKey.generate(workspace=workspace, name="k")
    assert client.post("/api-keys", {"name": "sneaky"}).status_code == 403
    assert client.post(f"/api-keys/{key.pk}/revoke").status_code == 403
    member = Membership.objects.get(user__username=f"{role}-user")
    assert client.post(f"/users/{member.pk}/role", {"role": "admin"}).status_code == 403
    assert client.post("/users", {"username": "x", "password": PASSWORD, "role": "admin"}).status_code == 403
    key.refresh_from_db()
    member.refresh_from_db()
    assert key.revoked_at is None and member.role == role
    assert ApiKey.objects.filter(name="sneaky").count() == 0


def test_admin_nav_hidden_from_editors(workspace):
    page = client_for(workspace, Role.EDITOR).get("/").content.decode()
    assert 'href="/api-keys"' not in page and 'href="/vaults"' not in page


def test_viewer_cannot_act_on_a_session(workspace):
    session = make_session(workspace)
    client = client_for(workspace, Role.VIEWER)
    for action, data in [
        ("send", {"text": "hi"}),
        ("interrupt", {}),
        ("confirm", {"result": "allow", "tool_use_id": "x"}),
        ("custom-result", {"custom_tool_use_id": "x", "text": "y"}),
        ("archive", {}),
    ]:
        assert client.post(f"/sessions/{session.pk}/{action}", data).status_code == 403, action
    assert session.events.count() == 0
    page = client.get(f"/sessions/{session.pk}").content.decode()
    assert 'action="/sessions/' not in page  # no forms for a viewer


def test_actions_need_post(workspace):
    session = make_session(workspace)
    client = client_for(workspace, Role.EDITOR)
    assert client.get(f"/sessions/{session.pk}/send").status_code == 405
    assert client.get("/logout").status_code == 405


def test_other_workspace_session_is_not_found(workspace):
    from accounts.models import Workspace

    other = Workspace.objects.create(name="Other")
    session = make_session(other)
    client = client_for(workspace, Role.ADMIN)
    assert client.get(f"/sessions/{session.pk}").status_code == 404
    assert client.get(f"/sessions/{session.pk}/trace.json").status_code == 404
    assert session.pk not in client.get("/sessions").content.decode()


def test_session_page_shows_the_conversation_and_pending_confirmation(workspace):
    session = make_session(workspace, title="Deploy check")
    events = add_events(
        session,
        [
            ("user.message", {"content": text("Please list the files")}),
            ("session.status_running", {}),
            ("span.model_request_start", {}),
            ("agent.message", {"content": text("Sure, running ls.")}),
            (
                "agent.tool_use",
                {
                    "name": "bash",
                    "input": {"command": "ls -la"},
                    "evaluated_permission": "ask",
                    "evaluation": {"type": "always_ask"},
                },
            ),
        ],
    )
    tool_use = events[-1]
    Session.objects.filter(pk=session.pk).update(
        status="idle", stop_reason={"type": "requires_action", "event_ids": [tool_use.id]}
    )
    page = client_for(workspace, Role.EDITOR).get(f"/sessions/{session.pk}").content.decode()
    assert "Please list the files" in page and "Sure, running ls." in page
    assert "The agent wants to run bash." in page
    assert f'name="tool_use_id" value="{tool_use.id}"' in page
    assert "ls -la" in page
    viewer_page = client_for(workspace, Role.VIEWER).get(f"/sessions/{session.pk}").content.decode()
    assert "The agent wants to run bash." in viewer_page and "Approve</button>" not in viewer_page


def test_session_page_is_paged_for_long_logs(workspace):
    session = make_session(workspace)
    add_events(session, [("user.message", {"content": text(f"message {i}")}) for i in range(400)])
    page = client_for(workspace, Role.VIEWER).get(f"/sessions/{session.pk}").content.decode()
    assert "message 399" in page and "message 50<" not in page
    assert "?before=101" in page


def test_provider_banner_when_no_model_key(workspace, settings):
    settings.ANTHROPIC_API_KEY = None
    session = make_session(workspace)
    client = client_for(workspace, Role.EDITOR)
    assert b"No model provider is configured" in client.get(f"/sessions/{session.pk}").content
    assert b"No model provider is configured" in client.get("/").content
    settings.ANTHROPIC_API_KEY = "sk-test"
    assert b"No model provider is configured" not in client.get(f"/sessions/{session.pk}").content


def test_session_list_filters_and_pages(workspace):
    a1 = make_agent(workspace, name="Alpha")
    a2 = make_agent(workspace, name="Beta")
    make_session(workspace, a1, title="alpha one", status="running", metadata={"team": "red"})
    old = make_session(workspace, a2, title="beta old")
    Session.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=10))
    for i in range(30):
        make_session(workspace, a2, title=f"bulk {i}")
    client = client_for(workspace, Role.VIEWER)
    page = client.get("/sessions").content.decode()
    assert "bulk 29" in page and "Page 1 of 2" in page and "beta old" not in page
    assert "beta old" in client.get("/sessions?page=2").content.decode()
    assert "alpha one" in client.get(f"/sessions?agent={a1.pk}").content.decode()
    assert "bulk 1" not in client.get(f"/sessions?agent={a1.pk}").content.decode()
    assert "alpha one" in client.get("/sessions?status=running").content.decode()
    assert "bulk 3" not in client.get("/sessions?status=running").content.decode()
    assert "alpha one" in client.get("/sessions?metadata=team%3Dred").content.decode()
    assert "bulk 3" not in client.get("/sessions?metadata=team%3Dred").content.decode()
    assert "No session matches" in client.get("/sessions?metadata=team__x%3Dred").content.decode()
    since = (timezone.now() - dt.timedelta(days=3)).date().isoformat()
    assert "beta old" not in client.get(f"/sessions?from={since}&q=beta").content.decode()
    assert "beta old" in client.get("/sessions?q=beta+old").content.decode()
    assert client.get("/sessions?from=not-a-date").status_code == 200


def test_trace_json_has_spans_tools_and_lanes(workspace):
    from sessions.models import SessionThread

    session = make_session(workspace)
    start = add_events(session, [("span.model_request_start", {})])[0]
    add_events(
        session,
        [
            (
                "span.model_request_end",
                {
                    "model_request_start_id": start.id,
                    "is_error": False,
                    "model_usage": {
                        "input_tokens": 1000,
                        "output_tokens": 200,
                        "cache_read_input_tokens": 0,
                        "cache_creation_input_tokens": 0,
                    },
                },
            ),
        ],
        at=start.created_at + dt.timedelta(milliseconds=750),
    )
    use = add_events(session, [("agent.tool_use", {"name": "bash", "input": {"command": "date"}})])[0]
    add_events(
        session,
        [("agent.tool_result", {"tool_use_id": use.id, "content": text("Sun"), "is_error": False})],
        at=use.created_at + dt.timedelta(milliseconds=120),
    )
    add_events(session, [("session.error", {"error": {"type": "unknown_error", "message": "boom"}})])
    thread = SessionThread.objects.create(
        id="sthr_1", session=session, agent_name="researcher", agent_snapshot={}
    )
    add_events(session, [("agent.message", {"content": text("from the sub-agent")})], thread=thread)
    response = client_for(workspace, Role.VIEWER).get(f"/sessions/{session.pk}/trace.json?download=1")
    assert "attachment" in response["Content-Disposition"]
    body = response.json()
    rows = body["rows"]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    end = rows[1]
    assert end["latency_ms"] == 750 and end["tokens"]["input_tokens"] == 1000
    assert end["cost"] == "$0.0060"  # sonnet-4-6: 1000 * $3/M + 200 * $15/M
    assert rows[3]["duration_ms"] == 120 and rows[3]["kind"] == "tool"
    assert rows[4]["kind"] == "error"
    assert rows[5]["lane"] == "sthr_1" and body["threads"]["sthr_1"] == "researcher"
    assert rows[0]["event"]["type"] == "span.model_request_start" and rows[0]["event"]["id"] == start.id


def test_api_keys_create_shows_raw_once_and_revoke(workspace):
    client = client_for(workspace, Role.ADMIN)
    empty = client.post("/api-keys", {"name": "  "})
    assert empty.status_code == 400 and b"Give the key a name" in empty.content
    posted = client.post("/api-keys", {"name": "ci"})
    assert posted.status_code == 302 and posted["Location"] == "/api-keys"  # POST-redirect-GET
    created = client.get("/api-keys").content.decode()
    key = ApiKey.objects.get(name="ci")
    assert "sk-galley-" in created and "Copy this key now" in created
    listing = client.get("/api-keys").content.decode()  # a reload: shown once, and no second key
    assert ApiKey.objects.filter(name="ci").count() == 1
    assert "sk-galley-" not in listing and key.hint in listing
    client.post(f"/api-keys/{key.pk}/revoke")
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert ApiKey.authenticate(created.split('id="raw-key">')[1].split("<")[0]) is None


def test_admin_adds_users_and_changes_roles_but_keeps_one_admin(workspace):
    client = client_for(workspace, Role.ADMIN)
    bad = client.post("/users", {"username": "", "password": "x", "role": "boss"})
    assert bad.status_code == 400
    page = bad.content.decode()
    assert "Enter a username." in page and "Choose a role." in page and "too short" in page
    assert (
        client.post("/users", {"username": "ed", "password": PASSWORD, "role": "editor"}).status_code == 302
    )
    ed = Membership.objects.get(user__username="ed")
    assert ed.role == "editor"
    client.post(f"/users/{ed.pk}/role", {"role": "viewer"})
    ed.refresh_from_db()
    assert ed.role == "viewer"
    me = Membership.objects.get(user__username="admin-user")
    client.post(f"/users/{me.pk}/role", {"role": "viewer"})
    me.refresh_from_db()
    assert me.role == "admin"  # the last admin stays


def test_analytics_groups_and_csv(workspace):
    from accounts.services import api_key_create

    key, _raw = api_key_create(name="batch", workspace=workspace)
    sonnet = make_agent(workspace, name="Sonnet agent")
    haiku = make_agent(workspace, name="Haiku agent", model="claude-haiku-4-5")
    make_session(
        workspace,
        sonnet,
        input_tokens=1000,
        output_tokens=100,
        cache_read_input_tokens=3000,
        token_cost_micros=2_000_000,
        active_seconds=1800,
        web_search_requests=2,
        api_key=key,
    )
    make_session(workspace, haiku, input_tokens=500, output_tokens=50, token_cost_micros=500_000)
    client = client_for(workspace, Role.VIEWER)
    page = client.get("/analytics").content.decode()
    # 2.5 tokens + 0.5 h * $0.08 + 2 searches * $0.01 = $2.56
    assert 'id="total-cost">$2.56<' in page
    assert "<svg" in page and "66.7%" in page  # cache hits 3000 / (1500 + 3000)
    by_model = client.get("/analytics?group=model").content.decode()
    assert "claude-haiku-4-5" in by_model and "claude-sonnet-4-6" in by_model
    by_key = client.get("/analytics?group=api_key").content.decode()
    assert "batch" in by_key and "Console (no API key)" in by_key
    assert "Haiku agent" in client.get("/analytics?group=agent").content.decode()
    csv_body = client.get("/analytics.csv?group=model").content.decode().splitlines()
    assert csv_body[0].startswith("model,sessions,input_tokens")
    assert any(line.startswith("claude-haiku-4-5,1,500,50") for line in csv_body)
    bad = client.get("/analytics?from=2026-13-40&group=nope")
    assert bad.status_code == 400 and b"not a date" in bad.content and b"Unknown grouping" in bad.content


def test_analytics_empty_range_explains(workspace):
    page = client_for(workspace, Role.VIEWER).get("/analytics").content.decode()
    assert "No sessions in this date range" in page


def test_overview_shows_spend_running_and_errors(workspace):
    session = make_session(workspace, title="Live one", status="running", token_cost_micros=1_250_000)
    add_events(session, [("session.error", {"error": {"type": "model_overloaded_error", "message": "busy"}})])
    page = client_for(workspace, Role.VIEWER).get("/").content.decode()
    assert 'id="spend-today">$1.25<' in page
    assert "Live one" in page and "model_overloaded_error" in page


def test_static_assets_are_served_locally(workspace):
    client = Client()
    js = client.get("/static/vendor/htmx.min.js")
    assert js.status_code == 200
    assert b"Zero-Clause BSD" in b"".join(js.streaming_content)
    assert client.get("/static/console/console.css").status_code == 200
    page = client_for(workspace, Role.VIEWER).get("/").content.decode()
    assert "http://" not in page.replace("http://127.0.0.1", "") and "https://" not in page


def test_session_filters_answer_htmx_with_the_results_partial(workspace):
    make_session(workspace, title="needle")
    make_session(workspace, title="haystack")
    client = client_for(workspace, Role.VIEWER)
    response = client.get("/sessions?q=needle", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.startswith('<div id="results"') and "<html" not in body
    assert "needle" in body and "haystack" not in body
    assert "HX-Request" in response["Vary"]


def test_trace_json_pages_keep_latency_across_a_page_boundary(workspace, monkeypatch):
    from console.views import sessions as session_views

    monkeypatch.setattr(session_views, "TRACE_PAGE", 2)
    session = make_session(workspace)
    start = add_events(
        session, [("user.message", {"content": text("hi")}), ("span.model_request_start", {})]
    )[1]
    usage = {"input_tokens": 10, "output_tokens": 5}
    add_events(
        session,
        [("span.model_request_end", {"model_request_start_id": start.id, "model_usage": usage})],
        at=start.created_at + dt.timedelta(milliseconds=400),
    )
    client = client_for(workspace, Role.VIEWER)
    first = client.get(f"/sessions/{session.pk}/trace.json").json()
    assert [r["seq"] for r in first["rows"]] == [1, 2] and first["next_after"] == 2
    second = client.get(f"/sessions/{session.pk}/trace.json?after=2").json()
    assert [r["seq"] for r in second["rows"]] == [3] and second["next_after"] is None
    assert second["rows"][0]["latency_ms"] == 400
    everything = client.get(f"/sessions/{session.pk}/trace.json?download=1").json()
    assert [r["seq"] for r in everything["rows"]] == [1, 2, 3] and everything["next_after"] is None


def test_sub_agent_messages_name_their_agent(workspace):
    from sessions.models import SessionThread

    session = make_session(workspace)
    thread = SessionThread.objects.create(
        id="sthr_2", session=session, agent_name="researcher", agent_snapshot={}
    )
    add_events(session, [("agent.message", {"content": text("found three papers")})], thread=thread)
    add_events(session, [("agent.message", {"content": text("summary for you")})])
    page = client_for(workspace, Role.VIEWER).get(f"/sessions/{session.pk}").content.decode()
    assert '<span class="who">researcher</span><div class="text">found three papers' in page
    assert '<span class="who">Agent</span><div class="text">summary for you' in page


def test_every_console_route_requires_login(workspace):
    """A guard for new routes: anything but login, logout and assets sends strangers to the login page."""
    import re

    from galley.urls import console_urlpatterns

    client = Client()
    checked = 0
    for pattern in console_urlpatterns:
        route = str(pattern.pattern)
        if route in ("login", "logout", "favicon.ico") or route.startswith("^static"):
            continue  # public: the login page and the assets it needs
        url = "/" + re.sub(
            r"<(?:\w+:)?(\w+)>", lambda m: "1" if m.group(1) == "membership_id" else "x_1", route
        )
        for method in (client.get, client.post):
            response = method(url)
            assert response.status_code in (302, 405), (url, response.status_code)
            if response.status_code == 302:
                assert response["Location"].startswith("/login?next="), url
        checked += 1
    assert checked >= 30


def test_every_page_warns_when_sandboxes_are_not_isolated(workspace, settings):
    client = client_for(workspace, Role.VIEWER)
    assert b"unsafe-banner" not in client.get("/").content
    settings.GALLEY_SANDBOX_BACKEND = "process"
    for url in ["/", "/sessions", "/analytics"]:
        page = client.get(url).content
        assert b"unsafe-banner" in page and b"sandboxes are not isolated" in page, url


def test_session_page_lists_attached_repositories_and_their_checkout(workspace):
    from files.services import session_resources_attach

    session = make_session(workspace)
    session_resources_attach(
        session=session,
        resources=[
            {
                "type": "github_repository",
                "url": "https://github.com/octo/demo",
                "authorization_token": "ghp_console_secret_1234",
                "checkout": {"type": "branch", "name": "release"},
            },
            {
                "type": "github_repository",
                "url": "https://github.com/octo/pinned",
                "checkout": {"type": "commit", "sha": "ab" * 20},
            },
        ],
    )
    page = client_for(workspace, Role.VIEWER).get(f"/sessions/{session.pk}").content.decode()
    assert "https://github.com/octo/demo" in page and "/workspace/demo" in page and "release" in page
    assert "abababababab" in page and "ghp_console_secret_1234" not in page


def test_environment_page_shows_the_prefix_size_per_manager(workspace, settings, tmp_path):
    from agents.models import Environment
    from sandboxes.packages import package_key, package_lists

    settings.GALLEY_PACKAGES_ROOT = tmp_path
    env = Environment.objects.create(
        id="env_console_prefix",
        workspace=workspace,
        name="with-apt",
        config={
            "type": "cloud",
            "networking": {"type": "unrestricted"},
            "packages": {"apt": ["jq"], "pip": []},
        },
        build_status="ready",
    )
    prefix = tmp_path / str(package_key(package_lists(env)))
    (prefix / "apt" / "usr" / "bin").mkdir(parents=True)
    (prefix / "apt" / "usr" / "bin" / "jq").write_bytes(b"x" * 50_000)
    page = client_for(workspace, Role.VIEWER).get(f"/environments/{env.pk}").content.decode()
    assert 'id="build-prefix"' in page and "apt" in page and "KB" in page


def test_admin_deactivates_reactivates_resets_and_removes_users_but_keeps_one_admin(workspace):
    admin_client = client_for(workspace, Role.ADMIN)
    admin = Membership.objects.get(workspace=workspace, role=Role.ADMIN)
    other = make_user(workspace, Role.EDITOR, "ed")
    member = Membership.objects.get(user=other)
    ed = Client()
    assert ed.login(username="ed", password=PASSWORD)
    assert ed.get("/").status_code == 200
    admin_client.post(f"/users/{member.pk}/active", {"active": "0"})
    other.refresh_from_db()
    assert not other.is_active
    assert ed.get("/").status_code == 302  # logged out everywhere, at once
    assert not Client().login(username="ed", password=PASSWORD)
    page = admin_client.get("/users").content.decode()
    assert "deactivated" in page and "Last login" in page
    admin_client.post(f"/users/{member.pk}/active", {"active": "1"})
    admin_client.post(f"/users/{member.pk}/password", {"password": "short"})
    assert Client().login(username="ed", password=PASSWORD)  # refused: too short, unchanged
    admin_client.post(f"/users/{member.pk}/password", {"password": "a-much-longer-passphrase"})
    assert Client().login(username="ed", password="a-much-longer-passphrase")
    # The last admin can be neither deactivated nor removed.
    admin_client.post(f"/users/{admin.pk}/active", {"active": "0"})
    admin_client.post(f"/users/{admin.pk}/remove")
    admin.user.refresh_from_db()
    assert admin.user.is_active and Membership.objects.filter(pk=admin.pk).exists()
    admin_client.post(f"/users/{member.pk}/remove")
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert client_for(workspace, Role.EDITOR).post(f"/users/{admin.pk}/remove").status_code == 403


def test_a_superuser_without_membership_administers_the_default_workspace(workspace):
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("root", password=PASSWORD)
    client = Client()
    assert client.login(username="root", password=PASSWORD)
    assert client.get("/users").status_code == 200
    assert Membership.objects.get(user__username="root").role == Role.ADMIN


def test_error_pages_are_styled_with_navigation(workspace, settings):
    settings.DEBUG = False
    client = client_for(workspace, Role.VIEWER)
    missing = client.get("/sessions/sesn_nope")
    assert missing.status_code == 404
    page = missing.content.decode()
    assert "Not found" in page and 'href="/sessions"' in page and "console.css" in page
    forbidden = client.get("/users")
    assert forbidden.status_code == 403 and "console.css" in forbidden.content.decode()
    assert Client().get("/favicon.ico").status_code == 200
    assert "favicon.svg" in client.get("/").content.decode()


def test_start_a_session_with_vaults_files_a_repository_budget_and_metadata(workspace):
    from files.services import file_create
    from vaults.models import Vault

    agent = make_agent(workspace)
    from tests.console_factories import make_environment

    env = make_environment(workspace)
    vault = Vault.objects.create(id="vlt_console_start", workspace=workspace, display_name="Team")
    upload = file_create(workspace=workspace, filename="data.csv", content=[b"a,b\n"])
    client = client_for(workspace, Role.EDITOR)
    page = client.get(f"/agents/{agent.pk}").content.decode()
    assert 'name="vault_ids"' in page and "data.csv" in page and 'name="budget_usd"' in page
    response = client.post(
        f"/agents/{agent.pk}/start",
        {
            "environment_id": env.pk,
            "title": "Everything",
            "vault_ids": [vault.pk],
            "file_ids": [upload.pk],
            "repo_url": "https://github.com/octo/demo",
            "repo_branch": "main",
            "repo_token": "ghp_console_start_secret",
            "budget_usd": "2.50",
            "metadata": "channel=C123\nthread = 42",
        },
    )
    assert response.status_code == 302
    session = Session.objects.get(title="Everything")
    assert response["Location"] == f"/sessions/{session.pk}"
    assert session.vault_ids == [vault.pk] and session.metadata == {"channel": "C123", "thread": "42"}
    assert session.budget == {"type": "limit", "max_list_cost": {"amount": "250", "currency": "USD"}}
    assert sorted(session.resources.values_list("type", flat=True)) == ["file", "github_repository"]
    bad = client.post(
        f"/agents/{agent.pk}/start",
        {"environment_id": env.pk, "metadata": "no equals sign", "repo_token": "ghp_console_start_secret"},
    )
    assert bad.status_code == 400 and Session.objects.count() == 1  # refused, nothing created
    page = bad.content.decode()
    assert 'id="metadata-error"' in page and "line 1 is not key=value" in page
    assert ">no equals sign</textarea>" in page and "ghp_console_start_secret" not in page


def test_a_failed_start_names_the_field_it_concerns(workspace):
    from django.http import QueryDict

    from api.errors import ApiError, bad_request, not_found
    from console.forms import session_start_error_field

    post = QueryDict(mutable=True)
    post.update({"environment_id": "env_a", "repo_url": "https://github.com/o/r", "repo_branch": "x"})
    post.setlist("vault_ids", ["vlt_a", "vlt_b"])
    post.setlist("file_ids", ["file_a"])
    post.setlist("memory_store_ids", ["memstore_a"])
    cases = {
        "budget.max_list_cost.amount: bad": "budget_usd",
        "budget: model 'x' has no list price": "budget_usd",
        "vault_ids[1]: vault 'vlt_b' is archived.": "vault_ids",
        "metadata: line 2 is not key=value.": "metadata",
        "title: must be a string": "title",
        "resources[0].file_id: bad": "file_ids",
        "resources[1].memory_store_id: memory store 'memstore_a' is archived.": "memory_store_ids",
        "resources[2].url: must be a GitHub URL": "repo_url",
        "resources[2].checkout.name: bad": "repo_branch",
        "resources[7].url: out of range": "form",
        "agent: roster member 'agent_x' version 2 no longer exists.": "form",
    }
    for message, field in cases.items():
        assert session_start_error_field(post, bad_request(message)) == field, message
    found = {
        not_found("Vault", "vlt_b"): "vault_ids",
        not_found("Environment", "env_a"): "environment_id",
        not_found("memory store", "memstore_a"): "memory_store_ids",
        not_found("File", "file_a"): "file_ids",
        not_found("Vault", "vlt_other"): "form",
        ApiError(409, "Something else."): "form",
    }
    for exc, field in found.items():
        assert session_start_error_field(post, exc) == field, exc.message


def test_the_environment_page_links_back_to_the_agent_that_sent_you(workspace):
    agent = make_agent(workspace, name="Needs env")
    client = client_for(workspace, Role.EDITOR)
    assert f"/environments/new?agent={agent.pk}" in client.get(f"/agents/{agent.pk}").content.decode()
    form = client.get(f"/environments/new?agent={agent.pk}").content.decode()
    assert f'name="agent" value="{agent.pk}"' in form
    created = client.post(
        "/environments/new", {"name": "fresh", "networking": "unrestricted", "agent": agent.pk}
    )
    assert created.status_code == 302 and created["Location"].endswith(f"?agent={agent.pk}")
    page = client.get(created["Location"]).content.decode()
    assert "Back to Needs env" in page and f"/agents/{agent.pk}#start-session" in page

"""Webhook endpoints, the outbox and delivery, driven through webhooks.services against a loopback
receiver; payloads are checked with the official SDK's `webhooks.unwrap`."""

import json
from datetime import timedelta
from typing import Any

import anthropic
import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import WebhookVerificationError

from accounts.models import Workspace
from api.errors import ApiError
from outbound.guard import AddressRefused, resolve_checked
from sessions import services as session_services
from tests.session_fixtures import make_agent, make_environment
from tests.webhook_receiver import webhook_receiver
from vaults import crypto
from webhooks import services
from webhooks.models import DeliveryState, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

pytestmark = pytest.mark.django_db

SDK = anthropic.Anthropic(api_key="unused", base_url="http://127.0.0.1:9")


@pytest.fixture(autouse=True)
def webhook_settings(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.GALLEY_VAULT_KEYS = []
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    settings.GALLEY_WEBHOOK_ALLOW_PRIVATE = True
    settings.GALLEY_WEBHOOK_RETRY_SCHEDULE = [0, 0, 0]
    settings.GALLEY_WEBHOOK_TIMEOUT_SECONDS = 2.0
    crypto.reset_cache()
    yield settings
    crypto.reset_cache()


def error_of(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def endpoint(workspace: Workspace, url: str, events: list[str] | None = None) -> tuple[WebhookEndpoint, str]:
    return services.endpoint_create(
        workspace=workspace, body={"url": url, "enabled_events": events or ["*"], "name": "bot"}
    )


def emit(workspace: Workspace, type: str = "agent.created", resource: str = "agent_1") -> WebhookEvent | None:
    with transaction.atomic():
        return services.webhook_event_emit(workspace=workspace, type=type, data={"id": resource})


def run_all(ep: WebhookEndpoint) -> int:
    made = 0
    for key in set(WebhookDelivery.objects.filter(endpoint=ep).values_list("ordering_key", flat=True)):
        made += services.deliveries_run(endpoint_id=ep.pk, ordering_key=key)
    return made


# --- endpoints ---------------------------------------------------------------------------------


def test_create_returns_a_whsec_secret_once_and_stores_it_encrypted(workspace: Workspace) -> None:
    ep, secret = endpoint(workspace, "https://hooks.example.com/galley")
    assert secret.startswith("whsec_")
    wire = services.endpoint_wire(ep)
    assert "signing_secret" not in wire and secret not in json.dumps(wire)
    assert wire["state"] == "enabled" and wire["disabled_reason"] == "" and wire["enabled_events"] == ["*"]
    assert secret[6:] not in ep.secret_ciphertext
    assert ep.signing_secrets(timezone.now()) == [secret]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://x.example.com", "enabled_events": ["*"]}, "url"),
        ({"url": "not a url", "enabled_events": ["*"]}, "url"),
        ({"url": "https://x.example.com", "enabled_events": ["session.exploded"]}, "enabled_events[0]"),
        ({"url": "https://x.example.com", "enabled_events": ["external_key.failed"]}, "enabled_events[0]"),
        ({"url": "https://x.example.com", "enabled_events": []}, "enabled_events"),
        ({"url": "https://x.example.com"}, "enabled_events"),
        ({"enabled_events": ["*"]}, "url"),
        ({"url": "https://x.example.com", "enabled_events": ["*"], "secret": "x"}, "secret"),
    ],
)
def test_bad_endpoint_bodies_are_400s_naming_the_field(
    workspace: Workspace, body: dict[str, Any], field: str
) -> None:
    err = error_of(lambda: services.endpoint_create(workspace=workspace, body=body))
    assert err.status == 400 and err.message.startswith(field + ":"), err.message
    assert not WebhookEndpoint.objects.exists()


def test_plain_http_and_private_hosts_need_allow_private(workspace: Workspace, webhook_settings: Any) -> None:
    webhook_settings.GALLEY_WEBHOOK_ALLOW_PRIVATE = False
    for url in (
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://localhost/x",
    ):
        err = error_of(
            lambda url=url: services.endpoint_create(
                workspace=workspace, body={"url": url, "enabled_events": ["*"]}
            )
        )
        assert err.status == 400 and err.message.startswith("url:"), url
    webhook_settings.GALLEY_WEBHOOK_ALLOW_PRIVATE = True
    ep, _ = endpoint(workspace, "http://127.0.0.1:9/x")
    assert ep.url == "http://127.0.0.1:9/x"


def test_every_spec_event_type_and_the_wildcard_are_accepted(workspace: Workspace) -> None:
    ep, _ = endpoint(workspace, "https://hooks.example.com/x", [*services.EVENT_TYPES, "*"])
    assert len(ep.enabled_events) == len(services.EVENT_TYPES) + 1


def test_update_replaces_fields_and_an_empty_event_list_keeps_them(workspace: Workspace) -> None:
    ep, _ = endpoint(workspace, "https://hooks.example.com/x", ["session.status_idled"])
    services.endpoint_update(endpoint=ep, body={"enabled_events": [], "name": "renamed", "state": "disabled"})
    assert ep.enabled_events == ["session.status_idled"] and ep.name == "renamed" and ep.state == "disabled"
    err = error_of(lambda: services.endpoint_update(endpoint=ep, body={"state": "paused"}))
    assert err.message.startswith("state:")


def test_endpoints_are_scoped_to_their_workspace(workspace: Workspace) -> None:
    ep, _ = endpoint(workspace, "https://hooks.example.com/x")
    other = Workspace.objects.create(name="other")
    assert error_of(lambda: services.endpoint_get(workspace=other, endpoint_id=ep.pk)).status == 404
    assert services.endpoint_list(workspace=other) == ([], False)
    assert emit(other) is None


def test_list_pages_with_after_id_and_before_id(workspace: Workspace) -> None:
    made = [endpoint(workspace, f"https://hooks.example.com/{i}")[0] for i in range(5)]
    newest_first = list(reversed([e.pk for e in made]))
    page, more = services.endpoint_list(workspace=workspace, limit=2)
    assert [e.pk for e in page] == newest_first[:2] and more
    page, more = services.endpoint_list(workspace=workspace, limit=2, after_id=newest_first[1])
    assert [e.pk for e in page] == newest_first[2:4] and more
    page, more = services.endpoint_list(workspace=workspace, limit=10, after_id=newest_first[3])
    assert [e.pk for e in page] == newest_first[4:] and not more
    page, _ = services.endpoint_list(workspace=workspace, order="asc", before_id=made[3].pk)
    assert [e.pk for e in page] == [e.pk for e in made[:3]]


# --- the outbox --------------------------------------------------------------------------------


def test_nothing_is_written_without_a_subscriber(workspace: Workspace) -> None:
    endpoint(workspace, "https://hooks.example.com/x", ["session.status_idled"])
    assert emit(workspace, "agent.created") is None
    assert not WebhookEvent.objects.exists()


def test_an_event_rolls_back_with_the_state_change(workspace: Workspace) -> None:
    endpoint(workspace, "https://hooks.example.com/x")
    with pytest.raises(RuntimeError), transaction.atomic():
        services.webhook_event_emit(workspace=workspace, type="agent.created", data={"id": "agent_1"})
        raise RuntimeError("the state change failed")
    assert not WebhookEvent.objects.exists() and not WebhookDelivery.objects.exists()


def test_session_status_changes_emit_the_spec_names(workspace: Workspace) -> None:
    agent, environment = make_agent(workspace), make_environment(workspace)
    endpoint(workspace, "https://hooks.example.com/x")
    session = session_services.session_create(
        workspace=workspace,
        body={"agent": agent.pk, "environment_id": environment.pk, "metadata": {"c": "1"}},
    )
    with transaction.atomic():
        session_services.session_set_status(session=session, status="running")
        session_services.session_set_status(
            session=session, status="idle", stop_reason={"type": "requires_action", "event_ids": ["sevt_1"]}
        )
        session_services.session_set_status(session=session, status="rescheduling")
    session_services.session_archive(session=session)
    types = list(WebhookEvent.objects.order_by("created_at", "id").values_list("type", flat=True))
    assert types[0] == "session.created"
    assert types[1:] == [
        "session.status_run_started",
        "session.running",
        "session.status_idled",
        "session.idled",
        "session.requires_action",
        "session.status_rescheduled",
        "session.status_terminated",
        "session.archived",
    ]
    event = WebhookEvent.objects.get(type="session.status_idled")
    assert event.data == {
        "type": "session.status_idled",
        "id": session.pk,
        "organization_id": "org_galley",
        "workspace_id": workspace.pk,
    }
    assert set(WebhookEvent.objects.values_list("ordering_key", flat=True)) == {session.pk}


def test_agent_environment_and_vault_changes_emit_their_events(workspace: Workspace) -> None:
    from agents import services as agent_services  # noqa: PLC0415
    from vaults import services as vault_services  # noqa: PLC0415

    endpoint(workspace, "https://hooks.example.com/x")
    agent = agent_services.agent_create(workspace=workspace, body={"name": "a", "model": "claude-sonnet-4-6"})
    agent_services.agent_update(agent=agent, body={"system": "be brief"})
    agent_services.agent_archive(agent=agent)
    agent_services.agent_archive(agent=agent)  # a second archive changes nothing and says nothing
    env = agent_services.environment_create(workspace=workspace, body={"name": "e"})
    agent_services.environment_update(environment=env, body={"description": "d"})
    agent_services.environment_archive(environment=env)
    agent_services.environment_delete(environment=env)
    vault = vault_services.vault_create(workspace=workspace, body={"display_name": "v"})
    credential = vault_services.credential_create(
        vault=vault,
        body={
            "auth": {"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/", "token": "t0k3n"}
        },
    )
    vault_id, credential_id = vault.pk, credential.pk
    vault_services.credential_refresh_failed(credential=credential)
    vault_services.credential_archive(credential=credential)
    vault_services.credential_delete(credential=credential)
    vault_services.vault_archive(vault=vault)
    vault_services.vault_delete(vault=vault)
    rows = list(WebhookEvent.objects.order_by("created_at", "id"))
    assert [r.type for r in rows] == [
        "agent.created",
        "agent.updated",
        "agent.archived",
        "environment.created",
        "environment.updated",
        "environment.archived",
        "environment.deleted",
        "vault.created",
        "vault_credential.created",
        "vault_credential.refresh_failed",
        "vault_credential.archived",
        "vault_credential.deleted",
        "vault.archived",
        "vault.deleted",
    ]
    cred_event = next(r for r in rows if r.type == "vault_credential.created")
    assert cred_event.data["vault_id"] == vault_id and cred_event.data["id"] == credential_id
    assert "t0k3n" not in json.dumps([r.data for r in rows])


# --- delivery ----------------------------------------------------------------------------------


def test_a_delivery_is_signed_and_parses_with_the_sdk(workspace: Workspace) -> None:
    with webhook_receiver() as rx:
        ep, secret = endpoint(workspace, rx.url)
        event = emit(workspace)
        assert event is not None
        assert run_all(ep) == 1
        [got] = rx.received
        parsed = SDK.beta.webhooks.unwrap(got.body, headers=got.headers, key=secret)
        assert parsed.type == "event" and parsed.id == event.pk == got.headers["webhook-id"]
        assert parsed.data.type == "agent.created" and parsed.data.id == "agent_1"
        assert parsed.data.workspace_id == workspace.pk
        with pytest.raises(WebhookVerificationError):
            SDK.beta.webhooks.unwrap(got.body, headers=got.headers, key=services.signing.new_secret())
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 1
    attempt = WebhookAttempt.objects.get()
    assert attempt.status_code == 200 and attempt.response_excerpt == '{"ok": true}'


def test_a_receiver_failing_twice_gets_the_same_id_three_times(
    workspace: Workspace, webhook_settings: Any
) -> None:
    webhook_settings.GALLEY_WEBHOOK_RETRY_SCHEDULE = [0, 0, 0, 0]
    with webhook_receiver(script=[500, 503]) as rx:
        ep, secret = endpoint(workspace, rx.url)
        emit(workspace)
        for _ in range(3):
            run_all(ep)
        ids = [r.headers["webhook-id"] for r in rx.received]
        assert len(ids) == 3 and len(set(ids)) == 1
        for r in rx.received:
            SDK.beta.webhooks.unwrap(r.body, headers=r.headers, key=secret)
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 3
    assert [a.status_code for a in WebhookAttempt.objects.order_by("number")] == [500, 503, 200]
    assert WebhookEndpoint.objects.get().consecutive_failures == 0


def test_retries_follow_the_schedule_with_jitter(workspace: Workspace, webhook_settings: Any) -> None:
    webhook_settings.GALLEY_WEBHOOK_RETRY_SCHEDULE = [5, 300]
    with webhook_receiver(default=500) as rx:
        ep, _ = endpoint(workspace, rx.url)
        emit(workspace)
        before = timezone.now()
        run_all(ep)
        assert run_all(ep) == 0  # not due yet: nothing is attempted
        delivery = WebhookDelivery.objects.get()
        assert before + timedelta(seconds=4.4) < delivery.next_attempt_at < before + timedelta(seconds=6)
        WebhookDelivery.objects.update(next_attempt_at=timezone.now())
        run_all(ep)
        delivery.refresh_from_db()
        assert delivery.next_attempt_at > timezone.now() + timedelta(seconds=260)
        WebhookDelivery.objects.update(next_attempt_at=timezone.now())
        run_all(ep)
        delivery.refresh_from_db()
        assert delivery.state == DeliveryState.FAILED and delivery.attempts == 3 and len(rx.received) == 3


def test_deliveries_of_one_session_go_out_in_order(workspace: Workspace, webhook_settings: Any) -> None:
    webhook_settings.GALLEY_WEBHOOK_RETRY_SCHEDULE = [0, 0]
    with webhook_receiver(script=[500]) as rx:
        ep, _ = endpoint(workspace, rx.url)
        with transaction.atomic():
            for kind in ("session.status_run_started", "session.status_idled", "session.archived"):
                services.webhook_event_emit(workspace=workspace, type=kind, data={"id": "sesn_1"})
        assert run_all(ep) == 1  # the first one failed: the later ones wait behind it
        run_all(ep)
        types = [json.loads(r.body)["data"]["type"] for r in rx.received]
    assert types == [
        "session.status_run_started",
        "session.status_run_started",
        "session.status_idled",
        "session.archived",
    ]


def test_an_endpoint_is_disabled_after_n_failures_in_a_row(
    workspace: Workspace, webhook_settings: Any
) -> None:
    webhook_settings.GALLEY_WEBHOOK_RETRY_SCHEDULE = [0] * 10
    webhook_settings.GALLEY_WEBHOOK_DISABLE_AFTER_FAILURES = 3
    with webhook_receiver(default=500) as rx:
        ep, _ = endpoint(workspace, rx.url)
        emit(workspace)
        for _ in range(5):
            run_all(ep)
        assert len(rx.received) == 3
    ep.refresh_from_db()
    assert ep.state == "disabled" and "3 failed delivery attempts" in ep.disabled_reason
    assert emit(workspace) is None  # a disabled endpoint gets no new events
    services.endpoint_update(endpoint=ep, body={"state": "enabled"})
    assert ep.disabled_reason == "" and ep.consecutive_failures == 0


def test_rotation_signs_with_both_secrets_during_the_grace_period(
    workspace: Workspace, webhook_settings: Any
) -> None:
    with webhook_receiver() as rx:
        ep, old = endpoint(workspace, rx.url)
        new = services.endpoint_rotate_secret(endpoint=ep)
        assert new != old and new.startswith("whsec_")
        emit(workspace)
        run_all(ep)
        got = rx.received[-1]
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        for key in (old, new):
            SDK.beta.webhooks.unwrap(got.body, headers=got.headers, key=key)
        WebhookEndpoint.objects.filter(pk=ep.pk).update(previous_secret_expires_at=timezone.now())
        emit(workspace, resource="agent_2")
        run_all(ep)
        got = rx.received[-1]
        SDK.beta.webhooks.unwrap(got.body, headers=got.headers, key=new)
        with pytest.raises(WebhookVerificationError):
            SDK.beta.webhooks.unwrap(got.body, headers=got.headers, key=old)


def test_private_receivers_are_refused_at_delivery_time(workspace: Workspace, webhook_settings: Any) -> None:
    with webhook_receiver() as rx:
        ep, _ = endpoint(workspace, rx.url)
        webhook_settings.GALLEY_WEBHOOK_ALLOW_PRIVATE = False
        emit(workspace)
        run_all(ep)
        assert rx.received == []
    attempt = WebhookAttempt.objects.get()
    assert (
        attempt.status_code is None and attempt.error.startswith("refused:") and "127.0.0.1" in attempt.error
    )
    for host in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "192.168.1.1", "0.0.0.0"):
        with pytest.raises(AddressRefused):
            resolve_checked(host, 443)


def test_redirects_are_not_followed(workspace: Workspace) -> None:
    with webhook_receiver(script=[302], redirect_to="http://127.0.0.1:9/elsewhere") as rx:
        ep, _ = endpoint(workspace, rx.url)
        emit(workspace)
        run_all(ep)
        assert len(rx.received) == 1
    attempt = WebhookAttempt.objects.get()
    assert attempt.status_code == 302 and "redirects are not followed" in attempt.error
    assert WebhookDelivery.objects.get().state == DeliveryState.PENDING


def test_a_slow_receiver_times_out_and_is_retried(workspace: Workspace, webhook_settings: Any) -> None:
    webhook_settings.GALLEY_WEBHOOK_TIMEOUT_SECONDS = 0.3
    with webhook_receiver(delay=1.0) as rx:
        ep, _ = endpoint(workspace, rx.url)
        emit(workspace)
        run_all(ep)
        rx.wait_for(lambda seen: len(seen) == 1, timeout=5)
    attempt = WebhookAttempt.objects.get()
    assert attempt.status_code is None and "Timeout" in attempt.error
    assert WebhookDelivery.objects.get().state == DeliveryState.PENDING


def test_a_claimed_delivery_is_not_attempted_twice_until_its_claim_expires(workspace: Workspace) -> None:
    with webhook_receiver() as rx:
        ep, _ = endpoint(workspace, rx.url)
        emit(workspace)
        WebhookDelivery.objects.update(claimed_until=timezone.now() + timedelta(minutes=1))
        assert run_all(ep) == 0 and rx.received == []
        WebhookDelivery.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))
        assert run_all(ep) == 1 and len(rx.received) == 1


def test_test_events_and_redelivery_reuse_the_event_id(workspace: Workspace) -> None:
    with webhook_receiver() as rx:
        ep, secret = endpoint(workspace, rx.url, ["session.status_idled"])
        services.endpoint_send_test(endpoint=ep)
        run_all(ep)
        [first] = rx.received
        assert json.loads(first.body)["data"]["type"] == "webhook_endpoint.test"
        services.delivery_redeliver(endpoint=ep, delivery_id=WebhookDelivery.objects.get().pk)
        run_all(ep)
        assert [r.headers["webhook-id"] for r in rx.received] == [first.headers["webhook-id"]] * 2
        SDK.beta.webhooks.unwrap(rx.received[1].body, headers=rx.received[1].headers, key=secret)


def test_the_sweeper_finds_due_work_and_old_finished_events_are_purged(
    workspace: Workspace, monkeypatch: Any
) -> None:
    enqueued: list[tuple[str, str]] = []
    monkeypatch.setattr(services, "_enqueue", lambda endpoint_id, key: enqueued.append((endpoint_id, key)))
    with webhook_receiver() as rx:
        ep, _ = endpoint(workspace, rx.url)
        for i in range(3):
            emit(workspace, resource=f"agent_{i}")
        assert services._enqueue_due() == 3  # one (endpoint, key) pair per resource
        assert sorted(k for _, k in enqueued) == ["agent_0", "agent_1", "agent_2"]
        run_all(ep)
        assert services._enqueue_due() == 0
    emit(workspace, resource="agent_pending")
    later = timezone.now() + timedelta(days=31)
    assert services.webhook_events_purge(now=later) == 3
    assert list(WebhookEvent.objects.values_list("data__id", flat=True)) == ["agent_pending"]


def test_thread_outcome_budget_update_and_delete_log_events_map_to_webhooks(workspace: Workspace) -> None:
    agent, environment = make_agent(workspace), make_environment(workspace)
    endpoint(workspace, "https://hooks.example.com/x", ["*"])
    session = session_services.session_create(
        workspace=workspace, body={"agent": agent.pk, "environment_id": environment.pk}
    )
    NewEvent = session_services.NewEvent
    with transaction.atomic():
        session_services.events_append(
            session=session.pk,  # by id: the workspace is looked up
            events=[
                NewEvent("session.thread_created", {"session_thread_id": "sthr_child", "agent_name": "a"}),
                NewEvent("session.thread_status_running", {"session_thread_id": "sthr_child"}),
                NewEvent("session.thread_status_idle", {"session_thread_id": "sthr_child"}),
                NewEvent("session.thread_status_terminated", {"session_thread_id": "sthr_child"}),
                NewEvent("span.outcome_evaluation_end", {"outcome_id": "outc_1", "result": "satisfied"}),
                NewEvent("agent.message", {"content": []}),
            ],
        )
        session_services.session_set_status(
            session=session, status="idle", stop_reason={"type": "budget_reached"}
        )
    session_services.session_update(session=session, body={"title": "renamed"})
    session_services.session_delete(session=session)
    rows = list(WebhookEvent.objects.exclude(type="session.created").order_by("created_at", "id"))
    assert [r.type for r in rows] == [
        "session.thread_created",
        "session.thread_idled",
        "session.thread_terminated",
        "session.outcome_evaluation_ended",
        "session.status_idled",
        "session.idled",
        "session.budget_reached",
        "session.updated",
        "session.deleted",
    ]
    assert rows[0].data["session_thread_id"] == "sthr_child" and rows[0].data["id"] == session.pk
    assert "session_thread_id" not in rows[3].data


def test_memory_store_changes_emit_their_webhooks(workspace: Workspace) -> None:
    from memory import services as memory_services

    services.endpoint_create(
        workspace=workspace, body={"url": "https://hooks.example.com/x", "enabled_events": ["*"]}
    )
    store = memory_services.store_create(workspace=workspace, body={"name": "notes"})
    store_id = store.pk
    memory_services.store_archive(store=store)
    memory_services.store_archive(store=store)  # archiving twice changes nothing: no second event
    memory_services.store_delete(store=store)
    events = list(WebhookEvent.objects.order_by("created_at", "id").values_list("type", "data"))
    assert [t for t, _ in events] == ["memory_store.created", "memory_store.archived", "memory_store.deleted"]
    assert all(data["id"] == store_id for _, data in events)

"""Console pages for webhooks (admin) and deployments: what they show and what their actions do."""

from typing import Any

import pytest

from accounts.models import Role, Workspace
from deployments.models import Deployment, DeploymentRun
from tests.console_factories import client_for, fast_passwords, make_agent, make_environment  # noqa: F401
from tests.webhook_receiver import webhook_receiver
from vaults import crypto
from webhooks import services
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def keys(settings: Any, tmp_path: Any) -> Any:
    settings.GALLEY_VAULT_KEYS = []
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    settings.GALLEY_WEBHOOK_ALLOW_PRIVATE = True
    settings.GALLEY_WEBHOOK_RETRY_SCHEDULE = [0, 0]
    crypto.reset_cache()
    yield settings
    crypto.reset_cache()


def test_webhooks_are_for_admins_only(workspace: Workspace) -> None:
    for role in (Role.VIEWER, Role.EDITOR):
        client = client_for(workspace, role)
        assert client.get("/webhooks").status_code == 403
        assert (
            client.post("/webhooks", {"url": "https://x.example.com", "enabled_events": ["*"]}).status_code
            == 403
        )
    admin = client_for(workspace, Role.ADMIN)
    page = admin.get("/webhooks").content.decode()
    assert 'href="/webhooks"' in page and "session.status_idled" in page


def test_creating_an_endpoint_shows_its_secret_once(workspace: Workspace) -> None:
    admin = client_for(workspace, Role.ADMIN)
    response = admin.post(
        "/webhooks",
        {"url": "https://bot.example.com/h", "name": "bot", "enabled_events": ["session.status_idled"]},
    )
    page = response.content.decode()
    assert response.status_code == 200 and "whsec_" in page
    endpoint = WebhookEndpoint.objects.get()
    secret = endpoint.signing_secrets(endpoint.created_at)[0]
    assert secret in page
    assert secret not in admin.get("/webhooks").content.decode()
    assert secret not in admin.get(f"/webhooks/{endpoint.pk}").content.decode()


def test_a_bad_endpoint_form_names_the_problem(workspace: Workspace) -> None:
    admin = client_for(workspace, Role.ADMIN)
    response = admin.post("/webhooks", {"url": "ftp://nope", "enabled_events": ["*"]})
    assert response.status_code == 400 and "must be an" in response.content.decode()
    response = admin.post("/webhooks", {"url": "https://bot.example.com/h"})
    assert response.status_code == 400 and "at least one event" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_delivery_log_test_event_redeliver_disable_and_rotate(workspace: Workspace) -> None:
    admin = client_for(workspace, Role.ADMIN)
    with webhook_receiver(script=[500]) as rx:
        endpoint, old = services.endpoint_create(
            workspace=workspace, body={"url": rx.url, "enabled_events": ["*"]}
        )
        assert admin.post(f"/webhooks/{endpoint.pk}/test").status_code == 302
        delivery = WebhookDelivery.objects.get()
        services.deliveries_run(endpoint_id=endpoint.pk, ordering_key=delivery.ordering_key)
        page = admin.get(f"/webhooks/{endpoint.pk}").content.decode()
        assert "webhook_endpoint.test" in page and "500" in page and "receiver says no" in page
        assert "ms" in page and delivery.event_id in page
        services.deliveries_run(endpoint_id=endpoint.pk, ordering_key=delivery.ordering_key)
        page = admin.get(f"/webhooks/{endpoint.pk}").content.decode()
        assert "delivered" in page
        admin.post(f"/webhooks/{endpoint.pk}/redeliver", {"delivery": str(delivery.pk)})
        assert WebhookDelivery.objects.count() == 2
        services.deliveries_run(endpoint_id=endpoint.pk, ordering_key=delivery.ordering_key)
        assert len(rx.received) == 3 and len({r.headers["webhook-id"] for r in rx.received}) == 1

    admin.post(f"/webhooks/{endpoint.pk}/disable")
    endpoint.refresh_from_db()
    assert endpoint.state == "disabled"
    assert "disabled" in admin.get(f"/webhooks/{endpoint.pk}").content.decode()
    admin.post(f"/webhooks/{endpoint.pk}/enable")
    endpoint.refresh_from_db()
    assert endpoint.state == "enabled"

    response = admin.post(f"/webhooks/{endpoint.pk}/rotate", follow=True)
    endpoint.refresh_from_db()
    new = endpoint.signing_secrets(endpoint.updated_at)[0]
    assert new != old and new in response.content.decode()
    assert new not in admin.get(f"/webhooks/{endpoint.pk}").content.decode()  # shown once


def test_an_auto_disabled_endpoint_says_why(workspace: Workspace, keys: Any) -> None:
    keys.GALLEY_WEBHOOK_DISABLE_AFTER_FAILURES = 1
    admin = client_for(workspace, Role.ADMIN)
    with webhook_receiver(default=503) as rx:
        endpoint, _ = services.endpoint_create(
            workspace=workspace, body={"url": rx.url, "enabled_events": ["*"]}
        )
        services.endpoint_send_test(endpoint=endpoint)
        services.deliveries_run(endpoint_id=endpoint.pk, ordering_key=endpoint.pk)
    for url in ("/webhooks", f"/webhooks/{endpoint.pk}"):
        page = admin.get(url).content.decode()
        assert "Disabled after 1 failed delivery attempts" in page, url


def test_deployments_pages_create_pause_and_run(workspace: Workspace) -> None:
    agent, environment = make_agent(workspace), make_environment(workspace)
    editor = client_for(workspace, Role.EDITOR)
    bad = editor.post(
        "/deployments",
        {
            "name": "n",
            "agent": agent.pk,
            "environment_id": environment.pk,
            "task": "go",
            "expression": "61 * * * *",
        },
    )
    assert bad.status_code == 400 and "schedule.expression" in bad.content.decode()
    response = editor.post(
        "/deployments",
        {
            "name": "nightly",
            "agent": agent.pk,
            "environment_id": environment.pk,
            "task": "Write the report.",
            "expression": "0 2 * * *",
            "timezone": "Europe/Berlin",
        },
    )
    deployment = Deployment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}"
    assert "nightly" in editor.get("/deployments").content.decode()
    editor.post(f"/deployments/{deployment.pk}/pause")
    deployment.refresh_from_db()
    assert deployment.status == "paused"
    editor.post(f"/deployments/{deployment.pk}/run")
    run = DeploymentRun.objects.get()
    page = editor.get(f"/deployments/{deployment.pk}").content.decode()
    assert f'href="/sessions/{run.session_id}"' in page and "manual" in page
    viewer = client_for(workspace, Role.VIEWER)
    assert viewer.get(f"/deployments/{deployment.pk}").status_code == 200
    assert viewer.post(f"/deployments/{deployment.pk}/run").status_code == 403

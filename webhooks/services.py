"""Webhooks: endpoints, the transactional outbox (`webhook_event_emit`), and delivery.

Every state change that has a webhook event calls `webhook_event_emit` inside the transaction that
makes the change, so the event row and its deliveries commit (or roll back) with it. Delivery runs
in Celery (`webhooks.tasks`): enqueued on commit, and re-enqueued by a sweeper for whatever is due
or was left behind by a crashed worker. Signing is `webhooks.signing`; the address check is the
project's outbound guard (`outbound.guard`)."""

import functools
import ipaddress
import json
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import F, Prefetch, Q
from django.utils import timezone

from accounts.models import Workspace
from agents import definition as d
from api.errors import bad_request, not_found
from api.ids import new_id
from api.wire import iso
from galley.prepared import prepared_rows
from outbound.guard import AddressRefused, http_client
from vaults import crypto
from webhooks import signing
from webhooks.models import (
    DeliveryState,
    EndpointState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

log = logging.getLogger(__name__)

# Every event type of spec 14 (the SDK's BetaWebhookEventData union, minus the families Galley does
# not have: external_key.*, user_profile.*). docs/capabilities.md lists the few that never fire.
EVENT_TYPES: tuple[str, ...] = (
    "session.created",
    "session.pending",
    "session.running",
    "session.idled",
    "session.requires_action",
    "session.archived",
    "session.deleted",
    "session.updated",
    "session.status_run_started",
    "session.status_idled",
    "session.status_rescheduled",
    "session.status_terminated",
    "session.thread_created",
    "session.thread_idled",
    "session.thread_terminated",
    "session.outcome_evaluation_ended",
    "session.budget_reached",
    "agent.created",
    "agent.updated",
    "agent.archived",
    "agent.deleted",
    "environment.created",
    "environment.updated",
    "environment.archived",
    "environment.deleted",
    "vault.created",
    "vault.archived",
    "vault.deleted",
    "vault_credential.created",
    "vault_credential.archived",
    "vault_credential.deleted",
    "vault_credential.refresh_failed",
    "memory_store.created",
    "memory_store.archived",
    "memory_store.deleted",
    "deployment.created",
    "deployment.updated",
    "deployment.archived",
    "deployment.deleted",
    "deployment.paused",
    "deployment.unpaused",
    "deployment_run.started",
    "deployment_run.succeeded",
    "deployment_run.failed",
)
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)
TEST_EVENT_TYPE = "webhook_endpoint.test"
MAX_ENDPOINTS_PER_WORKSPACE = 32
RESPONSE_EXCERPT_CHARS = 500


# === The outbox ===================================================================================


def webhook_event_emit(
    *,
    workspace: Workspace | str,
    type: str,
    data: dict[str, Any],
    ordering_key: str | None = None,
    endpoints: list[WebhookEndpoint] | None = None,
) -> WebhookEvent | None:
    """Record a webhook event and one delivery per enabled endpoint of the workspace that subscribes
    to it, in the caller's transaction; deliveries are enqueued after commit. `data` holds the
    resource's `id` and any extra fields of the SDK's event data (`session_thread_id`, `vault_id`);
    `organization_id`, `workspace_id` and `type` are added here. With no subscriber nothing is
    written. `ordering_key` (default: `data["id"]`) groups events delivered in order."""
    assert type in _EVENT_TYPE_SET or type == TEST_EVENT_TYPE, f"unknown webhook event type {type!r}"
    workspace_id = workspace if isinstance(workspace, str) else workspace.pk
    if endpoints is None:  # the caller may pass the workspace's enabled endpoints it already read
        enabled = WebhookEndpoint.objects.filter(workspace_id=workspace_id, state=EndpointState.ENABLED)
        endpoints = list(enabled)
    subscribed = [e for e in endpoints if e.subscribes_to(type)]
    if not subscribed:
        return None
    return _event_insert(
        workspace_id=workspace_id, type=type, data=data, ordering_key=ordering_key, to=subscribed
    )


def _event_insert(
    *, workspace_id: str, type: str, data: dict[str, Any], ordering_key: str | None, to: list[WebhookEndpoint]
) -> WebhookEvent:
    now = timezone.now()
    full = {
        "type": type,
        "id": data["id"],
        "organization_id": settings.GALLEY_ORGANIZATION_ID,
        "workspace_id": workspace_id,
        **{k: v for k, v in data.items() if k != "id"},
    }
    key = ordering_key or str(data["id"])
    with transaction.atomic():
        event = WebhookEvent.objects.create(
            id=new_id("wevt"),
            workspace_id=workspace_id,
            type=type,
            data=full,
            ordering_key=key,
            created_at=now,
        )
        WebhookDelivery.objects.bulk_create(
            [
                WebhookDelivery(
                    event=event, endpoint=e, ordering_key=key, next_attempt_at=now, created_at=now
                )
                for e in to
            ]
        )
        for endpoint in to:
            transaction.on_commit(functools.partial(_enqueue, endpoint.pk, key))
    return event


# A retry due within this many seconds is enqueued for its time (the worker holds it until then); later
# ones, and any whose enqueue is lost, the sweeper (`webhooks.sweep`) hands out when they are due.
EXACT_RETRY_WITHIN = 600.0


def _enqueue(endpoint_id: str, ordering_key: str, countdown: float | None = None) -> None:
    from webhooks.tasks import deliver

    try:
        deliver.apply_async((endpoint_id, ordering_key), countdown=countdown)
    except Exception:  # the broker is down: the sweeper delivers it later, the caller must not fail
        log.warning("could not enqueue webhook delivery for %s; the sweeper will", endpoint_id, exc_info=True)


# Session log event -> webhook event types (spec 14: the stream's names differ from these).
_FROM_LOG: dict[str, tuple[str, ...]] = {
    "session.status_running": ("session.status_run_started", "session.running"),
    "session.status_idle": ("session.status_idled", "session.idled"),
    "session.status_rescheduled": ("session.status_rescheduled",),
    "session.status_terminated": ("session.status_terminated",),
    "session.thread_created": ("session.thread_created",),
    "session.thread_status_idle": ("session.thread_idled",),
    "session.thread_status_terminated": ("session.thread_terminated",),
    "session.updated": ("session.updated",),
    "session.deleted": ("session.deleted",),
    "span.outcome_evaluation_end": ("session.outcome_evaluation_ended",),
}
_STOP_REASON_EVENTS = {
    "requires_action": "session.requires_action",
    "budget_reached": "session.budget_reached",
}


def webhook_events_for_log(*, session_id: str, workspace_id: str | None, events: list[Any]) -> None:
    """Emit the webhook events of freshly appended session log events (called by
    `sessions.services.events_append`, in its transaction). Only primary-thread status changes
    count; a child thread's changes arrive as the cross-posted `session.thread_status_*`."""
    wanted: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        if event.type.startswith("session.status_") and event.thread_id is not None:
            continue
        for hook_type in _FROM_LOG.get(event.type, ()):
            data: dict[str, Any] = {"id": session_id}
            if event.type.startswith("session.thread_"):
                data["session_thread_id"] = (event.payload or {}).get("session_thread_id", "")
            wanted.append((hook_type, data))
        if event.type == "session.status_idle":
            reason = ((event.payload or {}).get("stop_reason") or {}).get("type")
            if reason in _STOP_REASON_EVENTS:
                wanted.append((_STOP_REASON_EVENTS[reason], {"id": session_id}))
    if not wanted:
        return
    if workspace_id is None:
        from sessions.models import Session

        workspace_id = Session.objects.filter(pk=session_id).values_list("workspace_id", flat=True).first()
        if workspace_id is None:
            return
    # One read of the workspace's enabled endpoints for all of this append's webhook events (on
    # every status change: compiled once, galley/prepared.py).
    endpoints = prepared_rows(
        "webhooks.enabled_endpoints",
        lambda workspace: WebhookEndpoint.objects.filter(workspace_id=workspace, state=EndpointState.ENABLED),
        workspace_id,
    )
    for hook_type, data in wanted:
        webhook_event_emit(
            workspace=workspace_id, type=hook_type, data=data, ordering_key=session_id, endpoints=endpoints
        )


def envelope(event: WebhookEvent) -> dict[str, Any]:
    """The payload, exactly the SDK's BetaWebhookEvent."""
    return {"type": "event", "id": event.pk, "created_at": iso(event.created_at), "data": event.data}


def envelope_body(event: WebhookEvent) -> str:
    return json.dumps(envelope(event), separators=(",", ":"), sort_keys=True)


# === Endpoints (/v1/organizations/webhooks) =======================================================


def endpoint_wire(endpoint: WebhookEndpoint, *, signing_secret: str | None = None) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "id": endpoint.pk,
        "type": "webhook_endpoint",
        "name": endpoint.name,
        "description": endpoint.description,
        "url": endpoint.url,
        "enabled_events": list(endpoint.enabled_events),
        "state": endpoint.state,
        "disabled_reason": endpoint.disabled_reason,
        "created_at": iso(endpoint.created_at),
        "updated_at": iso(endpoint.updated_at),
    }
    if signing_secret is not None:
        wire["signing_secret"] = signing_secret
    return wire


def check_url(value: Any, field: str = "url") -> str:
    """An https URL (http too, and any host, when GALLEY_WEBHOOK_ALLOW_PRIVATE is set). Names that
    resolve to private addresses are refused again at delivery time by the outbound guard."""
    url = d.expect_str(value, field, min_len=1, max_len=2048).strip()
    allow_private = settings.GALLEY_WEBHOOK_ALLOW_PRIVATE
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise bad_request(f"{field}: {url!r} is not a valid URL.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise bad_request(
            f"{field}: must be an https:// URL"
            + ("." if allow_private else " (plain http is allowed only with GALLEY_WEBHOOK_ALLOW_PRIVATE=1).")
        )
    if not host:
        raise bad_request(f"{field}: {url!r} has no host.")
    if parts.username or parts.password:
        raise bad_request(f"{field}: must not carry credentials.")
    if not allow_private:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise bad_request(f"{field}: {host!r} is not a public host.")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None and not address.is_global:
            raise bad_request(f"{field}: {host} is not a public address.")
    return url


def check_enabled_events(value: Any, field: str = "enabled_events") -> list[str]:
    items = d.expect_list(value, field)
    out: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise bad_request(f"{field}[{index}]: expected a string.")
        if item != "*" and item not in _EVENT_TYPE_SET:
            raise bad_request(f"{field}[{index}]: unknown event type {item!r}.")
        if item not in out:
            out.append(item)
    return out


def _check_keys(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field.")
    return body


def endpoint_create(*, workspace: Workspace, body: dict[str, Any]) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (`whsec_...`), which no later read returns."""
    _check_keys(body, ("url", "enabled_events", "name", "description"))
    if body.get("url") is None:
        raise bad_request("url: field required.")
    if body.get("enabled_events") is None:
        raise bad_request("enabled_events: field required.")
    url = check_url(body["url"])
    events = check_enabled_events(body["enabled_events"])
    if not events:
        raise bad_request("enabled_events: must list at least one event type.")
    name = d.optional_str(body.get("name"), "name", max_len=255) or ""
    description = d.optional_str(body.get("description"), "description", max_len=4096) or ""
    secret = signing.new_secret()
    with transaction.atomic():
        count = WebhookEndpoint.objects.filter(workspace=workspace).count()
        if count >= MAX_ENDPOINTS_PER_WORKSPACE:
            raise bad_request(
                f"A workspace can have at most {MAX_ENDPOINTS_PER_WORKSPACE} webhook endpoints."
            )
        endpoint = WebhookEndpoint.objects.create(
            id=new_id("whep"),
            workspace=workspace,
            name=name,
            description=description,
            url=url,
            enabled_events=events,
            secret_ciphertext=crypto.encrypt({"secret": secret}),
        )
    return endpoint, secret


def endpoint_get(*, workspace: Workspace, endpoint_id: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, workspace=workspace).first()
    if endpoint is None:
        raise not_found("webhook endpoint", endpoint_id)
    return endpoint


def endpoint_list(
    *,
    workspace: Workspace,
    limit: int | None = None,
    order: str | None = None,
    after_id: str | None = None,
    before_id: str | None = None,
) -> tuple[list[WebhookEndpoint], bool]:
    """One page in `SyncPage` terms (first_id/last_id cursors): `after_id` continues after that
    endpoint in list order; `before_id` gives the first `limit` endpoints before it."""
    if limit is None or limit == 0:
        limit = 20
    if limit < 0 or limit > 100:
        raise bad_request(f"limit: must be between 1 and 100, got {limit}.")
    order = order or "desc"
    if order not in ("asc", "desc"):
        raise bad_request(f"order: must be 'asc' or 'desc', got {order!r}.")
    if after_id and before_id:
        raise bad_request("after_id, before_id: give at most one.")
    qs = WebhookEndpoint.objects.filter(workspace=workspace)
    sort = ("created_at", "id") if order == "asc" else ("-created_at", "-id")
    cursor_id = after_id or before_id
    if cursor_id:
        anchor = qs.filter(pk=cursor_id).first()
        if anchor is None:
            raise bad_request(
                f"{'after_id' if after_id else 'before_id'}: no webhook endpoint {cursor_id!r}."
            )
        later = Q(created_at__gt=anchor.created_at) | Q(created_at=anchor.created_at, id__gt=anchor.pk)
        earlier = Q(created_at__lt=anchor.created_at) | Q(created_at=anchor.created_at, id__lt=anchor.pk)
        after_in_order = later if order == "asc" else earlier
        before_in_order = earlier if order == "asc" else later
        qs = qs.filter(after_in_order if after_id else before_in_order)
    rows = list(qs.order_by(*sort)[: limit + 1])
    return rows[:limit], len(rows) > limit


def endpoint_update(*, endpoint: WebhookEndpoint, body: dict[str, Any]) -> WebhookEndpoint:
    _check_keys(body, ("url", "enabled_events", "name", "description", "state"))
    fields: dict[str, Any] = {}
    if body.get("url") is not None:
        fields["url"] = check_url(body["url"])
    if body.get("enabled_events") is not None:
        events = check_enabled_events(body["enabled_events"])
        if events:  # the SDK: an empty list leaves the set unchanged
            fields["enabled_events"] = events
    if "name" in body:
        fields["name"] = d.optional_str(body["name"], "name", max_len=255) or ""
    if "description" in body:
        fields["description"] = d.optional_str(body["description"], "description", max_len=4096) or ""
    if body.get("state") is not None:
        state = body["state"]
        if state not in (EndpointState.ENABLED, EndpointState.DISABLED):
            raise bad_request(f"state: must be 'enabled' or 'disabled', got {state!r}.")
        fields["state"] = state
        fields["disabled_reason"] = ""
        if state == EndpointState.ENABLED:
            fields["consecutive_failures"] = 0
    fields["updated_at"] = timezone.now()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(**fields)
    endpoint.refresh_from_db()
    if fields.get("state") == EndpointState.ENABLED:
        _enqueue_due(endpoint_id=endpoint.pk)
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> dict[str, str]:
    endpoint_id = endpoint.pk
    endpoint.delete()  # deliveries and attempts cascade; events without deliveries stay as history
    return {"id": endpoint_id, "type": "webhook_endpoint_deleted"}


def endpoint_rotate_secret(*, endpoint: WebhookEndpoint) -> str:
    """A new signing secret. During GALLEY_WEBHOOK_SECRET_GRACE_SECONDS both the new and the
    previous secret sign each delivery, so receivers can switch keys without losing one."""
    secret = signing.new_secret()
    now = timezone.now()
    grace = timedelta(seconds=settings.GALLEY_WEBHOOK_SECRET_GRACE_SECONDS)
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        locked.previous_secret_ciphertext = locked.secret_ciphertext if grace else ""
        locked.previous_secret_expires_at = now + grace if grace else None
        locked.secret_ciphertext = crypto.encrypt({"secret": secret})
        locked.updated_at = now
        locked.save()
    endpoint.refresh_from_db()
    return secret


def webhook_secrets_rotate_keys() -> int:
    """Re-encrypt the signing secrets with the newest vault key (part of `rotate_vault_keys`)."""
    count = 0
    for endpoint in WebhookEndpoint.objects.all():
        endpoint.secret_ciphertext = crypto.rotate(endpoint.secret_ciphertext)
        if endpoint.previous_secret_ciphertext:
            endpoint.previous_secret_ciphertext = crypto.rotate(endpoint.previous_secret_ciphertext)
        endpoint.save(update_fields=["secret_ciphertext", "previous_secret_ciphertext"])
        count += 1
    return count


def endpoint_send_test(*, endpoint: WebhookEndpoint) -> WebhookEvent:
    """A `webhook_endpoint.test` event to this endpoint alone, whatever it subscribes to."""
    if endpoint.state != EndpointState.ENABLED:
        raise bad_request(f"webhook endpoint {endpoint.pk!r} is disabled; enable it to send a test event.")
    return _event_insert(
        workspace_id=endpoint.workspace_id,
        type=TEST_EVENT_TYPE,
        data={"id": endpoint.pk},
        ordering_key=None,
        to=[endpoint],
    )


def delivery_redeliver(*, endpoint: WebhookEndpoint, delivery_id: int) -> WebhookDelivery:
    """Send an event again (same id, so receivers still deduplicate it) as a new delivery."""
    old = WebhookDelivery.objects.filter(pk=delivery_id, endpoint=endpoint).select_related("event").first()
    if old is None:
        raise not_found("webhook delivery", str(delivery_id))
    if endpoint.state != EndpointState.ENABLED:
        raise bad_request(f"webhook endpoint {endpoint.pk!r} is disabled; enable it to redeliver.")
    now = timezone.now()
    with transaction.atomic():
        new = WebhookDelivery.objects.create(
            event=old.event,
            endpoint=endpoint,
            ordering_key=old.ordering_key,
            next_attempt_at=now,
            created_at=now,
        )
        transaction.on_commit(lambda: _enqueue(endpoint.pk, old.ordering_key))
    return new


# === Delivery =====================================================================================


def _retry_delay(attempts: int) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones (None: give up), +-10% jitter."""
    schedule = settings.GALLEY_WEBHOOK_RETRY_SCHEDULE
    if attempts > len(schedule):
        return None
    return float(schedule[attempts - 1]) * random.uniform(0.9, 1.1)


def deliveries_run(*, endpoint_id: str, ordering_key: str) -> int:
    """Deliver the due deliveries of one (endpoint, ordering key) in order, oldest first, stopping
    at the first one that is not due (a later one never overtakes an earlier one). Safe to run
    concurrently and twice: each attempt is claimed with a conditional UPDATE. Returns the number
    of attempts made."""
    made = 0
    while True:
        now = timezone.now()
        head = (
            WebhookDelivery.objects.filter(
                endpoint_id=endpoint_id, ordering_key=ordering_key, state=DeliveryState.PENDING
            )
            .order_by("id")
            .select_related("endpoint", "event")
            .first()
        )
        if head is None or head.next_attempt_at > now or head.endpoint.state != EndpointState.ENABLED:
            return made
        if head.claimed_until is not None and head.claimed_until > now:
            return made  # another worker is attempting it right now
        # Claim: only one worker wins the attempt; a crashed winner's claim runs out and the sweeper
        # hands the delivery to another (at least once, so receivers deduplicate by webhook-id).
        claimed = (
            WebhookDelivery.objects.filter(pk=head.pk, state=DeliveryState.PENDING, attempts=head.attempts)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
            .update(claimed_until=now + timedelta(seconds=settings.GALLEY_WEBHOOK_CLAIM_SECONDS))
        )
        if not claimed:
            return made
        made += 1
        if not _attempt(head):
            return made


def _attempt(delivery: WebhookDelivery) -> bool:
    endpoint = delivery.endpoint
    body = envelope_body(delivery.event)
    started = timezone.now()
    headers = signing.headers(
        msg_id=delivery.event.pk, timestamp=started, body=body, keys=endpoint.signing_secrets(started)
    )
    headers["content-type"] = "application/json"
    headers["user-agent"] = "Galley-Webhooks/1"
    status: int | None = None
    excerpt = ""
    error = ""
    clock = time.monotonic()
    try:
        with http_client(
            allow_private=settings.GALLEY_WEBHOOK_ALLOW_PRIVATE,
            timeout=settings.GALLEY_WEBHOOK_TIMEOUT_SECONDS,
        ) as client:
            with client.stream("POST", endpoint.url, content=body.encode(), headers=headers) as response:
                status = response.status_code
                excerpt = _read_excerpt(response)
    except AddressRefused as exc:
        error = f"refused: {exc}"
    except Exception as exc:  # timeouts, refused connections, TLS errors: all retried
        error = f"{type(exc).__name__}: {exc}"[:500]
    latency_ms = int((time.monotonic() - clock) * 1000)
    ok = status is not None and 200 <= status < 300
    if not ok and not error:
        error = f"HTTP {status}" + (" (redirects are not followed)" if status and 300 <= status < 400 else "")
    _record(
        delivery, ok=ok, status=status, excerpt=excerpt, error=error, latency_ms=latency_ms, started=started
    )
    return ok


def _read_excerpt(response: Any) -> str:
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= RESPONSE_EXCERPT_CHARS * 4:
            break
    return data.decode("utf-8", errors="replace")[:RESPONSE_EXCERPT_CHARS]


def _record(
    delivery: WebhookDelivery,
    *,
    ok: bool,
    status: int | None,
    excerpt: str,
    error: str,
    latency_ms: int,
    started: datetime,
) -> None:
    now = timezone.now()
    number = delivery.attempts + 1
    with transaction.atomic():
        if ok:
            fields: dict[str, Any] = {"state": DeliveryState.DELIVERED, "delivered_at": now}
            next_at = None
            delay = None
        else:
            delay = _retry_delay(number)
            next_at = now + timedelta(seconds=delay) if delay is not None else None
            fields = {"state": DeliveryState.PENDING if next_at else DeliveryState.FAILED}
            if next_at:
                fields["next_attempt_at"] = next_at
        WebhookDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts).update(
            attempts=number, claimed_until=None, last_status_code=status, **fields
        )
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=started,
            status_code=status,
            latency_ms=latency_ms,
            response_excerpt=excerpt,
            error=error,
            next_retry_at=next_at,
        )
        endpoint_id = delivery.endpoint_id
        if delay is not None and delay <= EXACT_RETRY_WITHIN:  # a retry is due (next_at is set)
            # A little after its time: a run before it finds the delivery not yet due and leaves it.
            retry = functools.partial(_enqueue, endpoint_id, delivery.ordering_key, countdown=delay + 0.05)
            transaction.on_commit(retry)
        if ok:
            WebhookEndpoint.objects.filter(pk=endpoint_id).exclude(consecutive_failures=0).update(
                consecutive_failures=0
            )
        else:
            WebhookEndpoint.objects.filter(pk=endpoint_id).update(
                consecutive_failures=F("consecutive_failures") + 1
            )
            limit = settings.GALLEY_WEBHOOK_DISABLE_AFTER_FAILURES
            # Only an enabled endpoint at the limit flips; concurrent failures disable it once.
            WebhookEndpoint.objects.filter(
                pk=endpoint_id, state=EndpointState.ENABLED, consecutive_failures__gte=limit
            ).update(
                state=EndpointState.DISABLED,
                disabled_reason=f"Disabled after {limit} failed delivery attempts in a row (last: {error})."[
                    :512
                ],
                updated_at=now,
            )


def _enqueue_due(*, endpoint_id: str | None = None, now: datetime | None = None) -> int:
    now = now or timezone.now()
    qs = WebhookDelivery.objects.filter(
        state=DeliveryState.PENDING, next_attempt_at__lte=now, endpoint__state=EndpointState.ENABLED
    ).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
    if endpoint_id is not None:
        qs = qs.filter(endpoint_id=endpoint_id)
    pairs = set(qs.values_list("endpoint_id", "ordering_key").order_by().distinct()[:2000])
    for endpoint, key in pairs:
        _enqueue(endpoint, key)
    return len(pairs)


def deliveries_sweep() -> int:
    """Re-enqueue every (endpoint, ordering key) with a due delivery nobody holds: retries whose
    time has come, enqueues lost with a crashed process, claims of killed workers."""
    return _enqueue_due()


def webhook_events_purge(*, now: datetime | None = None) -> int:
    """Delete events (and their delivery log) older than GALLEY_WEBHOOK_RETENTION_DAYS that have
    nothing left to deliver."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.GALLEY_WEBHOOK_RETENTION_DAYS)
    pending = WebhookDelivery.objects.filter(state=DeliveryState.PENDING).values("event_id")
    old = WebhookEvent.objects.filter(created_at__lt=cutoff).exclude(pk__in=pending)
    _, per_model = old.delete()
    return per_model.get(WebhookEvent._meta.label, 0)


def endpoint_deliveries(*, endpoint: WebhookEndpoint, limit: int = 50) -> list[WebhookDelivery]:
    return list(
        WebhookDelivery.objects.filter(endpoint=endpoint)
        .select_related("event")
        .prefetch_related(Prefetch("attempt_rows", queryset=WebhookAttempt.objects.order_by("number")))
        .order_by("-id")[:limit]
    )

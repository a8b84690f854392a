"""Rate limits (api/ratelimit.py): per API key and per workspace on create and other routes, failed
authentications per client address on the API and the console login, 429 `rate_limit_error` with
`retry-after`. The counters live in a SQLite file of the data dir without REDIS_URL (shared by the web
processes of one `serve`) and in Redis with it; the store tests cover both."""

import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from django.test import Client

from api import ratelimit
from tests.live import LiveGalley, live_galley

AGENT = {"name": "limited", "model": "claude-sonnet-4-6"}


def _stores() -> list[Any]:
    stores: list[Any] = [pytest.param("file", id="file")]
    stores.append(
        pytest.param(
            "redis",
            id="redis",
            marks=pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="REDIS_URL is not set"),
        )
    )
    return stores


@pytest.fixture
def unique_prefix(settings) -> str:  # type: ignore[no-untyped-def]
    settings.GALLEY_REDIS_PREFIX = "galley-test-rl-" + secrets.token_hex(4)
    return settings.GALLEY_REDIS_PREFIX


@pytest.fixture(params=_stores())
def store(request, settings, unique_prefix, tmp_path) -> Any:  # type: ignore[no-untyped-def]
    if request.param == "file":
        settings.REDIS_URL = None
        return ratelimit.FileBuckets(tmp_path / "ratelimit.sqlite3")
    return ratelimit.RedisBuckets(os.environ["REDIS_URL"])


def test_a_bucket_spends_its_minute_then_says_how_long_to_wait(store, unique_prefix) -> None:  # type: ignore[no-untyped-def]
    key = f"{unique_prefix}:bucket"
    assert [store.take(key, per_minute=5, cost=1).allowed for _ in range(5)] == [True] * 5
    refused = store.take(key, per_minute=5, cost=1)
    assert not refused.allowed and 10.0 < refused.retry_after <= 12.0  # one token every 12 s
    assert not store.take(f"{unique_prefix}:bucket", per_minute=5, cost=0).allowed  # a peek spends nothing
    assert store.take(f"{unique_prefix}:other", per_minute=5, cost=1).allowed


def test_concurrent_requests_never_overspend_a_bucket(store, unique_prefix) -> None:  # type: ignore[no-untyped-def]
    results: list[bool] = []
    barrier = threading.Barrier(40)

    def hit() -> None:
        barrier.wait()
        results.append(store.take(f"{unique_prefix}:race", per_minute=10, cost=1).allowed)

    threads = [threading.Thread(target=hit) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 10


def test_the_embedded_counters_are_shared_by_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from tests.live import ROOT

    # Four processes take from one bucket of 30 at once, 20 tries each: 30 succeed in all, not 30 each.
    script = (
        "import sys; from pathlib import Path; from api.ratelimit import FileBuckets; "
        "store = FileBuckets(Path(sys.argv[1])); "
        "print(sum(store.take('shared', per_minute=30, cost=1).allowed for _ in range(20)))"
    )
    path = str(tmp_path / "ratelimit.sqlite3")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    allowed = [int(proc.communicate(timeout=120)[0]) for proc in procs]
    assert sum(allowed) == 30, allowed
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["ratelimit.sqlite3"] == 0o600 and set(modes.values()) == {0o600}, modes


@pytest.fixture
def limits(settings, unique_prefix, tmp_path) -> Any:  # type: ignore[no-untyped-def]
    """Low limits on the backend this run is configured with (the data dir's file, or Redis with REDIS_URL),
    with counters no other test has touched."""
    settings.DATA_DIR = tmp_path
    settings.GALLEY_RATE_LIMIT_CREATE_PER_MINUTE = 3
    settings.GALLEY_RATE_LIMIT_READ_PER_MINUTE = 5
    settings.GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE = 100
    settings.GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE = 100
    settings.GALLEY_AUTH_FAILURES_PER_MINUTE = 4
    return settings


def _api(key: str, address: str = "203.0.113.7") -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}", REMOTE_ADDR=address)


def _assert_429(response: Any) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["request_id"].startswith("req_") and response["request-id"] == body["request_id"]
    assert int(response["retry-after"]) >= 1 and int(response["retry-after-ms"]) >= 1


@pytest.mark.django_db
def test_create_routes_and_other_calls_have_their_own_limit_per_key(limits, api_key) -> None:  # type: ignore[no-untyped-def]
    client = _api(api_key)
    for _ in range(3):
        assert client.post("/v1/agents", AGENT, content_type="application/json").status_code == 200
    refused = client.post("/v1/agents", AGENT, content_type="application/json")
    _assert_429(refused)
    assert 15 <= int(refused["retry-after"]) <= 20  # 3 per minute: one every 20 s
    assert "create" in refused.json()["error"]["message"]
    for _ in range(5):
        assert client.get("/v1/agents").status_code == 200
    _assert_429(client.get("/v1/agents"))
    from accounts.services import api_key_create, workspace_get_default

    _key, other = api_key_create(name="other", workspace=workspace_get_default())
    assert _api(other).get("/v1/agents").status_code == 200  # another key has its own buckets


@pytest.mark.django_db
def test_keys_of_one_workspace_share_its_limit(limits, api_key) -> None:  # type: ignore[no-untyped-def]
    from accounts.services import api_key_create, workspace_get_default

    limits.GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE = 4
    _key, second = api_key_create(name="second", workspace=workspace_get_default())
    assert [_api(api_key).get("/v1/agents").status_code for _ in range(2)] == [200, 200]
    assert [_api(second).get("/v1/agents").status_code for _ in range(2)] == [200, 200]
    _assert_429(_api(second).get("/v1/sessions"))


@pytest.mark.django_db
def test_sending_events_counts_as_an_other_call_not_a_create(limits, api_key) -> None:  # type: ignore[no-untyped-def]
    from django.test import RequestFactory

    factory = RequestFactory()
    assert ratelimit.route_class(factory.post("/v1/sessions")) == "create"
    assert ratelimit.route_class(factory.post("/v1/vaults/vlt_1/credentials")) == "create"
    assert ratelimit.route_class(factory.post("/v1/sessions/sesn_1/events")) == "read"
    assert ratelimit.route_class(factory.post("/v1/agents/agent_1")) == "read"  # an update
    assert ratelimit.route_class(factory.post("/v1/agents/agent_1/archive")) == "read"  # an action
    assert ratelimit.route_class(factory.get("/v1/sessions/sesn_1/events/stream")) == "read"


@pytest.mark.django_db
def test_failed_authentications_are_throttled_per_address(limits, api_key) -> None:  # type: ignore[no-untyped-def]
    for _ in range(4):
        assert _api("sk-galley-wrong").get("/v1/agents").status_code == 401
    refused = _api("sk-galley-wrong").get("/v1/agents")
    _assert_429(refused)
    assert "failed authentication" in refused.json()["error"]["message"]
    _assert_429(_api(api_key).get("/v1/agents"))  # even a good key waits: the address is throttled
    assert _api(api_key, address="198.51.100.9").get("/v1/agents").status_code == 200


@pytest.mark.django_db
def test_failed_console_sign_ins_are_throttled_per_address(limits) -> None:  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user("ada", password="correct-horse-battery")
    browser = Client(REMOTE_ADDR="203.0.113.50")
    for _ in range(4):
        assert browser.post("/login", {"username": "ada", "password": "wrong"}).status_code == 400
    refused = browser.post("/login", {"username": "ada", "password": "correct-horse-battery"})
    assert refused.status_code == 429 and int(refused["retry-after"]) >= 1
    assert b"Too many failed sign-ins from this address" in refused.content
    elsewhere = Client(REMOTE_ADDR="203.0.113.51")
    assert (
        elsewhere.post("/login", {"username": "ada", "password": "correct-horse-battery"}).status_code == 302
    )


@pytest.fixture(scope="module")
def limited() -> Iterator[LiveGalley]:
    env = {
        "GALLEY_RATE_LIMIT_CREATE_PER_MINUTE": "3",
        "GALLEY_RATE_LIMIT_READ_PER_MINUTE": "600",
        "GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE": "300",
        "GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE": "600",
        "GALLEY_AUTH_FAILURES_PER_MINUTE": "5",
    }
    with live_galley(env, worker=False) as server:
        yield server


@pytest.mark.slow
def test_the_sdk_gets_a_rate_limit_error_with_retry_after(limited: LiveGalley) -> None:
    client = limited.client()
    for index in range(3):
        client.beta.agents.create(name=f"a{index}", model="claude-sonnet-4-6")
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.beta.agents.create(name="a3", model="claude-sonnet-4-6")
    assert refused.value.status_code == 429
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert refused.value.request_id and refused.value.request_id.startswith("req_")
    assert 15 <= int(refused.value.response.headers["retry-after"]) <= 20
    assert len(client.beta.agents.list().data) == 3  # reads have their own allowance


@pytest.mark.slow
def test_the_sdk_gets_429_after_repeated_bad_keys(limited: LiveGalley) -> None:
    bad = anthropic.Anthropic(base_url=limited.base_url, api_key="sk-galley-nope", max_retries=0)
    for _ in range(5):
        with pytest.raises(anthropic.AuthenticationError):
            bad.beta.agents.list()
    with pytest.raises(anthropic.RateLimitError) as refused:
        bad.beta.agents.list()
    assert int(refused.value.response.headers["retry-after"]) >= 1



@pytest.fixture(scope="module")
def limited_two_web() -> Iterator[LiveGalley]:
    # The embedded default (no Redis), whatever this run is configured with.
    env = {
        "GALLEY_RATE_LIMIT_CREATE_PER_MINUTE": "3",
        "GALLEY_RATE_LIMIT_READ_PER_MINUTE": "600",
        "REDIS_URL": "",
    }
    with live_galley(env, worker=False, serve_args=("--web-workers", "2")) as server:
        yield server


def _web_processes_counting(live: LiveGalley) -> tuple[int, int]:
    """(web processes of this serve, those that have the data dir's counter file open)."""
    assert live.proc is not None
    counter = str(live.data_dir / "ratelimit.sqlite3")
    web = counting = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline").read()
            if int(stat.rsplit(")", 1)[1].split()[1]) != live.proc.pid or "galley.webserver" not in cmdline:
                continue
            web += 1
            links = {os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")}
        except OSError:
            continue
        counting += counter in links
    return web, counting


@pytest.mark.slow
def test_two_web_processes_of_one_serve_share_the_limit(limited_two_web: LiveGalley) -> None:
    def fresh() -> anthropic.Anthropic:  # a new connection, so whichever process accepts it answers
        return limited_two_web.client()

    for _ in range(200):  # reads until both processes have answered (each then has the counter file open)
        fresh().beta.agents.list()
        if _web_processes_counting(limited_two_web) == (2, 2):
            break
    assert _web_processes_counting(limited_two_web) == (2, 2)
    outcomes = []
    for index in range(8):
        try:
            fresh().beta.agents.create(name=f"a{index}", model="claude-sonnet-4-6")
            outcomes.append("created")
        except anthropic.RateLimitError:
            outcomes.append("429")
    # 3 per minute for the key across the serve, not 3 per web process.
    assert outcomes.count("created") == 3, outcomes
    assert len(fresh().beta.agents.list().data) == 3

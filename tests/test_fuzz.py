"""Property-based fuzzing of the /v1 API from its own OpenAPI document (schemathesis), against a
live server on loopback: valid and invalid inputs for every documented operation must never get a
5xx, and every 4xx must be JSON in the spec's error shape.

Bounded: about GALLEY_FUZZ_CASES cases in total, split across operations and between valid and invalid
inputs, and GALLEY_FUZZ_SECONDS of wall time at most (what is left over is skipped)."""

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from tests.live import LiveGalley, live_galley

FUZZ_CASES = int(os.environ.get("GALLEY_FUZZ_CASES", "3000"))
FUZZ_SECONDS = float(os.environ.get("GALLEY_FUZZ_SECONDS", "120"))
# CI replays the same cases every run; GALLEY_FUZZ_EXPLORE=1 draws new ones (to hunt, by hand).
FUZZ_EXPLORE = os.environ.get("GALLEY_FUZZ_EXPLORE") == "1"
MIN_PER_MODE = 10


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[LiveGalley]:
    # Its own server and database: generated creates must not leak into other suites' lists.
    # No worker: a generated session must not start model calls.
    with live_galley(worker=False) as server:
        yield server


def error_shape(ctx: Any, response: Any, case: Any) -> None:
    """A 4xx is JSON: {"type": "error", "error": {"type", "message"}, "request_id": "req_..."}."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"{response.status_code} with {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and body.get("type") == "error", body
    error = body.get("error")
    assert isinstance(error, dict), body
    assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), body
    assert str(body.get("request_id", "")).startswith("req_"), body
    return None


@pytest.mark.slow
def test_generated_requests_get_no_server_error_and_well_formed_client_errors(
    fuzz_server: LiveGalley,
) -> None:
    base = fuzz_server.base_url
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert operations, "the OpenAPI document lists no operations"
    assert "ApiKeyAuth" in schema.raw_schema["components"]["securitySchemes"]
    per_mode = max(MIN_PER_MODE, FUZZ_CASES // (2 * len(operations)))
    end = time.monotonic() + FUZZ_SECONDS
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    pairs = [(operation, mode) for operation in operations for mode in modes]
    # Bearer wins over x-api-key on the server: generated (invalid) x-api-key values do not log us out.
    auth = {"Authorization": f"Bearer {fuzz_server.api_key}"}
    ran = 0
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    deadline = [end]

    for index, (operation, mode) in enumerate(pairs):
        # A fair share of the time left, so a slow operation cannot starve the ones after it.
        deadline[0] = time.monotonic() + max(0.0, end - time.monotonic()) / (len(pairs) - index)

        @hypothesis.settings(
            max_examples=per_mode,
            deadline=None,
            database=None,
            derandomize=not FUZZ_EXPLORE,  # the same cases every run: a failure reproduces
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal ran
            if time.monotonic() > deadline[0]:
                return
            ran += 1
            response = case.call_and_validate(
                base_url=base, headers=auth, checks=[not_a_server_error, error_shape], timeout=15
            )
            statuses[response.status_code] += 1

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label} [{mode.value}]: {exc}")

    assert not failures, "\n\n".join(failures)
    print(f"fuzz: {ran} cases over {len(operations)} operations, statuses {dict(sorted(statuses.items()))}")
    # The run must really have exercised the API (the time budget must not eat it all).
    assert ran >= min(FUZZ_CASES, len(operations) * 2 * MIN_PER_MODE) // 2, ran
    # Generated requests authenticate (the document carries the API key scheme): some succeed.
    assert sum(n for status, n in statuses.items() if status < 300) > 0, statuses


# --- Regressions the fuzzer found (fast; they run without the slow marker) ---------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("get", "/v1/files?ids[]=a%00b", None, "ids[]"),
        ("get", "/v1/files/file_%00x", None, "path"),
        ("post", "/v1/sessions/sesn_x/resources", '{"type": "file", "file_id": "f\\u0000"}', "file_id"),
        ("post", "/v1/sessions/sesn_x/resources", '{"type": "file", "file_id": "\\ud800"}', "file_id"),
        ("post", "/v1/agents", '{"tools": [{"name": "x\\u0000"}]}', "tools[0].name"),
    ],
)
def test_text_no_database_can_store_is_a_400_naming_where_it_is(api_key, method, path, body, field):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    if body is None:
        response = getattr(client, method)(path)
    else:
        response = getattr(client, method)(path, body, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(field + ":"), error["message"]


def test_an_escaped_backslash_before_u0000_is_not_mistaken_for_nul(api_key):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    body = '{"type": "file", "file_id": "\\\\u0000"}'  # the JSON text \\u0000: a backslash, then "u0000"
    response = client.post("/v1/sessions/sesn_x/resources", body, content_type="application/json")
    assert response.status_code == 404  # reached the endpoint: the session does not exist


@pytest.mark.parametrize("path", ["/v1/agents", "/v1/sessions"])
@pytest.mark.parametrize(
    ("bound", "status"),
    [
        ("0267-02-15T03:17:00+23:27", 200),  # past PostgreSQL's +-15:59: converted to UTC first
        ("0001-01-01T00:00:00+01:00", 400),  # before year 1 in UTC: out of range, named
    ],
)
def test_created_at_bounds_with_any_python_offset_are_answered(api_key, path, bound, status):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    response = client.get(path, {"created_at[gte]": bound})
    assert response.status_code == status, response.content
    if status == 400:
        assert response.json()["error"]["message"].startswith("created_at[gte]:")

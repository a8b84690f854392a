"""Console pages for memory stores (browse, view and edit with a precondition, versions with a
diff, redact) and the outcome and budget panel of the session page."""

import pytest

from accounts.models import Role
from memory import services as memory
from memory.models import Memory, MemoryVersion
from tests.console_factories import (
    add_events,
    client_for,
    fast_passwords,  # noqa: F401
    make_session,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(workspace):  # type: ignore[no-untyped-def]
    made = memory.store_create(workspace=workspace, body={"name": "Notes", "description": "Team notes"})
    memory.memory_create(store=made, path="/projects/galley.md", content="line one\nline two\n", actor=None)
    memory.memory_create(store=made, path="/readme.md", content="hello", actor=None)
    return made


def test_a_viewer_browses_a_store_by_folder(workspace, store):
    client = client_for(workspace, Role.VIEWER)
    assert "Notes" in client.get("/memory").content.decode()
    page = client.get(f"/memory/{store.pk}").content.decode()
    assert "/projects/" in page and "/readme.md" in page and "/projects/galley.md" not in page
    inside = client.get(f"/memory/{store.pk}?prefix=/projects/").content.decode()
    assert "/projects/galley.md" in inside
    assert client.post(f"/memory/{store.pk}", {"path": "/x.md", "content": "x"}).status_code == 404
    assert client.post(f"/memory/{store.pk}/archive").status_code == 403


def test_an_editor_creates_edits_and_sees_the_diff_attributed_to_them(workspace, store):
    client = client_for(workspace, Role.EDITOR)
    created = client.post(f"/memory/{store.pk}", {"path": "/new.md", "content": "first"})
    assert created.status_code == 302
    new = Memory.objects.get(store=store, path="/new.md")
    [version] = MemoryVersion.objects.filter(memory_id=new.pk)
    assert version.created_by["type"] == "user_actor"

    bad = client.post(f"/memory/{store.pk}", {"path": "/a/../b", "content": "x"})
    assert bad.status_code == 400 and "&#x27;..&#x27;" in bad.content.decode()

    galley = Memory.objects.get(store=store, path="/projects/galley.md")
    url = f"/memory/{store.pk}/m/{galley.pk}"
    saved = client.post(
        url, {"sha": galley.content_sha256, "path": galley.path, "content": "line one\nline 2\n"}
    )
    assert saved.status_code == 302
    page = client.get(url).content.decode()
    assert 'class="del">line two' in page and 'class="add">line 2' in page
    assert "user <code>user_" in page

    stale = client.post(url, {"sha": galley.content_sha256, "path": galley.path, "content": "overwrite"})
    assert stale.status_code == 400 and "Someone changed this memory" in stale.content.decode()
    assert Memory.objects.get(pk=galley.pk).content == "line one\nline 2\n"


def test_an_editor_redacts_an_old_version_and_deletes_a_memory(workspace, store):
    client = client_for(workspace, Role.EDITOR)
    readme = Memory.objects.get(store=store, path="/readme.md")
    first_version = readme.memory_version_id
    memory.memory_update(store=store, memory=readme, body={"content": "hello again"}, actor=None)
    response = client.post(f"/memory/{store.pk}/versions/{first_version}/redact")
    assert response.status_code == 302
    redacted = MemoryVersion.objects.get(pk=first_version)
    assert redacted.redacted_at is not None and redacted.content is None
    assert redacted.redacted_by["type"] == "user_actor"
    readme.refresh_from_db()
    deleted = client.post(f"/memory/{store.pk}/m/{readme.pk}/delete", {"sha": readme.content_sha256})
    assert deleted.status_code == 302 and not Memory.objects.filter(pk=readme.pk).exists()
    history = client.get(f"/memory/{store.pk}/m/{readme.pk}").content.decode()
    assert "Deleted memory" in history and "Redacted" in history


def test_the_session_page_shows_the_outcome_its_evaluations_and_the_budget(workspace):
    session = make_session(
        workspace, budget={"type": "limit", "max_list_cost": {"amount": "50", "currency": "USD"}}
    )
    define = {
        "outcome_id": "outc_1",
        "description": "Write the report",
        "rubric": {"type": "text", "content": "Two sources"},
        "max_iterations": 3,
    }
    add_events(
        session,
        [
            ("user.define_outcome", define),
            ("span.outcome_evaluation_start", {"outcome_id": "outc_1", "iteration": 0}),
            (
                "span.outcome_evaluation_end",
                {
                    "outcome_id": "outc_1",
                    "iteration": 0,
                    "result": "needs_revision",
                    "explanation": "One source only.",
                },
            ),
            ("span.outcome_evaluation_start", {"outcome_id": "outc_1", "iteration": 1}),
            (
                "span.outcome_evaluation_end",
                {"outcome_id": "outc_1", "iteration": 1, "result": "satisfied", "explanation": "Both cited."},
            ),
        ],
    )
    type(session).objects.filter(pk=session.pk).update(token_cost_micros=120_000)
    page = client_for(workspace, Role.VIEWER).get(f"/sessions/{session.pk}").content.decode()
    assert "Write the report" in page and "Two sources" in page
    assert "Evaluation 1 of 3: needs_revision" in page and "One source only." in page
    assert "Evaluation 2 of 3: satisfied" in page and "Both cited." in page
    assert "Budget: $0.12 of $0.50 used" in page

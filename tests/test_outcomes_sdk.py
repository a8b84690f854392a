"""An outcome through the official SDK (strict validation) against a live Galley whose worker
talks to a scripted model; the scripted model answers the grader's requests by matching them."""

import json
import secrets
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from harness.outcome_prompts import GRADER_SYSTEM
from tests.live import LiveGalley, live_galley
from tests.live_fixtures import until_idle
from tests.model_server import Reply, ScriptedModel, scripted_model, text

pytestmark = pytest.mark.slow

VERDICTS: list[tuple[str, str]] = []


def responder(body: dict[str, Any]) -> Reply:
    if any(block.get("text") == GRADER_SYSTEM for block in body.get("system") or []):
        result, explanation = VERDICTS.pop(0) if VERDICTS else ("satisfied", "All criteria met.")
        # A slow grader, so the heartbeat (every 0.2 s here) is seen while it works.
        return text(json.dumps({"result": result, "explanation": explanation}), delay=1.0)
    if "needs revision" in json.dumps(body["messages"][-1]):
        return text("Revised: the report now cites two sources.")
    return text("A report citing one source.")


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model(responder) as server:
        yield server


@pytest.fixture(scope="module")
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": model.base_url,
        "GALLEY_OUTCOME_HEARTBEAT_SECONDS": "0.2",
    }
    with live_galley(env) as server:
        yield server


def test_an_outcome_is_graded_revised_and_satisfied(galley, model) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(
        name=f"outcome-{suffix}", model="claude-sonnet-4-6", system="Agent prompt."
    )
    environment = client.beta.environments.create(name=f"outcome-env-{suffix}")
    rubric = client.beta.files.upload(file=("rubric.md", b"The report cites two sources.", "text/markdown"))
    VERDICTS[:] = [("needs_revision", "Only one source is cited.")]
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    with client.beta.sessions.events.stream(session.id) as stream:
        [sent] = client.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.define_outcome",
                    "description": "Write a short report",
                    "rubric": {"type": "file", "file_id": rubric.id},
                    "max_iterations": 3,
                }
            ],
        ).data
        assert sent.type == "user.define_outcome" and sent.outcome_id.startswith("outc_")
        assert sent.processed_at is not None
        seen = until_idle(stream, limit=400)
    types = [e.type for e in seen]
    assert types.count("span.outcome_evaluation_start") == 2
    ends = [e for e in seen if e.type == "span.outcome_evaluation_end"]
    assert [(e.iteration, e.result) for e in ends] == [(0, "needs_revision"), (1, "satisfied")]
    assert ends[0].explanation == "Only one source is cited."
    assert all(e.outcome_id == sent.outcome_id for e in ends)
    # Each evaluation beats while its grader works, between its start and its end.
    spans = [e for e in seen if e.type.startswith("span.outcome_evaluation_")]
    for iteration in (0, 1):
        mine = [e.type for e in spans if e.iteration == iteration]
        assert mine[0] == "span.outcome_evaluation_start" and mine[-1] == "span.outcome_evaluation_end"
        assert set(mine[1:-1]) == {"span.outcome_evaluation_ongoing"}, mine
    assert [e.type for e in spans].index("span.outcome_evaluation_end") < [
        i for i, e in enumerate(spans) if e.iteration == 1
    ][0]  # the second evaluation's beats come after the first one ended
    assert all(e.outcome_id == sent.outcome_id for e in spans)
    messages = [e.content[0].text for e in seen if e.type == "agent.message"]
    assert messages == ["A report citing one source.", "Revised: the report now cites two sources."]
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"

    done = client.beta.sessions.retrieve(session.id)
    [evaluation] = done.outcome_evaluations
    assert evaluation.outcome_id == sent.outcome_id and evaluation.result == "satisfied"
    assert evaluation.iteration == 1 and evaluation.completed_at is not None
    grader_prompts = [r for r in model.requests if r["system"][0]["text"] == GRADER_SYSTEM]
    assert len(grader_prompts) == 2
    assert "The report cites two sources." in json.dumps(grader_prompts[0]["messages"])
    assert "Agent prompt." not in json.dumps(grader_prompts[0])


def test_a_missing_rubric_file_is_refused_and_nothing_is_written(galley) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"outcome2-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"outcome2-env-{suffix}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.define_outcome",
                    "description": "x",
                    "rubric": {"type": "file", "file_id": "file_missing"},
                }
            ],
        )
    assert "rubric.file_id" in info.value.message
    assert list(client.beta.sessions.events.list(session.id)) == []

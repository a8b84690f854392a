"""The text of outcomes (spec 7.5) as the agent and the grader read it. Kept apart from the loop
(outcomes.py) so the context builder can render outcome turns without importing the harness."""

import functools
from typing import Any

RUBRIC_MAX_BYTES = 65_536

GRADER_SYSTEM = (
    "You are a grader. You judge, independently and strictly, whether an agent's work meets the "
    "outcome it was given, using only the rubric as the standard. You see the outcome, the rubric, "
    "a transcript of the agent's work and the files it produced. Reply with exactly one JSON object "
    'and nothing else: {"result": "satisfied" | "needs_revision" | "failed", "explanation": "..."}. '
    "Use satisfied only when every criterion is met. Use needs_revision when some criterion is not "
    "met yet and the agent could fix it; the explanation then says precisely which criteria fail "
    "and what to change, addressed to the agent. Use failed only when the rubric cannot apply to "
    "the deliverables at all."
)


@functools.lru_cache(maxsize=256)
def rubric_file_text(file_id: str) -> str:
    """A file rubric's text (files are immutable, so it is cached by id). Checked to exist and be
    text when the outcome was defined."""
    from files.models import File
    from files.services import file_open

    found = File.objects.filter(pk=file_id).select_related("workspace").first()
    if found is None:
        return f"(the rubric file {file_id} no longer exists)"
    _, handle = file_open(workspace=found.workspace, file_id=file_id)
    with handle:
        data = handle.read(RUBRIC_MAX_BYTES + 1)
    text = data[:RUBRIC_MAX_BYTES].decode("utf-8", errors="replace")
    return text + ("\n(rubric truncated)" if len(data) > RUBRIC_MAX_BYTES else "")


def rubric_text(rubric: dict[str, Any]) -> str:
    if rubric.get("type") == "file":
        return rubric_file_text(str(rubric.get("file_id", "")))
    return str(rubric.get("content", ""))


def define_turn(payload: dict[str, Any]) -> str:
    return (
        "Your task is an outcome with explicit success criteria.\n\n"
        f"Outcome: {payload.get('description', '')}\n\n"
        f"Rubric (how your result will be graded):\n{rubric_text(payload.get('rubric') or {})}\n\n"
        "Work on it now. When you end your turn, a separate grader checks your result against the "
        "rubric and may send you feedback to act on."
    )


def evaluation_turn(payload: dict[str, Any]) -> str | None:
    """The user turn an evaluation's end gives the agent: feedback to act on, or the final note
    after the last allowed evaluation. Terminal verdicts give none."""
    result = payload.get("result")
    explanation = payload.get("explanation") or ""
    number = int(payload.get("iteration", 0)) + 1
    if result == "needs_revision":
        return (
            f"The grader reviewed your work against the rubric (evaluation {number}) and found that it "
            f"needs revision:\n\n{explanation}\n\nRevise your work to meet the rubric, then end your turn."
        )
    if result == "max_iterations_reached":
        return (
            f"The grader's review (evaluation {number}, the last one allowed):\n\n{explanation}\n\n"
            "No further evaluations will run. Briefly state where the work stands and end your turn."
        )
    return None


def grader_request_text(
    *, define: dict[str, Any], transcript: str, outputs: list[tuple[str, str]], iteration: int
) -> str:
    files = (
        "\n\n".join(f"--- {name} ---\n{content}" for name, content in outputs)
        if outputs
        else "(the agent produced no files in /mnt/session/outputs)"
    )
    return (
        f"Outcome: {define.get('description', '')}\n\n"
        f"Rubric:\n{rubric_text(define.get('rubric') or {})}\n\n"
        f"This is evaluation {iteration + 1} of at most {define.get('max_iterations', 3)}.\n\n"
        f"Transcript of the agent's work:\n{transcript}\n\n"
        f"Files the agent produced:\n{files}\n\n"
        "Judge the work against the rubric and reply with the JSON object only."
    )

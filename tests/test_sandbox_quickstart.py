"""The quickstart's Fibonacci task, end to end through the harness and a scripted model: a script is written
and run inside a real sandbox, and a second turn (on a fresh shell, as on another worker) reads the file
back."""

import pytest

from sessions.sandbox import services

harness_helpers = pytest.importorskip("tests.harness_helpers")  # the harness (issue 3) lands separately
model_server = pytest.importorskip("tests.model_server")

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]

FIB = (
    "a, b = 0, 1\n"
    "out = []\n"
    "for _ in range(10):\n"
    "    out.append(a)\n"
    "    a, b = b, a + b\n"
    "print(' '.join(map(str, out)))\n"
)


@pytest.fixture
def model(settings, sandbox_root):  # type: ignore[no-untyped-def]
    from sessions.harness.providers.anthropic import AnthropicProvider

    with model_server.scripted_model() as server:
        harness_helpers.use_scripted_model(settings, server)
        yield server
        AnthropicProvider._shared = None


def _results(session):  # type: ignore[no-untyped-def]
    return [e.payload for e in harness_helpers.events_of(session, "agent.tool_result")]


def _text(payload: dict) -> str:
    return "\n".join(b.get("text", "") for b in payload["content"] if b.get("type") == "text")


def test_fibonacci_script_is_written_run_and_read_back(model) -> None:  # type: ignore[no-untyped-def]
    h, m = harness_helpers, model_server
    session = h.make_session(tools=[h.TOOLSET_ALL])
    model.push(
        m.tool_call(
            "write", {"file_path": "/workspace/fib.py", "content": FIB}, say="I'll write the script."
        ),
        m.tool_call("bash", {"command": "python3 fib.py"}),
        m.text("The first ten Fibonacci numbers are 0 1 1 2 3 5 8 13 21 34."),
    )
    h.say(session, "Write a Python script that prints the first 10 Fibonacci numbers, then run it.")
    h.step(session)
    results = _results(session)
    assert [r["is_error"] for r in results] == [False, False], results
    assert _text(results[1]) == "0 1 1 2 3 5 8 13 21 34"
    assert (sandbox_path := services.sandbox_root(session.id) / "workspace" / "fib.py").read_text() == FIB
    assert h.log_types(session)[-1] == "session.status_idle"

    # The next turn may run on another worker: this one forgets its shell.
    services.sandbox_stop(services._registry.pop(session.id))
    model.push(m.tool_call("read", {"file_path": "fib.py"}), m.text("Here it is."))
    h.say(session, "Show me the script.")
    h.step(session)
    results = _results(session)
    assert not results[2]["is_error"] and _text(results[2]) == FIB
    assert sandbox_path.exists()

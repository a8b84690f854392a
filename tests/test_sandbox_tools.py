"""Each toolset tool against a real bubblewrap sandbox, through run_tool (the harness's entry point)."""

import base64
import threading
import time

import pytest

from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db]


def test_bash_runs_in_workspace_as_unprivileged_user(make_sandbox_session):
    session = make_sandbox_session()
    out = run(session, "bash", command="pwd; id -u; echo hello")
    assert not out.is_error, text(out)
    assert text(out).split("\n") == ["/workspace", "1000", "hello"]


def test_bash_keeps_cwd_and_exports_between_calls(make_sandbox_session):
    session = make_sandbox_session()
    assert not run(session, "bash", command="mkdir -p sub && cd sub && export FOO=bar && LOCAL=1").is_error
    out = run(session, "bash", command='pwd; echo "$FOO"')
    assert text(out) == "/workspace/sub\nbar"


def test_bash_state_survives_a_killed_sandbox_process(make_sandbox_session):
    from sandboxes import services

    session = make_sandbox_session()
    run(session, "bash", command="mkdir -p deep && cd deep && export KEEP=yes && echo data > f.txt")
    live = services._registry[session.id]
    live.shell.kill()  # as if the sandbox process died (or the worker restarted)
    out = run(session, "bash", command='pwd; echo "$KEEP"; cat f.txt')
    assert text(out) == "/workspace/deep\nyes\ndata"


def test_bash_state_survives_a_new_worker_process(make_sandbox_session):
    from sandboxes import services

    session = make_sandbox_session()
    run(session, "bash", command="cd /tmp && export W=1 && echo x > /workspace/kept")
    services.sandbox_stop(services._registry.pop(session.id))  # a different worker knows nothing of it
    out = run(session, "bash", command='pwd; echo "$W"; cat /workspace/kept')
    assert text(out) == "/tmp\n1\nx"


def test_bash_nonzero_exit_is_an_error_with_output(make_sandbox_session):
    session = make_sandbox_session()
    out = run(session, "bash", command="echo oops >&2; exit 3")
    assert out.is_error
    assert "oops" in text(out)
    out = run(session, "bash", command="echo 'unterminated")
    assert out.is_error and "unexpected EOF" in text(out)
    assert text(run(session, "bash", command="echo still-alive")) == "still-alive"


def test_bash_restart_and_missing_command(make_sandbox_session):
    session = make_sandbox_session()
    run(session, "bash", command="export GONE=1; cd /tmp")
    assert text(run(session, "bash", restart=True)) == "bash session restarted"
    assert text(run(session, "bash", command='pwd; echo "[$GONE]"')) == "/workspace\n[]"
    assert run(session, "bash").is_error
    assert "command is required" in text(run(session, "bash", command=""))


def test_bash_timeout_ms_kills_the_command(make_sandbox_session):
    session = make_sandbox_session()
    started = time.monotonic()
    out = run(session, "bash", command="sleep 30", timeout_ms=500)
    assert out.is_error and "timed out after 0.5s" in text(out)
    assert time.monotonic() - started < 5
    assert text(run(session, "bash", command="echo after")) == "after"


def test_bash_cancel_stops_within_a_second(make_sandbox_session):
    from sandboxes.toolset import run_tool

    session = make_sandbox_session()
    run(session, "bash", command="true")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    out = run_tool(
        session=session, name="bash", tool_input={"command": "sleep 60"}, tool_use_id="t", cancel=cancel
    )
    assert out.is_error and "interrupted" in text(out)
    assert time.monotonic() - started < 1.5


def test_write_read_edit_roundtrip_with_sandbox_paths(make_sandbox_session):
    session = make_sandbox_session()
    out = run(session, "write", file_path="/workspace/pkg/fib.py", content="a = 1\nb = 2\nc = 3\n")
    assert not out.is_error and "/workspace/pkg/fib.py" in text(out)
    assert text(run(session, "read", file_path="pkg/fib.py")) == "a = 1\nb = 2\nc = 3\n"
    assert text(run(session, "read", file_path="/workspace/pkg/fib.py", view_range=[2, 3])) == "b = 2\nc = 3"
    assert not run(
        session, "edit", file_path="/workspace/pkg/fib.py", old_string="b = 2", new_string="b = 20"
    ).is_error
    # The sandbox user owns what the worker wrote, so it can change it.
    out = run(
        session,
        "bash",
        command="echo d = 4 >> pkg/fib.py && python3 -c 'exec(open(\"pkg/fib.py\").read()); print(b)'",
    )
    assert text(out) == "20", text(out)


def test_edit_errors_follow_the_spec(make_sandbox_session):
    session = make_sandbox_session()
    run(session, "write", file_path="x.txt", content="same same")
    out = run(session, "edit", file_path="x.txt", old_string="same", new_string="diff")
    assert (
        out.is_error
        and "appears 2 times" in text(out)
        and "/workspace/x.txt" not in text(out).replace("x.txt", "")
    )
    out = run(session, "edit", file_path="x.txt", old_string="nope", new_string="diff")
    assert out.is_error and "not found" in text(out)
    assert not run(
        session, "edit", file_path="x.txt", old_string="same", new_string="diff", replace_all=True
    ).is_error
    assert text(run(session, "read", file_path="x.txt")) == "diff diff"


def test_read_image_comes_back_as_an_image_block(make_sandbox_session):
    session = make_sandbox_session()
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
    run(session, "bash", command=f"echo {base64.b64encode(png).decode()} | base64 -d > dot.png")
    out = run(session, "read", file_path="/workspace/dot.png")
    assert not out.is_error
    assert out.content[0]["type"] == "image" and out.content[0]["source"]["media_type"] == "image/png"


def test_glob_and_grep_show_sandbox_paths(make_sandbox_session, sandbox_root):
    session = make_sandbox_session()
    run(session, "bash", command="mkdir -p src && echo 'def fib(n): pass' > src/a.py && echo 'x' > src/b.txt")
    out = text(run(session, "glob", pattern="**/*.py"))
    assert out == "/workspace/src/a.py"
    out = text(run(session, "grep", pattern="def fib", path="/workspace/src"))
    assert out == "/workspace/src/a.py:1:def fib(n): pass"
    assert str(sandbox_root) not in out


def test_file_tools_refuse_paths_outside_the_sandbox(make_sandbox_session):
    session = make_sandbox_session()
    for path in ("/etc/passwd", "../../../etc/passwd", "/workspace/../etc/hostname"):
        out = run(session, "read", file_path=path)
        assert out.is_error and "outside" in text(out), (path, text(out))
    run(session, "bash", command="ln -s /etc/passwd link")
    out = run(session, "read", file_path="link")
    assert out.is_error
    assert run(session, "write", file_path="/etc/evil", content="x").is_error


def test_disabled_tools_and_allow_listing(make_sandbox_session):
    from sandboxes.toolset import tool_definitions

    tools = [
        {
            "type": "agent_toolset_20260401",
            "default_config": {"enabled": False},
            "configs": [{"name": "read", "enabled": True}],
        }
    ]
    session = make_sandbox_session(tools=tools)
    assert [d["name"] for d in tool_definitions(session.agent_snapshot)] == ["read"]
    out = run(session, "bash", command="echo hi")
    assert out.is_error and "disabled" in text(out)
    names = [d["name"] for d in tool_definitions({"tools": [{"type": "agent_toolset_20260401"}]})]
    assert names == ["bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search"]
    assert tool_definitions({"tools": []}) == []

"""The escape suite: code inside a sandbox tries to reach what it must never see. Every attempt fails."""

import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
from django.conf import settings

from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db]


def sh(session, command: str) -> str:
    out = run(session, "bash", command=command)
    return text(out)


def test_server_environment_is_invisible(make_sandbox_session, monkeypatch):
    monkeypatch.setenv("GALLEY_ESCAPE_CANARY", "canary-4f1d9e")
    session = make_sandbox_session()
    out = sh(session, "env; cat /proc/1/environ /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; echo END")
    assert out.endswith("END")
    assert "canary-4f1d9e" not in out
    assert "DJANGO_SETTINGS_MODULE" not in out and "DATABASE_URL" not in out
    # Only the sandbox's own processes exist in its PID namespace.
    pids = sh(session, "ls /proc | grep -E '^[0-9]+$' | wc -l")
    assert int(pids) < 10


def test_data_dir_database_vault_key_and_checkout_are_invisible(make_sandbox_session, sandbox_root):
    session = make_sandbox_session()
    paths = [
        settings.DATA_DIR,
        Path(settings.GALLEY_VAULT_KEY_FILE),
        Path(settings.BASE_DIR),
        Path(settings.BASE_DIR) / "manage.py",
        Path(settings.BASE_DIR) / "galley" / "settings.py",
        Path(str(settings.DATABASES["default"].get("NAME") or "/nonexistent")),
        sandbox_root,
        Path(settings.GALLEY_SANDBOX_ROOT),
        Path("/root"),
        Path("/home"),
    ]
    for path in paths:
        out = sh(session, f"ls -la '{path}' >/dev/null 2>&1 && echo VISIBLE || echo hidden")
        assert out == "hidden", path
    found = sh(
        session,
        "find / -xdev \\( -name manage.py -o -name 'vault.keys' -o -name '*.sqlite3' \\) "
        "2>/dev/null | grep -v '^/usr/' ; echo END",
    )
    assert found == "END"


def test_another_sessions_workspace_is_invisible(make_sandbox_session):
    victim = make_sandbox_session()
    sh(victim, "echo victim-secret-77 > secret.txt")
    attacker = make_sandbox_session()
    victim_host = Path(settings.GALLEY_SANDBOX_ROOT) / victim.id / "volume" / "workspace" / "secret.txt"
    assert victim_host.exists()
    out = sh(
        attacker,
        f"cat '{victim_host}' /workspace/../{victim.id}/workspace/secret.txt 2>&1; "
        "grep -rs victim-secret-77 /workspace /tmp /run /opt /etc /proc/self/cwd 2>/dev/null | head -3; "
        "echo END",
    )
    assert "victim-secret-77" not in out.replace("grep -r victim-secret-77", "")
    out = run(attacker, "read", file_path=str(victim_host))
    assert out.is_error and "victim-secret-77" not in text(out)


def test_writes_outside_the_workspace_fail_or_stay_inside(make_sandbox_session):
    session = make_sandbox_session()
    out = sh(
        session,
        "for p in /usr/evil /etc/evil /bin/evil /lib/evil /proc/evil; do "
        "(echo x > $p) 2>/dev/null && echo WROTE:$p; done; echo END",
    )
    assert out == "END"
    for path in ("/usr/evil", "/etc/evil", "/bin/evil", "/evil"):
        assert not os.path.exists(path)
    out = run(session, "write", file_path="/usr/evil", content="x")
    assert out.is_error and not os.path.exists("/usr/evil")


def test_no_privileges_inside(make_sandbox_session):
    session = make_sandbox_session()
    status = sh(session, "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status")
    assert "CapEff:\t0000000000000000" in status
    assert "CapBnd:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    out = sh(
        session,
        "unshare -r true 2>&1 && echo ESCALATED; su -c true root </dev/null 2>&1 && echo ESCALATED; echo END",
    )
    assert "ESCALATED" not in out
    assert sh(session, "id -u; id -g") == "1000\n1000"


class _Listener:
    """A loopback TCP service of the host that answers anything with a canary."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nhost-canary-42")
            finally:
                conn.close()


def test_limited_sandbox_reaches_neither_loopback_nor_other_hosts(make_sandbox_session):
    service = _Listener()
    try:
        session = make_sandbox_session(
            networking={
                "type": "limited",
                "allowed_hosts": ["allowed.invalid"],
                "allow_package_managers": False,
                "allow_mcp_servers": False,
            }
        )
        port = service.port
        out = sh(
            session,
            f"curl -s -m 5 --noproxy '*' http://127.0.0.1:{port}/ 2>&1; echo rc=$?; "
            f"curl -s -m 5 --noproxy '' -x $HTTP_PROXY http://127.0.0.1:{port}/ 2>&1; echo; "
            f"curl -s -m 5 --noproxy '' -x $HTTP_PROXY -p http://localhost:{port}/ 2>&1; echo; "
            "curl -s -m 5 --noproxy '*' http://93.184.215.14/ 2>&1; echo rc=$?; "
            "curl -s -m 5 http://example.com/ 2>&1; echo",
        )
        assert "host-canary-42" not in out
        assert service.hits == 0
        assert "refused" in out and "not in this environment's allowed_hosts" in out
        assert "egress proxy refused a connection to example.com" in out
        # Python's own sockets cannot get out either.
        out = sh(
            session,
            'python3 -c "import socket; s=socket.socket(); s.settimeout(3); '
            f"s.connect(('127.0.0.1', {port}))\" 2>&1 | tail -1",
        )
        assert "refused" in out.lower() or "unreachable" in out.lower()
        assert service.hits == 0
    finally:
        service.sock.close()


def test_unrestricted_by_default_cannot_reach_host_loopback(make_sandbox_session, settings):
    assert settings.GALLEY_SANDBOX_UNRESTRICTED_NETWORK == "proxy"  # the default
    service = _Listener()
    try:
        session = make_sandbox_session()  # unrestricted
        port = service.port
        out = sh(
            session,
            f"curl -s -m 5 --noproxy '*' http://127.0.0.1:{port}/ 2>&1; echo rc=$?; "
            f"curl -s -m 5 --noproxy '' -x $HTTP_PROXY http://127.0.0.1:{port}/ 2>&1; echo; "
            f"curl -s -m 5 --noproxy '' -x $HTTP_PROXY http://localhost:{port}/ 2>&1; echo",
        )
        assert "host-canary-42" not in out and service.hits == 0
        assert "a loopback address" in out
    finally:
        service.sock.close()


def test_file_tools_run_with_the_sandboxs_view_and_user(make_sandbox_session, sandbox_root):
    session = make_sandbox_session()
    marker = f"galley-escape-{session.id}"
    sh(session, "ln -s /tmp via-tmp")
    out = run(session, "write", file_path="/workspace/via-tmp/" + marker, content="x")
    assert not out.is_error, text(out)
    assert not os.path.exists("/tmp/" + marker)  # the host's /tmp is not the sandbox's
    assert (Path(settings.GALLEY_SANDBOX_ROOT) / session.id / "volume" / "tmp" / marker).exists()
    # What the worker wrote belongs to the sandbox's user, never to the server's.
    owner = (Path(settings.GALLEY_SANDBOX_ROOT) / session.id / "volume" / "tmp" / marker).stat().st_uid
    assert owner != os.geteuid() or os.geteuid() != 0
    assert sh(session, f"stat -c %u /tmp/{marker}") == "1000"


def test_links_planted_in_the_state_directory_never_redirect_the_worker(make_sandbox_session, sandbox_root):
    canary = sandbox_root / "host-canary.txt"
    canary.write_text("original")
    os.chmod(canary, 0o644)
    session = make_sandbox_session(networking={"type": "limited", "allowed_hosts": []})
    planted = sh(
        session,
        f"for n in bridge.py egress.sock bridge.ready; do ln -sf {canary} /run/galley/$n 2>&1; done; "
        "touch /run/galley-egress/x 2>&1 | grep -c 'Read-only'",
    )
    assert planted.endswith("1")
    run(session, "bash", restart=True)  # a new shell and a new proxy socket
    assert sh(session, "echo again") == "again"
    assert canary.read_text() == "original"
    assert canary.stat().st_uid == os.geteuid() and canary.stat().st_mode & 0o777 == 0o644


def test_sandboxes_work_under_a_120_character_data_directory(make_sandbox_session, sandbox_root, settings):
    # The egress proxy's socket lives under the data directory; a socket address holds at most 107 bytes.
    data_dir = sandbox_root / "d"
    data_dir = Path(str(data_dir) + "x" * (120 - len(str(data_dir))))
    assert len(str(data_dir)) == 120
    data_dir.mkdir(mode=0o711)
    settings.GALLEY_SANDBOX_ROOT = data_dir / "sandboxes"
    for networking in ({"type": "unrestricted"}, {"type": "limited", "allowed_hosts": []}):
        session = make_sandbox_session(networking=networking)
        out = run(
            session,
            "bash",
            command=(
                "echo ok; curl --noproxy '' -x $HTTP_PROXY -s -m 10 http://127.0.0.1:9/ -o /dev/null "
                "-w '%{http_code}\\n'; pwd"
            ),
        )
        assert not out.is_error, text(out)
        assert text(out).split("\n")[:3] == ["ok", "403", "/workspace"], text(out)
        assert "internal error" not in text(out)
        assert not run(session, "write", file_path="a.txt", content="hi").is_error
        assert text(run(session, "read", file_path="a.txt")).strip().endswith("hi")


def test_a_server_under_a_120_character_data_directory_runs_bash_turns():
    """Through the SDK and a live server: the egress socket and the local bus both live under the data dir."""
    import tempfile

    from sandboxes.quota import volumes_release_under
    from tests.live import live_galley
    from tests.live_fixtures import until_idle
    from tests.model_server import scripted_model, tool_call
    from tests.model_server import text as say

    base = Path(tempfile.mkdtemp(prefix="galley-long-"))
    os.chmod(base, 0o711)
    data_dir = Path(str(base / "d") + "x" * (120 - len(str(base / "d"))))
    data_dir.mkdir(mode=0o711)
    try:
        with scripted_model() as model:
            env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url}
            with live_galley({**env, "GALLEY_DATA_DIR": str(data_dir)}) as galley:
                client = galley.client()
                agent = client.beta.agents.create(
                    name="long", model="claude-sonnet-4-6", tools=[{"type": "agent_toolset_20260401"}]
                )
                environment = client.beta.environments.create(name="long-path")
                session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
                model.push(tool_call("bash", {"command": "echo hello; pwd"}), say("done"))
                with client.beta.sessions.events.stream(session.id) as stream:
                    client.beta.sessions.events.send(
                        session.id,
                        events=[{"type": "user.message", "content": [{"type": "text", "text": "go"}]}],
                    )
                    events = until_idle(stream)
        result = next(e for e in events if e.type == "agent.tool_result")
        assert not result.is_error and result.content[0].text == "hello\n/workspace"
        assert events[-1].type == "session.status_idle"
    finally:
        volumes_release_under(base)
        shutil.rmtree(base, ignore_errors=True)

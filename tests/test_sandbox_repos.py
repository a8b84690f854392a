"""Repository resources: cloned on the host at the requested checkout, changed and pushed from inside the
sandbox through the egress proxy, with the token never inside the sandbox."""

import os
from pathlib import Path

import pytest

from api.errors import ApiError
from files import services as files
from sessions.models import Event
from tests.git_server import git, git_server, make_repository, self_signed
from tests.sandbox_fixtures import run, text
from tests.scan import file_holds

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]

TOKEN = "ghp_repotesttoken0123456789abcdef"
LIMITED = {
    "type": "limited",
    "allowed_hosts": [],
    "allow_package_managers": False,
    "allow_mcp_servers": False,
}


@pytest.fixture
def server(sandbox_root, settings):
    with git_server(sandbox_root / "git", TOKEN) as srv:
        settings.GALLEY_GIT_HOSTS = [srv.netloc]
        yield srv


@pytest.fixture
def tls_server(sandbox_root, settings):
    from cryptography.fernet import Fernet

    from vaults import crypto

    settings.GALLEY_VAULT_KEYS = [Fernet.generate_key().decode()]
    settings.DATA_DIR = sandbox_root / "data"
    crypto.reset_cache()
    cert, key = self_signed(sandbox_root)
    settings.GALLEY_EGRESS_UPSTREAM_CA_FILE = str(cert)
    with git_server(sandbox_root / "git-tls", TOKEN, tls=(cert, key)) as srv:
        settings.GALLEY_GIT_HOSTS = [srv.netloc]
        yield srv
    crypto.reset_cache()


def _scan_for(root: Path, needle: bytes) -> list[str]:
    hits = []
    for top, _dirs, names in os.walk(root):
        for name in names:
            path = Path(top) / name
            try:
                if not path.is_symlink() and file_holds(path, needle):
                    hits.append(str(path))
            except OSError:
                pass
    return hits


def test_clone_at_a_branch_then_commit_and_push_with_the_token_kept_outside(make_sandbox_session, server):
    heads = make_repository(
        server, "octo/demo", {"main": {"README": "main\n"}, "feature": {"f.txt": "feat\n"}}
    )
    session = make_sandbox_session(networking=LIMITED)
    files.session_resources_attach(
        session=session,
        resources=[
            {
                "type": "github_repository",
                "url": server.url("octo/demo"),
                "authorization_token": TOKEN,
                "checkout": {"type": "branch", "name": "feature"},
            }
        ],
    )
    out = run(
        session, "bash", command="cd /workspace/demo && git rev-parse HEAD && cat f.txt && stat -c %U ."
    )
    assert not out.is_error, text(out)
    assert text(out).split()[:3] == [heads["feature"], "feat", "agent"]
    # Shallow by default; the full history is there on demand.
    out = run(session, "bash", command="git rev-parse --is-shallow-repository")
    assert text(out).strip() == "true"

    # The token is nowhere inside: not in .git/config, the environment, credential helpers or files.
    out = run(
        session,
        "bash",
        command=f"env; git config --list --show-origin; grep -rl '{TOKEN}' /workspace /tmp /etc; :",
    )
    assert TOKEN not in text(out) and "extraheader" not in text(out).lower()
    assert _scan_for(Path(session_root(session)), TOKEN.encode()) == []

    out = run(
        session,
        "bash",
        command="echo change > f.txt && git -c user.name=A -c user.email=a@example.com commit -qam change "
        "&& git push -q origin HEAD:feature && git rev-parse HEAD",
    )
    assert not out.is_error, text(out)
    pushed = text(out).strip().splitlines()[-1]
    assert git("-C", str(server.root / "octo/demo.git"), "rev-parse", "feature") == pushed
    pushes = [r for r in server.requests if r["path"].endswith("git-receive-pack") and r["method"] == "POST"]
    assert pushes and all(r["authorized"] == "True" for r in pushes)

    out = run(session, "bash", command="git fetch -q --unshallow origin && git rev-list --count HEAD")
    assert not out.is_error and text(out).strip() == "3", text(out)


def test_a_rotated_token_takes_effect_on_the_next_git_operation(make_sandbox_session, server):
    make_repository(server, "octo/rot", {"main": {"a": "1\n"}})
    session = make_sandbox_session(networking=LIMITED)
    [resource] = files.session_resources_attach(
        session=session,
        resources=[
            {"type": "github_repository", "url": server.url("octo/rot"), "authorization_token": TOKEN}
        ],
    )
    assert not run(session, "bash", command="cd /workspace/rot && git fetch -q origin").is_error
    server.token = "ghp_rotated_token_value_987654321"
    out = run(session, "bash", command="git fetch origin 2>&1; echo rc=$?")
    assert "rc=0" not in text(out)
    files.session_resource_update(
        workspace=session.workspace,
        session_id=session.id,
        resource_id=resource.id,
        authorization_token=server.token,
    )
    out = run(session, "bash", command="git fetch origin 2>&1; echo rc=$?")
    assert "rc=0" in text(out), text(out)


def test_clone_at_a_commit_outside_the_workspace(make_sandbox_session, server):
    heads = make_repository(server, "octo/pin", {"main": {"a": "1\n"}, "next": {"b": "2\n"}})
    session = make_sandbox_session(networking=LIMITED)
    files.session_resources_attach(
        session=session,
        resources=[
            {
                "type": "github_repository",
                "url": server.url("octo/pin"),
                "authorization_token": TOKEN,
                "checkout": {"type": "commit", "sha": heads["main"]},
                "mount_path": "/src/pin",
            }
        ],
    )
    read = run(session, "read", file_path="/src/pin/a")  # a file tool first: it clones too
    assert not read.is_error and "1" in text(read), text(read)
    out = run(session, "bash", command="cd /src/pin && git rev-parse HEAD && ls && touch new && echo ok")
    assert not out.is_error, text(out)
    assert text(out).split() == [heads["main"], "a", "ok"]
    assert not run(session, "edit", file_path="/src/pin/a", old_string="1", new_string="2").is_error


def test_a_clone_failure_is_a_session_error_naming_the_repository(make_sandbox_session, server):
    make_repository(server, "octo/miss", {"main": {"a": "1\n"}})
    session = make_sandbox_session(networking=LIMITED)
    url = server.url("octo/miss")
    files.session_resources_attach(
        session=session,
        resources=[
            {
                "type": "github_repository",
                "url": url,
                "authorization_token": TOKEN,
                "checkout": {"type": "branch", "name": "no-such-branch"},
            }
        ],
    )
    out = run(session, "bash", command="true")
    assert out.is_error and url in text(out)
    [error] = Event.objects.filter(session=session, type="session.error")
    assert error.payload["error"]["type"] == "repository_checkout_error"
    assert error.payload["error"]["repository_url"] == url
    assert TOKEN not in str(error.payload)


def test_a_wrong_token_is_an_authentication_error(make_sandbox_session, server):
    make_repository(server, "octo/auth", {"main": {"a": "1\n"}})
    session = make_sandbox_session(networking=LIMITED)
    files.session_resources_attach(
        session=session,
        resources=[
            {"type": "github_repository", "url": server.url("octo/auth"), "authorization_token": "ghp_wrong"}
        ],
    )
    assert run(session, "bash", command="true").is_error
    [error] = Event.objects.filter(session=session, type="session.error")
    assert error.payload["error"]["type"] == "repository_authentication_error"


def test_hosts_not_allowed_are_refused_at_attach_time(make_sandbox_session, settings):
    settings.GALLEY_GIT_HOSTS = ["git.example.com:8443"]
    session = make_sandbox_session()
    for url, words in (
        ("https://gitlab.example.com/a/b", "not allowed"),
        ("http://github.com/a/b", "https"),
        ("https://git.example.com:9000/a/b", "not allowed"),
    ):
        with pytest.raises(ApiError) as err:
            files.session_resources_attach(
                session=session, resources=[{"type": "github_repository", "url": url}]
            )
        assert (
            err.value.status == 400 and "resources[0].url" in err.value.message and words in err.value.message
        )
    files.session_resources_attach(
        session=session, resources=[{"type": "github_repository", "url": "https://git.example.com:8443/a/b"}]
    )


def test_other_paths_on_a_repository_host_stay_refused(make_sandbox_session, server):
    make_repository(server, "octo/only", {"main": {"a": "1\n"}})
    make_repository(server, "octo/other", {"main": {"a": "1\n"}})
    session = make_sandbox_session(networking=LIMITED)
    files.session_resources_attach(
        session=session,
        resources=[
            {"type": "github_repository", "url": server.url("octo/only"), "authorization_token": TOKEN}
        ],
    )
    out = run(session, "bash", command=f"git ls-remote {server.url('octo/other')} 2>&1; echo rc=$?")
    assert "rc=0" not in text(out)
    assert not [r for r in server.requests if "octo/other" in r["path"] and r["authorized"] == "True"]


def session_root(session) -> str:
    from sandboxes.services import sandbox_root

    return str(sandbox_root(session.id))


def test_https_git_goes_through_the_proxy_which_adds_the_token(make_sandbox_session, tls_server):
    make_repository(tls_server, "octo/tls", {"main": {"a": "1\n"}})
    session = make_sandbox_session(networking=LIMITED)
    files.session_resources_attach(
        session=session,
        resources=[
            {"type": "github_repository", "url": tls_server.url("octo/tls"), "authorization_token": TOKEN}
        ],
    )
    out = run(
        session,
        "bash",
        command="cd /workspace/tls && echo 2 > a"
        " && git -c user.name=A -c user.email=a@example.com commit -qam two"
        " && git push -q origin HEAD:main 2>&1 && git rev-parse HEAD",
    )
    assert not out.is_error, text(out)
    assert git("-C", str(tls_server.root / "octo/tls.git"), "rev-parse", "main") == text(out).split()[-1]
    out = run(session, "bash", command="env")
    assert TOKEN not in text(out)

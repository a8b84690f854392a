"""Environment packages: a small pip and npm package built once into a cached prefix, mounted read-only."""

import base64
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from api.errors import ApiError
from sandboxes.packages import packages_build, packages_request_build, validate_packages
from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]


def _wheel() -> bytes:
    files = {
        "galleydemo/__init__.py": b"VALUE = 42\n",
        "galleydemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: galleydemo\nVersion: 1.0\n",
        "galleydemo-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [
        f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
        for n, d in files.items()
    ]
    files["galleydemo-1.0.dist-info/RECORD"] = (
        "\n".join([*record, "galleydemo-1.0.dist-info/RECORD,,"]) + "\n"
    ).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npm_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (
            ("package/package.json", b'{"name": "galley-demo", "version": "1.0.0", "main": "index.js"}'),
            ("package/index.js", b"module.exports = { value: 7 };\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def registries(settings) -> Iterator[dict]:
    wheel, tgz = _wheel(), _npm_tarball()
    state = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state["requests"] += 1
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path.rstrip("/") == "/simple/galleydemo":
                digest = hashlib.sha256(wheel).hexdigest()
                body = (
                    f'<html><body><a href="/files/galleydemo-1.0-py3-none-any.whl#sha256={digest}">'
                    "galleydemo-1.0-py3-none-any.whl</a></body></html>"
                ).encode()
                ctype = "text/html"
            elif self.path.startswith("/files/galleydemo"):
                body, ctype = wheel, "application/octet-stream"
            elif self.path == "/npm/galley-demo":
                integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
                body = json.dumps(
                    {
                        "name": "galley-demo",
                        "dist-tags": {"latest": "1.0.0"},
                        "versions": {
                            "1.0.0": {
                                "name": "galley-demo",
                                "version": "1.0.0",
                                "main": "index.js",
                                "dist": {
                                    "tarball": f"{base}/npm/galley-demo/-/galley-demo-1.0.0.tgz",
                                    "shasum": hashlib.sha1(tgz).hexdigest(),
                                    "integrity": integrity,
                                },
                            }
                        },
                    }
                ).encode()
                ctype = "application/json"
            elif self.path == "/npm/galley-demo/-/galley-demo-1.0.0.tgz":
                body, ctype = tgz, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    settings.GALLEY_PIP_INDEX_URL = f"http://127.0.0.1:{port}/simple/"
    settings.GALLEY_NPM_REGISTRY = f"http://127.0.0.1:{port}/npm/"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_bad_names_and_pins_are_refused_naming_the_entry():
    for manager, bad in (
        ("pip", "--index-url=http://evil/"),
        ("apt", "jq;rm"),
        ("apt", "Jq"),
        ("cargo", "ripgrep 14"),
        ("gem", "-v"),
        ("go", "golang.org/x/tools/cmd/goimports@ latest"),
    ):
        with pytest.raises(ApiError) as exc:
            validate_packages({"type": "packages", manager: ["ok", bad]})
        assert exc.value.status == 400 and f"config.packages.{manager}[1]" in exc.value.message
    validate_packages(
        {
            "type": "packages",
            "pip": ["pandas==2.2.0", "requests[socks]>=2"],
            "npm": ["@scope/x@1.2.3"],
            "apt": ["jq", "ffmpeg=7:5.1.6-0+deb12u1"],
            "cargo": ["ripgrep", "bat@0.24.0"],
            "gem": ["rake", "rails=7.1.3"],
            "go": ["golang.org/x/tools/cmd/goimports@v0.20.0", "github.com/a/b/cmd/c"],
        }
    )


@pytest.mark.slow
def test_pip_and_npm_packages_are_built_once_and_mounted_read_only(make_sandbox_session, registries):
    session = make_sandbox_session(packages={"pip": ["galleydemo==1.0"], "npm": ["galley-demo@1.0.0"]})
    env = session.environment
    packages_request_build(environment=env)
    env.refresh_from_db()
    assert env.build_status == "building"
    status = packages_build(environment_id=env.id)
    env.refresh_from_db()
    assert status == "ready", env.build_log
    assert env.build_status == "ready" and "build succeeded" in env.build_log
    session.environment.refresh_from_db()
    out = run(
        session,
        "bash",
        command="python3 -c 'import galleydemo; print(galleydemo.VALUE)'; "
        "node -e 'console.log(require(\"galley-demo\").value)'; "
        "touch /opt/galley/packages/pip/x 2>&1 | grep -c 'Read-only'",
    )
    assert text(out) == "42\n7\n1", text(out)
    # A second environment with the same lists reuses the cache: no registry traffic.
    before = registries["requests"]
    other = make_sandbox_session(packages={"pip": ["galleydemo==1.0"], "npm": ["galley-demo@1.0.0"]})
    packages_request_build(environment=other.environment)
    assert other.environment.build_status == "ready"
    assert registries["requests"] == before


def test_failed_build_is_reported_on_the_environment_and_to_the_tool(make_sandbox_session, registries):
    session = make_sandbox_session(packages={"pip": ["does-not-exist-galley==9"]})
    packages_request_build(environment=session.environment)
    assert packages_build(environment_id=session.environment.id) == "failed"
    session.environment.refresh_from_db()
    assert session.environment.build_status == "failed"
    assert "does-not-exist-galley" in session.environment.build_log
    out = run(session, "bash", command="echo hi")
    assert out.is_error and "failed to build" in text(out)


def test_a_session_on_a_building_environment_waits_for_the_build(make_sandbox_session):
    from agents.models import Environment
    from sandboxes.toolset import run_tool

    session = make_sandbox_session(build_status="building")
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            run_tool(session=session, name="bash", tool_input={"command": "echo built"}, tool_use_id="t")
        )
    )
    worker.start()
    worker.join(1.0)
    assert worker.is_alive() and not results  # still waiting for the build
    Environment.objects.filter(pk=session.environment_id).update(build_status="ready")
    worker.join(10)
    assert results and text(results[0]) == "built"


@pytest.fixture
def apt_lists() -> None:
    """The apt tests resolve against the host's package lists: fetch them once when this host has none."""
    lists = Path("/var/lib/apt/lists")
    if not any(p.name.endswith(("_Packages", "_Packages.lz4", "_Packages.gz")) for p in lists.glob("*")):
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)


@pytest.mark.slow
def test_apt_packages_are_unpacked_into_the_prefix_and_run_in_a_limited_sandbox(
    make_sandbox_session, apt_lists
):
    limited = {
        "type": "limited",
        "allowed_hosts": [],
        "allow_package_managers": False,
        "allow_mcp_servers": False,
    }
    session = make_sandbox_session(networking=limited, packages={"apt": ["jq", "hello"]})
    packages_request_build(environment=session.environment)
    assert packages_build(environment_id=session.environment.id) == "ready", session.environment.build_log
    session.environment.refresh_from_db()
    assert "build succeeded" in session.environment.build_log
    out = run(session, "bash", command="command -v jq hello; jq --version; hello; echo '{\"a\": 5}' | jq .a")
    lines = text(out).split("\n")
    assert lines[0] == "/opt/galley/packages/apt/usr/bin/jq", text(out)
    assert lines[1] == "/opt/galley/packages/apt/usr/bin/hello"
    assert lines[2].startswith("jq-") and lines[3] == "Hello, world!" and lines[4] == "5"


def test_an_unknown_apt_package_or_version_fails_the_build_clearly(make_sandbox_session, apt_lists):
    session = make_sandbox_session(packages={"apt": ["galley-no-such-package"]})
    assert packages_build(environment_id=session.environment.id) == "failed"
    session.environment.refresh_from_db()
    assert "galley-no-such-package" in session.environment.build_log
    session = make_sandbox_session(packages={"apt": ["hello=0.0-galley"]})
    assert packages_build(environment_id=session.environment.id) == "failed"
    session.environment.refresh_from_db()
    assert "0.0-galley" in session.environment.build_log
    assert not any(Path(settings_packages_root()).glob("[!.]*")), "nothing half-built is kept"


def test_a_missing_toolchain_fails_the_build_naming_it(make_sandbox_session, monkeypatch):
    from sandboxes import packages

    monkeypatch.setattr(
        packages, "TOOLCHAINS", {**packages.TOOLCHAINS, "go": "galley-no-go", "gem": "galley-no-gem"}
    )
    for manager, tool in (("go", "galley-no-go"), ("gem", "galley-no-gem")):
        session = make_sandbox_session(packages={manager: ["x"]})
        assert packages_build(environment_id=session.environment.id) == "failed"
        session.environment.refresh_from_db()
        log = session.environment.build_log
        assert f"{manager} packages need {tool}" in log and "not installed on this worker host" in log


def test_builds_reach_only_the_package_registries(make_sandbox_session, registries, monkeypatch):
    """A build's installers run arbitrary code: their traffic goes through the egress proxy, which refuses
    anything that is not a registry."""
    session = make_sandbox_session(packages={"pip": ["galleydemo==1.0"]})
    from sandboxes import packages

    real = packages._build_commands

    def with_probe(prefix, lists, log):
        return [["/usr/bin/curl", "-fsS", "http://example.invalid/"], *real(prefix, lists, log)]

    monkeypatch.setattr(packages, "_build_commands", with_probe)
    status = packages_build(environment_id=session.environment.id)
    session.environment.refresh_from_db()
    log = session.environment.build_log
    assert status == "failed" and "egress refused: example.invalid" in log, log


def settings_packages_root() -> str:
    from django.conf import settings

    return str(settings.GALLEY_PACKAGES_ROOT)


@pytest.fixture
def mirrors(tmp_path, settings, monkeypatch) -> Iterator[Path]:
    """A RubyGems source and a Go module proxy on loopback, each holding one small package with a command,
    as the real registries would serve them (the build reaches them through its egress proxy)."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    root = tmp_path / "mirror"
    gem_src = tmp_path / "gem-src"
    (gem_src / "bin").mkdir(parents=True)
    (gem_src / "lib").mkdir()
    (gem_src / "bin" / "galleyhello").write_text('#!/usr/bin/env ruby\nputs "hello from a gem"\n')
    (gem_src / "lib" / "galleyhello.rb").write_text("module Galleyhello; end\n")
    (gem_src / "galleyhello.gemspec").write_text(
        'Gem::Specification.new do |s|\n  s.name = "galleyhello"\n  s.version = "1.0.0"\n  s.summary = "t"\n'
        '  s.authors = ["t"]\n  s.license = "MIT"\n  s.files = ["bin/galleyhello", "lib/galleyhello.rb"]\n'
        '  s.executables = ["galleyhello"]\nend\n'
    )
    subprocess.run(
        ["gem", "build", "-q", "galleyhello.gemspec"], cwd=gem_src, check=True, capture_output=True
    )
    (root / "gems" / "gems").mkdir(parents=True)
    (gem_src / "galleyhello-1.0.0.gem").rename(root / "gems" / "gems" / "galleyhello-1.0.0.gem")
    subprocess.run(
        ["gem", "generate_index", "-q", "--directory", str(root / "gems")], check=True, capture_output=True
    )

    module = "example.com/galleyhi"
    versions = root / "go" / module / "@v"
    versions.mkdir(parents=True)
    (versions / "list").write_text("v1.0.0\n")
    info = '{"Version":"v1.0.0","Time":"2026-01-01T00:00:00Z"}'
    (versions / "v1.0.0.info").write_text(info)
    (root / "go" / module / "@latest").write_text(info)
    gomod = f"module {module}\n\ngo 1.19\n"
    (versions / "v1.0.0.mod").write_text(gomod)
    with zipfile.ZipFile(versions / "v1.0.0.zip", "w") as z:
        z.writestr(f"{module}@v1.0.0/go.mod", gomod)
        z.writestr(
            f"{module}@v1.0.0/main.go",
            'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello from go") }\n',
        )

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    settings.GALLEY_GEM_SOURCE = f"{base}/gems/"
    # Go never proxies a loopback address, so its mirror gets a name; the build's egress proxy (in this
    # process) resolves that name to loopback through the resolver the test controls.
    real_getaddrinfo = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        return real_getaddrinfo("127.0.0.1" if host == "galley-mirror.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    settings.GALLEY_GOPROXY = f"http://galley-mirror.test:{httpd.server_address[1]}/go"
    settings.GALLEY_GOSUMDB = "off"
    yield root
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_gem_and_go_packages_build_into_the_prefix_and_run(make_sandbox_session, mirrors):
    session = make_sandbox_session(
        packages={"gem": ["galleyhello=1.0.0"], "go": ["example.com/galleyhi@v1.0.0"]}
    )
    status = packages_build(environment_id=session.environment.id)
    session.environment.refresh_from_db()
    assert status == "ready", session.environment.build_log
    out = run(session, "bash", command="command -v galleyhello galleyhi; galleyhello; galleyhi")
    assert text(out).split("\n") == [
        "/opt/galley/packages/gem/bin/galleyhello",
        "/opt/galley/packages/go/bin/galleyhi",
        "hello from a gem",
        "hello from go",
    ], text(out)


def test_cargo_needs_a_system_wide_toolchain(make_sandbox_session):
    """Sandboxes see only the host's /usr: a cargo found elsewhere (rustup's ~/.cargo) cannot build."""
    from sandboxes import packages

    session = make_sandbox_session(packages={"cargo": ["ripgrep@14.1.0"]})
    try:
        tool = packages._toolchain("cargo")
    except packages.BuildError as exc:
        assert packages_build(environment_id=session.environment.id) == "failed"
        session.environment.refresh_from_db()
        assert str(exc) in session.environment.build_log and "cargo packages need cargo" in str(exc)
    else:
        commands = packages._build_commands(
            "/opt/galley/packages", {**packages.package_lists(session.environment)}, []
        )
        assert commands == [
            [
                tool,
                "install",
                "--locked",
                "--root",
                "/opt/galley/packages/cargo",
                "ripgrep",
                "--version",
                "14.1.0",
            ]
        ]


# Five processes of 100 MiB each: every one is under RLIMIT_AS (the memory limit), together they are not.
_HOG = (
    "p=; for i in 1 2 3 4 5; do python3 -c 'import time; x = bytearray(100 * 1024 * 1024); time.sleep(4)' & "
    'p="$p $!"; done; fail=0; for q in $p; do wait $q || fail=1; done; exit $fail'
)


@pytest.mark.parametrize("with_cgroup", [True, False], ids=["host-cgroup", "no-cgroup"])
def test_a_build_is_bounded_by_the_sandbox_memory_limit_as_a_whole(
    make_sandbox_session, monkeypatch, settings, with_cgroup
):
    from sandboxes import cgroup

    if with_cgroup and cgroup.cgroup_mode() == "none":
        pytest.skip("this host gives the worker no writable memory cgroup (the no-cgroup case runs)")
    if not with_cgroup:
        monkeypatch.setattr(cgroup, "cgroup_create", lambda **kwargs: None)
    settings.GALLEY_SANDBOX_MEMORY_BYTES = 256 * 1024 * 1024
    log = _failed_build_of(make_sandbox_session, monkeypatch, _HOG)
    assert "memory limit" in log and str(256 * 1024 * 1024) in log, log
    assert not [key for key in cgroup.cgroups_left() if key.startswith("_b.")], (
        "the build's cgroup is removed"
    )


def _failed_build_of(make_sandbox_session, monkeypatch, script: str) -> str:  # type: ignore[no-untyped-def]
    """The build log of an environment whose build runs `script` (in place of the package managers) and
    fails; nothing of it is kept."""
    from sandboxes import packages

    monkeypatch.setattr(packages, "_build_commands", lambda prefix, lists, log: [["/bin/bash", "-c", script]])
    session = make_sandbox_session(packages={"pip": ["galleydemo==1.0"]})
    assert packages_build(environment_id=session.environment.id) == "failed"
    assert not any(Path(settings_packages_root()).glob("[!.]*")), "nothing half-built is kept"
    session.environment.refresh_from_db()
    return session.environment.build_log


def test_a_build_that_writes_past_its_limit_is_stopped(make_sandbox_session, monkeypatch, settings):
    settings.GALLEY_PACKAGES_BUILD_BYTES = 64 * 1024 * 1024
    # 320 MiB in files of 4 MiB (each under the file size limit), into the build's /tmp and into its prefix.
    writer = (
        "for i in $(seq 40); do head -c 4M /dev/zero > /tmp/f$i; head -c 4M /dev/zero > $GEM_HOME/g$i; "
        "sleep 0.05; done"
    )
    log = _failed_build_of(make_sandbox_session, monkeypatch, writer)
    assert "GALLEY_PACKAGES_BUILD_BYTES" in log and str(64 * 1024 * 1024) in log, log
    written = int(log.split("the build wrote ")[1].split()[0])
    assert written < 200 * 1024 * 1024, log  # stopped on the way, not at the end

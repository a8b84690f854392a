"""A live Galley for integration tests: `manage.py serve` (Daphne and a real Celery worker) in its
own process group, on a fresh database (a temp SQLite file, or a new PostgreSQL database when
DATABASE_URL points at PostgreSQL) and its own Redis key prefix when REDIS_URL is set.

Each fresh database is a copy of one migrated once per test process with `manage.py migrate` and
`manage.py create_api_key` (the file copied, or PostgreSQL's `CREATE DATABASE ... TEMPLATE`): the
schema and the key each server starts with are the commands' own, without running the two commands
again for every server (about 8 s a server on 2 cores, dozens of servers a suite)."""

import atexit
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import anthropic

ROOT = Path(__file__).resolve().parent.parent
RATE_LIMIT_SETTINGS = (
    "GALLEY_RATE_LIMIT_CREATE_PER_MINUTE",
    "GALLEY_RATE_LIMIT_READ_PER_MINUTE",
    "GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE",
    "GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE",
    "GALLEY_AUTH_FAILURES_PER_MINUTE",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def _admin_url(url: str) -> str:
    return urlunparse(urlparse(url)._replace(path="/postgres"))


def _prepare(env: dict[str, str]) -> str:
    """Migrates the database `env` names and gives it an API key; returns the raw key."""

    def manage(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
            capture_output=True, text=True, timeout=300,
        ).stdout  # fmt: skip

    manage("migrate", "--noinput")
    return manage("create_api_key", "live-tests").strip().splitlines()[-1]


_templates: dict[str, tuple[str, str]] = {}  # DATABASE_URL of the run -> (template, its API key)


def _template(base_env: dict[str, str]) -> tuple[str, str]:
    """This process's migrated template for the run's database: a SQLite file or a PostgreSQL
    database (dropped when the process exits), and the API key it holds."""
    url = os.environ.get("DATABASE_URL", "")
    run = url if _is_postgres(url) else "sqlite"
    if run in _templates:
        return _templates[run]
    folder = Path(tempfile.mkdtemp(prefix="galley-live-template-"))
    atexit.register(shutil.rmtree, folder, True)
    env = {**base_env, "GALLEY_DATA_DIR": str(folder)}
    if _is_postgres(url):
        import psycopg

        name = "galley_live_template_" + secrets.token_hex(4)
        with psycopg.connect(_admin_url(url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(_admin_url(url), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        atexit.register(drop)
        env["DATABASE_URL"] = urlunparse(urlparse(url)._replace(path=f"/{name}"))
        _templates[run] = (name, _prepare(env))
    else:
        path = folder / "galley.sqlite3"
        env["DATABASE_URL"] = f"sqlite:///{path}"
        key = _prepare(env)
        with sqlite3.connect(path) as conn:  # everything in the main file: it is copied alone
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _templates[run] = (str(path), key)
    return _templates[run]


@contextmanager
def _database(
    data_dir: Path, base_env: dict[str, str], connection_limit: int | None = None
) -> Iterator[tuple[str, str | None]]:
    """A fresh database URL, and the API key it already holds (None: migrate it first). With
    `connection_limit` (PostgreSQL), the server connects as a new non-superuser role that PostgreSQL
    lets open at most that many connections (its tables are made by that role: no template)."""
    url = os.environ.get("DATABASE_URL", "")
    if not _is_postgres(url):
        template, key = _template(base_env)
        target = data_dir / "galley.sqlite3"
        shutil.copyfile(template, target)
        target.chmod(0o600)
        yield f"sqlite:///{target}", key
        return
    import psycopg

    name = "galley_live_" + secrets.token_hex(4)
    parsed = urlparse(url)
    admin_url = _admin_url(url)
    key: str | None = None
    if connection_limit is None:
        template, key = _template(base_env)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if connection_limit is not None:
            conn.execute(f'CREATE ROLE "{name}" LOGIN CONNECTION LIMIT {int(connection_limit)}')
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    if connection_limit is not None:
        host = parsed.hostname or "127.0.0.1"
        parsed = parsed._replace(netloc=f"{name}@{host}:{parsed.port or 5432}")
    try:
        yield urlunparse(parsed._replace(path=f"/{name}")), key
    finally:
        _drop_later(admin_url, name, role=connection_limit is not None)


def _drop_later(admin_url: str, name: str, *, role: bool) -> None:
    """Drops a live server's PostgreSQL database (and its role) on a thread of its own: a DROP
    DATABASE waits for a checkpoint, about 2 s here, which the next test need not wait for. The
    thread is not a daemon: the interpreter waits for it before it exits."""

    def drop() -> None:
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if role:
                conn.execute(f'DROP ROLE IF EXISTS "{name}"')

    threading.Thread(target=drop, name=f"drop-{name}").start()


class LiveGalley:
    def __init__(self, base_url: str, api_key: str, env: dict[str, str], data_dir: Path) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.env = env
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        options: dict[str, Any] = {"max_retries": 0, "_strict_response_validation": True, "timeout": 30}
        options.update(kwargs)
        return anthropic.Anthropic(base_url=self.base_url, api_key=self.api_key, **options)

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=check,
            capture_output=True, text=True, timeout=120,
        )


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        try:
            urllib.request.urlopen(url + "/v1/openapi.json", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not answer in time")


@contextmanager
def live_galley(
    extra_env: dict[str, str] | None = None,
    *,
    worker: bool = True,
    db_connection_limit: int | None = None,
    serve_args: tuple[str, ...] = (),
) -> Iterator[LiveGalley]:
    with tempfile.TemporaryDirectory(prefix="galley-live-") as tmp:
        data_dir = Path(tmp)
        data_dir.chmod(0o711)  # sandboxes run as their own uid and must traverse to their workspace
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        base_env["DJANGO_SETTINGS_MODULE"] = "galley.settings"
        with _database(data_dir, base_env, db_connection_limit) as (database_url, api_key):
            env = dict(os.environ)
            env.update(
                {
                    "DJANGO_SETTINGS_MODULE": "galley.settings",
                    "GALLEY_DATA_DIR": str(data_dir),
                    "DATABASE_URL": database_url,
                    "GALLEY_REDIS_PREFIX": "galley-test-" + secrets.token_hex(4),
                    "GALLEY_SSE_HEARTBEAT_SECONDS": "1",
                    # The tests' MCP, OAuth and web servers listen on loopback.
                    "GALLEY_OUTBOUND_ALLOW_PRIVATE": "1",
                    # No rate limits unless a test sets them (tests/test_rate_limits.py).
                    **{name: "0" for name in RATE_LIMIT_SETTINGS},
                    "PYTHONUNBUFFERED": "1",
                }
            )
            env.pop("ANTHROPIC_API_KEY", None)
            env.pop("ANTHROPIC_BASE_URL", None)
            env.update(extra_env or {})
            port = free_port()
            live = LiveGalley(f"http://127.0.0.1:{port}", "", env, data_dir)
            live.api_key = api_key if api_key is not None else _prepare(env)
            args = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
            if not worker:
                args.append("--no-worker")
            args.extend(serve_args)
            log = open(data_dir / "serve.log", "wb")
            proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            live.proc = proc
            try:
                _wait_until_up(live.base_url, proc)
                yield live
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                log.close()
                from sandboxes.quota import volumes_release_under

                volumes_release_under(data_dir)  # sandbox volumes the worker mounted
                if env.get("GALLEY_SANDBOX_ROOT"):  # a test's own sandbox root, outside the data dir
                    volumes_release_under(Path(env["GALLEY_SANDBOX_ROOT"]))

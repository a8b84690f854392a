from collections.abc import Iterator

import pytest

from tests.live import LiveGalley, live_galley

pytest_plugins = ["tests.sandbox_fixtures", "tests.live_fixtures"]  # sandboxes; live server + model


@pytest.fixture(scope="session")
def live() -> Iterator[LiveGalley]:
    """One live server (web and worker) shared by the SDK contract tests of a run."""
    with live_galley() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def postgres_flush_by_delete() -> Iterator[None]:
    """On PostgreSQL, a transactional test's teardown empties the tables with DELETE, not TRUNCATE.

    TRUNCATE gives each of the ~40 tables a new file and syncs them at commit: 1.5 s a flush on this
    kind of machine, paid by each of the ~370 transactional tests. DELETE of a test's few rows takes
    about 25 ms. The foreign keys Django creates on PostgreSQL are all DEFERRABLE, so deferring them
    lets the tables be emptied in any order within the flush's transaction. A flush that must
    reset sequences keeps Django's TRUNCATE."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):  # type: ignore[no-untyped-def]
        if reset_sequences or not tables:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return ["SET CONSTRAINTS ALL DEFERRED;"] + [
            f"DELETE FROM {self.quote_name(table)};" for table in tables
        ]

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.sql_flush = truncate  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def no_rate_limits(settings):  # type: ignore[no-untyped-def]
    """Suites that are not about rate limits run without them (tests/test_rate_limits.py turns them on,
    with counters of its own)."""
    settings.GALLEY_RATE_LIMIT_CREATE_PER_MINUTE = 0
    settings.GALLEY_RATE_LIMIT_READ_PER_MINUTE = 0
    settings.GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE = 0
    settings.GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE = 0
    settings.GALLEY_AUTH_FAILURES_PER_MINUTE = 0


@pytest.fixture
def outbound_private(settings):  # type: ignore[no-untyped-def]
    """Lets outbound/guard.py reach the loopback MCP, OAuth and web servers that tests start."""
    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = True


@pytest.fixture
def workspace(db):  # type: ignore[no-untyped-def]
    from accounts.services import workspace_get_default

    return workspace_get_default()


@pytest.fixture
def api_key(workspace):  # type: ignore[no-untyped-def]
    from accounts.services import api_key_create

    _key, raw = api_key_create(name="test", workspace=workspace)
    return raw

"""Limits: a fork bomb, a huge write, an endless loop, a flood of output and a memory hog are contained; the
worker (this test process) stays alive and the session's next command works."""

import os
import time

import pytest

from sessions.sandbox import services
from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.django_db]


def test_fork_bomb_is_contained(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_MAX_PROCESSES = 32
    session = make_sandbox_session()
    run(session, "bash", command="true")
    uid = services._registry[session.id].spec.uid
    started = time.monotonic()
    out = run(session, "bash", command=":(){ :|:& };:; sleep 1; echo launched", timeout_ms=5000)
    assert time.monotonic() - started < 15
    # However hard it forks, the host sees at most the limit of processes for the sandbox's uid.
    assert _processes_of(uid) <= 32 + 2  # + prlimit/bwrap outside the namespace
    assert "launched" in text(out) or out.is_error
    assert text(run(session, "bash", restart=True)) == "bash session restarted"
    time.sleep(0.2)
    after = run(session, "bash", command="echo alive; ps -e --no-headers | wc -l")
    assert text(after).split("\n")[0] == "alive"
    assert int(text(after).split("\n")[1]) < 10
    assert _processes_of(uid) < 10


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def test_ten_gigabyte_write_is_stopped_by_the_file_size_limit(make_sandbox_session, settings, sandbox_root):
    settings.GALLEY_SANDBOX_FILE_BYTES = 16 * 1024 * 1024
    session = make_sandbox_session()
    started = time.monotonic()
    out = run(session, "bash", command="dd if=/dev/zero of=big bs=1M count=10240 2>&1; echo rc=$?")
    assert "File size limit exceeded" in text(out) and "rc=153" in text(out)
    assert time.monotonic() - started < 20
    size = (sandbox_root / "sandboxes" / session.id / "volume" / "workspace" / "big").stat().st_size
    assert size <= 16 * 1024 * 1024
    assert text(run(session, "bash", command="rm big; echo ok")) == "ok"


def test_workspace_size_limit_is_reported(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_WORKSPACE_BYTES = 8 * 1024 * 1024
    session = make_sandbox_session()
    out = run(
        session, "bash", command="head -c 5000000 /dev/zero > a; head -c 5000000 /dev/zero > b; echo done"
    )
    assert out.is_error and "workspace size limit exceeded" in text(out)
    out = run(session, "write", file_path="c.txt", content="x" * 100)
    assert out.is_error and "size limit" in text(out)
    run(session, "bash", command="rm a b")
    assert not run(session, "write", file_path="c.txt", content="x" * 100).is_error


def test_endless_loop_hits_the_wall_clock_timeout(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_TIMEOUT_SECONDS = 1.5
    session = make_sandbox_session()
    run(session, "bash", command="cd /tmp && export K=v")
    started = time.monotonic()
    out = run(session, "bash", command="while :; do :; done")
    assert out.is_error and "timed out after 1.5s" in text(out)
    assert time.monotonic() - started < 5
    assert text(run(session, "bash", command='pwd; echo "$K"')) == "/tmp\nv"


def test_fifty_megabytes_of_output_is_truncated_with_a_marker(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_OUTPUT_BYTES = 100 * 1024
    session = make_sandbox_session()
    started = time.monotonic()
    out = run(session, "bash", command="head -c 50000000 /dev/zero | tr '\\0' a; echo; echo LAST-LINE")
    body = text(out)
    assert not out.is_error
    assert len(body) < 110 * 1024
    assert "[output truncated:" in body and "bytes omitted out of 50000011" in body
    assert body.endswith("LAST-LINE")
    assert time.monotonic() - started < 20


def test_memory_limit_fails_the_allocation_not_the_worker(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_MEMORY_BYTES = 512 * 1024 * 1024
    session = make_sandbox_session()
    out = run(session, "bash", command="python3 -c 'x = bytearray(2 * 1024**3)'")
    assert out.is_error and "MemoryError" in text(out)
    assert text(run(session, "bash", command="echo fine")) == "fine"

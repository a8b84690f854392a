"""A real worker process SIGKILLed while a session's bash command runs in its sandbox: the next worker to
start on the host releases what the killed one left (the mounted volume, the cgroups), and the session is
rescheduled and finishes with its log whole."""

import os
from pathlib import Path
from typing import Any

import pytest

from harness.dispatch import session_kick
from sessions.models import Event, Session
from tests.harness_helpers import events_of, log_types, make_session, say, wait_for
from tests.harness_worker import celery_worker, purge_embedded_broker
from tests.model_server import scripted_model, text, tool_call
from tests.sandbox_fixtures import TOOLSET

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_sigkilled_worker_s_sandbox_is_released_by_the_next_worker_and_the_session_finishes(
    sandbox_root: Path, settings: Any
) -> None:
    from sandboxes.cgroup import cgroup_mode, cgroup_remove, cgroups_left
    from sandboxes.quota import volume_unclaimed

    purge_embedded_broker()
    base = Path(settings.GALLEY_SANDBOX_ROOT)
    session = make_session(tools=[TOOLSET])
    root = base / session.id
    volume = root / "volume"
    with scripted_model() as model:
        model.push(
            tool_call("bash", {"command": "echo started > /workspace/mark; sleep 120"}),
            text("Recovered answer."),
        )
        env = {
            "ANTHROPIC_API_KEY": "sk-test",
            "ANTHROPIC_BASE_URL": model.base_url,
            "GALLEY_SANDBOX_ROOT": str(base),
            "GALLEY_LEASE_SECONDS": "2",
            "GALLEY_SWEEP_SECONDS": "0.5",
            # The volume must be left only by the killed command: no start while the model is asked
            # (tests/test_sandbox_prewarm.py covers that).
            "GALLEY_SANDBOX_PREWARM_AT_ONCE": "0",
        }
        try:
            with celery_worker(env) as first:
                say(session, "hi")
                session_kick(session.pk)
                wait_for(lambda: (volume / "workspace" / "mark").exists(), timeout=60)
                first.kill()  # SIGKILL, mid-command
            # What the killed worker left: its sandbox's volume mounted, its cgroups (now empty), its lease.
            assert os.path.ismount(volume)
            groups = cgroups_left().get(session.id, [])
            if cgroup_mode() != "none":
                assert groups
                # The shells die with the worker (bubblewrap's --die-with-parent), a moment after it.
                empty = lambda: all(not (g / "cgroup.procs").read_text().split() for g in groups)  # noqa: E731
                wait_for(empty, timeout=10)
            with volume_unclaimed(root) as free:
                assert free  # the kernel dropped the dead worker's claim on the volume
            assert Session.objects.get(pk=session.pk).lease_owner is not None

            with celery_worker(env) as second:
                # Its start (worker_ready) releases them: the lease's owner is a dead process of this host.
                wait_for(lambda: not os.path.ismount(volume), timeout=30)
                assert not any(g.exists() for g in groups)  # removed first, in the same release
                assert session.id in second.log()  # it says what it released
                wait_for(lambda: Session.objects.get(pk=session.pk).status == "idle", timeout=60)
        finally:
            for paths in cgroups_left().values():  # only after a failure: this test's own
                cgroup_remove(paths, kill=True)
    types = log_types(session)
    seqs = list(Event.objects.filter(session_id=session.pk).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert types.count("user.message") == 1 and types.count("agent.tool_use") == 1
    assert types.count("session.status_rescheduled") == 1
    # The command's run was lost with its worker: the model is told so (bash is not re-run), and goes on.
    (result,) = events_of(session, "agent.tool_result")
    assert result.payload["is_error"] is True
    assert [e.payload["content"][0]["text"] for e in events_of(session, "agent.message")] == [
        "Recovered answer."
    ]
    assert types[-1] == "session.status_idle"
    assert (volume / "workspace").exists() is False  # unmounted again: the files are in the image
    assert (root / "volume.img").exists()

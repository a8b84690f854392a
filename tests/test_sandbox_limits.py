"""Limits: a fork bomb, a huge write, an endless loop, a flood of output and a memory hog are contained; the
worker (this test process) stays alive and the session's next command works."""

import os
import time

import pytest

from sandboxes import services
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


# --- limits the kernel enforces -----------------------------------------------------------------------------


def _volume(session) -> "os.PathLike[str]":
    return services._registry[session.id].spec.volume


def test_dev_is_read_only_with_only_the_needed_nodes_and_shm_is_sized(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_SHM_BYTES = 8 * 1024 * 1024
    session = make_sandbox_session()
    listing = text(run(session, "bash", command="ls -A /dev | sort | tr '\\n' ' '"))
    assert set(listing.split()) <= {
        "core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    }, listing  # fmt: skip
    out = text(run(session, "bash", command="touch /dev/planted 2>&1; echo rc=$?"))
    assert "Read-only file system" in out and "rc=1" in out
    out = run(
        session,
        "bash",
        command="head -c 200000000 /dev/zero 2>&1 > /dev/shm/fill; echo rc=$?; stat -c %s /dev/shm/fill",
    )
    lines = text(out).split("\n")
    assert "No space left on device" in text(out) and "rc=1" in lines
    assert int(lines[-1]) <= 8 * 1024 * 1024
    assert text(run(session, "bash", command="rm /dev/shm/fill && echo gone")) == "gone"


def test_tmp_fill_past_the_quota_is_stopped_by_the_kernel(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_WORKSPACE_BYTES = 32 * 1024 * 1024
    session = make_sandbox_session()
    run(session, "bash", command="true")
    volume = _volume(session)
    assert os.path.ismount(volume)  # this host allows the per-sandbox image: the kernel holds the limit
    out = run(session, "bash", command="head -c 150000000 /dev/zero > /tmp/fill; echo rc=$?")
    assert out.is_error and "No space left on device" in text(out) and "rc=1" in text(out)
    assert "workspace size limit exceeded" in text(out)
    # Never more than the quota on the host, whatever was asked for.
    assert os.stat(os.path.join(volume, "tmp", "fill")).st_size <= 32 * 1024 * 1024
    # The next command gets a clear error, in /workspace and in outputs alike: one quota for all.
    out = run(session, "bash", command="echo hi > /workspace/x; echo hi > /mnt/session/outputs/y")
    assert out.is_error and "No space left on device" in text(out)
    assert "workspace size limit exceeded" in text(out)
    out = run(session, "write", file_path="/workspace/big.txt", content="x" * 2_000_000)
    assert out.is_error and "workspace size limit" in text(out)
    # Deleting always works, and then writing works again.
    out = run(session, "bash", command="rm /tmp/fill && echo hi > /workspace/x && cat /workspace/x")
    assert not out.is_error and text(out) == "hi"
    assert not run(session, "write", file_path="/workspace/big.txt", content="x" * 2_000_000).is_error


def test_without_a_kernel_quota_the_watcher_kills_a_runaway_writer(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_QUOTA = "watch"
    settings.GALLEY_SANDBOX_WORKSPACE_BYTES = 16 * 1024 * 1024
    session = make_sandbox_session()
    run(session, "bash", command="true")
    assert not os.path.ismount(_volume(session))
    started = time.monotonic()
    out = run(
        session,
        "bash",
        command="while true; do head -c 1000000 /dev/zero >> /tmp/grow; sleep 0.02; done",
        timeout_ms=60_000,
    )
    assert time.monotonic() - started < 30
    assert out.is_error and "killed: the command wrote past the sandbox's storage limit" in text(out)
    out = run(session, "bash", command="du -sm /tmp/grow | cut -f1")
    assert "workspace size limit exceeded" in text(out)
    assert int(text(out).split("\n")[0]) < 16 + 40  # stopped within a few samples
    out = run(session, "bash", command="rm /tmp/grow; echo ok")
    assert not out.is_error and text(out) == "ok"


def test_keyrings_bpf_perf_mount_and_ptrace_are_refused_with_eperm(make_sandbox_session):
    session = make_sandbox_session()
    probe = r"""
import ctypes, errno, platform
libc = ctypes.CDLL(None, use_errno=True)
x86 = platform.machine() == "x86_64"
calls = {"add_key": 248 if x86 else 217, "keyctl": 250 if x86 else 219, "bpf": 321 if x86 else 280,
         "perf_event_open": 298 if x86 else 241, "ptrace": 101 if x86 else 117, "mount": 165 if x86 else 40,
         "userfaultfd": 323 if x86 else 282, "init_module": 175 if x86 else 105,
         "kexec_load": 246 if x86 else 104, "shmget": 29 if x86 else 194}
for name, nr in calls.items():
    ctypes.set_errno(0)
    rc = libc.syscall(nr, 0, 0, 0, 0, 0, 0)
    print(name, rc, errno.errorcode.get(ctypes.get_errno(), "0"))
ctypes.set_errno(0)
print("getppid", libc.syscall(110 if x86 else 173) > 0)
"""
    out = text(run(session, "bash", command=f"python3 -c '{probe}'"))
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    for name in ("add_key", "keyctl", "bpf", "perf_event_open", "ptrace", "mount", "userfaultfd",
                 "init_module", "kexec_load", "shmget"):  # fmt: skip
        assert lines[name] == "-1 EPERM", (name, out)
    assert lines["getppid"] == "True"
    # Programs fail cleanly, and the shell goes on.
    out = run(session, "bash", command="keyctl show 2>&1 || true; unshare -r true 2>&1; echo still-here")
    assert "still-here" in text(out)


def test_the_seccomp_program_exists_for_both_architectures():
    import struct

    from sandboxes.seccomp import ARCHITECTURES, seccomp_program

    for machine, (audit_arch, table) in ARCHITECTURES.items():
        program = seccomp_program(machine)
        # The variant for a sandbox without a memory cgroup: setsockopt goes to its own block, whose jumps
        # stay inside the program.
        fixed = seccomp_program(machine, fixed_socket_buffers=True)
        steps = [struct.unpack("=HBBI", fixed[i : i + 8]) for i in range(0, len(fixed), 8)]
        at = next(i for i, s in enumerate(steps) if s[0] == 0x15 and s[3] == table["setsockopt"])
        assert steps[at + 1 + steps[at][1]] == (0x20, 0, 0, 16 + 8)  # loads the level
        assert steps[-1] == (0x06, 0, 0, 0x00050000) and steps[-2] == (0x06, 0, 0, 0x7FFF0000)
        assert all(i + 1 + max(s[1], s[2]) < len(steps) for i, s in enumerate(steps) if s[0] == 0x15)
        assert table["setsockopt"] not in {
            k
            for code, _jt, _jf, k in (
                struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)
            )
            if code == 0x15
        }
        insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
        assert insns[1][3] == audit_arch
        denied = {k for code, _jt, _jf, k in insns if code == 0x15} - {audit_arch}
        assert {table["bpf"], table["add_key"], table["keyctl"], table["mount"]} <= denied
        assert insns[-1] == (0x06, 0, 0, 0x00050000 | 1)  # EPERM
        assert insns[-2] == (0x06, 0, 0, 0x00050000 | 38)  # ENOSYS
        assert insns[-3] == (0x06, 0, 0, 0x7FFF0000)  # allow
        # Every jump lands on one of the three answers or inside the program.
        for index, (code, jt, jf, _k) in enumerate(insns):
            if code in (0x15, 0x35):
                assert index + 1 + max(jt, jf) < len(insns)
        # memfd_create jumps to ENOSYS, bpf to EPERM.
        for name, answer in (("memfd_create", -2), ("bpf", -1), ("mq_open", -2), ("shmget", -1)):
            index = next(i for i, insn in enumerate(insns) if insn[0] == 0x15 and insn[3] == table[name])
            assert index + 1 + insns[index][1] == len(insns) + answer, name


def test_outputs_are_stored_once_per_content_with_a_session_quota(
    make_sandbox_session, settings, sandbox_root, django_capture_on_commit_callbacks
):
    from files.models import File
    from files.services import file_delete

    settings.DATA_DIR = sandbox_root / "data"
    settings.GALLEY_SESSION_OUTPUTS_BYTES = 3 * 1024 * 1024
    session = make_sandbox_session()
    out = run(
        session,
        "bash",
        command=(
            "cd /mnt/session/outputs && head -c 1000000 /dev/urandom > a.bin && "
            "cp a.bin b.bin && mkdir -p d && cp a.bin d/c.bin && echo ok"
        ),
    )
    assert text(out) == "ok"
    rows = list(File.objects.filter(scope_id=session.id).order_by("filename"))
    assert [r.filename for r in rows] == ["a.bin", "b.bin", "d/c.bin"]
    assert len({r.sha256 for r in rows}) == 1
    # One stored copy: every row is a name of the same inode (plus the blob itself).
    inodes = {r.path.stat().st_ino for r in rows}
    assert len(inodes) == 1 and rows[0].path.stat().st_nlink == 4
    # Unchanged files are not recorded again; a changed one is, as new content.
    run(session, "bash", command="echo unchanged")
    assert File.objects.filter(scope_id=session.id).count() == 3
    out = run(
        session,
        "bash",
        command=(
            "cd /mnt/session/outputs && head -c 1000000 /dev/urandom > b.bin && "
            "head -c 1000000 /dev/urandom > e.bin && head -c 1000000 /dev/urandom > f.bin && echo ok"
        ),
    )
    # 1 MB stored + 1 MB (new b.bin) + 1 MB (e.bin) reaches the 3 MB quota: f.bin is left out, and said so.
    assert "outputs not saved: 1 file(s)" in text(out) and "f.bin" in text(out)
    assert "3145728 bytes" in text(out)
    names = sorted(File.objects.filter(scope_id=session.id).values_list("filename", flat=True))
    assert names == ["a.bin", "b.bin", "b.bin", "d/c.bin", "e.bin"]
    # Deleting every row of a content removes its stored bytes.
    blob = rows[0].path.parent / "blobs" / rows[0].sha256
    assert blob.exists()
    with django_capture_on_commit_callbacks(execute=True):
        for row in rows:
            file_delete(workspace=session.workspace, file_id=row.id)
            assert blob.exists() or row is rows[-1]
    assert not blob.exists()


# --- memory the kernel holds outside RLIMIT_AS ------------------------------------------------------------

_KERNEL_MEMORY_PROBE = r"""
import ctypes, errno, os, platform
libc = ctypes.CDLL(None, use_errno=True)
x86 = platform.machine() == "x86_64"
MiB = 1024 * 1024
chunk = b"x" * MiB

def fill(fd, most):
    written = 0
    try:
        while written < most:
            written += os.write(fd, chunk)
    except OSError as exc:
        return written, errno.errorcode[exc.errno]
    return written, "0"

try:
    fd = os.memfd_create("hog")
except OSError as exc:
    print("memfd", 0, errno.errorcode[exc.errno])
else:
    print("memfd", *fill(fd, 320 * MiB))
fd = os.open("/dev/shm/hog", os.O_CREAT | os.O_WRONLY, 0o600)  # the fallback: a file in the sized /dev/shm
print("shm_file", *fill(fd, 320 * MiB))
os.close(fd)
os.unlink("/dev/shm/hog")
for name, nr in (("mq_open", 240 if x86 else 180), ("msgget", 68 if x86 else 186),
                 ("semget", 64 if x86 else 190), ("shmget", 29 if x86 else 194),
                 ("memfd_secret", 447)):
    ctypes.set_errno(0)
    flags = 0x200 | 0o600  # IPC_CREAT
    args = {"mq_open": (b"/hog", os.O_CREAT | os.O_RDWR, 0o600, 0)}.get(name, (0, flags, flags))
    print(name, libc.syscall(nr, *args), errno.errorcode.get(ctypes.get_errno(), "0"))
"""


def test_memfd_mqueues_and_sysv_ipc_cannot_hold_memory_past_the_limits(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_MEMORY_BYTES = 256 * 1024 * 1024
    settings.GALLEY_SANDBOX_SHM_BYTES = 16 * 1024 * 1024
    session = make_sandbox_session()
    run(session, "bash", command=f"cat > /tmp/probe.py <<'PY'\n{_KERNEL_MEMORY_PROBE}\nPY")
    out = run(session, "bash", command="python3 /tmp/probe.py")
    lines = {line.split(" ")[0]: line.split(" ")[1:] for line in text(out).splitlines()}
    # A memfd would hold 320 MiB of RAM that RLIMIT_AS never counts: the kernel answers as if it had none.
    assert lines["memfd"] == ["0", "ENOSYS"], text(out)
    # The fallback, a file in /dev/shm, stops at the tmpfs size.
    written, error = lines["shm_file"]
    assert int(written) <= 16 * 1024 * 1024 and error == "ENOSPC", text(out)
    for name in ("mq_open", "msgget", "semget", "memfd_secret"):
        assert lines[name] == ["-1", "ENOSYS"], (name, text(out))
    assert lines["shmget"] == ["-1", "EPERM"], text(out)
    assert text(run(session, "bash", command="echo fine")) == "fine"


# --- the egress proxy: what one sandbox can make the worker hold --------------------------------------------

_PROXY_FLOOD = r"""
import select, socket, sys, time
def ask(host):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status = s.recv(200).split(b" ")[1].decode()
    s.close()
    return status
if sys.argv[1] == "refused":
    print(sorted({ask(f"h{i}.example.com") for i in range(300)}))
else:
    held, errors = [], []
    for _ in range(150):
        try:
            held.append(socket.create_connection(("127.0.0.1", 3128), timeout=20))
        except OSError as error:
            errors.append(f"connect: {error!r}")
    # The connections the proxy serves wait for a request and never answer; the others get a 503 as soon as
    # the proxy accepts them (on a loaded machine that may take a while: wait up to 30 s for them).
    busy, waiting, deadline = 0, set(held), time.monotonic() + 30
    while len(waiting) > int(sys.argv[2]) and time.monotonic() < deadline:
        for s in select.select(list(waiting), [], [], 1.0)[0]:
            waiting.discard(s)
            try:
                busy += s.recv(200).startswith(b"HTTP/1.1 503")
            except OSError as error:
                errors.append(f"recv: {error!r}")
    # The counts come first, whatever else happened; the errors (if any) follow, for the assertion's message.
    print("busy", busy, "served", len(waiting))
    print(*errors[:5], sep="\n")
"""


def test_a_flood_of_refused_requests_and_held_connections_is_bounded(make_sandbox_session):
    from sandboxes.egress import MAX_CONNECTIONS, MAX_DENIALS

    session = make_sandbox_session(networking={"type": "limited", "allowed_hosts": []})
    run(session, "bash", command=f"cat > /tmp/flood.py <<'PY'\n{_PROXY_FLOOD}\nPY")
    out = text(run(session, "bash", command="python3 /tmp/flood.py refused"))
    assert out.splitlines()[0] == "['403']"
    # 300 distinct refusals: the first are named, the rest counted, so the result stays small.
    named = [line for line in out.splitlines() if line.startswith("[egress proxy refused a connection to")]
    assert len(named) == MAX_DENIALS and "h0.example.com" in named[0]
    assert f"[egress proxy refused {300 - MAX_DENIALS} more connection(s) not listed]" in out
    assert len(out) < 5000
    # Connections held open: past the cap each gets a 503 at once instead of a thread in the worker.
    command = f"python3 /tmp/flood.py held {MAX_CONNECTIONS}"
    out = text(run(session, "bash", command=command, timeout_ms=90_000))
    assert out.startswith("busy "), out
    _, busy, _, served = out.splitlines()[0].split()
    # Never more than the cap at once in the worker; the rest told so (a rare one may just be closed).
    assert int(served) <= MAX_CONNECTIONS and int(busy) >= 150 - MAX_CONNECTIONS - 5, out
    assert f"more than {MAX_CONNECTIONS} connections open at once" in out
    # Once they are closed, the proxy serves again.
    out = text(run(session, "bash", command="curl -s -m 5 http://denied.example.com/ | head -c 40"))
    assert "refused" in out


# --- cgroups, where the host lets the worker make them ------------------------------------------------------


def test_a_memory_cgroup_bounds_the_sandbox_as_a_whole(make_sandbox_session, settings):
    from sandboxes.cgroup import cgroup_mode

    if cgroup_mode() == "none":
        pytest.skip("this host gives the worker no writable memory and pids cgroups (rlimits only)")
    settings.GALLEY_SANDBOX_MEMORY_BYTES = 256 * 1024 * 1024
    settings.GALLEY_SANDBOX_MAX_PROCESSES = 40
    session = make_sandbox_session()
    run(session, "bash", command="true")
    live = services._registry[session.id]
    group = live.cgroup
    assert group is not None
    # The shell and what it started are in the sandbox's cgroup, with its limits.
    members = {int(p) for p in (group.paths[0] / "cgroup.procs").read_text().split()}
    assert live.shell.proc.pid in members and len(members) >= 2
    pids = group.paths[-1] / "pids.max"
    assert pids.read_text().strip() == "40"
    # Five processes of 100 MiB each: every one is under RLIMIT_AS (256 MiB), together they are not.
    hog = "python3 -c 'import time; x = bytearray(100 * 1024 * 1024); time.sleep(4); print(\"kept\")'"
    script = f'p=; for i in 1 2 3 4 5; do {hog} & p="$p $!"; done; wait $p'  # not the shell's own jobs
    out = text(run(session, "bash", command=script, timeout_ms=60_000))
    # Two survivors' prints can share a line; bash's "Killed" lines quote the command, print("kept") and all.
    kept = sum(line.count("kept") for line in out.splitlines() if "Killed" not in line)
    assert 1 <= kept <= 2 and "Killed" in out, out  # the OOM killer, within the sandbox's cgroup
    if group.version == 1:
        peak = int((group.paths[0] / "memory.max_usage_in_bytes").read_text())
    else:
        peak = int((group.paths[0] / "memory.peak").read_text())
    assert peak <= 256 * 1024 * 1024
    assert text(run(session, "bash", command="echo fine")) == "fine"
    # Stopping the sandbox removes its cgroups.
    services.sandbox_reap_idle(idle_seconds=0)
    assert live.cgroup is None and not any(p.exists() for p in group.paths)


# Fills Unix socket pairs (each with the largest send buffer the kernel allows) without ever reading them,
# until `target` bytes are queued or the kernel refuses; writes the running total to `out`, then holds it all.
_SOCKET_FILL = r"""
import os, socket, sys, time
target, out = int(sys.argv[1]), sys.argv[2]
open("/proc/self/oom_score_adj", "w").write("1000")  # if the OOM killer comes, these go first, not the shell
chunk, held, queued = b"x" * 65536, [], 0
try:
    while queued < target:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024 * 1024)  # capped at 2 x net.core.wmem_max
        a.setblocking(False)
        held.append((a, b))
        while True:
            try:
                queued += a.send(chunk)
            except BlockingIOError:
                break
        with open(out + ".tmp", "w") as f:
            f.write(str(queued))
        os.replace(out + ".tmp", out)
    result = "full"
except OSError as exc:
    result = f"errno {exc.errno}"
open(out + ".end", "w").write(result)
time.sleep(120)
"""


def _cgroup_memory(group, name: str) -> int:  # type: ignore[no-untyped-def]
    v1 = {"current": "memory.usage_in_bytes", "peak": "memory.max_usage_in_bytes"}
    return int((group.paths[0] / (v1[name] if group.version == 1 else f"memory.{name}")).read_text())


def _queued(session, names: list[str]) -> dict[str, tuple[int, str, bool]]:  # type: ignore[no-untyped-def]
    """Each filler's bytes queued so far, how it ended ("-" while it fills) and whether it is still alive
    (not killed, not a zombie)."""
    script = "; ".join(
        f"p=$(cat /tmp/{n}.pid); s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); "
        f'e=$([ -f /tmp/{n}.end ] && tr " " _ < /tmp/{n}.end || echo -); '
        f'echo "{n} $(cat /tmp/{n} 2>/dev/null || echo 0) $e '
        f'$([ -n "$s" ] && [ "$s" != Z ] && echo alive || echo gone)"'
        for n in names
    )
    lines = text(run(session, "bash", command=script)).splitlines()
    state = {}
    for line in lines:
        name, queued, end, alive = line.split(" ")
        state[name] = (int(queued), end, alive == "alive")
    return state


def test_unix_socket_buffers_are_charged_to_the_sandbox_and_stop_at_its_memory_limit(
    make_sandbox_session, settings
):
    """Data queued in Unix sockets nobody reads is kernel memory no rlimit counts (a process can queue
    2 x wmem_max per socket, times its open files, times its processes). The sandbox's memory cgroup
    charges it: a sandbox cannot pin more than its memory limit in socket buffers."""
    from sandboxes.cgroup import cgroup_mode

    if cgroup_mode() == "none":
        pytest.skip("this host gives the worker no memory cgroup: socket buffers are bounded by rlimits only")
    limit = 256 * 1024 * 1024
    settings.GALLEY_SANDBOX_MEMORY_BYTES = limit
    session = make_sandbox_session()
    run(session, "bash", command=f"cat > /tmp/fill.py <<'PY'\n{_SOCKET_FILL}\nPY")
    group = services._registry[session.id].cgroup
    assert group is not None

    def start(names: list[str], target: int) -> None:
        starts = " ".join(
            f"(python3 /tmp/fill.py {target} /tmp/{n} & echo $! > /tmp/{n}.pid);" for n in names
        )
        run(session, "bash", command=f"rm -f /tmp/q*; {starts} sleep 0.2")

    def settled(names: list[str]) -> dict[str, tuple[int, str, bool]]:
        deadline = time.monotonic() + 60
        while True:
            state = _queued(session, names)
            if (
                all(end != "-" or not alive for _, end, alive in state.values())
                or time.monotonic() > deadline
            ):
                time.sleep(0.5)  # a process the OOM killer chose may still be on its way out
                return _queued(session, names)
            time.sleep(0.3)

    # 64 MiB queued by one process: the cgroup's usage grows by as much (it is charged, not just capped).
    before = _cgroup_memory(group, "current")
    start(["q0"], 64 * 1024 * 1024)
    state = settled(["q0"])
    queued, end, alive = state["q0"]
    assert end == "full" and alive and queued >= 64 * 1024 * 1024, state
    charged = _cgroup_memory(group, "current") - before
    assert charged >= 0.9 * queued, (charged, queued)
    run(session, "bash", command="kill $(cat /tmp/q0.pid); sleep 0.3")

    # Eight processes asking for 64 MiB each, twice the limit: what the living hold together stays under it.
    names = [f"q{i}" for i in range(8)]
    start(names, 64 * 1024 * 1024)
    state = settled(names)
    held = sum(queued for queued, _, alive in state.values() if alive)
    assert held <= limit, state
    assert any(not alive or end != "full" for _, end, alive in state.values()), state  # refused or killed
    # The kernel may charge past the limit by its per-CPU batch (64 pages) before it reclaims or kills.
    assert _cgroup_memory(group, "peak") <= limit + 64 * 4096
    run(session, "bash", command="pkill -f fill.py; true")
    assert text(run(session, "bash", command="echo fine")) == "fine"


# Queues unread data in N TCP connections over the sandbox's own loopback (each end kept open, nothing read).
_TCP_FILL = r"""
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1024)
held, total, chunk = [], 0, b"x" * 65536
for i in range(int(sys.argv[1])):
    c = socket.create_connection(("127.0.0.1", srv.getsockname()[1])); s, _ = srv.accept()
    held += [c, s]
    c.setblocking(False)
    while True:
        try:
            total += c.send(chunk)
        except BlockingIOError:
            break
print("queued", total, flush=True)
time.sleep(60)
"""


def test_tcp_buffers_a_sandbox_queues_are_bounded_by_its_memory_cgroup(make_sandbox_session, settings):
    """cgroup v1 charges TCP buffers to a memory cgroup only once its TCP limit is set: without it, 200
    loopback connections of a sandbox limited to 256 MiB queued 782 MB (tcp_wmem's 4 MiB each), charged
    nowhere and taken from the host's `net.ipv4.tcp_mem`. v2 charges them to the memory limit itself."""
    from sandboxes.cgroup import V1_TCP_SHARE, cgroup_mode

    if cgroup_mode() == "none":
        pytest.skip(
            "this host gives the worker no memory cgroup (the no-cgroup socket limits are tested below)"
        )
    limit = 256 * 1024 * 1024
    settings.GALLEY_SANDBOX_MEMORY_BYTES = limit
    session = make_sandbox_session(networking={"type": "limited", "allowed_hosts": []})
    run(session, "bash", command=f"cat > /tmp/tcp.py <<'PY'\n{_TCP_FILL}\nPY")
    group = services._registry[session.id].cgroup
    assert group is not None and group.charges_sockets
    run(session, "bash", command="(python3 /tmp/tcp.py 200 > /tmp/tcp.out 2>&1 &); sleep 0.1")
    deadline = time.monotonic() + 60
    while "queued" not in (out := text(run(session, "bash", command="cat /tmp/tcp.out"))):
        assert time.monotonic() < deadline and "Error" not in out, out
        time.sleep(0.3)
    queued = int(out.split()[1])
    # The kernel lets each socket past the limit by its minimum (a few pages) before it stops sending.
    bound = (limit // V1_TCP_SHARE if group.version == 1 else limit) + 400 * 65536
    assert queued <= bound, (queued, bound)
    if group.version == 1:
        charged = int((group.paths[0] / "memory.kmem.tcp.usage_in_bytes").read_text())
        assert charged >= 0.9 * queued, (charged, queued)  # charged, not merely capped
    run(session, "bash", command="pkill -f tcp.py; true")
    assert text(run(session, "bash", command="echo fine")) == "fine"


# Pins as much Unix socket buffer memory as one process can: every descriptor a listening socket whose queued
# connections each hold a full send buffer of unread data (their clients closed), after asking for the
# largest buffers; also measures each mechanism on its own. Prints one JSON line, then holds everything.
_SOCKET_PIN = r"""
import json, os, resource, socket, sys, time
chunk = b"x" * 65536
report = open(sys.argv[2] + ".tmp", "w")  # before the descriptors run out
def fill(s):
    s.setblocking(False)
    q = 0
    while True:
        try:
            q += s.send(chunk)
        except (BlockingIOError, OSError):
            return q
facts = {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
facts["nproc"] = resource.getrlimit(resource.RLIMIT_NPROC)[0]
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
facts["sndbuf"] = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
facts["pair"] = fill(a)
a.close(); b.close()
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind("\0galley-probe-dgram")
sent = 0
for i in range(50):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.setblocking(False)
    try:
        c.sendto(b"x" * 100_000, "\0galley-probe-dgram"); sent += 1
    except OSError:
        break
    finally:
        c.close()
facts["datagrams"] = sent
d.close()
held, queued, listeners, per_listener = [], 0, 0, []
try:
    while True:
        l = socket.socket(socket.AF_UNIX); l.bind("\0galley-probe-%d" % listeners); l.listen(4096)
        held.append(l); listeners += 1; n = 0
        if queued > int(sys.argv[3]):
            break  # far past the bound already: enough to fail, and the host keeps its memory
        for i in range(int(sys.argv[1])):
            c = socket.socket(socket.AF_UNIX); c.setblocking(False)
            try:
                c.connect("\0galley-probe-%d" % (listeners - 1))
            except (BlockingIOError, OSError):
                c.close(); break
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
            queued += fill(c); n += 1; c.close()
        per_listener.append(n)
except OSError as exc:
    facts["stopped"] = exc.errno
facts.update(queued=queued, listeners=listeners, connections=max(per_listener or [0]))
report.write(json.dumps(facts))
report.close()
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(120)
"""


def _mem_available() -> int:
    from pathlib import Path

    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


def test_without_a_memory_cgroup_socket_buffers_are_bounded_per_process(
    make_sandbox_session, settings, monkeypatch
):
    """With no memory cgroup (GALLEY_SANDBOX_CGROUPS=off here), nothing charges socket buffers to the sandbox:
    without limits one descriptor could pin somaxconn x 2 wmem_max (a listening socket holding its queued
    connections' unread data). The sandbox then gets default-sized socket buffers (setsockopt of a size does
    nothing), a listen backlog and datagram queue of 8 in its own network, 256 files and 64 processes: one
    process pins at most 256 x 9 socket buffers."""
    import json
    import time
    from pathlib import Path

    from sandboxes import cgroup
    from sandboxes.backends import NO_CGROUP_LISTEN_BACKLOG, NO_CGROUP_MAX_PROCESSES, NO_CGROUP_OPEN_FILES

    settings.GALLEY_SANDBOX_CGROUPS = "off"
    monkeypatch.setattr(cgroup, "_mode", None)
    session = make_sandbox_session()
    run(session, "bash", command=f"cat > /tmp/pin.py <<'PY'\n{_SOCKET_PIN}\nPY")
    assert services._registry[session.id].cgroup is None
    wmem_default = int(Path("/proc/sys/net/core/wmem_default").read_text())
    per_socket = wmem_default + 65536  # a send is refused once the buffer is full: one chunk past it at most
    queue = NO_CGROUP_LISTEN_BACKLOG + 1
    bound = NO_CGROUP_OPEN_FILES * queue * per_socket
    before = _mem_available()
    pin = f"python3 /tmp/pin.py 100 /tmp/pin.json {2 * bound} >/tmp/pin.log 2>&1"
    run(session, "bash", command=f"({pin} &) ; sleep 0.1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = text(
            run(session, "bash", command="cat /tmp/pin.json 2>/dev/null || { echo -; cat /tmp/pin.log; }")
        )
        if out.startswith("{"):
            break
        time.sleep(0.5)
    assert out.startswith("{"), out
    facts = json.loads(out)
    pinned = before - _mem_available()
    run(session, "bash", command="pkill -f pin.py; true")
    print(facts, f"host memory pinned: {pinned / 2**20:.1f} MiB")
    assert facts["nofile"] == NO_CGROUP_OPEN_FILES
    assert facts["nproc"] <= NO_CGROUP_MAX_PROCESSES
    assert facts["sndbuf"] == wmem_default  # the 64 MiB asked for was not given
    assert facts["pair"] <= per_socket
    assert facts["datagrams"] <= queue and facts["connections"] <= queue
    assert facts["stopped"] == 24  # EMFILE: the descriptors ran out, not the connections
    assert facts["queued"] <= bound, (facts, bound)
    assert facts["queued"] >= bound // 4  # the probe really did fill them


def _eight_holding(mib: int, seconds: float) -> str:
    """8 processes, each holding `mib` MiB for `seconds`, then "finished" (waits for them, not the bridge)."""
    hold = f"python3 -c 'import time; b = b\"x\" * ({mib} << 20); time.sleep({seconds})'"
    return f'p=; for i in $(seq 8); do {hold} & p="$p $!"; done; wait $p; echo finished'


def _without_cgroup(settings, monkeypatch, memory_mib: int) -> None:
    from sandboxes import cgroup

    settings.GALLEY_SANDBOX_CGROUPS = "off"
    settings.GALLEY_SANDBOX_MEMORY_BYTES = memory_mib << 20
    monkeypatch.setattr(cgroup, "_mode", None)


def test_without_a_memory_cgroup_processes_past_the_memory_limit_together_are_killed(
    make_sandbox_session, settings, monkeypatch
):
    """No memory cgroup: RLIMIT_AS bounds each process, not their sum. 8 processes of 100 MiB each (800 MiB)
    under a 512 MiB limit are killed by the worker's memory watch, and the tool result says why."""
    _without_cgroup(settings, monkeypatch, 512)
    session = make_sandbox_session()
    run(session, "bash", command="cd /tmp && export KEPT=yes")
    assert services._registry[session.id].cgroup is None
    started = time.monotonic()
    out = run(session, "bash", command=_eight_holding(100, 60), timeout_ms=60000)
    print(text(out), f"killed after {time.monotonic() - started:.2f}s")
    assert out.is_error
    assert "finished" not in text(out)
    assert "[killed: the sandbox's processes held" in text(out)
    assert "past its limit of 536870912 bytes" in text(out)
    assert time.monotonic() - started < 20
    after = run(session, "bash", command='pwd; echo "$KEPT"; ps -e --no-headers | wc -l')
    assert not after.is_error
    lines = text(after).split("\n")
    assert lines[:2] == ["/tmp", "yes"] and int(lines[2]) < 6  # none of the 8 is left


# Holds Unix socket buffers: socket pairs filled and never read, and connections queued on a listener with
# the data their clients sent before closing. Prints the bytes queued, then holds them.
_UNIX_HOLD = r"""
import socket, sys, time
pairs, queued = [], 0
def fill(s):
    global queued
    s.setblocking(False)
    try:
        while True:
            queued += s.send(b"x" * 65536)
    except OSError:
        pass
for i in range(int(sys.argv[1])):
    a, b = socket.socketpair()
    fill(a)
    pairs.append((a, b))
listener = socket.socket(socket.AF_UNIX)
listener.bind("\0galley-hold-%s" % sys.argv[2])
listener.listen(8)
for i in range(8):
    c = socket.socket(socket.AF_UNIX)
    c.connect("\0galley-hold-%s" % sys.argv[2])
    fill(c)
    c.close()
print("queued", queued, flush=True)
time.sleep(60)
"""


def test_without_a_memory_cgroup_unix_socket_buffers_count_toward_the_memory_limit(
    make_sandbox_session, settings, monkeypatch
):
    """No memory cgroup: each process may hold its socket buffers (bounded per process), but not the sandbox
    as a whole past its limit. 12 processes queue about 30 MiB each in Unix sockets (socket pairs, and a
    listener's queued connections): the memory watch counts them and kills the command."""
    if os.geteuid() != 0:
        pytest.skip("only a root worker can enter the sandbox's network namespace to read its Unix sockets")
    _without_cgroup(settings, monkeypatch, 256)
    session = make_sandbox_session(networking={"type": "limited", "allowed_hosts": []})
    run(session, "bash", command=f"cat > /tmp/hold.py <<'PY'\n{_UNIX_HOLD}\nPY")
    one = text(run(session, "bash", command="timeout 5 python3 /tmp/hold.py 100 probe | head -1"))
    assert one.startswith("queued") and int(one.split()[1]) > 20 << 20, one  # what one process can queue
    hold = 'p=; for i in $(seq 12); do python3 /tmp/hold.py 100 $i & p="$p $!"; done; wait $p; echo finished'
    started = time.monotonic()
    out = run(session, "bash", command=hold, timeout_ms=60000)
    assert out.is_error and "finished" not in text(out), text(out)
    assert "[killed: the sandbox's processes held" in text(out) and "past its limit of 268435456" in text(out)
    assert time.monotonic() - started < 30
    assert text(run(session, "bash", command="echo fine")) == "fine"


def test_without_a_memory_cgroup_memory_held_between_commands_is_killed_and_reported(
    make_sandbox_session, settings, monkeypatch
):
    _without_cgroup(settings, monkeypatch, 512)
    session = make_sandbox_session()
    run(session, "bash", command=f"({_eight_holding(100, 60)}) >/dev/null 2>&1 & echo started")
    deadline = time.monotonic() + 20
    while services._registry[session.id].shell is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert services._registry[session.id].shell is None  # killed by the watch, no command running
    out = run(session, "bash", command="echo next")
    assert out.is_error and text(out).startswith("next\n[killed: the sandbox's processes held")
    assert "while no command ran" in text(out)
    assert not run(session, "bash", command="true").is_error  # said once


def test_without_a_memory_cgroup_a_sandbox_under_its_memory_limit_is_not_killed(
    make_sandbox_session, settings, monkeypatch
):
    """8 processes of 40 MiB (320 MiB) under 512 MiB run to the end; so does one of 200 MiB that forks 7
    children sharing its pages (1.6 GiB resident counted per process, 200 MiB held: proportional counting)."""
    _without_cgroup(settings, monkeypatch, 512)
    session = make_sandbox_session()
    out = run(session, "bash", command=_eight_holding(40, 2))
    assert not out.is_error and text(out).endswith("finished"), text(out)
    forked = (
        'python3 -c \'import os, time; b = b"x" * (200 << 20); kids = [os.fork() for _ in range(3)]; '
        'time.sleep(2); print("done", flush=True) if all(kids) else None\''
    )
    out = run(session, "bash", command=forked)
    assert not out.is_error and text(out) == "done", text(out)

"""The persistent shell: one long-lived bash inside one long-lived sandbox, spoken to over pipes.

Each command is sent as one `eval` of the exactly quoted command text, followed by a line that saves the
working directory and exported variables to the sandbox's state directory and prints a per-shell sentinel with
the exit code. Output (stdout and stderr merged) is read until the sentinel. Because the state is saved after
every command, a respawned shell (after a timeout, a crash, a worker restart or an idle reap) restores `cd`
and `export`.
"""

import os
import re
import secrets
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

HEAD_TAIL_BYTES = 2048  # kept from the end of a truncated output
WINDOW_BYTES = 512


@dataclass
class CommandResult:
    output: str
    exit_code: int | None  # None: the shell did not report one (timeout, cancel, shell died)
    timed_out: bool = False
    cancelled: bool = False
    shell_died: bool = False
    truncated_bytes: int = 0


class AnyEvent:
    """Set when any of its events is (the shell polls a command's cancel with `is_set`)."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [event for event in events if event is not None]

    def is_set(self) -> bool:
        return any(event.is_set() for event in self.events)


def quote(text: str) -> str:
    return "'" + text.replace("\x00", "").replace("'", "'\"'\"'") + "'"


class Shell:
    def __init__(self, argv: list[str], popen_kwargs: dict, state_dir: str, init: str = "") -> None:
        self.sentinel = "__GALLEY_" + secrets.token_hex(12) + "__"
        self._pattern = re.compile(b"\n" + self.sentinel.encode() + rb" (-?\d+)\n")
        self.state_dir = state_dir
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                bufsize=0,
                **popen_kwargs,
            )
        finally:
            for fd in popen_kwargs.get("pass_fds", ()):  # the child has its copy (the seccomp program)
                os.close(fd)
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        startup = init + f"\nprintf '\\n%s %d\\n' {self.sentinel} 0\n"
        result = self._exchange(startup, timeout=30.0, cancel=None, cap=64 * 1024)
        if result.exit_code is None:
            self.kill()
            raise RuntimeError("the sandbox did not start: " + result.output.strip()[-2000:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def inner_pid(self) -> int:
        """A process inside the sandbox's namespaces (bubblewrap's child); file tools enter its mounts."""
        return inner_pid(self.proc)

    def kill(self) -> None:
        kill_sandbox(self.proc)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def run(
        self, command: str, *, timeout: float, cancel: threading.Event | AnyEvent | None, cap: int
    ) -> CommandResult:
        state = self.state_dir
        script = (
            f"eval {quote(command)} </dev/null\n"
            f"__galley_rc=$?; {{ pwd > {state}/cwd; export -p > {state}/env; }} 2>/dev/null; "
            f"printf '\\n%s %d\\n' {self.sentinel} \"$__galley_rc\"\n"
        )
        self.last_used = time.monotonic()
        try:
            return self._exchange(script, timeout=timeout, cancel=cancel, cap=cap)
        finally:
            self.last_used = time.monotonic()

    def _exchange(
        self, script: str, *, timeout: float, cancel: threading.Event | AnyEvent | None, cap: int
    ) -> CommandResult:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(script.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return CommandResult(output="", exit_code=None, shell_died=True)
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        head = bytearray()
        tail = bytearray()
        window = b""
        total = 0
        while True:
            if cancel is not None and cancel.is_set():
                self.kill()
                return CommandResult(
                    output=_assemble(head, tail, total, cap),
                    exit_code=None,
                    cancelled=True,
                    truncated_bytes=max(0, total - cap),
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                return CommandResult(
                    output=_assemble(head, tail, total, cap),
                    exit_code=None,
                    timed_out=True,
                    truncated_bytes=max(0, total - cap),
                )
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.1))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.kill()
                return CommandResult(
                    output=_assemble(head, tail, total, cap),
                    exit_code=None,
                    shell_died=True,
                    truncated_bytes=max(0, total - cap),
                )
            total += len(chunk)
            room = cap - len(head)
            if room > 0:
                head += chunk[:room]
                chunk_rest = chunk[room:]
            else:
                chunk_rest = chunk
            if chunk_rest:
                tail += chunk_rest
                if len(tail) > WINDOW_BYTES + HEAD_TAIL_BYTES:
                    del tail[: len(tail) - (WINDOW_BYTES + HEAD_TAIL_BYTES)]
            window = (window + chunk)[-WINDOW_BYTES:]
            match = self._pattern.search(window)
            if match:
                # Everything from the sentinel's leading newline on is protocol, not output.
                end = total - (len(window) - match.start())
                return CommandResult(
                    output=_assemble(head, tail, end, cap, stream_total=total),
                    exit_code=int(match.group(1)),
                    truncated_bytes=max(0, end - cap),
                )


def _assemble(head: bytearray, tail: bytearray, end: int, cap: int, stream_total: int | None = None) -> str:
    """The output bytes [0, end) as text: all of it, or its first `cap` bytes, a marker and its last bytes."""
    total = stream_total if stream_total is not None else end
    if end <= cap:
        return head[:end].decode(errors="replace")
    # tail holds stream bytes [total - len(tail), total); keep those before `end`.
    tail_start = total - len(tail)
    kept = bytes(tail[: max(0, end - tail_start)])[-HEAD_TAIL_BYTES:]
    omitted = end - cap - len(kept)
    marker = (
        f"\n\n[output truncated: {omitted} bytes omitted out of {end}; "
        f"showing the first {cap} and the last {len(kept)} bytes]\n\n"
    )
    return head.decode(errors="replace") + marker + kept.decode(errors="replace")


def inner_pid(proc: "subprocess.Popen[bytes]") -> int:
    """The first process inside the namespaces of a sandbox started as `proc` (bubblewrap's child)."""
    pid = proc.pid
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        children = []
    if not children:
        raise RuntimeError("the sandbox process has no child")
    return int(children[0])


def kill_sandbox(proc: "subprocess.Popen[bytes]") -> None:
    """Kill a sandbox started as `proc` (its own session: the whole group) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass

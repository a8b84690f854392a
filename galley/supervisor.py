"""`manage.py serve`'s process supervisor: N web processes (Daphne) sharing one listening socket
and the Celery worker processes, each restarted with backoff when it dies, until SIGTERM/SIGINT.

The listening socket is bound once here and handed to every Daphne by file descriptor, so the web
processes accept from one queue on one port (the kernel spreads connections over whichever process
is waiting in accept) and a restarted web process takes over without the port ever closing."""

import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("galley.serve")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# A child that ran this long before dying is considered healthy again: its backoff starts over.
HEALTHY_AFTER = 30.0
STOP_GRACE = 10.0
# A child's exit wakes the supervisor at once (SIGCHLD); this bounds a wake-up that was missed.
SAFETY_POLL = 5.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, pass_fds=self.pass_fds)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.proc.pid)


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """Bind and listen once (IPv4); the socket is inherited by every web process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def daphne_argv(python: str, sock: socket.socket) -> list[str]:
    # Daphne's `fd` endpoint adopts an AF_INET socket (its plugin takes no other address family).
    return [
        python, "-m", "galley.webserver", "-e", f"fd:fileno={sock.fileno()}",
        "--proxy-headers", "galley.asgi:application",
    ]  # fmt: skip


class Supervisor:
    """Keeps every child running. `run()` returns when told to stop, after stopping the children."""

    def __init__(self, children: list[Child], *, on_ready: Callable[[], None] | None = None) -> None:
        self.children = children
        self.stopping = False
        self.on_ready = on_ready

    def stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        if not self.stopping:
            log.info("received signal %d: stopping", signum)
        self.stopping = True

    def run(self) -> None:
        # Woken by a signal (a child's exit, a stop), not by polling: a signal's number lands on this
        # pair and ends the wait; the wait is otherwise bounded by the next restart and a safety poll.
        wake, wake_in = socket.socketpair()
        wake.setblocking(False)
        wake_in.setblocking(False)
        previous = signal.set_wakeup_fd(wake_in.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        for child in self.children:
            child.start()
        if self.on_ready is not None:
            self.on_ready()
        try:
            while not self.stopping:
                self.check()
                select.select([wake], [], [], self._wait())
                try:
                    while wake.recv(64):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(previous)
            wake.close()
            wake_in.close()
            self.shutdown()

    def _wait(self) -> float:
        """Seconds until the next restart is due, at most SAFETY_POLL."""
        now = time.monotonic()
        due = [c.restart_at - now for c in self.children if c.restart_at is not None]
        return max(0.0, min([SAFETY_POLL, *due]))

    def check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    child.start()
                continue
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            child.exits.append(code)
            if now - child.started_at >= HEALTHY_AFTER:
                child.backoff = BACKOFF_FIRST
            delay = child.backoff
            child.backoff = min(BACKOFF_MAX, child.backoff * 2)
            child.restart_at = now + delay
            log.error(
                "%s (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                child.name, proc.pid, _describe(code), now - child.started_at, delay,
            )  # fmt: skip

    def shutdown(self) -> None:
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0fs; killing it", proc.pid, STOP_GRACE)
                proc.kill()
                proc.wait()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def default_web_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))

"""The embedded default's cross-process bus: stream wake-ups and live previews between the worker
and the web process on one host, with no Redis.

Every process that has stream subscribers binds one Unix datagram socket in `<data dir>/bus/`; a
publisher sends each message to every socket there (a directory scan and one `sendto` each). A
datagram is a hint, like a Redis pub/sub message: when it is lost (a full buffer, a process not yet
listening) the subscriber's poll of the log still finds the events, so only latency is lost.
"""

import errno
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

MAX_DATAGRAM = 64 * 1024

_lock = threading.Lock()
_listener: "Listener | None" = None
_sender: socket.socket | None = None


def bus_dir() -> Path:
    path = Path(settings.DATA_DIR) / "bus"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class Listener:
    """One bound socket per process and a daemon thread handing each message to `deliver`."""

    def __init__(self, deliver: Callable[[str, dict[str, Any]], None]) -> None:
        self.path = bus_dir() / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        # Through a descriptor of the directory: a socket address holds at most 107 bytes, a data dir may not.
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.sock.bind(f"/proc/self/fd/{directory}/{self.path.name}")
        finally:
            os.close(directory)
        self.pid = os.getpid()
        self.deliver = deliver
        threading.Thread(target=self._run, name="galley-localbus", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except OSError:
                return
            try:
                session_id, message = json.loads(data)
                self.deliver(str(session_id), dict(message))
            except (ValueError, TypeError):
                continue


def listen(deliver: Callable[[str, dict[str, Any]], None]) -> None:
    """Start this process's listener once (re-created after a fork)."""
    global _listener
    with _lock:
        if _listener is None or _listener.pid != os.getpid():
            _listener = Listener(deliver)


def send(session_id: str, message: dict[str, Any]) -> None:
    """Send a message to every other listening process on this host. Never raises."""
    global _sender
    data = json.dumps([session_id, message], separators=(",", ":")).encode()
    if len(data) > MAX_DATAGRAM:
        if message.get("kind") == "preview":
            return  # previews are best effort
        data = json.dumps([session_id, {"kind": "wake", "seq": 0}]).encode()
    own = _listener.path.name if _listener is not None and _listener.pid == os.getpid() else None
    try:
        entries = [e for e in os.scandir(bus_dir()) if e.name.endswith(".sock") and e.name != own]
    except OSError:
        return
    if not entries:
        return
    with _lock:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        sender = _sender
    try:
        directory = os.open(bus_dir(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # short addresses
    except OSError:
        return
    try:
        _send_all(sender, data, entries, f"/proc/self/fd/{directory}/")
    finally:
        os.close(directory)


def _send_all(sender: socket.socket, data: bytes, entries: list[os.DirEntry[str]], prefix: str) -> None:
    for entry in entries:
        try:
            sender.sendto(data, prefix + entry.name)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                # Nobody is bound there any more: a process that exited without cleaning up.
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
            elif exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("local bus send to %s failed", entry.name, exc_info=True)

"""The embedded default's cross-process bus: stream wake-ups and live previews between the worker
and the web process on one host, with no Redis.

Every process that has stream subscribers binds one Unix datagram socket in `<data dir>/bus/`, and
marks each session it has subscribers for with an empty file `<data dir>/bus/watch/<socket>/<session>`
while it has them. A publisher sends a session's message only to the sockets that mark it (one `stat`
per listening process, then one `send` each on a socket connected once): a web process with no stream
of that session is neither sent to nor woken. A datagram is a hint, like a Redis pub/sub message: when
it is lost (a full buffer, a process not yet listening, a mark made just after the publish) the
subscriber's poll of the log still finds the events, and a subscriber marks before it reads the log,
so only latency is lost.
"""

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

MAX_DATAGRAM = 64 * 1024
# Live previews, one frame or several: best effort, dropped rather than sent past MAX_DATAGRAM.
PREVIEW_KINDS = frozenset({"preview", "previews"})

_lock = threading.Lock()
_listener: "Listener | None" = None


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
            _watched.clear()


_watched: dict[str, int] = {}  # key -> this process's subscribers of it (the mark exists while > 0)


def _mark_name(key: str) -> str:
    """A file name for a subscription key (session ids and `workq-<environment>` are already safe)."""
    if key and len(key) <= 200 and all(c.isalnum() or c in "_-." for c in key) and not key.startswith("."):
        return key
    return "h-" + hashlib.sha256(key.encode()).hexdigest()


def watch(key: str) -> None:
    """Count a subscriber of `key` in this process (after `listen`); the first one makes the mark that
    lets publishers send here. Call before reading the log, so that no append is missed."""
    with _lock:
        listener = _listener
        if listener is None or listener.pid != os.getpid():
            return
        count = _watched.get(key, 0)
        _watched[key] = count + 1
        if count:
            return
        folder = bus_dir() / "watch" / listener.path.name
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            (folder / _mark_name(key)).touch(mode=0o600)
        except OSError:
            log.warning("could not mark a stream subscription for %s", key, exc_info=True)


def unwatch(key: str) -> None:
    """The end of a subscriber of `key`; the last one removes the mark."""
    with _lock:
        listener = _listener
        count = _watched.get(key, 0)
        if listener is None or listener.pid != os.getpid() or count == 0:
            return
        if count > 1:
            _watched[key] = count - 1
            return
        del _watched[key]
        try:
            os.unlink(bus_dir() / "watch" / listener.path.name / _mark_name(key))
        except OSError:
            pass


def send(session_id: str, message: dict[str, Any]) -> None:
    """Send a message to every other process on this host that subscribes to `session_id`. Never raises."""
    data = json.dumps([session_id, message], separators=(",", ":")).encode()
    if len(data) > MAX_DATAGRAM:
        if message.get("kind") in PREVIEW_KINDS:
            return  # previews are best effort
        data = json.dumps([session_id, {"kind": "wake", "seq": 0}]).encode()
    try:
        with _lock:
            peer_set = _peers()
            peers = peer_set.current()
    except OSError:
        return
    mark = _mark_name(session_id)
    for name, sock in peers:
        try:
            os.stat(f"watch/{name}/{mark}", dir_fd=peer_set.fd)
        except OSError:
            continue  # no subscriber of this session there
        try:
            sock.send(data)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN):
                with _lock:
                    _peers().forget(name, unlink=True)  # its process exited without cleaning up
            elif exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("local bus send to %s failed", name, exc_info=True)


# A directory's mtime moves on every bind and unlink, but only at the kernel's coarse clock: a
# listing is trusted only once the directory's last change is this much older than the listing.
_SETTLED_NS = 50_000_000


class _Peers:
    """This process's sockets connected to the other processes' listeners. A send costs one fstat
    of the directory and one `send` per peer: the directory is listed, and a new peer's address
    resolved, only when a bind or an unlink there moved its mtime."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.mtime_ns = -1
        self.settled = False
        self.socks: dict[str, socket.socket] = {}

    def current(self) -> list[tuple[str, socket.socket]]:
        try:
            mtime_ns = os.fstat(self.fd).st_mtime_ns
        except OSError:
            return []
        if mtime_ns != self.mtime_ns or not self.settled:
            self._rescan(mtime_ns)
        return list(self.socks.items())

    def _rescan(self, mtime_ns: int) -> None:
        own = _listener.path.name if _listener is not None and _listener.pid == self.pid else None
        try:
            names = {e.name for e in os.scandir(self.fd) if e.name.endswith(".sock") and e.name != own}
        except OSError:
            return
        self.mtime_ns = mtime_ns
        self.settled = time.time_ns() - mtime_ns > _SETTLED_NS
        for name in list(self.socks):
            if name not in names:
                self.forget(name, unlink=False)
        for name in names - self.socks.keys():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                # Through the directory's descriptor: a socket address holds at most 107 bytes.
                sock.connect(f"/proc/self/fd/{self.fd}/{name}")
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    self._unlink(name)  # nobody is bound there any more
                continue
            self.socks[name] = sock

    def forget(self, name: str, *, unlink: bool) -> None:
        sock = self.socks.pop(name, None)
        if sock is not None:
            sock.close()
        if unlink:
            self._unlink(name)

    def _unlink(self, name: str) -> None:
        """Remove a listener nobody is bound at any more, and its marks."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass
        shutil.rmtree(os.path.join(self.path, "watch", name), ignore_errors=True)

    def close(self) -> None:
        for name in list(self.socks):
            self.forget(name, unlink=False)
        os.close(self.fd)


_peer_set: _Peers | None = None


def _peers() -> _Peers:
    """The peers of this process's bus directory (called under _lock)."""
    global _peer_set
    path = os.path.join(settings.DATA_DIR, "bus")
    if _peer_set is None or _peer_set.pid != os.getpid() or _peer_set.path != path:
        if _peer_set is not None and _peer_set.pid == os.getpid():
            _peer_set.close()
        bus_dir()
        _peer_set = _Peers(path)
    return _peer_set

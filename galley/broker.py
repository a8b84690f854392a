"""The embedded broker: kombu's filesystem transport with atomic message files, push wake-ups and a
quarantine for unreadable messages.

- kombu writes a message file in place, so a worker polling the folder could move and read it
  before the write finished. Writing under a temporary name and renaming it into the queue folder
  makes a message appear whole or not at all (rename is atomic within one filesystem).
- kombu's consumer polls the folder (a directory listing every `polling_interval`). Here a
  consuming process binds a Unix datagram socket and registers it in `<broker>/wake/`; every put
  sends one datagram to each registered socket after the rename, so an idle worker takes a new
  step within a millisecond or so. The folder is still re-read every `polling_interval` (1 s by
  default) as a safety net for a lost datagram; a wake-up is only ever a hint.
- A message file that cannot be read or decoded would raise out of the consumer and stop the
  worker ("Unrecoverable error"). It is moved to `<broker>/quarantine/` with a logged error and
  the worker goes on with the next message.
"""

import errno
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import threading
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.transport.virtual import base as virtual_base
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

SCHEME = "galleyfs"
WAKE_PREFIX = "galley-broker-wake-"

log = logging.getLogger(__name__)

Empty = virtual_base.Empty


def _wake_dir(queue_folder: str) -> Path:
    return Path(queue_folder).resolve().parent / "wake"


def quarantine_dir(queue_folder: str) -> Path:
    return Path(queue_folder).resolve().parent / "quarantine"


class Waker:
    """One datagram socket per consuming process. Its address is in the abstract namespace (no
    path-length limit, gone when the process is); a file named after it in the wake folder lets
    producers find it."""

    def __init__(self, queue_folder: str) -> None:
        self.folder = _wake_dir(queue_folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + WAKE_PREFIX + self.name)
        self.sock.setblocking(False)
        # A signal may be delivered to any thread, and Python runs its handler on the main thread only
        # once that thread is back from a blocking call: the signal's byte on this pair ends the wait,
        # so a SIGTERM stops a waiting worker at once, not after its poll.
        self.signals, self._signal_in = socket.socketpair()
        self.signals.setblocking(False)
        self._signal_in.setblocking(False)
        self._wakeup_fd = False
        if threading.current_thread() is threading.main_thread():
            try:
                signal.set_wakeup_fd(self._signal_in.fileno(), warn_on_full_buffer=False)
                self._wakeup_fd = True
            except ValueError:
                pass
        (self.folder / self.name).touch(mode=0o600)

    def clear(self) -> None:
        """Drop the wake-ups received so far (the caller is about to read the folder anyway)."""
        while True:
            try:
                self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def wait(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.sock, self.signals], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            return
        if self.signals in ready:
            try:
                self.signals.recv(64)
            except OSError:
                pass

    def poke(self) -> None:
        """Wake this process's own consumer (after an ack frees a prefetch slot)."""
        _send(self.sock, self.name)

    def close(self) -> None:
        try:
            (self.folder / self.name).unlink()
        except OSError:
            pass
        if self._wakeup_fd and threading.current_thread() is threading.main_thread():
            try:
                previous = signal.set_wakeup_fd(-1)
                if previous != self._signal_in.fileno():  # another owner set it since: theirs stays
                    signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
            except ValueError:
                pass
        self.sock.close()
        self.signals.close()
        self._signal_in.close()


_send_lock = threading.Lock()
_sender: socket.socket | None = None


def _send(sock: socket.socket, name: str) -> bool:
    """False when nobody is bound at `name` any more."""
    try:
        sock.sendto(b"1", "\0" + WAKE_PREFIX + name)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
    return True


def wake_all(queue_folder: str) -> None:
    """Send a wake-up to every registered consumer on this host. Never raises."""
    global _sender
    try:
        names = os.listdir(_wake_dir(queue_folder))
    except OSError:
        return
    if not names:
        return
    with _send_lock:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        sender = _sender
    for name in names:
        if not _send(sender, name):
            # A consumer that exited without unregistering.
            try:
                os.unlink(_wake_dir(queue_folder) / name)
            except OSError:
                pass


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, "." + name + ".part")
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.rename(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc
        wake_all(self.data_folder_out)

    def _get(self, queue: str) -> Any:  # type: ignore[override]
        """The next message of `queue`; an unreadable one is quarantined and skipped."""
        wanted = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != wanted:
                continue
            source = os.path.join(self.data_folder_in, filename)
            claimed = os.path.join(self.processed_folder, filename)
            try:
                # The rename claims it: another consumer that listed the same file loses the race.
                os.rename(source, claimed)
            except OSError:
                continue
            try:
                with open(claimed, "rb") as handle:
                    payload = handle.read()
                message = loads(bytes_to_str(payload))
                if not isinstance(message, dict):
                    raise ValueError("a broker message is a JSON object")
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self._quarantine(claimed, filename, exc)
                continue
            if not self.store_processed:
                try:
                    os.remove(claimed)
                except OSError:
                    pass
            return message
        raise Empty()

    def _quarantine(self, path: str, filename: str, exc: Exception) -> None:
        target = quarantine_dir(self.data_folder_in)
        try:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.move(path, target / filename)
            where = str(target / filename)
        except OSError:
            where = "nowhere (it could not be moved)"
        log.error("broker message %s cannot be read (%s); moved to %s", filename, exc, where)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        self.connection.poke()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)
        self.connection.poke()


class Transport(filesystem.Transport):
    Channel = Channel
    _waker: Waker | None = None

    def _own_waker(self) -> Waker | None:
        waker = self._waker
        if waker is not None and waker.pid == os.getpid():
            return waker
        folder = self.client.transport_options.get("data_folder_in")
        if not folder:
            return None
        try:
            self._waker = Waker(folder)
        except OSError:
            log.warning("the broker cannot bind a wake-up socket; polling instead", exc_info=True)
            self._waker = None
        return self._waker

    def poke(self) -> None:
        waker = self._waker
        if waker is not None and waker.pid == os.getpid():
            waker.poke()

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver one message: read the folder, and when it is empty wait for a wake-up (or the
        safety poll) instead of sleeping a fixed interval."""
        started = monotonic()
        waker = self._own_waker()
        safety = float(self.polling_interval or 1.0)
        while True:
            if waker is not None:
                waker.clear()  # a put after this point leaves a datagram for the wait below
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = safety
            if timeout is not None:
                left = timeout - (monotonic() - started)
                if left <= 0:
                    raise TimeoutError()
                wait = min(wait, left)
            if _worker_stopping():  # Celery's loop drains once more after its stop is decided
                raise TimeoutError()
            if waker is not None:
                waker.wait(wait)
            else:
                select.select([], [], [], wait)
            if _worker_stopping():
                raise TimeoutError()  # back to Celery's loop, which stops now instead of in 2 s

    def close_connection(self, connection: Any) -> None:
        waker = self._waker
        if waker is not None and waker.pid == os.getpid():
            waker.close()
            self._waker = None
        super().close_connection(connection)


def _worker_stopping() -> bool:
    from celery.worker import state

    # As Celery's own check: set means neither None nor False (a warm stop sets exit code 0).
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


def register() -> None:
    TRANSPORT_ALIASES[SCHEME] = "galley.broker:Transport"

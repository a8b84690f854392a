"""The embedded default's cross-process bus: hints published in one process reach listeners in
another, and a socket left behind by a dead process is cleaned up."""

import os
import queue
import socket
import subprocess
import sys
from pathlib import Path

from sessions import localbus

ROOT = Path(__file__).resolve().parent.parent


def test_a_message_published_by_another_process_reaches_this_ones_listener(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    received: queue.Queue[tuple[str, dict]] = queue.Queue()
    localbus._listener = None
    localbus.listen(lambda sid, msg: received.put((sid, msg)))
    localbus.watch("sesn_x")
    code = (
        "import django; django.setup()\n"
        "from sessions import localbus\n"
        "localbus.send('sesn_x', {'kind': 'preview', 'frame': {'type': 'event_start'}})\n"
    )
    env = dict(os.environ, GALLEY_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="galley.settings")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)
    assert received.get(timeout=5) == ("sesn_x", {"kind": "preview", "frame": {"type": "event_start"}})
    localbus.unwatch("sesn_x")
    localbus._listener = None


def test_a_socket_nobody_listens_on_is_removed_and_sending_never_raises(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    localbus._listener = None
    stale = localbus.bus_dir() / "999999-dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # bound file left behind, nobody receiving
    localbus.send("sesn_y", {"kind": "wake", "seq": 3})
    assert not stale.exists()
    localbus.send("sesn_y", {"kind": "wake", "seq": 4, "pad": "x" * (localbus.MAX_DATAGRAM + 1)})


def test_a_listener_that_binds_after_a_send_gets_the_next_one_and_one_that_left_is_dropped(
    settings, tmp_path
):
    """A publisher keeps its connected peers between sends; a bind or an unlink in the directory
    makes it look again, even one in the same tick of the coarse clock as its last look."""
    settings.DATA_DIR = tmp_path
    localbus._listener = None
    localbus.send("sesn_z", {"kind": "wake", "seq": 1})  # nobody listens yet: the peers are cached
    for seq in (2, 3):
        path = localbus.bus_dir() / f"999998-late{seq}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(5)
        _mark(path.name, "sesn_z")
        localbus.send("sesn_z", {"kind": "wake", "seq": seq})
        assert sock.recv(localbus.MAX_DATAGRAM) == b'["sesn_z",{"kind":"wake","seq":%d}]' % seq
        sock.close()  # gone without unlinking: the next send finds nobody there and removes it
        localbus.send("sesn_z", {"kind": "wake", "seq": 9})
        assert not path.exists()
        assert not (localbus.bus_dir() / "watch" / path.name).exists()  # its marks went with it


def _mark(listener: str, key: str) -> None:
    folder = localbus.bus_dir() / "watch" / listener
    folder.mkdir(parents=True, exist_ok=True)
    (folder / key).touch()


def test_a_message_goes_only_to_the_processes_that_subscribe_to_its_session(settings, tmp_path):
    """A web process with no stream of a session is neither sent its wake-ups nor woken by them."""
    settings.DATA_DIR = tmp_path
    localbus._listener = None
    socks = {}
    for name in ("999997-a.sock", "999997-b.sock"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(localbus.bus_dir() / name))
        sock.setblocking(False)
        socks[name] = sock
    _mark("999997-a.sock", "sesn_a")
    _mark("999997-b.sock", "workq-env_b")
    localbus.send("sesn_a", {"kind": "wake", "seq": 1})
    localbus.send("workq-env_b", {"kind": "wake", "seq": 2})
    localbus.send("sesn_nobody", {"kind": "wake", "seq": 3})

    def received(name: str) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(socks[name].recv(localbus.MAX_DATAGRAM))
            except BlockingIOError:
                return out

    assert received("999997-a.sock") == [b'["sesn_a",{"kind":"wake","seq":1}]']
    assert received("999997-b.sock") == [b'["workq-env_b",{"kind":"wake","seq":2}]']
    for sock in socks.values():
        sock.close()


def test_a_process_marks_a_session_while_it_has_subscribers_of_it(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    localbus._listener = None
    localbus.listen(lambda sid, msg: None)
    mark = localbus.bus_dir() / "watch" / localbus._listener.path.name / "sesn_m"
    odd = "a key/with:odd chars"
    localbus.watch("sesn_m")
    localbus.watch("sesn_m")
    localbus.watch(odd)
    assert mark.exists() and len(list(mark.parent.iterdir())) == 2
    localbus.unwatch("sesn_m")
    assert mark.exists()  # one subscriber left
    localbus.unwatch("sesn_m")
    localbus.unwatch(odd)
    assert not mark.exists() and not list(mark.parent.iterdir())
    localbus._listener = None

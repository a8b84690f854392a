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
    code = (
        "import django; django.setup()\n"
        "from sessions import localbus\n"
        "localbus.send('sesn_x', {'kind': 'preview', 'frame': {'type': 'event_start'}})\n"
    )
    env = dict(os.environ, GALLEY_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="galley.settings")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)
    assert received.get(timeout=5) == ("sesn_x", {"kind": "preview", "frame": {"type": "event_start"}})
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
        localbus.send("sesn_z", {"kind": "wake", "seq": seq})
        assert sock.recv(localbus.MAX_DATAGRAM) == b'["sesn_z",{"kind":"wake","seq":%d}]' % seq
        sock.close()  # gone without unlinking: the next send finds nobody there and removes it
        localbus.send("sesn_z", {"kind": "wake", "seq": 9})
        assert not path.exists()

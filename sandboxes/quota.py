"""The one storage quota of a sandbox (GALLEY_SANDBOX_WORKSPACE_BYTES) over everything it can write.

A sandbox writes only into its volume, `<root>/volume/` (workspace/, tmp/, state/, outputs/). Where the host
allows it (the worker runs as root and can loop-mount), the volume is a sparse ext4 image of exactly the
quota's size, loop-mounted at `<root>/volume`: the kernel then stops every write at the limit with ENOSPC,
deleting files always works, and usage is one statvfs() call whatever the number of files. The image is
created on first use and mounted again on later uses (after a reboot or a reap); the bytes it holds on the
host are only those written (sparse, mounted with `discard` so deletes give the space back).

Otherwise (no root, no loop devices, GALLEY_SANDBOX_QUOTA=watch) the volume is a plain directory, and a
watcher measures it while a command runs and kills a command that pushes it past the quota; the tool
result says why. That measure walks the volume, so the kernel quota is the one to use in production.

Every worker process that runs a shell of a sandbox holds a shared `flock` on `<root>/volume.lock` (a claim)
from before it sets the volume up until it has stopped the shell and unmounted it. The kernel drops the lock
when its holder dies, SIGKILL included, so whoever gets the lock exclusively knows that no worker process on
this host runs or is starting a sandbox of that root, and keeps any from starting while it holds it: that is
how leftovers of a killed worker are released (`sandboxes.services.sandboxes_release_orphans`).
"""

import fcntl
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from sandboxes.backends import SandboxError

logger = logging.getLogger(__name__)

IMAGE_NAME = "volume.img"
CLAIM_NAME = "volume.lock"
_fallback_logged = False
_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _mount_lock(root: Path) -> threading.Lock:
    """One lock per sandbox root: sandboxes start their volumes in parallel, a volume is set up once."""
    with _locks_lock:
        return _locks.setdefault(str(root), threading.Lock())


def volume_path(root: Path) -> Path:
    return root / "volume"


def quota_mode() -> str:
    """'image' or 'watch': what this host will use for new volumes."""
    mode = settings.GALLEY_SANDBOX_QUOTA
    if mode == "watch":
        return "watch"
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        if mode == "image":
            raise SandboxError(
                "GALLEY_SANDBOX_QUOTA=image needs a worker running as root with mkfs.ext4 and mount"
            )
        return "watch"
    return "image"


def volume_is_image(root: Path) -> bool:
    return os.path.ismount(volume_path(root))


def volume_provision(*, root: Path, limit: int) -> str:
    """Make sure the volume exists (and is mounted, for an image). Returns 'image' or 'watch'."""
    volume = volume_path(root)
    volume.mkdir(mode=0o711, exist_ok=True)
    if volume_is_image(root):
        return "image"
    mode = quota_mode()
    if mode == "watch":
        return "watch"
    with _mount_lock(root):
        if volume_is_image(root):
            return "image"
        try:
            _mount_image(root=root, volume=volume, limit=limit)
        except (OSError, subprocess.SubprocessError) as exc:
            if settings.GALLEY_SANDBOX_QUOTA == "image":
                logger.error("sandbox volume image for %s failed: %s", root, exc)
                raise SandboxError("the sandbox's storage could not be set up (see the server log)") from exc
            global _fallback_logged
            if not _fallback_logged:
                _fallback_logged = True
                logger.warning(
                    "sandbox volume images unavailable on this host (%s); using the quota watcher", exc
                )
            return "watch"
    return "image"


def _mount_image(*, root: Path, volume: Path, limit: int) -> None:
    image = root / IMAGE_NAME
    if any(volume.iterdir()):
        # A volume directory from the watcher (or an older layout) already holds files: keep using it.
        raise OSError("the volume directory already holds files; not replacing it with an image")
    if not image.exists():
        partial = root / (IMAGE_NAME + ".new")
        with open(partial, "wb") as handle:
            handle.truncate(limit)
        os.chmod(partial, 0o600)
        lazy = "lazy_itable_init=1,lazy_journal_init=1"
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", lazy, str(partial)])
        os.replace(partial, image)
    _run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime,discard", str(image), str(volume)])
    os.chmod(volume, 0o711)
    lost = volume / "lost+found"
    if lost.is_dir():
        os.chmod(lost, 0o700)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise OSError(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()[:300]}")


def volume_release(root: Path) -> None:
    """Unmount the volume's image (its files stay in the image file). Lazy: a process still inside keeps
    its view until it ends."""
    volume = volume_path(root)
    if not os.path.ismount(volume):
        return
    done = subprocess.run(["umount", str(volume)], capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(volume)], capture_output=True, timeout=60, check=False)


def _mount_points_under(base: Path) -> list[str]:
    prefix = str(base).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return points


def volumes_release_under(base: Path) -> None:
    """Unmount every sandbox volume below `base` (removing a sandbox root must never descend into a mount)."""
    for point in sorted(_mount_points_under(base), key=len, reverse=True):
        volume_release(Path(point).parent)


def volumes_mounted_under(base: Path) -> dict[Path, str]:
    """The sandbox roots directly below `base` whose volume is mounted on this host, each with its
    filesystem's device ("major:minor", as /proc/*/mountinfo names it)."""
    found: dict[Path, str] = {}
    for point in _mount_points_under(base):
        path = Path(point)
        if path.name != "volume" or path.parent.parent != base:
            continue
        try:
            device = os.stat(path).st_dev
        except OSError:
            continue
        found[path.parent] = f"{os.major(device)}:{os.minor(device)}"
    return found


def _claim_fd(root: Path) -> int:
    # The root belongs to the server (0711); the sandbox cannot plant a link here, O_NOFOLLOW all the same.
    return os.open(root / CLAIM_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def volume_claim(root: Path) -> int:
    """Take this process's shared claim on the sandbox's volume (waiting while a release holds it) and
    return its descriptor; `volume_unclaim` gives it back. Held for as long as a shell of the sandbox runs."""
    fd = _claim_fd(root)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def volume_unclaim(fd: int) -> None:
    os.close(fd)  # closing the last descriptor of the open file drops its flock


@contextmanager
def volume_claimed(root: Path) -> Iterator[None]:
    """A claim for the time of a block (setting the volume up)."""
    fd = volume_claim(root)
    try:
        yield
    finally:
        volume_unclaim(fd)


@contextmanager
def volume_unclaimed(root: Path) -> Iterator[bool]:
    """The claim taken exclusively, without waiting: True when no worker process on this host holds one
    (none runs or is starting a sandbox of this root), and none can take one until the block ends."""
    fd = _claim_fd(root)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def volume_usage(root: Path, *, limit: int) -> int:
    """Bytes the sandbox uses: statvfs for an image, else a walk (stopping once past the limit)."""
    volume = volume_path(root)
    if os.path.ismount(volume):
        st = os.statvfs(volume)
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    return walk_bytes(volume, stop_after=limit)


def volume_full(root: Path, *, limit: int) -> bool:
    """True when the sandbox cannot write any more (image: almost no free blocks or inodes left)."""
    volume = volume_path(root)
    if os.path.ismount(volume):
        st = os.statvfs(volume)
        slack = min(1024 * 1024, max(64 * 1024, limit // 64))
        return st.f_bavail * st.f_frsize < slack or st.f_favail == 0
    return walk_bytes(volume, stop_after=limit) > limit


def walk_bytes(root: Path, stop_after: int) -> int:
    """Bytes used under root (allocated blocks), stopping early once past stop_after."""
    total = 0
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
        if total > stop_after:
            break
    return total


class QuotaWatcher:
    """For a volume without a kernel quota: measures while a command runs; past the limit it sets `tripped`
    and the cancel event the shell polls, so the command is killed. Also forwards the caller's cancel."""

    INTERVAL = 0.5

    def __init__(self, *, root: Path, limit: int, cancel: threading.Event | None) -> None:
        self.root = root
        self.limit = limit
        self.outer = cancel
        self.event = threading.Event()
        self.tripped = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sandbox-quota")

    def __enter__(self) -> "QuotaWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        waited = 0.0
        while not self._done.wait(0.05):
            if self.outer is not None and self.outer.is_set():
                self.event.set()
                return
            waited += 0.05
            if waited < self.INTERVAL:
                continue
            waited = 0.0
            if walk_bytes(volume_path(self.root), stop_after=self.limit) > self.limit:
                self.tripped = True
                self.event.set()
                return

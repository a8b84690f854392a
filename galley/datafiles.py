"""Modes of the files and directories Galley keeps in its data dir: its own files are 0600 and its
directories no wider than the sandboxes' users need to reach their workspaces (traverse, never list)."""

import os
from pathlib import Path


def private_dir(path: Path, *, mode: int) -> None:
    """Narrow `path` to `mode` if it is ours and wider (a directory an administrator made is left alone)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.geteuid() and info.st_mode & 0o777 & ~mode:
        os.chmod(path, info.st_mode & 0o777 & mode)


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists; narrow an existing one of ours to 0600."""
    if str(path) in ("", ":memory:") or str(path).startswith("file:"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        private_dir(path, mode=0o600)
        return
    os.close(fd)

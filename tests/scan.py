"""Searching files the tests leave for a secret."""

import os
from pathlib import Path


def file_holds(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    """Whether the file's bytes contain `needle`, read a chunk at a time and only where data is
    stored: a sandbox's workspace image is a sparse file of several GiB, mostly holes."""
    with path.open("rb") as f:
        end = os.fstat(f.fileno()).st_size
        at = 0
        while at < end:
            try:
                at = os.lseek(f.fileno(), at, os.SEEK_DATA)
                stop = os.lseek(f.fileno(), at, os.SEEK_HOLE)
            except OSError:  # no data after `at`
                return False
            tail = b""
            while at < stop:
                f.seek(at)
                piece = f.read(min(chunk, stop - at))
                if needle in tail + piece:
                    return True
                tail = piece[-(len(needle) - 1) :]
                at += len(piece)
    return False

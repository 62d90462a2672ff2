"""Atomic file output and hashing.

Outputs are written to a temporary file in the destination folder and moved into place with
``os.replace`` (atomic on POSIX), so a reader never sees a partial file and two concurrent
writers leave one complete file. Temporary files are removed on any exception, Ctrl-C included.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import UsageError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_writable_target(path: str | os.PathLike, what: str) -> Path:
    """Fail early (exit 2) if ``path`` cannot be written: missing folder, not writable, a folder."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UsageError(f"{what} {p}: is a directory, expected a file path")
    if not parent.is_dir():
        raise UsageError(f"{what} {p}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {p}: output folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{what} {p}: file exists and is not writable")
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))

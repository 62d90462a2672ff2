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


def _key(p: Path):
    """Identity of a path: (device, inode) when it exists (hard links, symlinks, ``./x`` vs ``x``),
    else the resolved absolute path."""
    try:
        st = os.stat(p)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", str(Path(os.path.abspath(p)).resolve()))


def _inside(p: Path, folder: Path) -> bool:
    """``p`` is ``folder`` or lies somewhere below it (symlinks resolved)."""
    rp, rf = Path(os.path.abspath(p)).resolve(), Path(os.path.abspath(folder)).resolve()
    return rp == rf or rf in rp.parents


def check_distinct(reads: list[tuple[str, str | os.PathLike | None]], writes: list[tuple[str, str | os.PathLike | None]],
                   replaced: list[tuple[str, str | os.PathLike | None]] = ()) -> None:
    """Before any work: no output may be an input or another output, and no input or output may lie
    inside a folder the run replaces whole (a test-data folder). Each entry is (what, path), e.g.
    ("--report", "m.json"); None paths are ignored. Raises UsageError (exit 2) naming both paths."""
    reads = [(w, Path(p)) for w, p in reads if p is not None]
    writes = [(w, Path(p)) for w, p in writes if p is not None]
    replaced = [(w, Path(p)) for w, p in replaced if p is not None]
    for i, (wa, pa) in enumerate(writes):
        for wb, pb in writes[i + 1:]:
            if _key(pa) == _key(pb):
                raise UsageError(f"{wa} {pa} and {wb} {pb} are the same file; the run would write one over the other")
        for wb, pb in reads:
            if _key(pa) == _key(pb):
                raise UsageError(f"{wa} {pa} is the {wb} {pb}; refusing to overwrite it")
    for wa, folder in replaced:
        for wb, pb in reads + [w for w in writes if w[1] != folder]:
            if _inside(pb, folder):
                raise UsageError(f"{wb} {pb} lies inside {folder}, which the run replaces whole ({wa}); "
                                 "move it or choose another output")


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

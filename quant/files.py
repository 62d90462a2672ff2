"""Bounded input reading, atomic file output and hashing.

Every file a user hands the tool is read with :func:`read_regular_file`: anything that is not a
regular file (a FIFO would block, ``/dev/zero`` never ends) or is larger than the reader's limit
(sparse files included) is refused with one line naming it, before a byte is read.

Every output path is checked before any work (:func:`check_writable_target`, :func:`check_distinct`).
A run's outputs are staged complete beside their destinations and committed together
(:class:`Outputs`): a reader never sees a partial file, two concurrent writers leave one complete
set, and a failure, a full disk or a signal before the commit leaves nothing behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from quant.errors import InputError, Interrupted, QuantError, UsageError, handle_signals, restore_signals


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_OPEN_PROBLEMS = {errno.ENOENT: "not found", errno.EACCES: "is not readable (permission denied)",
                  errno.EPERM: "is not readable (permission denied)",
                  errno.ENAMETOOLONG: "cannot be opened: a name in its path is longer than the system allows",
                  errno.ELOOP: "cannot be opened: too many levels of symbolic links",
                  errno.ENOTDIR: "cannot be opened: part of its path is not a folder"}


def _checked_size(st: os.stat_result, path, what: str, limit: int, error: type[QuantError]) -> int:
    """``st``'s size, or ``error`` naming its kind when it is not a regular file (or is over ``limit``)."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "a special file")
        raise error(f"{path}: {what} is {kind}, expected a regular file")
    if st.st_size > limit:
        raise error(f"{path}: {what} is {st.st_size} bytes, over the {limit} byte limit")
    return st.st_size


def _problem(path, what: str, e: OSError | ValueError) -> str:
    """One line for an OSError (or a NUL byte in the path) met while opening or reading ``path``."""
    why = _OPEN_PROBLEMS.get(getattr(e, "errno", None)) or f"cannot be read ({getattr(e, 'strerror', None) or e})"
    return f"{path}: {what} {why}"


def regular_file_size(path: str | os.PathLike, what: str, limit: int, error: type[QuantError] = InputError) -> int:
    """The size of ``path``, checked without opening it to be a regular file of at most ``limit`` bytes (so no
    device or FIFO is ever opened). Any problem raises ``error`` with one line naming the path and ``what``."""
    try:
        return _checked_size(os.stat(path), path, what, limit, error)
    except (OSError, ValueError) as e:
        raise error(_problem(path, what, e)) from None


def read_regular_file(path: str | os.PathLike, what: str, limit: int, error: type[QuantError] = InputError) -> bytes:
    """The whole content of a user's input file, bounded: refused before any byte is read unless it is a regular
    file of at most ``limit`` bytes (the check is repeated on the opened descriptor, so a file swapped in between
    is caught), and refused if more than ``limit`` bytes arrive (a growing file). ``error`` (a QuantError
    subclass: its exit code) carries one line naming the path; ``what`` names the file's role."""
    regular_file_size(path, what, limit, error)
    chunks, got = [], 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))  # a FIFO cannot block the open
        try:
            _checked_size(os.fstat(fd), path, what, limit, error)
            while got <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:
        raise error(_problem(path, what, e)) from None
    if got > limit:
        raise error(f"{path}: {what} grew past the {limit} byte limit while being read")
    return b"".join(chunks)


STAGING_NAME_EXTRA = 24  # Outputs stages ``x`` as ``.x.<8 random>.tmp`` and keeps a replaced one as ``.x.<pid>.replaced``


def check_name_length(path: Path, what: str) -> None:
    """An output's name must leave room for its staging name, or the run would fail only at the end."""
    try:
        folder = path.parent if path.parent.is_dir() else Path(".")
    except OSError:  # the folder's own name is too long: check_writable_target names that
        folder = Path(".")
    limit = os.pathconf(folder, "PC_NAME_MAX") - STAGING_NAME_EXTRA
    if len(os.fsencode(path.name)) > limit:
        raise UsageError(f"{what} {path}: the name is {len(os.fsencode(path.name))} bytes; at most {limit} are allowed here")


def check_writable_target(path: str | os.PathLike, what: str) -> Path:
    """Fail early (exit 2) if ``path`` cannot be written: missing folder, not writable, a folder."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        check_name_length(p, what)
        if p.is_dir():
            raise UsageError(f"{what} {p}: is a directory, expected a file path")
        if not parent.is_dir():  # missing folders are created when the run writes (Outputs), removed if it writes nothing
            base = _existing_ancestor(parent)
            if not base.is_dir():
                raise UsageError(f"{what} {p}: {base} is not a folder, so output folder {parent} cannot be created")
            if not os.access(base, os.W_OK | os.X_OK):
                raise UsageError(f"{what} {p}: output folder {parent} does not exist and {base} is not writable")
        elif not os.access(parent, os.R_OK | os.W_OK | os.X_OK):  # read too: the commit locks the folder
            raise UsageError(f"{what} {p}: output folder {parent} is not writable (or not readable)")
        if p.exists() and not stat.S_ISREG(os.stat(p).st_mode):  # /dev/null, a FIFO: never replaced by a file
            raise UsageError(f"{what} {p}: exists and is not a regular file")
        if p.exists() and not os.access(p, os.W_OK):
            raise UsageError(f"{what} {p}: file exists and is not writable")
    except (OSError, ValueError) as e:  # a folder name too long, a NUL byte, ...
        raise UsageError(f"{what} {p}: cannot be written ({getattr(e, 'strerror', None) or e})") from None
    return p


def _existing_ancestor(folder: Path) -> Path:
    """The nearest of ``folder`` and its parents that exists (as anything)."""
    for f in (folder, *folder.parents):
        if os.path.lexists(f):
            return f
    return Path(".")


def _key(p: Path):
    """Identity of a path: (device, inode) when it exists (hard links, symlinks, ``./x`` vs ``x``),
    else the resolved absolute path."""
    try:
        st = os.stat(p)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:  # resolve() follows each symlink before a "..": abspath would collapse "link/.." as text first
        return ("path", str(Path(p).resolve()))


def _inside(p: Path, folder: Path) -> bool:
    """``p`` is ``folder`` or lies somewhere below it (symlinks resolved)."""
    rp, rf = Path(p).resolve(), Path(folder).resolve()
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
    """Write one file atomically (a run of one output: see :class:`Outputs`)."""
    with Outputs() as out:
        out.bytes(path, data)
        out.commit()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class Outputs:
    """A run's outputs, committed together or not at all.

    Each output is first written complete to a hidden temporary beside its destination (so a full disk
    or a signal fails the run while nothing of the user's has changed); :meth:`commit` then moves every
    one into place, keeping what it replaces aside until all moves succeeded and restoring it otherwise
    (a stop signal meanwhile is recorded and raised after the moves). Leaving the ``with`` block without
    commit removes every temporary. Used as ``with Outputs() as out: out.bytes(p, b); d = out.folder(q); ...; out.commit()``.
    """

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []  # (temporary, destination)
        self._made: list[Path] = []  # folders created for an output (missing parents), deepest last

    def _parent(self, p: Path) -> Path:
        """``p``'s folder, created with its missing parents (recorded: removed again if nothing is committed)."""
        folder = p.parent if str(p.parent) else Path(".")
        missing = [f for f in (folder, *folder.parents) if not os.path.lexists(f)]
        for f in reversed(missing):
            os.mkdir(f, 0o755)
            self._made.append(f)
        return folder

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def bytes(self, path: str | os.PathLike, data: bytes) -> None:
        p = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=self._parent(p))
        self._staged.append((Path(tmp), p))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)

    def text(self, path: str | os.PathLike, text: str) -> None:
        self.bytes(path, text.encode("utf-8"))

    def folder(self, path: str | os.PathLike) -> Path:
        """An empty temporary folder to fill; it replaces ``path`` whole on commit."""
        p = Path(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=self._parent(p)))
        os.chmod(tmp, 0o755)
        self._staged.append((tmp, p))
        return tmp

    def discard(self) -> None:
        for tmp, _ in self._staged:
            _remove(tmp)
        if self._staged:  # not committed: the folders made for it go too (only while empty: never a user's file)
            for f in reversed(self._made):
                try:
                    os.rmdir(f)
                except OSError:
                    pass
        self._staged, self._made = [], []

    def commit(self) -> None:
        """Move every staged output into place. A stop signal arriving meanwhile (on any thread) is
        recorded, not acted on, and raised as :class:`Interrupted` once the commit is complete."""
        stopped: list[int] = []
        previous = handle_signals(lambda signum, frame: stopped.append(signum))  # recorded, acted on after the moves
        locks: list[int] = []
        moved: list[tuple[Path, Path | None]] = []  # (destination, what it replaced: kept aside until the end)
        try:
            locks = _lock_folders({dest.parent for _, dest in self._staged})  # concurrent runs commit one after the other
            for tmp, dest in self._staged:
                aside = None
                if dest.is_dir() and not dest.is_symlink() and not tmp.is_dir():
                    raise UsageError(f"{dest}: is a folder; refusing to replace it by a file")
                if os.path.lexists(dest):
                    aside = dest.with_name(f".{dest.name}.{os.getpid()}.replaced")
                    os.replace(dest, aside)
                try:
                    os.replace(tmp, dest)
                except BaseException:
                    if aside is not None:
                        os.replace(aside, dest)
                    raise
                moved.append((dest, aside))
        except BaseException:
            for dest, aside in reversed(moved):  # put back what was there before this run
                _remove(dest)
                if aside is not None:
                    os.replace(aside, dest)
            raise
        else:
            for _, aside in moved:
                if aside is not None:
                    _remove(aside)
            self._staged = []
        finally:
            for fd in locks:
                os.close(fd)
            restore_signals(previous)
        if stopped:
            raise Interrupted(stopped[0], written=True)


def _lock_folders(folders) -> list[int]:
    """Exclusive flock on each destination folder, in a fixed order (no deadlock between two runs)."""
    fds: list[int] = []
    try:
        for d in sorted({os.path.realpath(f) for f in folders}):
            fds.append(os.open(d, os.O_RDONLY))
            fcntl.flock(fds[-1], fcntl.LOCK_EX)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _remove(p: Path) -> None:
    """Delete a file or folder this run created (absent is fine)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass

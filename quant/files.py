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
import secrets
import shutil
import stat
import sys
from pathlib import Path
from typing import Callable

from quant import stop
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


STAGING_NAME_EXTRA = 24  # Outputs stages ``x`` as ``.x.<16 hex>.tmp`` and keeps a replaced one in a folder ``.x.<16 hex>.aside``


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


def append_summary(path: str | os.PathLike, text: str, paths: list[tuple[str, str | os.PathLike | None]]) -> str | None:
    """Append ``text`` to ``path`` (CI's ``$GITHUB_STEP_SUMMARY``) unless it is not a regular file (or a new file in an
    existing folder) or it is one of ``paths``, the files the run reads or writes (a model, the config, a data file,
    a report): those are never appended to. Checked by name before opening and by inode on the opened file.
    Returns None when appended, else why not (one line for the log)."""
    p = Path(path)
    others = [(w, Path(q)) for w, q in paths if q is not None]
    for w, q in others:
        if _key(p) == _key(q):
            return f"it is the {w} {q}, which the run uses"
    try:
        if os.path.exists(p) and not stat.S_ISREG(os.stat(p).st_mode):
            return "not a writable regular file"
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
                     | getattr(os, "O_NOCTTY", 0), 0o644)
    except OSError as e:
        return f"not a writable regular file ({e.strerror or e})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a writable regular file"
        for w, q in others:
            try:
                sq = os.stat(q)
            except OSError:
                continue
            if (sq.st_dev, sq.st_ino) == (st.st_dev, st.st_ino):
                return f"it is the {w} {q}, which the run uses"
        os.write(fd, text.encode("utf-8"))
        return None
    except OSError as e:
        return f"cannot be written ({e.strerror or e})"
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write one file atomically (a run of one output: see :class:`Outputs`)."""
    with Outputs() as out:
        out.bytes(path, data)
        out.commit()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _exclusive(parent: Path, name: str, suffix: str, make):
    """Create ``parent/.name.<16 random hex>suffix`` with ``make(path)``, which must fail if the path exists
    (O_EXCL, mkdir): the name cannot be guessed in advance (``secrets``), and nothing that exists is ever
    taken over, whoever made it."""
    for _ in range(100):
        p = parent / f".{name}.{secrets.token_hex(8)}{suffix}"
        try:
            return p, make(p)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / f".{name}.*{suffix}"))


def _new_file(p: Path) -> int:
    return os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _named(e: OSError, path) -> OSError:
    """``e`` naming ``path`` when it names no file (a write or fsync failing with ENOSPC names none)."""
    if e.filename is None and e.errno is not None:
        return type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


def write_new_file(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` (which must not exist: inside a run's own staging folder) and write ``data``; an
    error names the file."""
    try:
        fd = _new_file(Path(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        raise _named(e, path) from None


def _listing(folder: Path) -> list[Path]:
    """Every entry below ``folder`` (not following symlinks), deepest first."""
    found = []
    for root, dirs, files in os.walk(folder, topdown=False):
        found += [Path(root) / f for f in files] + [Path(root) / d for d in dirs]
    return found


_commits = [0]  # commits completed in this process: the CLI's closing line after a late signal says whether outputs were written


def commits() -> int:
    return _commits[0]


class Outputs:
    """A run's outputs, committed together or not at all.

    Each output is first written complete to a hidden temporary beside its destination, created
    exclusively under an unguessable name (so a full disk or a signal fails the run while nothing of the
    user's has changed); :meth:`commit` then moves every one into place, keeping what it replaces aside
    (in a folder of its own, created exclusively) until all moves succeeded and restoring it otherwise
    (a stop signal meanwhile is recorded and raised after the moves). A folder the run replaces whole is
    checked again once it is aside (``foreign``): anything the run may not delete that appeared during the
    run refuses the commit and everything is put back. Only what was there at that check is deleted
    afterwards. Leaving the ``with`` block without commit removes every temporary. Used as
    ``with Outputs() as out: out.bytes(p, b); d = out.folder(q); ...; out.commit()``.
    """

    def __init__(self):
        self._staged: list[tuple[Path | None, Path, Callable | None]] = []  # (temporary or None, destination, foreign check)
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
        try:
            tmp, fd = _exclusive(self._parent(p), p.name, ".tmp", _new_file)
        except OSError as e:
            raise _named(e, p) from None
        stop.track(tmp)
        self._staged.append((tmp, p, None))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        except OSError as e:  # ENOSPC from write or fsync names no file: name the output
            raise _named(e, p) from None

    def text(self, path: str | os.PathLike, text: str) -> None:
        self.bytes(path, text.encode("utf-8"))

    def folder(self, path: str | os.PathLike, foreign: Callable[[Path], list[str]] | None = None) -> Path:
        """An empty temporary folder to fill; it replaces ``path`` whole on commit. ``foreign(folder)``
        lists what in the folder being replaced the run may not delete; it is asked again at commit time."""
        p = Path(path)
        try:
            tmp, _ = _exclusive(self._parent(p), p.name, ".tmp", os.mkdir)
        except OSError as e:
            raise _named(e, p) from None
        stop.track(tmp)
        os.chmod(tmp, 0o755)
        self._staged.append((tmp, p, foreign))
        return tmp

    def remove(self, path: str | os.PathLike, foreign: Callable[[Path], list[str]] | None = None) -> None:
        """Remove the folder ``path`` (if present) on commit, with the same checks as a folder replaced whole:
        an earlier run's output that this run no longer writes."""
        self._staged.append((None, Path(path), foreign))

    def discard(self) -> None:
        for tmp, _, _ in self._staged:
            if tmp is not None:
                _remove(tmp)
                stop.untrack(tmp)
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
        with stop.committing():
            self._commit()

    def _commit(self) -> None:
        stopped: list[int] = []
        previous = handle_signals(lambda signum, frame: stopped.append(signum))  # recorded, acted on after the moves
        locks: list[int] = []
        moved: list[list] = []  # [destination, what it replaced (kept aside until the end) or None, placed, listing]
        try:
            locks = _lock_folders({dest.parent for _, dest, _ in self._staged})  # concurrent runs commit one after the other
            for tmp, dest, foreign in self._staged:
                if tmp is not None and dest.is_dir() and not dest.is_symlink() and not tmp.is_dir():
                    raise UsageError(f"{dest}: is a folder; refusing to replace it by a file")
                entry = [dest, None, False, []]
                if os.path.lexists(dest):
                    holder, _ = _exclusive(dest.parent, dest.name, ".aside", os.mkdir)
                    try:
                        os.replace(dest, holder / dest.name)
                    except BaseException:
                        os.rmdir(holder)
                        raise
                    entry[1] = holder / dest.name
                    moved.append(entry)
                    if entry[1].is_dir() and not entry[1].is_symlink():
                        entry[3] = _listing(entry[1])  # checked now that no one else can reach it by its name
                        other = foreign(entry[1]) if foreign else []
                        if other:
                            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
                            raise UsageError(f"{dest}: holds files this run did not write ({shown}), added while it ran; "
                                             "the folder is replaced whole, so nothing was written")
                elif tmp is None:
                    continue
                if tmp is not None:
                    os.replace(tmp, dest)
                    entry[2] = True
                if entry[1] is None:
                    moved.append(entry)
        except BaseException:
            for dest, aside, placed, _ in reversed(moved):  # put back what was there before this run
                if placed:
                    _remove(dest)
                if aside is not None:
                    os.replace(aside, dest)
                    os.rmdir(aside.parent)
            raise
        else:
            for _, aside, _, listing in moved:
                if aside is not None:
                    _remove_listed(aside, listing)
            for tmp, _, _ in self._staged:
                if tmp is not None:
                    stop.untrack(tmp)
            self._staged = []
            _commits[0] += 1
        finally:
            for fd in locks:
                os.close(fd)
            restore_signals(previous)
        if stopped:
            raise Interrupted(stopped[0], written=True)


def _remove_listed(aside: Path, listing: list[Path]) -> None:
    """Delete what a commit replaced: a file, or a folder's entries that were there when it was checked
    (never one that appeared since: that folder is kept, and named on stderr)."""
    try:
        if not listing and not (aside.is_dir() and not aside.is_symlink()):
            os.unlink(aside)
        else:
            for p in listing:  # deepest first
                if p.is_dir() and not p.is_symlink():
                    os.rmdir(p)
                else:
                    os.unlink(p)
            os.rmdir(aside)
        os.rmdir(aside.parent)
    except OSError:
        print(f"[warning] {aside.parent}: kept; it holds what the run replaced and files added while it was removed",
              file=sys.stderr)


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

"""Can the process start ``--threads`` N? Checked before every session with more than one thread.

onnxruntime starts N - 1 pool threads when a session is created. When the system refuses one (an
address-space limit too small for its stack, the per-user process limit, a cgroup's pids limit) it waits
forever instead of failing: ``--threads 256`` under ``ulimit -v 4000000`` hung with 340 threads and ignored
SIGTERM. So the count is compared with each limit first, and one that cannot be served is a one-line error
(exit 2) naming the limit:

- ``RLIMIT_AS`` (``ulimit -v``): each thread reserves a stack of ``RLIMIT_STACK`` (8 MiB by default);
- ``RLIMIT_NPROC`` (``ulimit -u``): counts every thread of every process of the user (real uid); the threads
  running now are counted from ``/proc/*/status``. The kernel does not apply it to root;
- the pids limit of the process's cgroup and of each cgroup above it (v2: ``pids.max`` / ``pids.current`` in
  the unified hierarchy; v1: the ``pids`` controller's hierarchy), read through ``/proc/self/cgroup``.

The functions take the ``/proc`` and ``/sys`` roots so the arithmetic is testable with fake trees.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from quant.errors import UsageError

SESSION_HEADROOM = 256 << 20  # address space a session needs besides its threads' stacks
TASK_HEADROOM = 2  # threads besides the pool that may start meanwhile (a watcher, a library's helper)


def check_threads(threads: int, proc: str | Path = "/proc", sys_root: str | Path = "/sys") -> None:
    """Refuse (exit 2) a thread count the process cannot serve; see the module's text."""
    if threads <= 1:
        return
    proc, sys_root = Path(proc), Path(sys_root)
    _check_address_space(threads, proc)
    _check_user_processes(threads, proc)
    _check_cgroup_pids(threads, proc, sys_root)


def _status(path: Path) -> dict[str, str]:
    out = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
    except OSError:
        pass
    return out


def _check_address_space(threads: int, proc: Path) -> None:
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    try:
        used = int(_status(proc / "self" / "status")["VmSize"].split()[0]) * 1024
    except (KeyError, ValueError, IndexError):
        return
    if limit == resource.RLIM_INFINITY:
        return
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    stack = 8 << 20 if stack == resource.RLIM_INFINITY or stack <= 0 else stack
    room = limit - used - SESSION_HEADROOM
    if (threads - 1) * stack > room:
        fits = max(1, room // stack + 1)
        raise UsageError(f"--threads {threads}: the address-space limit (ulimit -v, {limit >> 20:,} MiB, {used >> 20:,} MiB in use) "
                         f"leaves room for about {fits} thread(s) of {stack >> 20} MiB stack in this session; use fewer threads "
                         "or raise the limit")


def user_threads(uid: int, proc: Path) -> int:
    """Threads of all processes whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return 0
    for pid in entries:
        st = _status(proc / pid / "status")
        try:
            if int(st["Uid"].split()[0]) == uid:
                total += int(st["Threads"])
        except (KeyError, ValueError, IndexError):
            continue  # ended meanwhile, or a kernel thread
    return total


def _nproc_exempt(uid: int, proc: Path) -> bool:
    """The kernel does not apply RLIMIT_NPROC to root of the initial user namespace."""
    if uid != 0:
        return False
    try:
        fields = (proc / "self" / "uid_map").read_text().split()
    except OSError:
        return True
    return fields[:3] == ["0", "0", "4294967295"]  # not root mapped from another uid inside a container


def _check_user_processes(threads: int, proc: Path) -> None:
    limit = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    uid = os.getuid()
    if limit == resource.RLIM_INFINITY or _nproc_exempt(uid, proc):
        return
    running = user_threads(uid, proc)
    room = limit - running - TASK_HEADROOM
    if threads - 1 > room:
        raise UsageError(f"--threads {threads}: the process limit (ulimit -u, {limit:,} threads for this user, {running:,} running) "
                         f"leaves room for about {max(1, room + 1)} thread(s) in this session; use fewer threads or raise the limit")


def _cgroup_dirs(proc: Path, sys_root: Path) -> list[Path]:
    """The pids-controller folders of the process's cgroup and its ancestors, deepest first (those that exist)."""
    base = sys_root / "fs" / "cgroup"
    found = []
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: the unified hierarchy (at the mount point, or below it in a hybrid layout)
            roots = [base, base / "unified"]
        elif "pids" in controllers.split(","):
            roots = [base / controllers, base / "pids"]
        else:
            continue
        rel = Path(path.lstrip("/"))
        for root in roots:  # the first root that holds the limit files for this cgroup
            hits = [root / level for level in [rel, *rel.parents] if (root / level / "pids.max").is_file()]
            if hits:
                found.extend(d for d in hits if d not in found)
                break
    return found


def pids_room(proc: str | Path = "/proc", sys_root: str | Path = "/sys") -> tuple[int, int, int] | None:
    """(room, max, current) of the tightest cgroup pids limit over the process's cgroup and its ancestors;
    None when no limit applies."""
    tightest = None
    for d in _cgroup_dirs(Path(proc), Path(sys_root)):
        try:
            top = (d / "pids.max").read_text().strip()
            current = int((d / "pids.current").read_text().strip())
        except (OSError, ValueError):
            continue
        if top == "max":
            continue
        try:
            room = int(top) - current
        except ValueError:
            continue
        if tightest is None or room < tightest[0]:
            tightest = (room, int(top), current)
    return tightest


def _check_cgroup_pids(threads: int, proc: Path, sys_root: Path) -> None:
    found = pids_room(proc, sys_root)
    if found is None:
        return
    room, top, current = found
    if threads - 1 > room - TASK_HEADROOM:
        raise UsageError(f"--threads {threads}: the cgroup's pids limit (pids.max {top:,}, {current:,} in use) leaves room for about "
                         f"{max(1, room - TASK_HEADROOM + 1)} thread(s) in this session; use fewer threads or raise the limit "
                         "(a container's --pids-limit, systemd's TasksMax)")

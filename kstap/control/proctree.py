"""A process's descendants from the kernel's own child lists (``/proc/PID/task/TID/children``).

psutil finds children by reading the stat file of every process on the host, to build a parent map;
on a node with hundreds of processes that is milliseconds per reading, and it was most of what an idle
capture's tick cost. The kernel keeps each thread's children (``CONFIG_PROC_CHILDREN``, on in the
distributions' kernels), so walking our own tree costs a read per thread of the processes in it.
Where the files do not exist, :func:`descendants` says so (None) and the caller falls back to psutil.
"""

from __future__ import annotations

import os


def _children(proc: str, pid: int) -> list[int] | None:
    """The children of every thread of ``pid`` ([] if it ended), or None without the kernel's lists."""
    try:
        tasks = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return []  # the process ended between the parent's list and here
    out: list[int] = []
    for tid in tasks:
        try:
            with open(f"{proc}/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if os.path.isdir(f"{proc}/{pid}/task/{tid}"):
                return None  # the thread is there, its children file is not: no kernel support
        except (OSError, ValueError):
            continue  # the thread ended while we read
    return out


def descendants(pid: int, proc: str = "/proc") -> list[int] | None:
    """Every descendant of ``pid``, parents before their children; None where the kernel keeps no
    child lists (the caller then scans the process table)."""
    out: list[int] = []
    todo = [pid]
    seen = {pid}
    while todo:
        kids = _children(proc, todo.pop(0))
        if kids is None:
            return None
        for kid in kids:
            if kid not in seen:
                seen.add(kid)
                out.append(kid)
                todo.append(kid)
    return out

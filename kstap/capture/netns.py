"""Open sockets inside a named network namespace (``ip netns``) and come back.

A packet socket stays tied to the namespace it was created in, so a capture process can
enter a namespace, open its sockets, and return, as ``ip netns exec`` would for a whole process.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

from kstap.errors import EnvironmentProblem, UsageError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block inside network namespace ``name`` (None: stay where we are)."""
    if not name:
        yield
        return
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"network namespace {name!r} does not exist",
                         hint="list them with 'ip netns list'") from None
    except PermissionError:
        raise EnvironmentProblem(f"cannot open network namespace {name!r}: permission denied",
                                 hint="entering a namespace needs root (CAP_SYS_ADMIN)") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except PermissionError:
            raise EnvironmentProblem(f"cannot enter network namespace {name!r}: permission denied",
                                     hint="entering a namespace needs root (CAP_SYS_ADMIN)") from None
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)

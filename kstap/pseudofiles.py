"""Reading the small generated files of ``/proc`` and ``/sys/fs/cgroup`` once a second, cheaply.

Such a file is produced anew at each read, so it can stay open: :class:`PseudoFiles` keeps each one it
has read open and reads it again from offset 0 (``pread``). That saves the path walk through the
cgroup tree and the open, which were most of what an idle tick cost (docs/benchmarks.md). A file whose
cgroup was removed fails its read (``ENODEV``): it is closed and opened again by path, which then
finds it gone or finds its successor.

Only files under ``/proc`` and ``/sys`` of the live host are held (``hold``): a regular file (a test's
recorded tree) keeps its old contents on an open descriptor after it is replaced, so those are
opened by path at every read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

READ_SIZE = 1 << 16
MAX_HELD = 64
"""Descriptors kept at most (a reading touches ~20 files; deeper trees read the rest by path)."""
HELD_PREFIXES = ("/proc/", "/sys/")


def read_from_start(fd: int) -> bytes:
    """The whole of a file held open, read again from its start."""
    parts = [os.pread(fd, READ_SIZE, 0)]
    offset = len(parts[0])
    while len(parts[-1]) == READ_SIZE:
        parts.append(os.pread(fd, READ_SIZE, offset))
        offset += len(parts[-1])
    return b"".join(parts)


def read_by_path(path: str) -> str | None:
    """One read of ``path`` (None when it is missing or unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read_from_start(fd).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


class PseudoFiles:
    """Reads files by path; with ``hold``, keeps the ``/proc`` and ``/sys`` ones open between reads."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def text(self, path: str) -> str | None:
        """The file's whole text now, or None if it is missing or unreadable."""
        if not self.hold or not path.startswith(HELD_PREFIXES):
            return read_by_path(path)
        if self._pid != os.getpid():  # a forked child: /proc/self and the descriptors are the parent's
            self._forget()
            self._pid = os.getpid()
        fd = self._fds.get(path)
        if fd is not None:
            try:
                return read_from_start(fd).decode("utf-8", "replace")
            except OSError:  # its cgroup was removed: look the path up again
                self._drop(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            text = read_from_start(fd).decode("utf-8", "replace")
        except OSError:
            os.close(fd)
            return None
        if len(self._fds) < MAX_HELD:
            self._fds[path] = fd
        else:
            os.close(fd)
        return text

    def exists(self, path: str) -> bool:
        return path in self._fds or os.path.exists(path)

    def _drop(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _forget(self) -> None:
        for path in list(self._fds):
            self._drop(path)

    def close(self) -> None:
        self._forget()

    def __del__(self, close: Callable[[int], None] = os.close) -> None:
        # a reader dropped without close() does not leak its descriptors (``close`` is bound here:
        # at interpreter exit the module's globals may already be gone)
        for fd in self._fds.values():
            try:  # noqa: SIM105 (contextlib may be gone at interpreter exit too)
                close(fd)
            except OSError:
                pass
        self._fds = {}

    @property
    def held(self) -> int:
        """Descriptors open now."""
        return len(self._fds)


PLAIN = PseudoFiles(hold=False)
"""Reads by path each time (recorded trees, one-off reads)."""

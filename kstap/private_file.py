"""Open an output file that will hold other people's traffic (captures, NDJSON entries) privately.

A new file is created 0600. An existing regular file is reused only if it belongs to the user kstap
runs as: it is truncated and narrowed to 0600 (a capture written into a file others can read would
leak). A file owned by someone else is refused: writing into it would hand them the capture (e.g. a
file planted in a shared directory such as /tmp, or a symbolic link to one). FIFOs, terminals and
``/dev/null`` are written as they are.
"""

from __future__ import annotations

import os
import stat

from kstap.errors import UsageError

MODE = 0o600


class ForeignFile(UsageError):
    """The output path is an existing file that belongs to another user (exit 2)."""

    def __init__(self, path: str, uid: int) -> None:
        super().__init__(f"refusing to write into {path!r}: it belongs to another user (uid {uid})",
                         hint="captures hold other people's traffic: remove that file, or write elsewhere")


def check_target(path: str) -> None:
    """Raise ForeignFile when ``path`` exists as a regular file of another user (before capture starts)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid != os.geteuid():
        raise ForeignFile(path, st.st_uid)


def open_private(path: str) -> int:
    """A write descriptor on ``path``, truncated, mode 0600 (see the module docstring). Raises OSError
    as ``os.open`` does, and ForeignFile."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, MODE)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            if st.st_uid != os.geteuid():
                raise ForeignFile(path, st.st_uid)
            os.ftruncate(fd, 0)
            if st.st_mode & 0o077:
                os.fchmod(fd, MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd

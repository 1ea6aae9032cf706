"""Entries as NDJSON: one JSON object per line, to a file or to stdout (``-``), flushed per batch.

Files are created 0600 (entries carry URLs and names from other people's traffic; see
:mod:`kstap.private_file`). A write that fails (full disk, closed pipe) raises
:class:`kstap.errors.OutputFailed` naming ``--entries``; a file is cut back to its last whole line
first, so what is on disk always parses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from kstap.dissect.api import Entry
from kstap.errors import OutputClosed, OutputFailed, describe_os_error
from kstap.private_file import open_private


class EntryWriter:
    """``write`` is the stage's ``emit``; ``flush`` after each batch; ``close`` at the end."""

    def __init__(self, target: str, stdout: TextIO | None = None, *, option: str = "--entries") -> None:
        self.target = target
        self.option = option
        self.count = 0
        self.failed: OutputFailed | OutputClosed | None = None
        self._lines: list[str] = []
        self._own = target != "-"
        self._fd = -1
        self._good = 0
        """Bytes of whole lines in the file: where a failed write is cut back to."""
        if self._own:
            try:
                self._fd = open_private(target)
            except OSError as exc:
                raise self._failure(exc) from None
        else:
            self.stream: TextIO = stdout or sys.stdout
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def _failure(self, exc: OSError) -> OutputFailed:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        return OutputFailed(f"{self.option} {self.target!r}: cannot write: {describe_os_error(exc)}",
                            hint=f"free space, or write the entries elsewhere ({self.option} FILE)"
                            if full else f"check the {self.option} path")

    def write(self, entry: Entry) -> None:
        self._lines.append(entry.to_line())
        self.count += 1

    def write_json(self, obj: Mapping[str, object]) -> None:
        """An entry already in its NDJSON form (a worker's, from the stream)."""
        self._lines.append(self._dumps(obj))
        self.count += 1

    def flush(self) -> None:
        if self.failed is not None:
            self._lines = []
            return
        lines, self._lines = self._lines, []
        try:
            if self._own:
                if lines:
                    self._write_file(("\n".join(lines) + "\n").encode())
            else:
                if lines:
                    self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
        except BrokenPipeError:
            self.failed = OutputClosed(self.option)
            raise self.failed from None
        except OSError as exc:
            self.failed = self._failure(exc)
            raise self.failed from None

    def _write_file(self, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, memoryview(data)[written:])
        except OSError:
            whole = data.rfind(b"\n", 0, written) + 1  # keep the lines that fit, no half line
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._good + whole)
            self._good += whole
            raise
        self._good += len(data)

    def close(self) -> None:
        """Flush and close; after a failure only close (the failure was raised already)."""
        try:
            if self.failed is None:
                self.flush()
        finally:
            if self._own and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

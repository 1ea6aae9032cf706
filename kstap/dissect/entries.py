"""Entries as NDJSON: one JSON object per line, to a file or to stdout (``-``), flushed per batch.

Files are created 0600 (entries carry URLs and names from other people's traffic; see
:mod:`kstap.private_file`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from kstap.dissect.api import Entry
from kstap.private_file import open_private


class EntryWriter:
    """``write`` is the stage's ``emit``; ``flush`` after each batch; ``close`` at the end."""

    def __init__(self, target: str, stdout: TextIO | None = None) -> None:
        self.target = target
        self.count = 0
        self._lines: list[str] = []
        self._own = target != "-"
        if self._own:
            fd = open_private(target)
            self.stream: TextIO = os.fdopen(fd, "w", encoding="utf-8")
        else:
            self.stream = stdout or sys.stdout
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def write(self, entry: Entry) -> None:
        self.write_json(entry.to_json())

    def write_json(self, obj: Mapping[str, object]) -> None:
        """An entry already in its NDJSON form (a worker's, from the stream)."""
        self._lines.append(self._dumps(obj))
        self.count += 1

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._own:
                self.stream.close()

"""Exit codes and the error types that map onto them.

Only :mod:`kstap.cli.main` turns these into process exit codes; stages raise them.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in docs/cli.md."""

    OK = 0
    RUNTIME = 1
    USAGE = 2
    ENVIRONMENT = 3
    WORKER = 4
    DROPS = 5
    INTERRUPTED = 130


class KstapError(Exception):
    """An error with a one-line message, an optional hint and an exit code."""

    code: ExitCode = ExitCode.RUNTIME

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.summary: object | None = None
        """What was captured before the error, when capture had started (a CaptureSummary)."""


class UsageError(KstapError):
    """Bad arguments: conflicting flags, bad filter, unknown interface (exit 2)."""

    code = ExitCode.USAGE


class EnvironmentProblem(KstapError):
    """The host cannot do it: missing privilege, missing library or kernel module (exit 3)."""

    code = ExitCode.ENVIRONMENT


class WorkerFailure(KstapError):
    """A capture worker died or could not start (exit 4)."""

    code = ExitCode.WORKER


class Interrupted(KstapError):
    """SIGINT/SIGTERM arrived before capture started (exit 130)."""

    code = ExitCode.INTERRUPTED


class OutputFailed(KstapError):
    """An output (``--entries``, a ``-w`` file, the metrics port) failed while capturing (exit 1).

    The message names the output; the capture file was closed with its statistics block first.
    """

    code = ExitCode.RUNTIME


class OutputClosed(Exception):
    """The reader of an output on a pipe went away (broken pipe): stop quietly, like tcpdump."""

    def __init__(self, output: str = "-w -") -> None:
        super().__init__(output)
        self.output = output


def describe_os_error(exc: OSError) -> str:
    """``exc``'s reason as a person would say it: EROFS is "read-only file system", not "permission denied"."""
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or str(exc)

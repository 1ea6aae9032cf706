"""The console scripts' entry points: they import the CLI inside a guard, so a Ctrl-C while Python is still
loading kstap (its first tenth of a second) exits 130 with one line instead of a traceback."""

from __future__ import annotations

import sys

INTERRUPTED = 130
"""kstap.errors.ExitCode.INTERRUPTED, without importing anything before the guard."""


def _guarded(name: str) -> None:
    try:
        from kstap.cli import main as cli

        getattr(cli, name)()
    except KeyboardInterrupt:
        print("kstap: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)


def main() -> None:
    _guarded("main")


def kubectl_main() -> None:
    _guarded("kubectl_main")


def kubectl_complete_main() -> None:
    _guarded("kubectl_complete_main")

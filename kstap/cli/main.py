"""Entry point: the single place where errors become exit codes (httpie's raw_main)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from kstap.errors import ExitCode, KstapError

FALLBACK_HINT = "rerun with --debug for details; 'kstap COMMAND --help' lists the options"
"""For an error raised without a hint (tests/unit/test_error_hints.py keeps those out of kstap/)."""


def _print_error(message: str, hint: str | None) -> None:
    print(f"kstap: error: {message}", file=sys.stderr)
    print(f"hint: {hint or FALLBACK_HINT}", file=sys.stderr)


def _click_exceptions() -> Any:
    """Typer ≥ 0.20 vendors click as typer._click; older releases use click itself."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # pragma: no cover - depends on the installed typer
        return importlib.import_module("click.exceptions")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI and exit with a documented code; tracebacks only with --debug."""
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))


KUBECTL_PROG = "kubectl kstap"
"""How kstap is named when kubectl runs it as the plugin ``kubectl-kstap`` (its help and hints say so)."""


def kubectl_main() -> None:
    """``kubectl-kstap`` on PATH makes ``kubectl kstap …`` work (kubectl's plugin mechanism)."""
    sys.exit(run(sys.argv[1:], prog=KUBECTL_PROG))


def kubectl_complete_main() -> None:
    """``kubectl_complete-kstap ARGS… INCOMPLETE``: kubectl (≥ 1.26) asks plugins for completions this way.

    It prints one candidate per line, then cobra's directive line ``:4`` (no file completion).
    """
    args = sys.argv[1:]
    words, incomplete = args[:-1], (args[-1] if args else "")
    values: list[str] = []
    try:
        from kstap.cli.app import build_app

        bash: Any = importlib.import_module("typer._completion_classes").BashComplete  # any concrete ShellComplete
        completer = bash(build_app(), {}, KUBECTL_PROG, "_KSTAP_COMPLETE")
        values = [str(item.value) for item in completer.get_completions(words, incomplete)]
    except Exception:  # a completion never prints a traceback into the shell
        values = []
    for value in values:
        print(value)
    print(":4")


def run(argv: list[str], prog: str = "kstap") -> int:
    try:
        return _run(argv, prog)
    except KeyboardInterrupt:  # Ctrl-C while the CLI itself is still loading (its first ~0.1 s)
        print("kstap: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


def _run(argv: list[str], prog: str) -> int:
    debug = "--debug" in argv
    args = [a for a in argv if a != "--debug"]
    import typer

    from kstap.cli.app import build_app

    cx = _click_exceptions()
    no_args = getattr(cx, "NoArgsIsHelpError", None) or getattr(cx, "NoArgsIsHelp", cx.UsageError)
    completing = "_KSTAP_COMPLETE" in os.environ  # completion walks the whole tree
    command = build_app(only=args[0] if args and not completing else None)
    try:
        rv = command.main(args=args, prog_name=prog, complete_var="_KSTAP_COMPLETE", standalone_mode=False)
    except KstapError as exc:
        if debug:
            raise
        _print_error(exc.message, exc.hint)
        return int(exc.code)
    except no_args as exc:
        help_text = exc.format_message()  # the help; typer's rich help printed itself while built
        if help_text:
            print(help_text)
        return int(ExitCode.USAGE)
    except cx.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else prog
        _print_error(exc.format_message(), f"see '{cmd} --help'")
        return int(ExitCode.USAGE)
    except (typer.Abort, getattr(cx, "Abort", typer.Abort)):
        print("kstap: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except (typer.Exit, getattr(cx, "Exit", typer.Exit)) as exc:
        return int(exc.exit_code)
    except cx.ClickException as exc:
        _print_error(exc.format_message(), None)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("kstap: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # our reader left (| head): nothing more to say, as tcpdump
        _quiet_stdout()
        return int(ExitCode.OK)
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if debug:
            raise
        _print_error(f"internal error: {type(exc).__name__}: {exc}",
                     "rerun with --debug for a traceback and report it")
        return int(ExitCode.RUNTIME)
    return int(rv) if isinstance(rv, int) else 0

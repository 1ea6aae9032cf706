"""``kstap report FILE -o report.html``: one self-contained page about a capture (inline SVG, no network)."""

from __future__ import annotations

import os
import sys

import typer

from kstap.errors import ExitCode, OutputFailed, UsageError


def report(
    file: str = typer.Argument(..., help="A pcap or pcapng capture (e.g. from 'kstap tap -w')."),
    output: str = typer.Option("report.html", "-o", "--output", help="The HTML page to write; '-' = stdout."),
    entries: str | None = typer.Option(None, "--entries",
                                       help="NDJSON entries of the capture (kstap tap --entries); default: "
                                            "dissect the file."),
    title: str | None = typer.Option(None, "--title", help="The page's title (default: the file's name)."),
) -> int:
    """Write an HTML page about a capture: sampling rate over time, drops, flows kept against estimated,
    top endpoints and protocols."""
    from kstap.report.html import build, render
    from kstap.sinks.files import check_not_input, check_writable

    if not os.path.isfile(file):
        raise UsageError(f"cannot read {file!r}: no such file", hint="give the path of a pcap or pcapng file")
    if entries is not None and not os.path.isfile(entries):
        raise UsageError(f"--entries {entries!r}: no such file", hint="give the NDJSON that kstap tap --entries wrote")
    check_not_input(file, {"-o": output, "--entries": None})
    if entries is not None:
        check_not_input(entries, {"-o": output})
    check_writable(output, "-o")
    page = render(build(file, entries), title=title)
    if output == "-":
        sys.stdout.write(page)
        return int(ExitCode.OK)
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(page)
    except OSError as exc:
        raise OutputFailed(f"-o {output!r}: cannot write: {exc.strerror}", hint="free space or pick another -o path"
                           ) from None
    print(f"kstap: wrote {output}", file=sys.stderr)
    return int(ExitCode.OK)

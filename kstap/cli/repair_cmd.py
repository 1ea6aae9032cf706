"""``kstap repair FILE [-o OUT]``: keep every complete block of a damaged capture, drop the cut tail."""

from __future__ import annotations

import sys

import typer

from kstap.errors import ExitCode


def repair(
    file: str = typer.Argument(..., metavar="FILE", help="A pcap or pcapng file cut short (SIGKILL, power loss, "
                                                          "full disk)."),
    output: str | None = typer.Option(None, "-o", "--output",
                                      help="Where to write the repaired copy (default: FILE.repaired.EXT)."),
) -> int:
    """Copy every complete block of a damaged capture to a new file; report what was dropped."""
    from kstap.repair import repair as run_repair

    r = run_repair(file, output)
    say = sys.stderr.write
    if r.intact:
        say(f"kstap: {file} is intact: {r.packets} packets in {r.blocks} blocks; copied to {r.output}\n")
    else:
        say(f"kstap: {file}: kept {r.packets} packets in {r.blocks} complete blocks ({r.bytes_kept} bytes), "
            f"dropped the last {r.bytes_dropped} bytes: {r.reason}\n")
        say(f"kstap: wrote {r.output}\n")
    if r.format == "pcapng" and not r.statistics:
        say("kstap: note: the file has no statistics block (the capture did not close); kernel drop counts "
            "for it are unknown, and none was made up\n")
    if r.section_length_reset:
        say("kstap: note: the section length in the header no longer matched; set to 'not given'\n")
    return int(ExitCode.OK)

"""``kstap dissect FILE``: run the dissection stage offline over a pcap/pcapng file.

The stages are put together in :func:`kstap.pipeline.offline.run_dissect` (the offline twin of
``kstap tap --entries``): file → batches of records → :class:`~kstap.dissect.stage.DissectStage` → NDJSON.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

import typer

from kstap.errors import ExitCode, KstapError, UsageError


def dissect(
    file: str = typer.Argument(..., help="A pcap or pcapng file; - reads standard input."),
    entries: str = typer.Option("-", "--entries", help="NDJSON entries to FILE, or '-' for stdout."),
    seed: int = typer.Option(0, "--seed", help="The capture's sampling seed (entries' flow ids use it)."),
    dissect_memory: float = typer.Option(64.0, "--dissect-memory", help="Memory cap of the stage, MiB."),
    idle_timeout: float = typer.Option(60.0, "--idle-timeout", help="Close connections idle this long, seconds."),
) -> int:
    """Turn a capture into API calls: HTTP/1.x, HTTP/2, gRPC and DNS entries as NDJSON."""
    if not dissect_memory > 0:
        raise UsageError("--dissect-memory must be positive (MiB)", hint="the default is 64 (MiB)")
    if not idle_timeout > 0:
        raise UsageError("--idle-timeout must be positive (seconds)", hint="the default is 60 (seconds)")
    if file != "-" and not os.path.exists(file):
        raise UsageError(f"cannot read {file!r}: no such file",
                         hint="give the path of a pcap or pcapng file, or - for standard input")
    if os.path.isdir(file):
        raise UsageError(f"{file!r} is a directory", hint="give the path of a pcap or pcapng file")
    from kstap.sinks.files import check_not_input, check_writable

    check_not_input(file, {"--entries": entries})
    check_writable(entries, "--entries")
    run_dissect(file, entries, seed=seed, memory_cap=int(dissect_memory * (1 << 20)), idle_timeout=idle_timeout)
    return int(ExitCode.OK)


def run_dissect(path: str, entries: str, *, seed: int, memory_cap: int, idle_timeout: float,
                report: TextIO | None = None) -> None:
    """Dissect ``path`` into ``entries``; a damaged file keeps what was read and raises (exit 1)."""
    from kstap.pipeline.offline import run_dissect as dissect_file

    stage, packets, written, failure = dissect_file(path, entries, seed=seed, memory_cap=memory_cap,
                                                    idle_timeout=idle_timeout)
    for line in summary_lines(stage, packets, written, entries):
        print(line, file=report or sys.stderr)
    if failure is not None:
        raise KstapError(failure, hint=f"the {packets} packets before the damage were dissected")


def summary_lines(stage: object, packets: int, written: int, entries: str) -> list[str]:
    from kstap.dissect.stage import DissectStage

    assert isinstance(stage, DissectStage)
    st = stage.stats()
    where = "stdout" if entries == "-" else entries
    lines = [f"kstap: dissected {packets} packets: {written} entries to {where}"]

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"

    lines.append(f"kstap: entries by protocol: {counts(st.entries_by_protocol)}")
    lines.append(f"kstap: connections by protocol: {counts(st.flows_by_protocol)}")
    lines.append(f"kstap: connections ended: {counts(st.evictions)}")
    if st.errors:
        lines.append(f"kstap: errors: {counts(st.errors)}")
    lines.append(f"kstap: dissection memory: peak {_size(st.peak_memory_bytes)} of {_size(st.memory_cap)} cap; "
                 f"{st.gaps} gaps, {st.retransmitted} retransmitted segments")
    return lines


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"

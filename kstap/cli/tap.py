"""``kstap tap``: capture local interfaces (or a file) into pcapng."""

from __future__ import annotations

import sys

import typer

from kstap.cli.report import TextReporter
from kstap.config import OutputSettings, TapSettings
from kstap.errors import ExitCode, KstapError


def tap(
    interface: list[str] = typer.Option([], "-i", "--interface", help="Interface to capture on (repeatable)."),
    bpf_filter: str = typer.Option("", "--bpf-filter", "-f", help="BPF capture filter (pcap-filter(7) syntax)."),
    write: str | None = typer.Option(None, "-w", "--write", help="pcapng output file; '-' writes to stdout."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after SECS seconds."),
    count: int | None = typer.Option(None, "-c", "--count", help="Stop after COUNT packets."),
    snaplen: int = typer.Option(262144, "--snaplen", "-s", help="Bytes kept per packet."),
    buffer_size: int = typer.Option(32, "--buffer-size", "-B", help="Kernel ring size per interface, MiB."),
    workers: int = typer.Option(1, "--workers", help="Capture processes joined by PACKET_FANOUT_HASH."),
    read: str | None = typer.Option(None, "--read", "-r", help="Read a pcap/pcapng file instead."),
    realtime: bool = typer.Option(False, "--realtime", help="With --read: pace packets by their timestamps."),
    capture: str = typer.Option("af_packet", "--capture", help="Backend: af_packet, libpcap, pf_ring or best."),
    netns: str | None = typer.Option(None, "--netns", help="Capture inside this named network namespace."),
    rotate_mb: float | None = typer.Option(None, "-C", help="Rotate the file after this many million bytes."),
    ring_files: int | None = typer.Option(None, "-W", help="With -C/-G: keep only the newest N files."),
    rotate_seconds: float | None = typer.Option(None, "-G", help="Rotate the file every SECS seconds."),
    progress: bool = typer.Option(False, "--progress", help="Print a status line every second on stderr."),
) -> int:
    """Capture packets into a Wireshark-ready pcapng, like tcpdump -w."""
    from kstap import pipeline

    settings = TapSettings(
        interfaces=list(interface), bpf_filter=bpf_filter, read=read, realtime=realtime,
        duration=duration, count=count, snaplen=snaplen, buffer_mib=buffer_size, workers=workers,
        capture=capture, netns=netns,
        output=OutputSettings(path=write, rotate_mb=rotate_mb, rotate_seconds=rotate_seconds,
                              ring_files=ring_files),
    )
    reporter = TextReporter(progress=progress)
    try:
        summary = pipeline.run_tap(settings, reporter, lines=sys.stdout)
    except KstapError as exc:
        from kstap.model import CaptureSummary

        if isinstance(exc.summary, CaptureSummary):
            reporter.summary(exc.summary)
        raise
    reporter.summary(summary)
    return int(ExitCode.OK)

"""``kstap tap``: capture local interfaces (or a file) into pcapng."""

from __future__ import annotations

import sys

import typer

from kstap.cli.report import TextReporter
from kstap.config import (
    OutputSettings,
    TapSettings,
    apply_profile,
    parse_rate,
    parse_seed,
    parse_size,
    set_dotted,
    settle_auto_start,
)
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
    capture: str | None = typer.Option(None, "--capture", help="Backend: af_packet (default), libpcap, pf_ring, best."),
    netns: str | None = typer.Option(None, "--netns", help="Capture inside this named network namespace."),
    rotate_mb: float | None = typer.Option(None, "-C", help="Rotate the file after this many million bytes."),
    ring_files: int | None = typer.Option(None, "-W", help="With -C/-G: keep only the newest N files."),
    rotate_seconds: float | None = typer.Option(None, "-G", help="Rotate the file every SECS seconds."),
    progress: bool = typer.Option(False, "--progress", help="Print a status line every second on stderr."),
    mode: str | None = typer.Option(None, "--mode", help="Sampling: full, percentage or auto."),
    rate: str | None = typer.Option(None, "--rate", help="Share of flows kept: 0.25 or 25% (auto: start)."),
    seed: str | None = typer.Option(None, "--seed", help="32-bit flow-hash seed (default: random per run)."),
    min_rate: str | None = typer.Option(None, "--min-rate", help="auto: lowest rate the controller may set."),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="Memory to stay under, e.g. 512Mi."),
    cpu_budget: float | None = typer.Option(None, "--cpu-budget", help="CPU cores to stay under."),
    profile: str | None = typer.Option(None, "--profile", help="Preset: dev, staging or prod (flags win)."),
    entries: str | None = typer.Option(None, "--entries", help="Write dissected requests as NDJSON ('-' = stdout)."),
    dissect_memory: int = typer.Option(64, "--dissect-memory", help="Dissection memory cap, MiB."),
) -> int:
    """Capture packets into a Wireshark-ready pcapng, like tcpdump -w, sampling whole flows."""
    from kstap import pipeline

    settings = TapSettings(
        interfaces=list(interface), bpf_filter=bpf_filter, read=read, realtime=realtime,
        duration=duration, count=count, snaplen=snaplen, buffer_mib=buffer_size, workers=workers,
        netns=netns, entries=entries, dissect_memory_mib=dissect_memory,
        output=OutputSettings(path=write, rotate_mb=rotate_mb, rotate_seconds=rotate_seconds,
                              ring_files=ring_files),
    )
    flags: dict[str, object] = {
        "capture": capture,
        "sampling.mode": mode,
        "sampling.rate": parse_rate(rate) if rate is not None else None,
        "sampling.seed": parse_seed(seed) if seed is not None else None,
        "sampling.min_rate": parse_rate(min_rate) if min_rate is not None else None,
        "sampling.memory_budget": parse_size(memory_budget) if memory_budget is not None else None,
        "sampling.cpu_budget": cpu_budget,
    }
    explicit = {k for k, v in flags.items() if v is not None}
    if profile:
        apply_profile(settings, profile, explicit)
    set_dotted(settings, {k: v for k, v in flags.items() if v is not None})
    settle_auto_start(settings, explicit)
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

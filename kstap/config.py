"""Settings for one run, as plain dataclasses, and the checks that reject conflicting ones."""

from __future__ import annotations

from dataclasses import dataclass, field

from kstap.errors import UsageError

BACKENDS = ("af_packet", "libpcap", "pf_ring", "best")


@dataclass
class OutputSettings:
    """Where packets are written."""

    path: str | None = None
    """-w: pcapng file, ``-`` for stdout, None to only count."""
    rotate_mb: float | None = None
    """-C: start a new file after this many million bytes (tcpdump's unit)."""
    rotate_seconds: float | None = None
    """-G: start a new file after this many seconds."""
    ring_files: int | None = None
    """-W: keep only the newest N rotated files."""


@dataclass
class TapSettings:
    """Everything ``kstap tap`` needs; built by the CLI, checked by :meth:`validate`."""

    interfaces: list[str] = field(default_factory=list)
    """-i: local interfaces to capture on (repeatable)."""
    bpf_filter: str = ""
    read: str | None = None
    """--read: an offline pcap/pcapng file instead of live interfaces."""
    realtime: bool = False
    duration: float | None = None
    """Seconds after which capture stops."""
    count: int | None = None
    """-c: stop after this many packets."""
    snaplen: int = 262144
    """Bytes kept per packet; tcpdump's default, enough for any jumbo or GSO frame."""
    buffer_mib: int = 32
    """Kernel ring per interface and worker, MiB. 32 MiB absorbs ~20 ms of 1 Mpps bursts."""
    workers: int = 1
    capture: str = "af_packet"
    netns: str | None = None
    """Capture inside this named network namespace (``ip netns``)."""
    output: OutputSettings = field(default_factory=OutputSettings)
    max_drop: float | None = None

    def validate(self) -> None:
        """Reject impossible or conflicting combinations (exit 2)."""
        if self.read and self.interfaces:
            raise UsageError("--read and -i cannot be used together",
                             hint="capture live with -i IFACE, or replay a file with --read FILE")
        if not self.read and not self.interfaces:
            raise UsageError("nothing to capture: give -i IFACE (repeatable) or --read FILE",
                             hint="list interfaces with 'ip link'; try 'kstap demo' for a safe example")
        if self.realtime and not self.read:
            raise UsageError("--realtime only applies to --read", hint="drop --realtime for live capture")
        if self.read and self.workers != 1:
            raise UsageError("--workers only applies to live capture", hint="drop --workers with --read")
        if self.read and self.netns:
            raise UsageError("--netns only applies to live capture", hint="drop --netns with --read")
        if self.capture not in BACKENDS:
            raise UsageError(f"unknown capture backend {self.capture!r}",
                             hint=f"choose one of: {', '.join(BACKENDS)}")
        if self.workers < 1 or self.workers > 64:
            raise UsageError("--workers must be between 1 and 64")
        if self.workers > 1 and self.capture in ("libpcap", "pf_ring"):
            raise UsageError(f"--workers {self.workers} needs the af_packet backend (fanout)",
                             hint="use --capture af_packet, or --workers 1")
        if self.count is not None and self.count < 1:
            raise UsageError("-c must be a positive number of packets")
        if self.duration is not None and not self.duration > 0:  # NaN too
            raise UsageError("--duration must be positive (seconds)")
        if not 1 <= self.snaplen <= 262144:
            raise UsageError("--snaplen must be between 1 and 262144")
        if not 1 <= self.buffer_mib <= 4096:
            raise UsageError("--buffer-size must be between 1 and 4096 MiB")
        out = self.output
        if (out.rotate_mb or out.rotate_seconds or out.ring_files) and not out.path:
            raise UsageError("-C/-G/-W need an output file", hint="add -w FILE")
        if out.path == "-" and (out.rotate_mb or out.rotate_seconds):
            raise UsageError("-C/-G cannot rotate standard output", hint="write to a file with -w FILE")
        if out.ring_files is not None and not (out.rotate_mb or out.rotate_seconds):
            raise UsageError("-W needs -C or -G", hint="e.g. -C 100 -W 5 keeps five 100 MB files")
        if out.ring_files is not None and out.ring_files < 1:
            raise UsageError("-W must be at least 1")
        if out.rotate_mb is not None and not out.rotate_mb > 0:
            raise UsageError("-C must be positive (millions of bytes)")
        if out.rotate_seconds is not None and not out.rotate_seconds > 0:
            raise UsageError("-G must be positive (seconds)")

"""Settings for one run, as plain dataclasses, and the checks that reject conflicting ones."""

from __future__ import annotations

import math
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
class SamplingSettings:
    """How flows are chosen (see docs/sampling.md)."""

    mode: str = "full"
    """full: every flow; percentage: a fixed share of flows; auto: the controller moves the rate."""
    rate: float = 1.0
    """Share of flows kept (0..1]; percentage's fixed rate, auto's starting rate."""
    seed: int | None = None
    """32-bit flow-hash seed, shared by every worker of a run. None: random per run."""
    min_rate: float = 0.01
    """auto never goes below this share: some visibility survives any pressure."""
    memory_budget: int | None = None
    """Bytes; overrides the cgroup memory limit the controller protects."""
    cpu_budget: float | None = None
    """Cores; overrides the cgroup CPU quota."""
    idle_timeout: float = 60.0
    """Seconds after which a silent flow is forgotten by the flow table."""
    auto_start: bool = False
    """auto mode without an explicit --rate: the governor picks the start from the limits it finds
    (full with none known, :data:`AUTO_START_RATE` under a memory limit, the measured cost under a CPU
    quota; see kstap.control.governor.start_rate)."""
    flow_table: str = "auto"
    """Where auto mode decides flows: ``kernel`` (eBPF socket filter with an LRU map; needs CAP_BPF),
    ``user`` (the classic filter's ceiling and the user-space table), ``auto`` (kernel where it can)."""


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
    dedup_window_ms: float = 50.0
    """``-i any``: a packet seen again on another interface within this many ms is a copy and is
    removed (0 keeps every copy, as tcpdump -i any does). See kstap/dedup.py for why 50."""
    output: OutputSettings = field(default_factory=OutputSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    entries: str | None = None
    """--entries: NDJSON of dissected request/response pairs ('-' = stdout); None: no dissection."""
    dissect_memory_mib: int = 64
    """Cap on the dissector's buffers and parser state (MiB), evicting flows beyond it."""
    profile: str | None = None
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
            raise UsageError("--workers must be between 1 and 64", hint="one per core is plenty, e.g. --workers 2")
        if self.workers > 1 and self.capture in ("libpcap", "pf_ring"):
            raise UsageError(f"--workers {self.workers} needs the af_packet backend (fanout)",
                             hint="use --capture af_packet, or --workers 1")
        if self.count is not None and self.count < 1:
            raise UsageError("-c must be a positive number of packets", hint="e.g. -c 1000")
        if self.duration is not None and not self.duration > 0:  # NaN too
            raise UsageError("--duration must be positive (seconds)", hint="e.g. --duration 30")
        if not 1 <= self.snaplen <= 262144:
            raise UsageError("--snaplen must be between 1 and 262144", hint="the default, 262144, keeps whole packets")
        if not 0 <= self.dedup_window_ms <= 10_000:  # NaN too
            raise UsageError("--dedup-window must be between 0 and 10000 ms", hint="0 keeps every copy")
        if not 1 <= self.buffer_mib <= 4096:
            raise UsageError("--buffer-size must be between 1 and 4096 MiB", hint="the default is 32 (MiB)")
        self._validate_sampling()
        if self.entries == "-" and (self.output.path == "-"):
            raise UsageError("--entries - and -w - both want standard output", hint="send one of them to a file")
        if not 1 <= self.dissect_memory_mib <= 1 << 20:
            raise UsageError("--dissect-memory must be between 1 and 1048576 MiB", hint="the default is 64 (MiB)")
        out = self.output
        if (out.rotate_mb or out.rotate_seconds or out.ring_files) and not out.path:
            raise UsageError("-C/-G/-W need an output file", hint="add -w FILE")
        if out.path == "-" and (out.rotate_mb or out.rotate_seconds):
            raise UsageError("-C/-G cannot rotate standard output", hint="write to a file with -w FILE")
        if out.ring_files is not None and not (out.rotate_mb or out.rotate_seconds):
            raise UsageError("-W needs -C or -G", hint="e.g. -C 100 -W 5 keeps five 100 MB files")
        if out.ring_files is not None and out.ring_files < 1:
            raise UsageError("-W must be at least 1", hint="e.g. -C 100 -W 5 keeps five 100 MB files")
        if out.rotate_mb is not None and not 0 < out.rotate_mb < math.inf:
            raise UsageError("-C must be positive (millions of bytes)", hint="e.g. -C 100 rotates every 100 MB")
        if out.rotate_seconds is not None and not out.rotate_seconds > 0:
            raise UsageError("-G must be positive (seconds)", hint="e.g. -G 60 rotates every minute")

    def _validate_sampling(self) -> None:
        smp = self.sampling
        if smp.mode not in ("full", "percentage", "auto"):
            raise UsageError(f"unknown --mode {smp.mode!r}", hint="choose full, percentage or auto")
        if not 0.0 < smp.rate <= 1.0:
            raise UsageError(f"--rate must be in (0, 1], got {smp.rate}", hint="e.g. --rate 0.25 or --rate 25%")
        if smp.mode == "percentage" and smp.rate >= 1.0:
            raise UsageError("--mode percentage needs --rate below 1", hint="e.g. --mode percentage --rate 10%")
        if not 0.0 < smp.min_rate <= 1.0:
            raise UsageError("--min-rate must be in (0, 1]", hint="e.g. --min-rate 5%")
        if smp.seed is not None and not 0 <= smp.seed < 2**32:
            raise UsageError("--seed must be a 32-bit number (0 .. 4294967295, or 0x…)", hint="e.g. --seed 0x5eed")
        if smp.memory_budget is not None:
            check_memory_budget(smp.memory_budget)
        if smp.cpu_budget is not None and not smp.cpu_budget > 0:
            raise UsageError("--cpu-budget must be positive (cores)", hint="e.g. --cpu-budget 0.5")
        if smp.flow_table not in ("auto", "kernel", "user"):
            raise UsageError(f"sampling.flow_table must be auto, kernel or user, got {smp.flow_table!r}",
                             hint="kernel: the eBPF flow table (CAP_BPF); user: the classic filter's ceiling")
        if not 0 < smp.idle_timeout < math.inf:
            raise UsageError("sampling.idle_timeout must be a positive number of seconds", hint="the default is 60")


def parse_rate(text: str) -> float:
    """``0.25`` or ``25%`` → 0.25; a usage error for anything else."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"bad rate {text!r}", hint="write a share like 0.25 or a percentage like 25%") from None
    if not 0.0 < value <= 1.0:
        raise UsageError(f"rate {text!r} is outside (0, 1]", hint="e.g. 0.25 or 25%")
    return value


MIN_MEMORY_BUDGET = 32 << 20
"""Below this no budget can be kept: the Python process with its libraries alone uses ~40 MiB, so the
controller would sit at its minimum rate and the water level would read thousands of percent."""


def check_memory_budget(budget: int, option: str = "--memory-budget") -> None:
    """Usage error for a budget that is not positive or below :data:`MIN_MEMORY_BUDGET`."""
    if budget <= 0:
        raise UsageError(f"{option} must be positive", hint="e.g. 512Mi or 2Gi")
    if budget < MIN_MEMORY_BUDGET:
        raise UsageError(f"{option} {_mib(budget)} is below the {MIN_MEMORY_BUDGET >> 20} MiB kstap itself needs",
                         hint="kstap's own process uses ~40 MiB; give at least 32Mi (e.g. 256Mi)")


def _mib(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.3g} MiB"
    return f"{n / (1 << 10):.3g} KiB" if n >= 1 << 10 else f"{n} bytes"


def parse_size(text: str) -> int:
    """``512Mi``, ``2G``, ``300M``, ``1048576`` → bytes (Kubernetes-style suffixes)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9, "k": 10**3}
    raw = text.strip()
    if raw.startswith("-"):
        raise UsageError(f"bad size {text!r}: sizes cannot be negative", hint="e.g. 512Mi, 2Gi or a number of bytes")
    for suffix in sorted(units, key=len, reverse=True):
        if raw.endswith(suffix):
            try:
                return int(float(raw[: -len(suffix)]) * units[suffix])
            except (ValueError, OverflowError):  # not a number, or inf
                break
    try:
        return int(raw)
    except (ValueError, OverflowError):
        raise UsageError(f"bad size {text!r}", hint="e.g. 512Mi, 2Gi or a number of bytes") from None


def parse_seed(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"bad seed {text!r}", hint="a 32-bit number, decimal or 0x-hex") from None


PROFILES: dict[str, dict[str, object]] = {
    "dev": {"sampling.mode": "full", "sampling.memory_budget": 512 << 20, "sampling.cpu_budget": 1.0},
    "staging": {"sampling.mode": "auto", "sampling.min_rate": 0.05},
    "prod": {"sampling.mode": "percentage", "sampling.rate": 0.1, "capture": "best"},
}
"""Presets per environment: dev = full + resource limits, staging = auto (its alert thresholds are
the dashboard's warn/critical levels), prod = percentage on the best backend. Flags override."""


AUTO_START_RATE = 0.10
"""auto mode starts here under a memory limit (or a CPU quota, until the first tick has measured the
cost per packet) unless --rate says otherwise: starting at full rate is exactly the OOM risk auto
mode exists to avoid; the controller raises it by at most 0.05/s while pressure allows."""


def settle_auto_start(settings: TapSettings, explicit: set[str], chosen: set[str] | None = None) -> None:
    """Settle what the sampling flags imply, before :meth:`TapSettings.validate`.

    ``explicit`` holds the dotted keys set by anything but the defaults (profile, file, env, flags);
    ``chosen`` those the user set (not a ``--profile``), default ``explicit``.

    - ``--rate`` below 1 without ``--mode``: percentage mode (tcpdump-like: a rate given is a rate used;
      before, it was silently ignored in the default full mode).
    - auto mode without ``--rate`` starts at :data:`AUTO_START_RATE`, or at ``--min-rate`` when that is higher.
    - an auto start below ``--min-rate``, or ``--min-rate`` outside auto mode, is a usage error.
    """
    smp = settings.sampling
    if "sampling.mode" not in explicit and "sampling.rate" in explicit and smp.mode == "full" and smp.rate < 1.0:
        smp.mode = "percentage"
    if smp.mode == "auto" and "sampling.rate" not in explicit:
        smp.rate = max(AUTO_START_RATE, smp.min_rate)
        smp.auto_start = True  # the governor may start higher where it finds no limit
    if smp.mode == "auto" and smp.rate < smp.min_rate:
        raise UsageError(f"--rate {smp.rate:.3g} is below --min-rate {smp.min_rate:.3g}",
                         hint="auto mode starts at --rate and never goes below --min-rate: raise --rate")
    if smp.mode != "auto" and "sampling.min_rate" in (explicit if chosen is None else chosen):
        raise UsageError(f"--min-rate only applies to --mode auto (the mode is {smp.mode})",
                         hint="add --mode auto, or drop --min-rate")


"""Plain data shared by the stages. Stages exchange these, never each other's objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from kstap.vocabulary import AlertLevel, Cause

# One captured packet: (timestamp in ns since the epoch, captured length, original length,
# bytes, interface id, worker id). A tuple, not a dataclass: the capture loop builds millions.
PacketRecord = tuple[int, int, int, bytes, int, int]

LINKTYPE_ETHERNET = 1


@dataclass(frozen=True)
class Interface:
    """An interface packets come from, as written into a pcapng IDB."""

    name: str
    linktype: int = LINKTYPE_ETHERNET
    snaplen: int = 262144
    filter: str = ""
    description: str = ""


class LinkChange(StrEnum):
    """What happened to an interface during a capture."""

    APPEARED = "appeared"
    VANISHED = "vanished"
    RENAMED = "renamed"


@dataclass(frozen=True)
class InterfaceEvent:
    """An interface appeared or vanished while capturing (a pod's veth, a tunnel device)."""

    time_ns: int
    change: LinkChange
    name: str
    ifindex: int

    def describe(self) -> str:
        return f"interface {self.name} (index {self.ifindex}) {self.change}"


@dataclass
class SourceStats:
    """Counters of one capture source (one socket or one file), tcpdump's three numbers."""

    received: int = 0
    """Packets the kernel filter accepted (tcpdump's "received by filter")."""
    dropped: int = 0
    """Packets the kernel dropped because the ring was full ("dropped by kernel")."""
    delivered: int = 0
    """Packets handed to user space (after the loopback duplicate rule)."""
    duplicates: int = 0
    """Copies of one packet seen on another interface of the node and removed (``-i any``)."""

    def add(self, other: SourceStats) -> None:
        self.received += other.received
        self.dropped += other.dropped
        self.delivered += other.delivered
        self.duplicates += other.duplicates


@dataclass
class CaptureSummary:
    """What a finished capture reports."""

    captured: int = 0
    """Packets written (or counted, without -w)."""
    bytes_captured: int = 0
    received: int = 0
    dropped: int = 0
    per_interface: dict[str, SourceStats] = field(default_factory=dict)
    per_worker: dict[int, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    stopped_by: str = "end"
    """Why capture ended: end (source exhausted), count, duration, signal, disk-full, error."""
    warnings: list[str] = field(default_factory=list)
    sampled_out: int = 0
    """Packets that reached user space but belonged to flows the sampler did not keep."""
    left_out: int | None = None
    """Packets on the captured interfaces that the kernel filter (BPF expression and sampling threshold)
    did not pass, from the interface counters; None where unknown (files, ``-i any``, remote workers)."""
    flows_estimated: float | None = None
    """All flows, estimated from the kept ones (Horvitz-Thompson: each kept flow counts 1/rate)."""
    flows_seen: int = 0
    flows_kept: int = 0
    shed_flows: int = 0
    final_rate: float = 1.0
    entries: int = 0
    """Request/response entries written by dissection (--entries)."""
    dissect_evictions: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    """Copies of packets already seen on another interface, removed (``-i any`` dedup)."""
    interface_changes: list[str] = field(default_factory=list)
    """Interfaces that appeared or vanished during the capture, in order ("interface X (index N) appeared")."""


@dataclass
class WorkerStats:
    """One capture worker (a local process, or a node's pod later)."""

    worker: int
    node: str = ""
    captured: int = 0
    received: int = 0
    dropped: int = 0
    rate: float = 1.0
    alive: bool = True
    restarts: int = 0
    rate_history: list[tuple[float, float]] = field(default_factory=list)
    """(elapsed seconds, this worker's rate) points, oldest first; may be left empty."""


@dataclass
class ControllerState:
    """The auto-mode controller at one tick (ratios in 0..1; the P, I, D terms are in units of
    ln(rate), since the loop acts on the logarithm of the rate: see docs/control.md)."""

    pressure: float = 0.0
    setpoint: float = 0.7
    error: float = 0.0
    """pressure - setpoint: positive above the setpoint (the rate goes down), negative with headroom."""
    p_term: float = 0.0
    i_term: float = 0.0
    d_term: float = 0.0
    rate: float = 1.0
    reason: str = ""
    """Why the rate is what it is this tick, for people: 'pi', 'deadband', 'clamp', 'slew', 'no-limit',
    'hold' (after an emergency), 'hold: kernel drops', or 'emergency: <what crossed its line>'."""
    cause: Cause | None = None
    """The same decision as a value: what the pipeline acts on (only :attr:`Cause.EMERGENCY`
    sheds live flows). The controller always sets it; a state built without one (a scripted
    governor) takes it from :attr:`reason` once, here."""
    resource: str = ""
    """Which resource is binding: 'memory', 'cpu', or '' when neither has a limit."""
    measured: float = 0.0
    """This tick's raw (unsmoothed) pressure of the binding resource."""

    def __post_init__(self) -> None:
        if self.cause is None:
            self.cause = cause_of(self.reason)


def cause_of(reason: str) -> Cause:
    """The :class:`Cause` a controller reason text names (its part before ':'); unknown text is PI."""
    head = reason.split(":", 1)[0].strip()
    if reason.startswith(Cause.HOLD_DROPS.value):
        return Cause.HOLD_DROPS
    try:
        return Cause(head)
    except ValueError:
        return Cause.PI


@dataclass
class ResourceStats:
    """What the pressure readers saw (None where the host does not say)."""

    memory_bytes: int = 0
    """Memory working set in bytes (usage - inactive file pages; psutil: process RSS)."""
    memory_limit: int | None = None
    """The smallest memory limit up the cgroup tree, or the --memory-budget, in bytes."""
    cpu_cores: float = 0.0
    """CPU in use, in cores."""
    cpu_limit: float | None = None
    """CPU quota in cores."""
    throttled_periods: int = 0
    oom_events: int = 0
    """OOM counter (v2 memory.events oom + oom_kill, v1 oom_kill); any increase is an emergency."""
    psi_memory_some: float | None = None
    """PSI memory 'some' avg10, percent."""
    psi_memory_full: float | None = None
    """PSI memory 'full' avg10, percent."""
    kernel_drops: int = 0
    """Packets the kernel dropped so far (ring full), filled in by the pipeline for the controller."""
    kernel_received: int = 0
    """Packets the kernel filter passed so far (captured + dropped), filled in with ``kernel_drops``."""
    source: str = ""
    """Where the figures came from: 'memory: cgroup v2 …; cpu: cgroup v1 …; psi: …', psutil noted."""
    memory_usage: int = 0
    """Bytes charged to the cgroup, page cache included (memory.current / usage_in_bytes)."""
    memory_limit_hits: int = 0
    """Times usage hit the limit and reclaim ran (v2 memory.events max, v1 failcnt); not an OOM."""
    throttled_seconds: float = 0.0
    """CPU time throttled by the quota, seconds (a counter)."""
    process_rss: int | None = None
    """The process's own resident set (psutil), for display."""
    psi_memory_full_total: int | None = None
    """PSI memory 'full' total stall, microseconds (a counter: the controller uses its growth)."""
    psi_cpu_some: float | None = None
    """PSI cpu 'some' avg10, percent."""


@dataclass(frozen=True)
class Alert:
    """A threshold crossing or event worth a line in the alerts panel."""

    time: float
    """When: seconds since the capture started (shown as +12.3s), never a wall-clock time."""
    level: AlertLevel
    """An :class:`AlertLevel` ('warn', 'critical' or 'info')."""
    kind: str
    """e.g. 'memory', 'drops', 'oom', 'shed', 'worker-lost', 'worker-restarted'."""
    message: str


@dataclass
class StatsSnapshot:
    """Everything a view needs at one instant; dashboards and NDJSON are pure functions of it."""

    elapsed: float = 0.0
    mode: str = "full"
    profile: str | None = None
    filter: str = ""
    targets: list[str] = field(default_factory=list)
    output: str | None = None
    captured: int = 0
    bytes_captured: int = 0
    received: int = 0
    dropped: int = 0
    duplicates: int = 0
    """Copies removed by ``-i any`` dedup so far."""
    sampled_out: int = 0
    left_out: int | None = None
    """Packets the kernel filter did not pass, from the interface counters (see CaptureSummary)."""
    rate: float = 1.0
    packets_per_second: float = 0.0
    flows_tracked: int = 0
    dissect_memory: int = 0
    workers: list[WorkerStats] = field(default_factory=list)
    controller: ControllerState | None = None
    resources: ResourceStats | None = None
    alerts: list[Alert] = field(default_factory=list)
    top_endpoints: list[tuple[str, int]] = field(default_factory=list)
    rate_history: list[tuple[float, float]] = field(default_factory=list)
    """(elapsed seconds, rate) points, oldest first."""
    memory_history: list[tuple[float, float]] = field(default_factory=list)
    """(elapsed seconds, memory fraction of the limit) points."""

    @property
    def drop_ratio(self) -> float:
        total = self.received
        return self.dropped / total if total else 0.0

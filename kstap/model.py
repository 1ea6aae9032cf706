"""Plain data shared by the stages. Stages exchange these, never each other's objects."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class SourceStats:
    """Counters of one capture source (one socket or one file), tcpdump's three numbers."""

    received: int = 0
    """Packets the kernel filter accepted (tcpdump's "received by filter")."""
    dropped: int = 0
    """Packets the kernel dropped because the ring was full ("dropped by kernel")."""
    delivered: int = 0
    """Packets handed to user space (after the loopback duplicate rule)."""

    def add(self, other: SourceStats) -> None:
        self.received += other.received
        self.dropped += other.dropped
        self.delivered += other.delivered


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


@dataclass
class ControllerState:
    """The auto-mode controller at one tick (all ratios in 0..1)."""

    pressure: float = 0.0
    setpoint: float = 0.7
    error: float = 0.0
    p_term: float = 0.0
    i_term: float = 0.0
    d_term: float = 0.0
    rate: float = 1.0
    reason: str = ""
    """Why the rate last moved: 'pi', 'emergency', 'deadband', 'clamp'."""


@dataclass
class ResourceStats:
    """What the pressure readers saw (None where the host does not say)."""

    memory_bytes: int = 0
    memory_limit: int | None = None
    cpu_fraction: float = 0.0
    """CPU in use, in cores."""
    cpu_limit: float | None = None
    """CPU quota in cores."""
    throttled_periods: int = 0
    oom_events: int = 0
    psi_memory_some: float | None = None
    psi_memory_full: float | None = None
    source: str = ""
    """Where the figures came from: 'cgroup v2 …', 'cgroup v1 …', 'psutil'."""


@dataclass(frozen=True)
class Alert:
    """A threshold crossing or event worth a line in the alerts panel."""

    time: float
    level: str
    """'warn' or 'critical' or 'info'."""
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
    sampled_out: int = 0
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

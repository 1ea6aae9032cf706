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

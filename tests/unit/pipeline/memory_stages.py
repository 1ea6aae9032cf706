"""In-memory stages for the pipeline tests: a source that replays batches it was given and a sink
that keeps what it was handed, each declaring its capabilities like the real ones do."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dpkt

from kstap.contracts import SinkCapabilities, SourceCapabilities
from kstap.model import Interface, PacketRecord, SourceStats

T0 = 1_700_000_000_000_000_000


UdpFrame = Callable[..., bytes]
"""The ``frames`` fixture's ``udp(src, dst, sport, dport, payload)`` (tests/conftest.py)."""


def dns_exchange(udp: UdpFrame, name: str, qid: int, at_ns: int, client_port: int = 40000) -> list[PacketRecord]:
    """A DNS query and its answer (one A record) as captured records, 1 ms apart."""
    query = bytes(dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=1)]))
    answer = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=1)], ns=[], ar=[])
    answer.qr = 1
    answer.an = [dpkt.dns.DNS.RR(name=name, type=1, cls=1, ttl=60, rlen=4, ip=struct.pack("!I", 0x0A000063))]
    frames = [udp("10.0.0.1", "10.0.0.53", client_port, 53, query),
              udp("10.0.0.53", "10.0.0.1", 53, client_port, bytes(answer))]
    return [(at_ns + i * 1_000_000, len(f), len(f), f, 0, 0) for i, f in enumerate(frames)]


def udp_flows(udp: UdpFrame, n: int, at_ns: int, packets_per_flow: int = 3) -> list[PacketRecord]:
    """``n`` UDP flows (distinct client ports), each ``packets_per_flow`` packets, interleaved."""
    out: list[PacketRecord] = []
    for p in range(packets_per_flow):
        for i in range(n):
            f = udp("10.0.1.1", "10.0.1.2", 20000 + i, 9, b"x" * 20)
            out.append((at_ns + (p * n + i) * 1000, len(f), len(f), f, 0, 0))
    return out


@dataclass
class MemorySource:
    """Hands out ``batches`` one per read (then nothing); counts what it handed out."""

    batches: list[list[PacketRecord]]
    capabilities: SourceCapabilities = field(default_factory=SourceCapabilities)
    interfaces: list[Interface] = field(default_factory=lambda: [Interface("mem0")])
    comments: list[dict[int, str]] = field(default_factory=list)
    """Per batch: the comments that came with it (``packet_comments``)."""
    entries: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per batch: the entries that came with it (``dissected_upstream``)."""
    last_comments: dict[int, str] = field(default_factory=dict)
    handed: int = 0
    closed: bool = False
    _entries: list[dict[str, Any]] = field(default_factory=list)

    def read(self, timeout_ms: int) -> list[PacketRecord]:
        i = self.handed
        if i >= len(self.batches):
            self.last_comments = {}
            return []
        self.handed += 1
        self.last_comments = self.comments[i] if i < len(self.comments) else {}
        if i < len(self.entries):
            self._entries.extend(self.entries[i])
        return list(self.batches[i])

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        self.last_comments = {}
        return []

    @property
    def exhausted(self) -> bool:
        return self.handed >= len(self.batches)

    error = None

    def take_entries(self, final: bool = False) -> list[dict[str, Any]]:
        out, self._entries = self._entries, []
        return out

    def stats(self) -> list[SourceStats]:
        n = sum(len(b) for b in self.batches[: self.handed])
        return [SourceStats(received=n, dropped=0, delivered=n)]

    def close(self) -> None:
        self.closed = True


@dataclass
class MemorySink:
    """Keeps every record and comment it is given (a stream's sink: it takes records only)."""

    interfaces: list[Interface]
    comment: str
    records: list[PacketRecord] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    packets_written: int = 0
    bytes_written: int = 0
    capabilities: SinkCapabilities = field(default_factory=SinkCapabilities)
    closed: bool = False

    def write(self, records: Sequence[PacketRecord], comments: Mapping[int, str] | None = None) -> None:
        for i, c in (comments or {}).items():
            self.notes[len(self.records) + i] = c
        self.records.extend(records)
        self.packets_written += len(records)
        self.bytes_written += sum(r[1] for r in records)

    def ensure_interfaces(self, interfaces: Sequence[Interface]) -> None:
        self.interfaces = list(interfaces)

    def tick(self) -> None:
        return None

    def close(self) -> bool:
        self.closed = True
        return True

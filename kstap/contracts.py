"""The declared contracts between the stages and the one module that wires them (:mod:`kstap.pipeline`).

A stage says what it can do through these interfaces, never through which keyword was passed or
an ``isinstance`` check in the capture loop:

- a :class:`Source` declares its :class:`SourceCapabilities` (already sampled upstream, finite,
  yields encoded blocks, swaps its kernel filter live, carries packet comments, knows its
  workers); the loop reads the flags and then uses the matching narrower protocol;
- a :class:`Sink` declares its :class:`SinkCapabilities` (whether anyone waits on its packets);
- what happens during a run reaches whoever runs it as typed events (:class:`RateChanged`,
  :class:`AlertRaised`) through a :class:`Reporter`; their wire form (the worker protocol, NDJSON)
  is made by ``wire()`` and read back by :func:`parse_event`;
- the closed vocabularies (:class:`Mode`, :class:`AlertLevel`, :class:`Cause`) are StrEnums.

This module sits just above :mod:`kstap.model` and :mod:`kstap.vocabulary`: every stage may
import it, it imports no stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from kstap.model import (
    Alert,
    ControllerState,
    Interface,
    InterfaceEvent,
    PacketRecord,
    ResourceStats,
    SourceStats,
    StatsSnapshot,
    WorkerStats,
    cause_of,
)
from kstap.vocabulary import AlertLevel, Cause, Mode

if TYPE_CHECKING:  # only named in annotations: importing the filter compiler costs `kstap --help` 0.15 s
    from kstap.filters.bpf import Program

EpbChunk = bytes | memoryview
"""EPB bytes from the C encoders: a view of the ring's output buffer, valid until its next read
(:meth:`BlockSource.read_encoded`), or bytes."""

__all__ = [
    "AlertLevel",
    "AlertRaised",
    "BlockSink",
    "BlockSource",
    "Cause",
    "CommentSource",
    "ControlRequest",
    "EntrySource",
    "EpbChunk",
    "Event",
    "FilterSource",
    "FiniteSource",
    "FirstPacketNotes",
    "FlowDecisions",
    "Governor",
    "LinkEventSource",
    "LiveControl",
    "Mode",
    "PressureReaderLike",
    "RateChanged",
    "Reporter",
    "Sink",
    "SinkCapabilities",
    "SinkFactory",
    "Source",
    "SourceCapabilities",
    "WorkerStatsSource",
    "parse_event",
    "relay",
]


# -- sources -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceCapabilities:
    """What a :class:`Source` can do beyond ``read``/``drain``/``stats``/``close``."""

    sampled_upstream: bool = False
    """Its flows were sampled before they got here (remote workers): no sampler, no governor here."""
    finite: bool = False
    """A file: read once before the sink opens (its header names the interfaces), ends by itself
    (:attr:`FiniteSource.exhausted`), has no kernel counters, no resources worth watching, and no
    wall clock for idle eviction (see :class:`FiniteSource`)."""
    encoded_blocks: bool = False
    """Hands over whole pcapng-encoded blocks (the C fast path, see :class:`BlockSource`)."""
    sampled_blocks: bool = False
    """Its block encoder also comments each flow's first packet when the kernel did the sampling
    (percentage mode), given a first-packet table."""
    dissect_split: bool = False
    """Its block encoder also hands over, as records, the packets a dissector would take (``wanted``
    of :meth:`BlockSource.read_encoded`), so ``--entries`` keeps the encoded path; without it the
    loop reads records when it dissects."""
    live_filter: bool = False
    """Swaps its kernel filter while running (a new rate ceiling or ``POST /v1/control``; see
    :class:`FilterSource`)."""
    packet_comments: bool = False
    """Carries packet comments written upstream (see :class:`CommentSource`)."""
    worker_stats: bool = False
    """Knows its workers' figures itself (see :class:`WorkerStatsSource`)."""
    dissected_upstream: bool = False
    """Its flows were dissected upstream (remote workers with ``--entries``): the loop does not
    dissect them again, it writes the entries the source brings (see :class:`EntrySource`)."""
    interface_events: bool = False
    """Reports interfaces that appear and vanish while it captures (see :class:`LinkEventSource`)."""


class Source(Protocol):
    """Where packets come from: a socket, a fanout of worker processes, a file, remote workers."""

    @property
    def capabilities(self) -> SourceCapabilities: ...
    @property
    def interfaces(self) -> list[Interface]: ...

    def read(self, timeout_ms: int) -> list[PacketRecord]:
        """Packets in time order, waiting up to ``timeout_ms`` when none is ready."""
    def drain(self, retire_ms: int) -> list[PacketRecord]:
        """At a stop: what is still in flight (partly filled blocks, a merge's hold)."""
    def stats(self) -> list[SourceStats]:
        """Counters parallel to :attr:`interfaces`."""
    def close(self) -> None: ...


class BlockSource(Source, Protocol):
    """``encoded_blocks``: one ring whose ready blocks the C encoder turns into EPB bytes."""

    def read_encoded(self, timeout_ms: int, max_packets: int, seen: FirstPacketNotes | None = None,
                     wanted: list[PacketRecord] | None = None) -> tuple[list[EpbChunk], int, int]:
        """(EPB chunks, packets, bytes); ``seen``: the first-packet table (percentage mode, the kernel
        flow table); ``wanted``: filled with the packets a dissector takes (--entries). The chunks
        are to be written before the next call, which writes the same buffer again."""
    def wake_on(self, fd: int) -> None:
        """Also end a wait when ``fd`` turns readable (the stop flag's pipe)."""


class FirstPacketNotes(Protocol):
    """``sampled_blocks``: the table the C encoder keeps of flows it has commented
    (:class:`kstap.capture.flowtable.FirstPacketTable`)."""

    table: bytearray
    """The C table; an encoder that grows it hands back the bigger one, which replaces it."""
    seed: int
    suffix: bytes
    """What follows ``id=HASH `` in a first-packet comment."""
    flows_seen: int
    flows_shed: int
    shed_threshold: int
    """After an emergency shed in the kernel flow table: flows at or above it get a ``shed`` mark."""
    shed_ns: int
    shed_suffix: bytes
    packets_keyed: int
    """Packets the encoder keyed (the others were past the lookup bound: no flow's first packet)."""
    keys_cut: int
    """Keyed packets whose flow key needed bytes past the snaplen: the kernel's may differ."""

    def lookup_bound(self) -> int:
        """Read after the blocks are seen ready, before they are encoded: packets stamped later
        (realtime ns) are no flow's first packet and need no lookup; ``NO_BOUND`` looks all up."""
        ...


class FlowDecisions(Protocol):
    """The in-kernel flow table as the first-packet table asks it (CLOCK_MONOTONIC ns;
    :class:`kstap.sampling.kernel_table.KernelFlowTable`)."""

    idle_timeout_ns: int

    def newest_kept_ns(self) -> int | None:
        """When the kernel last decided to keep a new flow (0: never; None: it cannot say)."""
        ...
    def last_seen_ns(self, flow_hash: int) -> int | None:
        """When the kernel last saw a packet of the flow of this hash (None: not in its table)."""
        ...


class FiniteSource(Source, Protocol):
    """``finite``: a capture file."""

    @property
    def exhausted(self) -> bool: ...
    @property
    def error(self) -> Any:
        """The damage that ended the read early (a ``CaptureFormatError`` with ``packets_ok``), or None."""


class FilterSource(Source, Protocol):
    """``live_filter``: the kernel filter can be swapped atomically while capturing."""

    def set_filter(self, program: Program) -> None: ...


class CommentSource(Source, Protocol):
    """``packet_comments``: packet comments written upstream come with the records."""

    @property
    def last_comments(self) -> dict[int, str]:
        """Comments of the records the last :meth:`read` or :meth:`drain` returned, keyed by their
        index in that list. Whoever cuts or filters the list re-keys them (see
        :func:`kstap.pipeline.loop.kept`)."""


class EntrySource(Source, Protocol):
    """``dissected_upstream``: entries (NDJSON objects) that came with the packets."""

    def take_entries(self, final: bool = False) -> list[dict[str, Any]]:
        """The entries received since the last call, oldest first (``final``: the capture is over, nothing
        is held back any more)."""


class LinkEventSource(Source, Protocol):
    """``interface_events``: interfaces that appeared or vanished since the last call (pod veths
    on ``-i any``, a named interface that went away)."""

    def take_events(self) -> list[InterfaceEvent]: ...


class WorkerStatsSource(Source, Protocol):
    """``worker_stats``: per-worker figures for the dashboard."""

    def worker_stats(self) -> list[WorkerStats]: ...


# -- sinks -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SinkCapabilities:
    """What a :class:`Sink` tells the loop about who reads what it writes."""

    patient: bool = False
    """Only a file waits for the packets (no pipe, stream or worker reader whose merge needs the
    time to move on): the loop may sleep until a block, the next tick or a stop."""
    encoded_blocks: bool = False
    """Takes pcapng EPBs as the C encoder made them (:class:`BlockSink`); without it the loop
    hands it records."""


class Sink(Protocol):
    """Where kept packets go: :class:`kstap.sinks.files.PcapngFiles`, or a worker's
    :class:`kstap.remote.hub.StreamSink`."""

    files: list[str]
    packets_written: int
    bytes_written: int

    @property
    def capabilities(self) -> SinkCapabilities: ...

    def write(self, records: Sequence[PacketRecord], comments: Mapping[int, str] | None = None) -> None: ...
    def ensure_interfaces(self, interfaces: Sequence[Interface]) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> bool: ...


class BlockSink(Sink, Protocol):
    """``encoded_blocks``: writes EPB bytes from the C encoder as they are."""

    def write_encoded(self, chunks: list[EpbChunk], packets: int, if_id: int = 0) -> None: ...


SinkFactory = Callable[[list[Interface], str, Callable[[], list[Any]]], Sink]
"""(interfaces, SHB comment, interface counters) → the sink, instead of the -w file (a worker's stream)."""


# -- events ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RateChanged:
    """The sampling rate moved (the controller, a control request; or a worker's, relayed)."""

    KIND: ClassVar[str] = "rate_change"
    old: float
    new: float
    cause: Cause
    reason: str = ""
    """The controller's text (or the cause's value when there is no more to say)."""
    pressure: float | None = None
    worker: int | None = None
    """The remote worker whose rate it is (a cluster run), else None (this process's)."""
    node: str | None = None

    def wire(self) -> dict[str, object]:
        """The fields as the worker protocol carries them (and the NDJSON ``rate_change`` event)."""
        out: dict[str, object] = {"old": self.old, "new": self.new, "reason": self.reason, "pressure": self.pressure}
        if self.worker is not None:
            out["worker"] = self.worker
        if self.node is not None:
            out["node"] = self.node
        return out


@dataclass(frozen=True)
class AlertRaised:
    """A threshold was crossed or something happened worth a line in the alerts panel."""

    KIND: ClassVar[str] = "alert"
    level: AlertLevel
    kind: str
    """What it is about: 'memory', 'drops', 'oom', 'shed', 'worker-lost', …"""
    message: str

    @classmethod
    def of(cls, alert: Alert) -> AlertRaised:
        return cls(alert.level, alert.kind, alert.message)

    def wire(self) -> dict[str, object]:
        return {"level": self.level.value, "kind": self.kind, "message": self.message}


Event = RateChanged | AlertRaised


def parse_event(kind: str, data: Mapping[str, object]) -> Event | None:
    """An event in its wire form (a worker's stream, a relayed callback) as a typed event; None for
    a kind that is not an event or fields that make no sense (an unknown alert level is WARN)."""
    if kind == RateChanged.KIND:
        old, new = _number(data.get("old")), _number(data.get("new"))
        if old is None or new is None:
            return None
        reason = str(data.get("reason") or "")
        worker, node = data.get("worker"), data.get("node")
        return RateChanged(old, new, cause_of(reason), reason, _number(data.get("pressure")),
                           worker if isinstance(worker, int) and not isinstance(worker, bool) else None,
                           str(node) if node is not None else None)
    if kind == AlertRaised.KIND:
        return AlertRaised(AlertLevel.parse(data.get("level")), str(data.get("kind") or "alert"),
                           str(data.get("message") or ""))
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Reporter(Protocol):
    """What the pipeline tells whoever runs it. The CLI renders it; tests record it."""

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        """Capture is armed: every later packet will be seen."""

    def progress(self, snapshot: StatsSnapshot) -> None:
        """About once a second while capturing."""

    def event(self, event: Event) -> None:
        """Something happened: a :class:`RateChanged` or an :class:`AlertRaised`."""

    def warning(self, message: str) -> None:
        """A problem that does not stop the capture."""


def relay(reporter: Reporter) -> Callable[[str, dict[str, object]], None]:
    """A wire-form event callback (``RemoteSource(on_event=...)``) that hands typed events to ``reporter``."""

    def on_event(kind: str, data: dict[str, object]) -> None:
        event = parse_event(kind, data)
        if event is not None:
            reporter.event(event)

    return on_event


# -- steering ----------------------------------------------------------------------------------------
class ControlRequest(Protocol):
    @property
    def rate(self) -> float | None: ...
    @property
    def filter(self) -> str | None: ...


class LiveControl(Protocol):
    """Rate/filter requests from outside the loop (a worker's API), applied once a tick."""

    def take(self) -> ControlRequest | None: ...
    def done(self, request: Any, error: str | None = None) -> None: ...


class PressureReaderLike(Protocol):
    def read(self) -> ResourceStats: ...


class Governor(Protocol):
    """Auto mode's rate source: reads pressure and runs the controller once per call (~1 Hz)."""

    def update(self, kernel_drops: int = 0, kernel_received: int = 0) -> tuple[ResourceStats, ControllerState]: ...

"""The capture loop: read the source, deliver to the sink and consumers, tick once a second, finish.

It is handed assembled stages (:class:`Stages`, from :mod:`kstap.pipeline.assembly`) and asks
them what they can do through their declared capabilities, never what class they are.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from kstap.capture.fanout import WorkerLost
from kstap.capture.ifcounters import InterfaceCounters, left_out
from kstap.config import TapSettings
from kstap.contracts import (
    BlockSink,
    BlockSource,
    CommentSource,
    EntrySource,
    EpbChunk,
    FiniteSource,
    LinkEventSource,
    Reporter,
    Sink,
    Source,
)
from kstap.dissect.entries import EntryWriter
from kstap.dissect.stage import DissectStage
from kstap.errors import KstapError, OutputFailed, WorkerFailure
from kstap.formats import pcapng
from kstap.model import CaptureSummary, Interface, PacketRecord, StatsSnapshot
from kstap.pipeline.resources import ResourceWatch
from kstap.pipeline.snapshots import snapshot
from kstap.pipeline.steering import Steering
from kstap.pipeline.stopping import StopFlag
from kstap.pipeline.tick_schedule import TickSchedule
from kstap.sampling.flowkey import KeyTuple
from kstap.sinks.files import DiskFull, OutputClosed
from kstap.sinks.text import TextLines
from kstap.vocabulary import AlertLevel, Mode

RATE_WINDOW = 5.0
"""Seconds over which packets/s is measured (the dashboard, status lines, Prometheus)."""
POLL_MS = 250
"""The C fast paths wait this long for a block when the stop flag cannot wake them: signals only set
a flag (poll is resumed, PEP 475), so this bounds how late Ctrl-C is noticed."""


@dataclass
class Consumers:
    """What reads the kept packets besides the sink: packet lines, the dissector and its entries."""

    text: TextLines | None = None
    dissect: DissectStage | None = None
    entries: EntryWriter | None = None
    endpoints: Counter[str] = field(default_factory=Counter)
    """L7 endpoints seen in entries, for the dashboard's top list."""
    upstream: bool = False
    """The entries come from the source (dissected upstream), not from :attr:`dissect`."""

    def emit(self, entry: Mapping[str, object]) -> None:
        """One entry (its NDJSON object) to the writer and the endpoint counts."""
        assert self.entries is not None
        self.entries.write_json(entry)
        self.endpoints[endpoint_label(entry)] += 1


def endpoint_label(entry: Mapping[str, object]) -> str:
    """How the dashboard names an L7 endpoint: 'GET /api' @ server, or a DNS name."""
    if entry.get("protocol") == "dns":
        return f"dns {entry.get('query_name') or '?'}"
    target = str(entry.get("path") or "/")
    if "?" in target:
        target = target.split("?", 1)[0]
    return f"{entry.get('method') or '?'} {target} @ {entry.get('authority') or entry.get('server')}"


@dataclass
class Stages:
    """Everything the loop runs, put together by :mod:`kstap.pipeline.assembly`."""

    source: Source
    backend: str
    steering: Steering
    watch: ResourceWatch
    open_sink: Callable[[list[Interface]], Sink | None]
    """Opened once the source's interfaces are known; raises OutputClosed if the reader left."""
    open_consumers: Callable[[list[Interface], bool], Consumers]
    """(interfaces, a sink is open) → the consumers."""
    retire_ms: int = 0
    """The source's block-retire time: how long a drain at a stop waits."""
    interface_changes: list[str] = field(default_factory=list)
    """Interfaces that appeared or vanished so far (the loop appends; the sink's ISB comment reads it)."""


class Capture:
    """One capture in progress: the loop, the once-a-second work, the accounting."""

    def __init__(self, settings: TapSettings, stages: Stages, reporter: Reporter, stop: StopFlag,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.source = stages.source
        self.caps = stages.source.capabilities
        self.stages = stages
        self.steering = stages.steering
        self.watch = stages.watch
        self.reporter = reporter
        self.stop = stop
        self.clock = clock
        self.summary = CaptureSummary()
        if settings.workers > 1 and not self.caps.finite:
            self.summary.per_worker = dict.fromkeys(range(settings.workers), 0)  # idle workers show as 0
        self.sink: Sink | None = None
        self.consumers = Consumers()
        self.start = clock()
        self.worker_losses: list[str] = []
        self.link_notes: list[tuple[int, str]] = []
        """Interface changes not yet written as a packet comment: (time ns, text)."""
        self.recent: deque[tuple[float, int]] = deque([(0.0, 0)])
        """(elapsed, captured) of the last ticks, for the recent packet rate."""
        self.late_error: KstapError | None = None
        self.counters = InterfaceCounters([])
        """An output that failed while the capture was being closed (e.g. the entries' last flush)."""
        self.steering.on_shed = self._shed

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> CaptureSummary:
        settings, source, summary, caps = self.settings, self.source, self.summary, self.caps
        steering = self.steering
        first: list[PacketRecord] = source.read(0) if caps.finite else []
        notes = self._notes()
        interfaces = source.interfaces
        if steering.sampler is not None:
            steering.sampler.linktypes = [i.linktype for i in interfaces]
        try:
            self.sink = self.stages.open_sink(interfaces)
        except OutputClosed:  # the reader of -w - left before the first byte: stop quietly
            summary.stopped_by = "output-closed"
            return summary
        if steering.governor is None and not caps.finite:
            self.watch.read(0.0)  # the reader's imports and first read now, not in the capture's first second
        live = not caps.finite and not caps.sampled_upstream
        self.counters = InterfaceCounters([i.name for i in interfaces] if live else [], settings.netns)
        self.counters.start()
        self.stop.capturing = True  # from here a signal stops the loop, which closes the files
        self.reporter.listening(interfaces, self.stages.backend, settings.workers)
        self.start = self.watch.started = self.clock()
        error: KstapError | None = None
        limit = settings.count if settings.count is not None else 1 << 62
        self.consumers = self.stages.open_consumers(interfaces, self.sink is not None)
        takes_blocks = self.sink is None or self.sink.capabilities.encoded_blocks
        encodable = caps.encoded_blocks and takes_blocks and self.consumers.text is None and (
            self.consumers.dissect is None or caps.dissect_split)
        plain = encodable and self.consumers.dissect is None
        fast = plain and steering.sampler is None
        decided_upstream = steering.sampler is not None and (
            steering.kernel is not None or steering.sampler.mode == Mode.PERCENTAGE)
        # --entries: C writes every packet to the file and hands Python only what a dissector takes
        wanted: list[PacketRecord] | None = [] if encodable and self.consumers.dissect is not None and (
            steering.sampler is None or (decided_upstream and caps.sampled_blocks)) else None
        blocks = cast(BlockSource, source)
        # Only a file is waiting (no stream, pipe or worker reader whose merge needs the time to
        # move on): wait for a block, the next tick, the end of --duration or a stop, whichever
        # comes first, instead of waking every POLL_MS.
        woken = False
        if plain and self.sink is not None and self.sink.capabilities.patient:
            blocks.wake_on(self.stop.wakeup_fd())
            woken = True
        schedule = TickSchedule(self.start, coalesce=woken)
        if encodable and caps.sampled_blocks and decided_upstream:
            steering.use_seen_flows()  # the kernel did the sampling; C comments each flow's first packet
        try:
            batch = first
            packets = bool(first)
            while True:
                if batch:
                    self._deliver(batch, limit, notes)
                if summary.captured >= limit:
                    summary.stopped_by = "count"
                    break
                if self.stop:
                    summary.stopped_by = "signal"
                    break
                now = self.clock()
                if settings.duration is not None and now - self.start >= settings.duration:
                    summary.stopped_by = "duration"
                    break
                if caps.finite and cast(FiniteSource, source).exhausted:
                    summary.stopped_by = "end"
                    break
                if schedule.tick_now(now, packets):
                    self._tick(now)
                if fast or steering.seen is not None or wanted is not None:
                    wait = schedule.wait(now)
                    if settings.duration is not None:
                        wait = min(wait, self.start + settings.duration - now)
                    wait_ms = max(1, int(wait * 1000) + 1) if woken else POLL_MS
                    try:
                        # no name holds the chunks: they are views of a buffer the next read writes again
                        packets = self._deliver_encoded(*blocks.read_encoded(
                            wait_ms, limit - summary.captured, steering.seen, wanted)) > 0
                        if wanted:
                            self._dissect(wanted)
                            wanted.clear()
                    finally:
                        self._link_changes()
                    batch = []
                    continue
                try:
                    batch = source.read(100)
                    packets = bool(batch)
                except WorkerLost as lost:  # the others go on; a restarted one rejoins the fanout group
                    batch = []
                    self._worker_lost(lost)
                    continue
                finally:
                    self._link_changes()
                notes = self._notes()
                if self.sink is not None and not batch:
                    self.sink.tick()
            if summary.stopped_by in ("signal", "duration") and not caps.finite:
                # the last partly filled block holds packets from before the stop; what arrives
                # while it is being handed over is after the stop and stays out
                stop_ns = time.time_ns()
                drained = source.drain(self.stages.retire_ms)
                batch, notes = kept(drained, self._notes(), lambda r: r[0] <= stop_ns)
                self._deliver(batch, limit, notes)
        except DiskFull as exc:
            summary.stopped_by = "disk-full"
            error = exc
        except OutputClosed:
            summary.stopped_by = "output-closed"
        except KstapError as exc:
            summary.stopped_by = "error"
            error = exc
        finally:
            self._finish()
        return self._result(error)

    def _link_changes(self) -> None:
        """Interfaces that appeared or vanished: an alert (dashboard, NDJSON, the worker's stream)
        and a comment on the first packet written after it. The capture goes on."""
        if not self.caps.interface_events:
            return
        for event in cast(LinkEventSource, self.source).take_events():
            text = event.describe()
            self.link_notes.append((event.time_ns, f"kstap: {text}"))
            self.stages.interface_changes.append(text)
            self.watch.alert(AlertLevel.INFO, "interface", text)

    def _place_link_notes(self, batch: list[PacketRecord], notes: dict[int, str] | None) -> dict[int, str]:
        """Each pending interface change as a comment on the first packet stamped at or after it."""
        out = dict(notes or {})
        left: list[tuple[int, str]] = []
        placed: dict[int, list[str]] = {}
        for when, text in self.link_notes:
            i = bisect.bisect_left(batch, when, key=lambda r: r[0])
            if i == len(batch):
                left.append((when, text))
            else:
                placed.setdefault(i, []).append(text)
        for i, texts in placed.items():
            out[i] = "; ".join(texts + ([out[i]] if i in out else []))
        self.link_notes = left
        return out

    def _upstream_entries(self, final: bool = False) -> None:
        """Write the entries the source brought (dissected upstream) since the last call."""
        c = self.consumers
        if c.upstream and c.entries is not None:
            for entry in cast(EntrySource, self.source).take_entries(final):
                c.emit(entry)
            c.entries.flush()

    def _notes(self) -> dict[int, str] | None:
        """Comments that came with the records just read (written upstream: remote workers)."""
        return cast(CommentSource, self.source).last_comments if self.caps.packet_comments else None

    def _deliver(self, batch: list[PacketRecord], limit: int, notes: dict[int, str] | None = None) -> None:
        sampler = self.steering.sampler
        if sampler is not None and batch:
            before = sampler.stats.sampled_out
            batch, notes = sampler.admit(batch)
            self.summary.sampled_out += sampler.stats.sampled_out - before
        room = limit - self.summary.captured
        if len(batch) > room:
            batch = batch[:room]
            notes = {i: c for i, c in notes.items() if i < room} if notes else notes
        if not batch:
            return
        if self.link_notes:
            notes = self._place_link_notes(batch, notes)
        if self.sink is not None:
            self.sink.ensure_interfaces(self.source.interfaces)  # a replayed file may describe more
            self.sink.write(batch, notes)
        c = self.consumers
        if c.text is not None:
            c.text.write(batch)
        self._dissect(batch)
        self._upstream_entries()
        summary = self.summary
        summary.captured += len(batch)
        per = summary.per_worker
        for rec in batch:
            summary.bytes_captured += rec[1]
            per[rec[5]] = per.get(rec[5], 0) + 1

    def _dissect(self, batch: list[PacketRecord]) -> None:
        c = self.consumers
        if c.dissect is not None and c.entries is not None:
            c.dissect.feed(batch, [i.linktype for i in self.source.interfaces])
            c.entries.flush()

    def _deliver_encoded(self, chunks: list[EpbChunk], packets: int, nbytes: int) -> int:
        if self.link_notes and packets:  # an interface came or went: its comment, as _place_link_notes
            self.link_notes = [(when, text) for when, text in self.link_notes
                               if not pcapng.comment_first_at(chunks, when, text)]
        if self.sink is not None:
            cast(BlockSink, self.sink).write_encoded(chunks, packets)
        self.summary.captured += packets
        self.summary.bytes_captured += nbytes
        self.summary.per_worker[0] = self.summary.per_worker.get(0, 0) + packets
        return packets

    def _shed(self, flows: list[KeyTuple]) -> None:
        if self.consumers.dissect is not None:
            self.consumers.dissect.drop(flows)

    # -- once a second -------------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        self.steering.apply_control()
        fill_counts(self.summary, self.source)  # once a tick: the controller and the views share them
        self.summary.left_out = left_out(self.counters.since_start(), self.summary.received)
        elapsed = now - self.start
        self.steering.tick(elapsed, self.summary)
        finite = self.caps.finite
        watch = self.watch
        if self.steering.governor is None and not finite and (
                watch.budgeted or watch.resources is None or int(elapsed) % 5 == 0):
            watch.read(elapsed)  # without a controller or budget, every 5 s is enough
        if self.consumers.dissect is not None and not finite:
            self.consumers.dissect.tick(time.time_ns())
        self._upstream_entries()
        watch.check(self.summary.dropped)
        self.reporter.progress(self.snapshot(elapsed))

    def _worker_lost(self, lost: WorkerLost) -> None:
        """A fanout worker died or hung: alert, carry on with the others (and its replacement, if
        one was started), and end the run with exit 4 so scripts know the capture has a hole."""
        self.worker_losses.append(lost.message)
        self.watch.alert(AlertLevel.CRITICAL, "worker-restarted" if lost.restarted else "worker-lost", lost.message)

    def snapshot(self, elapsed: float) -> StatsSnapshot:
        dissect = self.consumers.dissect
        return snapshot(elapsed, self.settings, self.summary, self.source, self.steering, self.watch,
                        dissect.memory if dissect else 0, self.consumers.endpoints, self._recent_rate(elapsed))

    def _recent_rate(self, elapsed: float) -> float:
        """Captured packets per second over the last :data:`RATE_WINDOW` seconds (not since the start:
        when traffic stops, the figure falls to 0 within that window)."""
        recent = self.recent
        recent.append((elapsed, self.summary.captured))
        while len(recent) > 2 and recent[-1][0] - recent[1][0] >= RATE_WINDOW:
            recent.popleft()
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        if t1 - t0 <= 0:
            return n1 / t1 if t1 > 0 else 0.0
        return (n1 - n0) / (t1 - t0)

    # -- the end -------------------------------------------------------------------------------------
    def _finish(self) -> None:
        summary = self.summary
        with contextlib.suppress(KstapError, OSError):
            self._link_changes()  # what the watch saw during the drain
        fill_counts(summary, self.source)
        summary.interface_changes = list(self.stages.interface_changes)
        summary.left_out = left_out(self.counters.since_start(), summary.received)
        self.counters.close()
        c = self.consumers
        if c.dissect is not None and c.entries is not None:
            try:  # entries failing at the end must not keep the capture file from its statistics block
                c.dissect.close()
                c.entries.close()
            except KstapError as exc:
                self.late_error = exc
            except OutputClosed:
                pass
            stats = c.dissect.stats()
            summary.entries = stats.entries
            summary.dissect_evictions = dict(stats.evictions)
        elif c.upstream and c.entries is not None:
            self._upstream_entries(final=True)
            c.entries.close()
            summary.entries = c.entries.count
        if self.sink is not None:
            if not self.sink.close():
                summary.warnings.append("no room left for the statistics block; packets are intact")
            summary.files = list(self.sink.files)
            summary.captured = self.sink.packets_written
        steering = self.steering
        if steering.kernel is not None:  # the kernel decided every flow; what it dropped never came up
            ks = steering.kernel.stats()
            summary.flows_seen, summary.flows_kept = ks.flows_kept + ks.flows_dropped, ks.flows_kept
            summary.shed_flows, summary.sampled_out = ks.flows_shed, ks.packets_dropped
            summary.final_rate = steering.rate
        elif steering.seen is not None:  # the kernel sampled: only kept flows were ever seen
            summary.flows_seen = summary.flows_kept = steering.seen.flows_seen
            summary.final_rate = steering.rate
            summary.flows_estimated = summary.flows_kept / steering.rate if steering.rate > 0 else None
        elif steering.sampler is not None:
            st = steering.sampler.stats
            summary.flows_seen, summary.flows_kept, summary.shed_flows = st.flows_seen, st.flows_kept, st.shed_flows
            summary.final_rate = steering.sampler.rate
            summary.flows_estimated = st.flows_estimated
        if self.caps.finite:  # no kernel counters: what passed is what was processed
            summary.received, summary.dropped = summary.captured + summary.sampled_out, 0

    def _result(self, error: KstapError | None) -> CaptureSummary:
        summary = self.summary
        damage = cast(FiniteSource, self.source).error if self.caps.finite else None
        if damage is not None:
            summary.warnings.append(str(damage))
            self.reporter.warning(f"{damage}; kept the {damage.packets_ok} valid packets before it")
            if error is None:
                error = KstapError(f"--read stopped early: {damage}",
                                   hint=f"the {summary.captured} packets before the damage were processed")
        if error is None and self.worker_losses:
            error = WorkerFailure(f"{len(self.worker_losses)} capture worker loss(es) during the capture: "
                                  + "; ".join(self.worker_losses),
                                  hint="the packets in a lost worker's ring were lost; everything delivered is "
                                       "in the file")
        if error is None:
            error = self.late_error
        if error is None:
            return summary
        if isinstance(error, DiskFull):
            saved = summary.files[-1] if summary.files else "?"
            on_disk = _bytes_on_disk(summary.files)
            where = saved if len(summary.files) <= 1 else f"{len(summary.files)} files, the newest {saved}"
            error = DiskFull(f"disk full: capture stopped after {summary.captured} packets "
                             f"({on_disk if on_disk is not None else 0} bytes saved in {where})", hint=error.hint)
        elif isinstance(error, OutputFailed) and summary.files and summary.files != ["-"]:
            closed = ", ".join(summary.files[-1:])
            error = OutputFailed(error.message, hint=f"{error.hint}; the capture stopped and {closed} was closed "
                                                     "cleanly, with its statistics block")
        error.summary = summary
        raise error


def _bytes_on_disk(files: list[str]) -> int | None:
    """What the capture files still on disk hold (a -W ring deleted the older ones)."""
    try:
        return sum(os.path.getsize(f) for f in files if f != "-" and os.path.exists(f))
    except OSError:
        return None


def fill_counts(summary: CaptureSummary, source: Source) -> None:
    stats = source.stats()
    summary.received = sum(s.received for s in stats)
    summary.dropped = sum(s.dropped for s in stats)
    summary.duplicates = sum(s.duplicates for s in stats)
    summary.per_interface = {i.name: s for i, s in zip(source.interfaces, stats, strict=False)}


def kept(records: list[PacketRecord], notes: dict[int, str] | None,
         keep: Callable[[PacketRecord], bool]) -> tuple[list[PacketRecord], dict[int, str] | None]:
    """The records ``keep`` accepts, with their comments re-keyed to their new positions."""
    out: list[PacketRecord] = []
    moved: dict[int, str] = {}
    for i, rec in enumerate(records):
        if keep(rec):
            if notes and i in notes:
                moved[len(out)] = notes[i]
            out.append(rec)
    return out, (moved if notes is not None else None)

"""The one place that wires the stages: source → (count/duration/signal control) → pcapng sink.

Stages never import each other; this module does. It reports through a :class:`Reporter` the CLI
supplies, so no stage writes to the terminal.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, TextIO

from kstap.capture import backends, netns
from kstap.capture.afpacket import AfPacketSource, encode_block_sampled
from kstap.capture.fanout import WorkerLost
from kstap.capture.pcap_live import compile_for_live, needs_live_compile
from kstap.capture.replay import ReplaySource
from kstap.config import TapSettings
from kstap.dissect.api import Entry
from kstap.dissect.entries import EntryWriter
from kstap.dissect.stage import DEFAULT_IDLE_TIMEOUT, DissectStage, default_flow_cap
from kstap.errors import Interrupted, KstapError, WorkerFailure
from kstap.filters.bpf import LINKTYPE_LINUX_SLL2, Program, compile_filter, final_expression, for_cooked_socket
from kstap.model import (
    Alert,
    CaptureSummary,
    ControllerState,
    Interface,
    PacketRecord,
    ResourceStats,
    SourceStats,
    StatsSnapshot,
    WorkerStats,
)
from kstap.sampling import metadata
from kstap.sampling.flowhash import FULL, seed_id, splice_threshold
from kstap.sampling.sampler import FlowSampler
from kstap.sampling.seen import SeenFlows
from kstap.sinks import pcapng
from kstap.sinks.files import DiskFull, OutputClosed, PcapngFiles, check_writable
from kstap.sinks.text import TextLines

LINKTYPE_NAMES = {1: "EN10MB (Ethernet)", 101: "RAW (Raw IP)", 113: "LINUX_SLL (Linux cooked v1)",
                  276: "LINUX_SLL2 (Linux cooked v2)", 0: "NULL (BSD loopback)"}


class Reporter(Protocol):
    """What the pipeline tells whoever runs it. The CLI renders it; tests record it."""

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        """Capture is armed: every later packet will be seen."""

    def progress(self, snapshot: StatsSnapshot) -> None:
        """About once a second while capturing."""

    def event(self, kind: str, data: dict[str, object]) -> None:
        """Something happened: ``rate_change`` (old, new, reason), ``alert`` (an Alert's fields)."""

    def warning(self, message: str) -> None:
        """A problem that does not stop the capture."""


class RecordSink(Protocol):
    """Where kept packets go: :class:`PcapngFiles`, or a worker's :class:`kstap.remote.hub.StreamSink`."""

    files: list[str]
    packets_written: int
    bytes_written: int

    def write(self, records: Sequence[PacketRecord], comments: Mapping[int, str] | None = None) -> None: ...
    def write_encoded(self, chunks: list[bytes], packets: int, if_id: int = 0) -> None: ...
    def ensure_interfaces(self, interfaces: Sequence[Interface]) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> bool: ...


SinkFactory = Callable[[list[Interface], str, Callable[[], list[pcapng.InterfaceCounters]]], RecordSink]
"""(interfaces, SHB comment, interface counters) → the sink, instead of the -w file (a worker's stream)."""


class ControlRequest(Protocol):
    @property
    def rate(self) -> float | None: ...
    @property
    def filter(self) -> str | None: ...


class LiveControl(Protocol):
    """Rate/filter requests from outside the loop (a worker's API), applied once a tick."""

    def take(self) -> ControlRequest | None: ...
    def done(self, request: Any, error: str | None = None) -> None: ...


class _Source(Protocol):
    @property
    def interfaces(self) -> list[Interface]: ...

    def read(self, timeout_ms: int) -> list[PacketRecord]: ...
    def drain(self, retire_ms: int) -> list[PacketRecord]: ...
    def stats(self) -> list[SourceStats]: ...
    def close(self) -> None: ...


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM (or a test, or the dashboard's 'q').

    :meth:`wakeup_fd` gives a descriptor that turns readable when the flag is set, so the capture
    loop can wait for packets, the next tick and a stop at once, with no idle wake-ups in between.
    """

    signum: int = 0
    _pipe: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum
        if self._pipe is not None:
            with contextlib.suppress(OSError):  # full (already readable) or closed: nothing more to say
                os.write(self._pipe[1], b"!")

    def wakeup_fd(self) -> int:
        """The read end of a pipe written to by :meth:`set` (made on first use, then kept)."""
        if self._pipe is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._pipe = (r, w)
            if self.signum:
                os.write(w, b"!")
        return self._pipe[0]

    def __bool__(self) -> bool:
        return self.signum != 0


class _Signals:
    """Turn SIGINT/SIGTERM/SIGHUP into a flag for the capture loop (main thread only)."""

    def __init__(self, stop: StopFlag) -> None:
        self.stop = stop
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set(signum)

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]


class _ReplayAdapter:
    def __init__(self, src: ReplaySource) -> None:
        self.src = src

    @property
    def interfaces(self) -> list[Interface]:
        return self.src.interfaces

    def read(self, timeout_ms: int) -> list[PacketRecord]:
        return self.src.read(timeout_ms)

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        return []

    def stats(self) -> list[SourceStats]:
        return self.src.stats()

    def close(self) -> None:
        self.src.close()


def run_tap(settings: TapSettings, reporter: Reporter, stop: StopFlag | None = None,
            clock: Callable[[], float] = time.monotonic, lines: TextIO | None = None,
            governor: Governor | None = None, sink_factory: SinkFactory | None = None,
            control: LiveControl | None = None, source: _Source | None = None) -> CaptureSummary:
    """Run one capture to its end; returns the summary. Raises KstapError subclasses.

    Without an output file, packets are described one per line on ``lines`` (tcpdump's default),
    or only counted when ``lines`` is None. In auto mode ``governor`` moves the sampling rate
    (built from the settings when not given).
    """
    settings.validate()
    stop = stop if stop is not None else StopFlag()
    expression = final_expression(settings.bpf_filter)
    out = settings.output
    if out.path:
        check_writable(out.path)
    smp = settings.sampling
    seed = smp.seed if smp.seed is not None else secrets.randbits(32)
    sampler = None
    if smp.mode != "full" and source is None:  # a given source (remote workers) sampled already
        sampler = FlowSampler(smp.mode, smp.rate, seed, idle_timeout_ns=int(smp.idle_timeout * 1e9))
        if smp.mode == "auto" and governor is None:
            governor = _default_governor(settings)
    with _Signals(stop):
        if source is None:
            source, retire_ms, backend, base = _open_source(settings, expression, sampler)
        else:
            retire_ms, backend, base = 0, "remote", None
        try:
            if stop:
                raise Interrupted("interrupted before capture started")
            run = _Run(settings, source, backend, reporter, stop, clock, sampler, governor, base, seed)
            run.sink_factory, run.control = sink_factory, control
            return run.capture(retire_ms, lines)
        finally:
            source.close()


POLL_MS = 250
"""The C fast paths wait this long for a block when the stop flag cannot wake them: signals only set
a flag (poll is resumed, PEP 475), so this bounds how late Ctrl-C is noticed."""
FILE_RETIRE_MS = 500
"""Block retire timeout when only a file waits for the packets (see :func:`_open_source`)."""

MEMORY_WARN = 0.70
MEMORY_CRITICAL = 0.90
"""Memory water-level alert thresholds (fractions of the limit): the controller's setpoint and its
emergency level, so an alert means the same thing in every mode."""


class PressureReaderLike(Protocol):
    def read(self) -> ResourceStats: ...


class Governor(Protocol):
    """Auto mode's rate source: reads pressure and runs the controller once per call (~1 Hz)."""

    def update(self, kernel_drops: int = 0, kernel_received: int = 0) -> tuple[ResourceStats, ControllerState]: ...


def _default_governor(settings: TapSettings) -> Governor:
    from kstap.control.governor import build_governor

    return build_governor(settings.sampling)


def _open_source(settings: TapSettings, expression: str,
                 sampler: FlowSampler | None) -> tuple[_Source, int, str, Program | None]:
    if settings.read:
        if expression:
            compile_filter(expression, snaplen=settings.snaplen)  # fail early on a bad expression
        replay = ReplaySource(settings.read, expression, snaplen=settings.snaplen, realtime=settings.realtime)
        adapter: _Source = _ReplayAdapter(replay)
        return adapter, 0, "file", None
    backend = backends.resolve(settings.capture)
    base = _compile_live(expression, settings, backend)
    program = base
    if sampler is not None:
        program = _sampled(base, sampler)
    # Writing a file, nobody waits on single packets: hand blocks over every 500 ms (tcpdump waits
    # up to 1 s). Each hand-over costs a wake-up and a pass through Python, which at low kept rates
    # is most of the CPU: 20 -> 100 ms measured 0.41 -> 0.28 us/packet at 20k pps, and 100 -> 250
    # -> 1000 ms took rate-0.1 sampling at 100k pps from 0.31x to 0.24x to 0.18x the CPU of full
    # capture (docs/benchmarks.md). The cost: up to that long to flush at a stop. Live consumers
    # (-w -, packet lines, entries) keep 20 ms.
    to_file = settings.output.path not in (None, "-") and settings.entries is None
    live, retire = backends.open_live(backend, settings.interfaces, program, workers=settings.workers,
                                      buffer_mib=settings.buffer_mib, ns=settings.netns,
                                      retire_ms=FILE_RETIRE_MS if to_file else 20, restart_workers=True,
                                      dedup_window_ns=int(settings.dedup_window_ms * 1e6))
    return live, retire, backend, base


def _compile_live(expression: str, settings: TapSettings, backend: str) -> Program:
    """The filter for a live source: for LINUX_SLL2, rewritten for the cooked socket, with ``-i any``."""
    if backends.cooked(settings.interfaces, backend):
        return for_cooked_socket(compile_filter(expression, linktype=LINKTYPE_LINUX_SLL2, snaplen=settings.snaplen))
    return compile_filter(expression, snaplen=settings.snaplen)


def _sampled(base: Program, sampler: FlowSampler) -> Program:
    spliced = splice_threshold(base.insns, sampler.seed, sampler.ceiling(), cooked=base.cooked)
    return base.with_insns(spliced.insns)


class _Run:
    """One capture in progress: the loop, the once-a-second work, the accounting."""

    def __init__(self, settings: TapSettings, source: _Source, backend: str, reporter: Reporter, stop: StopFlag,
                 clock: Callable[[], float], sampler: FlowSampler | None, governor: Governor | None,
                 base: Program | None, seed: int) -> None:
        self.settings = settings
        self.source = source
        self.backend = backend
        self.reporter = reporter
        self.stop = stop
        self.clock = clock
        self.sampler = sampler
        self.governor = governor
        self.base = base
        self.seed = seed
        self.summary = CaptureSummary()
        if settings.workers > 1 and not settings.read:
            self.summary.per_worker = dict.fromkeys(range(settings.workers), 0)  # idle workers show as 0
        self.sink: RecordSink | None = None
        self.sink_factory: SinkFactory | None = None
        self.control: LiveControl | None = None
        self.text: TextLines | None = None
        self.ceiling = sampler.ceiling() if sampler else FULL
        self.rate_history: list[tuple[float, float]] = []
        self.memory_history: list[tuple[float, float]] = []
        self.resources: ResourceStats | None = None
        self.controller: ControllerState | None = None
        self.alerts: list[Alert] = []
        self.start = clock()
        self.seen: SeenFlows | None = None
        self.watcher: PressureReaderLike | None = None
        self.memory_state = "ok"
        self.oom_seen = -1
        self.drops_seen = 0
        self.dissect: DissectStage | None = None
        self.entries: EntryWriter | None = None
        self.endpoints: Counter[str] = Counter()
        self.worker_losses: list[str] = []
        self.link_notes: list[tuple[int, str]] = []
        """Interface changes not yet written as a packet comment."""

    # -- the loop ------------------------------------------------------------------------------------
    def capture(self, retire_ms: int, lines: TextIO | None) -> CaptureSummary:
        settings, source, summary = self.settings, self.source, self.summary
        replay = isinstance(source, _ReplayAdapter)
        first: list[PacketRecord] = source.read(0) if replay else []
        interfaces = source.interfaces
        if self.sampler is not None:
            self.sampler.linktypes = [i.linktype for i in interfaces]
        if settings.output.path or self.sink_factory is not None:
            try:
                self.sink = self._open_sink(interfaces)
            except OutputClosed:  # the reader of -w - left before the first byte: stop quietly
                summary.stopped_by = "output-closed"
                return summary
        if self.governor is None and not replay:
            self._watch_resources(0.0)  # the reader's imports and first read now, not in the capture's first second
        self.reporter.listening(interfaces, self.backend, settings.workers)
        self.start = self.clock()
        next_tick = self.start + 1.0
        error: KstapError | None = None
        limit = settings.count if settings.count is not None else 1 << 62
        if lines is not None and self.sink is None and settings.entries != "-":
            self.text = TextLines(lines, [i.linktype for i in interfaces])
        if settings.entries:
            self._open_dissection(settings, lines)
        plain = isinstance(source, AfPacketSource) and source.fast and self.text is None and self.dissect is None
        fast = plain and self.sampler is None
        # Only a file is waiting (no stream, pipe or worker reader whose merge needs the time to
        # move on): wait for a block, the next tick, the end of --duration or a stop, whichever
        # comes first, instead of waking every POLL_MS.
        woken = False
        if plain and isinstance(source, AfPacketSource) and self.sink_factory is None and \
                settings.output.path not in (None, "-"):
            source.wake_on(self.stop.wakeup_fd())
            woken = True
        if plain and self.sampler is not None and self.sampler.mode == "percentage" and encode_block_sampled:
            # the kernel did the sampling; C comments each flow's first packet (see sampling/seen.py)
            smp = self.sampler
            self.seen = SeenFlows(smp.mode, smp.rate, smp.seed, smp.seed_id,
                                  idle_timeout_ns=smp.idle_timeout_ns)
        try:
            batch = first
            while True:
                if batch:
                    self._deliver(batch, limit)
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
                if isinstance(source, _ReplayAdapter) and source.src.exhausted:
                    summary.stopped_by = "end"
                    break
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + 1.0
                if fast or self.seen is not None:
                    assert isinstance(source, AfPacketSource)
                    wait = next_tick - now
                    if settings.duration is not None:
                        wait = min(wait, self.start + settings.duration - now)
                    wait_ms = max(1, int(wait * 1000) + 1) if woken else POLL_MS
                    try:
                        self._deliver_encoded(*source.read_encoded(wait_ms, limit - summary.captured, self.seen))
                    finally:
                        self._link_changes()
                    batch = []
                    continue
                try:
                    batch = source.read(100)
                except WorkerLost as lost:  # the others go on; a restarted one rejoins the fanout group
                    batch = []
                    self._worker_lost(lost)
                    continue
                finally:
                    self._link_changes()
                if self.sink is not None and not batch:
                    self.sink.tick()
            if summary.stopped_by in ("signal", "duration") and not replay:
                # the last partly filled block holds packets from before the stop; what arrives
                # while it is being handed over is after the stop and stays out
                stop_ns = time.time_ns()
                self._deliver([r for r in source.drain(retire_ms) if r[0] <= stop_ns], limit)
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

    def _open_dissection(self, settings: TapSettings, lines: TextIO | None) -> None:
        cap = settings.dissect_memory_mib << 20
        self.entries = EntryWriter(settings.entries or "-", stdout=lines)
        writer = self.entries

        def emit(entry: Entry) -> None:
            writer.write(entry)
            self.endpoints[_endpoint_label(entry)] += 1

        self.dissect = DissectStage(seed=self.seed, memory_cap=cap, flow_cap=default_flow_cap(cap),
                                    idle_timeout=DEFAULT_IDLE_TIMEOUT, emit=emit)

    def _open_sink(self, interfaces: list[Interface]) -> RecordSink:
        out, settings = self.settings.output, self.settings
        smp = settings.sampling
        run = metadata.run_note(smp.mode, self.sampler.rate if self.sampler else 1.0, seed_id(self.seed),
                                settings.bpf_filter)
        if self.sink_factory is not None:
            return self.sink_factory(interfaces, f"{run}; backend={self.backend}", self._counters)
        return PcapngFiles(
            out.path or "-", interfaces, counters=self._counters,
            rotate_bytes=int(out.rotate_mb * 1_000_000) if out.rotate_mb else None,
            rotate_seconds=out.rotate_seconds, ring_files=out.ring_files,
            with_queue=settings.workers > 1,
            comment=f"{run}; backend={self.backend}",
        )

    def _link_changes(self) -> None:
        """Interfaces that appeared or vanished: an alert (dashboard, NDJSON, worker stream) and a
        comment on the next packet written. The capture goes on."""
        take = getattr(self.source, "take_events", None)
        if take is None:
            return
        for event in take():
            text = event.describe()
            self.link_notes.append((event.time_ns, f"kstap: {text}"))
            self.summary.interface_changes.append(text)
            self._alert("info", "interface", text)

    def _place_link_notes(self, batch: list[PacketRecord], notes: dict[int, str] | None) -> dict[int, str]:
        """Each interface change as a comment on the first packet stamped at or after it."""
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

    def _deliver(self, batch: list[PacketRecord], limit: int) -> None:
        notes: dict[int, str] | None = None
        if self.sampler is not None and batch:
            before = self.sampler.stats.sampled_out
            batch, notes = self.sampler.admit(batch)
            self.summary.sampled_out += self.sampler.stats.sampled_out - before
        batch = batch[: limit - self.summary.captured]
        if not batch:
            return
        if notes is None and self.sampler is None:
            comments_for = getattr(self.source, "comments_for", None)  # remote workers' packet comments
            if comments_for is not None:
                notes = comments_for(batch)
        if self.link_notes:
            notes = self._place_link_notes(batch, notes)
        if self.sink is not None:
            self.sink.ensure_interfaces(self.source.interfaces)  # a replayed file may describe more
            self.sink.write(batch, notes)
        if self.text is not None:
            self.text.write(batch)
        if self.dissect is not None and self.entries is not None:
            self.dissect.feed(batch, [i.linktype for i in self.source.interfaces])
            self.entries.flush()
        summary = self.summary
        summary.captured += len(batch)
        per = summary.per_worker
        for rec in batch:
            summary.bytes_captured += rec[1]
            per[rec[5]] = per.get(rec[5], 0) + 1

    def _deliver_encoded(self, chunks: list[bytes], packets: int, nbytes: int) -> None:
        if self.sink is not None:
            self.sink.write_encoded(chunks, packets)
        self.summary.captured += packets
        self.summary.bytes_captured += nbytes
        self.summary.per_worker[0] = self.summary.per_worker.get(0, 0) + packets

    # -- once a second -------------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        if self.control is not None:
            self._apply_control()
        _fill_counts(self.summary, self.source)  # once a tick: the controller and the views share them
        elapsed = now - self.start
        sampler = self.sampler
        if self.seen is not None:
            if int(elapsed) % 10 == 0:
                self.seen.expire(time.time_ns())
            self.rate_history.append((elapsed, self.seen_rate()))
        elif sampler is not None:
            sampler.expire(time.time_ns())
            if self.governor is not None:
                self._govern(sampler, elapsed)
            self._update_ceiling(sampler)
            self.rate_history.append((elapsed, sampler.rate))
        else:
            self.rate_history.append((elapsed, 1.0))
        smp = self.settings.sampling
        budgeted = smp.memory_budget is not None or smp.cpu_budget is not None
        if self.governor is None and not isinstance(self.source, _ReplayAdapter) and (
                budgeted or self.resources is None or int(elapsed) % 5 == 0):
            self._watch_resources(elapsed)  # without a controller or budget, every 5 s is enough
        if self.dissect is not None and not isinstance(self.source, _ReplayAdapter):
            self.dissect.tick(time.time_ns())
        self._check_alerts()
        self.reporter.progress(self.snapshot(elapsed))

    def _apply_control(self) -> None:
        """A rate or filter asked for from outside (a worker's POST /v1/control), once a tick."""
        assert self.control is not None
        request = self.control.take()
        if request is None:
            return
        error = None
        try:
            if request.filter is not None:
                self._swap_filter(request.filter)
            if request.rate is not None:
                self._set_rate(request.rate)
        except KstapError as exc:
            error = exc.message
            self.reporter.warning(f"control request not applied: {exc.message}")
        self.control.done(request, error)

    def _swap_filter(self, expression: str) -> None:
        setter = getattr(self.source, "set_filter", None)
        if self.base is None or setter is None:
            raise KstapError("this capture backend cannot change its filter while running")
        settings = self.settings
        base = _compile_live(final_expression(expression), settings, self.backend)
        if needs_live_compile(base.expression) and not base.cooked:
            with netns.entered(settings.netns):
                base = compile_for_live(settings.interfaces[0], base.expression, settings.snaplen)
        sampler = self.sampler
        setter(_sampled(base, sampler) if sampler is not None else base)
        self.base = base
        self.ceiling = sampler.ceiling() if sampler is not None else FULL
        settings.bpf_filter = expression

    def _set_rate(self, rate: float) -> None:
        sampler = self.sampler
        if sampler is None or sampler.mode != "percentage":
            raise KstapError("the rate can be changed live only in percentage mode")
        old = sampler.rate
        if not sampler.set_rate(rate, "control"):
            return
        if self.seen is not None:  # the C path writes first-packet comments itself: the new rate from now on
            self.seen.set_rate(sampler.rate)
        self.reporter.event("rate_change", {"old": old, "new": sampler.rate, "reason": "control", "pressure": None})
        self._update_ceiling(sampler)

    def seen_rate(self) -> float:
        return self.sampler.rate if self.sampler is not None else 1.0

    def _watch_resources(self, elapsed: float) -> None:
        """Outside auto mode the figures are still read, for the water level and the alerts."""
        if self.watcher is None:
            from kstap.control.pressure import PressureReader

            smp = self.settings.sampling
            self.watcher = PressureReader(memory_budget=smp.memory_budget, cpu_budget=smp.cpu_budget)
        self.resources = self.watcher.read()
        res = self.resources
        if res.memory_limit:
            self.memory_history.append((elapsed, res.memory_bytes / res.memory_limit))

    def _check_alerts(self) -> None:
        """Threshold crossings (memory 70 % warn / 90 % critical, OOM kills, new kernel drops)."""
        res, s = self.resources, self.summary
        if res is not None and res.memory_limit:
            level = res.memory_bytes / res.memory_limit
            state = "critical" if level >= MEMORY_CRITICAL else "warn" if level >= MEMORY_WARN else "ok"
            if state != self.memory_state and state != "ok":
                self._alert(state, "memory", f"memory {level:.0%} of {res.memory_limit >> 20} MiB")
            self.memory_state = state
            if res.oom_events > self.oom_seen:
                if self.oom_seen >= 0:
                    self._alert("critical", "oom", f"{res.oom_events - self.oom_seen} OOM kill(s) in the cgroup")
                self.oom_seen = res.oom_events
            elif self.oom_seen < 0:
                self.oom_seen = res.oom_events
        if s.dropped > self.drops_seen:
            self._alert("warn", "drops", f"kernel dropped {s.dropped - self.drops_seen} packets "
                                         f"(ring full)")
            self.drops_seen = s.dropped

    def _govern(self, sampler: FlowSampler, elapsed: float) -> None:
        assert self.governor is not None
        self.resources, self.controller = self.governor.update(self.summary.dropped, self.summary.received)
        res = self.resources
        if res.memory_limit:
            self.memory_history.append((elapsed, res.memory_bytes / res.memory_limit))
        old = sampler.rate
        state = self.controller
        if state.reason.startswith("emergency") and state.rate < old:
            shed = sampler.shed(state.rate)
            if self.dissect is not None:
                self.dissect.drop(shed)
            self._alert("critical", "shed",
                        f"emergency: rate {old:.3g} -> {state.rate:.3g}, {len(shed)} live flows shed")
        elif not sampler.set_rate(state.rate, state.reason or "pi"):
            return
        self.reporter.event("rate_change", {"old": old, "new": sampler.rate, "reason": state.reason,
                                            "pressure": state.pressure})

    def _update_ceiling(self, sampler: FlowSampler) -> None:
        ceiling = sampler.ceiling()
        if ceiling == self.ceiling or self.base is None:
            return
        setter = getattr(self.source, "set_filter", None)
        if setter is not None:
            setter(_sampled(self.base, sampler))
        self.ceiling = ceiling

    def _counters(self) -> list[pcapng.InterfaceCounters]:
        changes = self.summary.interface_changes
        return [pcapng.InterfaceCounters(0, 0, s.received, s.dropped, s.delivered,
                                         _isb_note(s, changes if i == 0 else []))
                for i, s in enumerate(self.source.stats())]

    def _worker_lost(self, lost: WorkerLost) -> None:
        """A fanout worker died or hung: alert, carry on with the others (and its replacement, if
        one was started), and end the run with exit 4 so scripts know the capture has a hole."""
        self.worker_losses.append(lost.message)
        self._alert("critical", "worker-restarted" if lost.restarted else "worker-lost", lost.message)

    def _alert(self, level: str, kind: str, message: str) -> None:
        alert = Alert(time.time(), level, kind, message)
        self.alerts.append(alert)
        self.reporter.event("alert", {"level": level, "kind": kind, "message": message})

    def snapshot(self, elapsed: float) -> StatsSnapshot:
        s, settings = self.summary, self.settings
        sampler = self.sampler
        return StatsSnapshot(
            elapsed=elapsed,
            mode=settings.sampling.mode,
            profile=settings.profile,
            filter=settings.bpf_filter,
            targets=list(settings.interfaces) or ([settings.read] if settings.read else []),
            output=settings.output.path,
            captured=s.captured,
            bytes_captured=s.bytes_captured,
            received=s.received,
            dropped=s.dropped,
            duplicates=s.duplicates,
            sampled_out=s.sampled_out,
            rate=sampler.rate if sampler else 1.0,
            packets_per_second=s.captured / elapsed if elapsed > 0 else 0.0,
            flows_tracked=sampler.stats.flows_tracked if sampler else 0,
            dissect_memory=self.dissect.memory if self.dissect else 0,
            top_endpoints=self.endpoints.most_common(5),
            workers=(self.source.worker_stats() if hasattr(self.source, "worker_stats") else
                     [WorkerStats(worker=w, captured=n, rate=sampler.rate if sampler else 1.0)
                      for w, n in sorted(s.per_worker.items())]),
            controller=self.controller,
            resources=self.resources,
            alerts=list(self.alerts[-20:]),
            rate_history=list(self.rate_history[-600:]),
            memory_history=list(self.memory_history[-600:]),
        )

    # -- the end -------------------------------------------------------------------------------------
    def _finish(self) -> None:
        summary = self.summary
        _fill_counts(summary, self.source)
        if self.dissect is not None and self.entries is not None:
            self.dissect.close()
            self.entries.close()
            stats = self.dissect.stats()
            summary.entries = stats.entries
            summary.dissect_evictions = dict(stats.evictions)
        if self.sink is not None:
            if not self.sink.close():
                summary.warnings.append("no room left for the statistics block; packets are intact")
            summary.files = list(self.sink.files)
            summary.captured = self.sink.packets_written
        if self.seen is not None:
            summary.flows_seen = summary.flows_kept = self.seen.flows_seen
            summary.final_rate = self.seen_rate()
        elif self.sampler is not None:
            st = self.sampler.stats
            summary.flows_seen, summary.flows_kept, summary.shed_flows = st.flows_seen, st.flows_kept, st.shed_flows
            summary.final_rate = self.sampler.rate
        if isinstance(self.source, _ReplayAdapter):  # no kernel counters: what passed is what was processed
            summary.received, summary.dropped = summary.captured + summary.sampled_out, 0

    def _result(self, error: KstapError | None) -> CaptureSummary:
        summary, source = self.summary, self.source
        if isinstance(source, _ReplayAdapter) and source.src.error is not None:
            err = source.src.error
            summary.warnings.append(str(err))
            self.reporter.warning(f"{err}; kept the {err.packets_ok} valid packets before it")
            if error is None:
                error = KstapError(f"--read stopped early: {err}",
                                   hint=f"the {summary.captured} packets before the damage were processed")
        if error is None and self.worker_losses:
            error = WorkerFailure(f"{len(self.worker_losses)} capture worker loss(es) during the capture: "
                                  + "; ".join(self.worker_losses),
                                  hint="the packets in a lost worker's ring were lost; everything delivered is "
                                       "in the file")
        if error is None:
            return summary
        if isinstance(error, DiskFull):
            saved = summary.files[-1] if summary.files else "?"
            error = DiskFull(f"disk full: capture stopped after {summary.captured} packets "
                             f"({self.sink.bytes_written if self.sink else 0} bytes saved in {saved})",
                             hint=error.hint)
        error.summary = summary
        raise error


def _fill_counts(summary: CaptureSummary, source: _Source) -> None:
    stats = source.stats()
    summary.received = sum(s.received for s in stats)
    summary.dropped = sum(s.dropped for s in stats)
    summary.duplicates = sum(s.duplicates for s in stats)
    summary.per_interface = {i.name: s for i, s in zip(source.interfaces, stats, strict=False)}


def _isb_note(stats: SourceStats, changes: list[str]) -> str:
    """The ISB comment: what dedup removed and which interfaces came and went (``-i any``)."""
    parts = []
    if stats.duplicates:
        parts.append(f"kstap: {stats.duplicates} duplicate copies removed (the same packet seen on another "
                     "interface of the node)")
    if changes:
        parts.append("kstap: " + "; ".join(changes[-50:]) + (f" (+{len(changes) - 50} earlier)" if len(changes) > 50
                                                           else ""))
    return "\n".join(parts)


def _endpoint_label(entry: Entry) -> str:
    """How the dashboard names an L7 endpoint: 'GET /api' @ server, or a DNS name."""
    if entry.protocol == "dns":
        return f"dns {entry.query_name or '?'}"
    target = entry.path or "/"
    if "?" in target:
        target = target.split("?", 1)[0]
    return f"{entry.method or '?'} {target} @ {entry.authority or entry.server}"

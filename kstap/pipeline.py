"""The one place that wires the stages: source → (count/duration/signal control) → pcapng sink.

Stages never import each other; this module does. It reports through a :class:`Reporter` the CLI
supplies, so no stage writes to the terminal.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Protocol, TextIO

from kstap.capture import backends
from kstap.capture.afpacket import AfPacketSource
from kstap.capture.replay import ReplaySource
from kstap.config import TapSettings
from kstap.errors import Interrupted, KstapError
from kstap.filters.bpf import compile_filter, final_expression
from kstap.model import CaptureSummary, Interface, PacketRecord, SourceStats, StatsSnapshot, WorkerStats
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


class _Source(Protocol):
    @property
    def interfaces(self) -> list[Interface]: ...

    def read(self, timeout_ms: int) -> list[PacketRecord]: ...
    def drain(self, retire_ms: int) -> list[PacketRecord]: ...
    def stats(self) -> list[SourceStats]: ...
    def close(self) -> None: ...


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM (or a test, or the dashboard's 'q')."""

    signum: int = 0

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum != 0


class _Signals:
    """Turn SIGINT/SIGTERM into a flag for the capture loop (main thread only)."""

    def __init__(self, stop: StopFlag) -> None:
        self.stop = stop
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
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
            clock: Callable[[], float] = time.monotonic, lines: TextIO | None = None) -> CaptureSummary:
    """Run one capture to its end; returns the summary. Raises KstapError subclasses.

    Without an output file, packets are described one per line on ``lines`` (tcpdump's default),
    or only counted when ``lines`` is None.
    """
    settings.validate()
    stop = stop if stop is not None else StopFlag()
    expression = final_expression(settings.bpf_filter)
    out = settings.output
    if out.path:
        check_writable(out.path)
    with _Signals(stop):
        source, retire_ms, backend = _open_source(settings, expression)
        try:
            if stop:
                raise Interrupted("interrupted before capture started")
            return _capture(settings, source, retire_ms, backend, reporter, stop, clock, lines)
        finally:
            source.close()


def _open_source(settings: TapSettings, expression: str) -> tuple[_Source, int, str]:
    if settings.read:
        if expression:
            compile_filter(expression, snaplen=settings.snaplen)  # fail early on a bad expression
        replay = ReplaySource(settings.read, expression, snaplen=settings.snaplen, realtime=settings.realtime)
        adapter: _Source = _ReplayAdapter(replay)
        return adapter, 0, "file"
    program = compile_filter(expression, snaplen=settings.snaplen)
    backend = backends.resolve(settings.capture)
    live, retire = backends.open_live(backend, settings.interfaces, program, workers=settings.workers,
                                      buffer_mib=settings.buffer_mib, ns=settings.netns)
    return live, retire, backend


def _capture(settings: TapSettings, source: _Source, retire_ms: int, backend: str, reporter: Reporter,
             stop: StopFlag, clock: Callable[[], float], lines: TextIO | None) -> CaptureSummary:
    summary = CaptureSummary()
    replay = isinstance(source, _ReplayAdapter)
    first: list[PacketRecord] = source.read(0) if replay else []
    interfaces = source.interfaces
    out = settings.output
    sink: PcapngFiles | None = None
    if out.path:
        try:
            sink = PcapngFiles(
                out.path, interfaces, counters=lambda: _counters(source),
                rotate_bytes=int(out.rotate_mb * 1_000_000) if out.rotate_mb else None,
                rotate_seconds=out.rotate_seconds, ring_files=out.ring_files,
                with_queue=settings.workers > 1,
                comment=f"kstap tap; filter: {settings.bpf_filter or '(none)'}; backend: {backend}",
            )
        except OutputClosed:  # the reader of -w - left before the first byte: stop quietly
            summary.stopped_by = "output-closed"
            return summary
    reporter.listening(interfaces, backend, settings.workers)
    start = clock()
    next_report = start + 1.0
    error: KstapError | None = None
    limit = settings.count if settings.count is not None else 1 << 62
    text = TextLines(lines, [i.linktype for i in interfaces]) if lines is not None and sink is None else None
    fast = isinstance(source, AfPacketSource) and source.fast and text is None
    try:
        batch = first
        while True:
            if batch:
                batch = batch[: limit - summary.captured]
                _deliver(summary, sink, source, batch)
                if text is not None:
                    text.write(batch)
            if summary.captured >= limit:
                summary.stopped_by = "count"
                break
            if stop:
                summary.stopped_by = "signal"
                break
            now = clock()
            if settings.duration is not None and now - start >= settings.duration:
                summary.stopped_by = "duration"
                break
            if isinstance(source, _ReplayAdapter) and source.src.exhausted:
                summary.stopped_by = "end"
                break
            if now >= next_report:
                _fill_counts(summary, source)
                reporter.progress(_snapshot(settings, summary, now - start))
                next_report = now + 1.0
            if fast:
                assert isinstance(source, AfPacketSource)
                chunks, n, nbytes = source.read_encoded(100, limit - summary.captured)
                if sink is not None:
                    sink.write_encoded(chunks, n)
                summary.captured += n
                summary.bytes_captured += nbytes
                summary.per_worker[0] = summary.per_worker.get(0, 0) + n
                batch = []
                continue
            batch = source.read(100)
            if sink is not None and not batch:
                sink.tick()
        if summary.stopped_by in ("signal", "duration") and not replay:
            tail = source.drain(retire_ms)[: limit - summary.captured]
            _deliver(summary, sink, source, tail)
            if text is not None:
                text.write(tail)
    except DiskFull as exc:
        summary.stopped_by = "disk-full"
        error = exc
    except OutputClosed:
        summary.stopped_by = "output-closed"
    except KstapError as exc:
        summary.stopped_by = "error"
        error = exc
    finally:
        _fill_counts(summary, source)
        if sink is not None:
            if not sink.close():
                summary.warnings.append("no room left for the statistics block; packets are intact")
            summary.files = list(sink.files)
            summary.captured = sink.packets_written
    if replay:  # a file has no kernel counters: what passed the filter is what was processed
        summary.received, summary.dropped = summary.captured, 0
    if isinstance(source, _ReplayAdapter) and source.src.error is not None:
        err = source.src.error
        summary.warnings.append(str(err))
        reporter.warning(f"{err}; kept the {err.packets_ok} valid packets before it")
        if error is None:
            error = KstapError(f"--read stopped early: {err}",
                               hint=f"the {summary.captured} packets before the damage were processed")
    if error is not None:
        if isinstance(error, DiskFull):
            saved = summary.files[-1] if summary.files else "?"
            error = DiskFull(f"disk full: capture stopped after {summary.captured} packets "
                             f"({sink.bytes_written if sink else 0} bytes saved in {saved})",
                             hint=error.hint)
        error.summary = summary
        raise error
    return summary


def _deliver(summary: CaptureSummary, sink: PcapngFiles | None, source: _Source,
             batch: list[PacketRecord]) -> None:
    if sink is not None and batch:
        sink.ensure_interfaces(source.interfaces)  # a replayed file may describe more as it goes
        sink.write(batch)
    _account(summary, batch)


def _account(summary: CaptureSummary, batch: list[PacketRecord]) -> None:
    summary.captured += len(batch)
    per = summary.per_worker
    for rec in batch:
        summary.bytes_captured += rec[1]
        per[rec[5]] = per.get(rec[5], 0) + 1


def _fill_counts(summary: CaptureSummary, source: _Source) -> None:
    stats = source.stats()
    summary.received = sum(s.received for s in stats)
    summary.dropped = sum(s.dropped for s in stats)
    summary.per_interface = {i.name: s for i, s in zip(source.interfaces, stats, strict=False)}


def _counters(source: _Source) -> list[pcapng.InterfaceCounters]:
    return [pcapng.InterfaceCounters(0, 0, s.received, s.dropped, s.delivered) for s in source.stats()]


def _snapshot(settings: TapSettings, summary: CaptureSummary, elapsed: float) -> StatsSnapshot:
    """What views show right now (sampling and resources join with the sampling issue)."""
    return StatsSnapshot(
        elapsed=elapsed,
        filter=settings.bpf_filter,
        targets=list(settings.interfaces) or ([settings.read] if settings.read else []),
        output=settings.output.path,
        captured=summary.captured,
        bytes_captured=summary.bytes_captured,
        received=summary.received,
        dropped=summary.dropped,
        packets_per_second=summary.captured / elapsed if elapsed > 0 else 0.0,
        workers=[WorkerStats(worker=w, captured=n) for w, n in sorted(summary.per_worker.items())],
    )

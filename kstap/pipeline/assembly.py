"""Assembly: the one place where stages are put together.

- :func:`run_tap`: a local capture (``kstap tap -i``, ``--read``, the demo), and the base of the others;
- :func:`run_worker`: a node's worker (:mod:`kstap.worker`): the capture into a stream sink, with live control;
- :func:`run_remote`: the cluster session's capture: remote workers merged as one source
  (:mod:`kstap.pipeline.cluster` deploys them and follows the churn);
- ``kstap dissect FILE`` (a capture file through the dissector alone) is put together in
  :mod:`kstap.pipeline.offline`, which imports no capture stage, so that command starts fast.

Each builds the stages (source, sampler, governor, sink, consumers), declares nothing about them
that they do not declare themselves (:mod:`kstap.contracts`), and hands them to the loop
(:mod:`kstap.pipeline.loop`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from kstap.capture import backends
from kstap.capture.replay import ReplaySource
from kstap.config import TapSettings
from kstap.contracts import Governor, LiveControl, Reporter, Sink, SinkFactory, Source
from kstap.dissect.api import Entry
from kstap.dissect.entries import EntryWriter
from kstap.dissect.stage import DEFAULT_IDLE_TIMEOUT, DissectStage, default_flow_cap
from kstap.errors import Interrupted, KstapError
from kstap.filters.bpf import Program, compile_filter, final_expression
from kstap.formats import pcapng
from kstap.model import CaptureSummary, Interface, SourceStats
from kstap.pipeline.loop import Capture, Consumers, Stages
from kstap.pipeline.resources import ResourceWatch
from kstap.pipeline.steering import Steering, compile_live, sampled
from kstap.pipeline.stopping import Signals, StopFlag
from kstap.sampling import metadata
from kstap.sampling.flowhash import seed_id
from kstap.sampling.kernel_table import KernelFlowTable, open_table
from kstap.sampling.sampler import FlowSampler
from kstap.sinks.files import PcapngFiles, check_writable
from kstap.sinks.text import TextLines
from kstap.vocabulary import Mode

FILE_RETIRE_MS = 500
"""Block retire timeout when only a file waits for the packets (see :func:`open_source`)."""
FILE_BLOCK_MAX = 4 << 20
"""The largest ring block when only a file waits for the packets (see :func:`open_source`)."""


def run_tap(settings: TapSettings, reporter: Reporter, stop: StopFlag | None = None,
            clock: Callable[[], float] = time.monotonic, lines: TextIO | None = None,
            governor: Governor | None = None, sink_factory: SinkFactory | None = None,
            control: LiveControl | None = None, source: Source | None = None,
            backend: str = "remote") -> CaptureSummary:
    """Run one capture to its end; returns the summary. Raises KstapError subclasses.

    Without an output file, packets are described one per line on ``lines`` (tcpdump's default),
    or only counted when ``lines`` is None. In auto mode ``governor`` moves the sampling rate
    (built from the settings when not given). ``source``: an already open source (named
    ``backend``) instead of the one the settings describe; what it can do, it declares.
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
    kernel: KernelFlowTable | None = None
    if smp.mode != Mode.FULL and (source is None or not source.capabilities.sampled_upstream):
        if smp.mode == Mode.AUTO and governor is None:
            governor = default_governor(settings)  # first: it may pick the start rate from the limits
        sampler = FlowSampler(smp.mode, smp.rate, seed, idle_timeout_ns=int(smp.idle_timeout * 1e9))
        if smp.mode == Mode.AUTO and source is None:
            kernel = kernel_table(settings, sampler, reporter)
    with Signals(stop):
        try:
            base: Program | None = None
            retire_ms = 0
            if source is None:
                source, retire_ms, backend, base = open_source(settings, expression, sampler, kernel)
            try:
                if stop:
                    raise Interrupted("interrupted before capture started", hint="nothing was written")
                watch = ResourceWatch(smp, reporter, clock)
                steering = Steering(settings, source, reporter, watch, sampler, governor, base, control, kernel)
                opened = source
                changes: list[str] = []
                stages = Stages(
                    source=source, backend=backend, steering=steering, watch=watch, retire_ms=retire_ms,
                    interface_changes=changes,
                    open_sink=lambda interfaces: open_sink(settings, interfaces, opened, backend, sampler, seed,
                                                           sink_factory, changes),
                    open_consumers=lambda interfaces, has_sink: open_consumers(
                        settings, interfaces, has_sink, lines, seed,
                        upstream=opened.capabilities.dissected_upstream))
                return Capture(settings, stages, reporter, stop, clock).run()
            finally:
                source.close()
        finally:
            if kernel is not None:
                kernel.close()


def kernel_table(settings: TapSettings, sampler: FlowSampler, reporter: Reporter) -> KernelFlowTable | None:
    """Auto mode's in-kernel flow table where this capture can have it (else the classic ceiling)."""
    smp = settings.sampling
    # the table sits in each af_packet socket's filter, read by this process: not with a file, nor with
    # --workers' processes (each its own socket and ring in a fanout group), nor on another backend
    fallback = "or set sampling.flow_table = auto (falls back with a warning) or user"
    why_not, hint = (("--read replays a file", "a file's flows are decided in user space: "
                                               "set sampling.flow_table = auto or user")
                     if settings.read else
                     (f"--workers {settings.workers}", f"capture with one worker (no --workers), {fallback}")
                     if settings.workers > 1 else
                     (f"--capture {settings.capture}", f"use --capture af_packet, {fallback}")
                     if backends.resolve(settings.capture) != "af_packet" else (None, None))
    kernel, reason = open_table(smp.flow_table, sampler.seed, sampler.rate,
                                idle_timeout_ns=int(smp.idle_timeout * 1e9), why_not=why_not, why_not_hint=hint)
    if kernel is None and reason is not None and smp.flow_table == "auto" and not settings.read:
        reporter.warning(f"flows are decided in user space (classic filter ceiling): {reason}")
    if kernel is not None:
        sampler.decided_upstream = True
    return kernel


def run_worker(settings: TapSettings, reporter: Reporter, stop: StopFlag, lines: TextIO | None,
               sink_factory: SinkFactory, control: LiveControl) -> CaptureSummary:
    """A node's worker: the capture into a streaming sink, with rate/filter control from its API."""
    return run_tap(settings, reporter, stop, lines=lines, sink_factory=sink_factory, control=control)


def run_remote(settings: TapSettings, reporter: Reporter, stop: StopFlag, source: Source) -> CaptureSummary:
    """The cluster session's capture: the workers' merged streams through the same loop (they
    sampled, and dissect when asked, themselves: see their source's capabilities)."""
    return run_tap(settings, reporter, stop, source=source, backend="remote")


def default_governor(settings: TapSettings) -> Governor:
    from kstap.control.governor import build_governor

    return build_governor(settings.sampling)


def open_source(settings: TapSettings, expression: str, sampler: FlowSampler | None,
                kernel: KernelFlowTable | None = None) -> tuple[Source, int, str, Program | None]:
    """The source the settings describe: (source, block-retire ms, backend name, filter without sampling)."""
    if settings.read:
        if expression:
            compile_filter(expression, snaplen=settings.snaplen)  # fail early on a bad expression
        replay = ReplaySource(settings.read, expression, snaplen=settings.snaplen, realtime=settings.realtime)
        return replay, 0, "file", None
    base = compile_live(expression, settings)
    backend = backends.resolve(settings.capture)
    program = base
    if kernel is not None:  # the eBPF filter: the expression, then the flow table
        refused = kernel.refusal(base.insns, base.linktype)
        if refused is not None:
            raise KstapError(f"the in-kernel flow table cannot take this filter: {refused}",
                             hint="set sampling.flow_table = user (KSTAP_SAMPLING_FLOW_TABLE=user)")
        program = replace(base, attacher=kernel)
    elif sampler is not None:
        program = sampled(base, sampler)
    # Writing a file, nobody waits on single packets: hand blocks over every 500 ms (tcpdump waits
    # up to 1 s). Each hand-over costs a wake-up and a pass through Python, which at low kept rates
    # is most of the CPU: 20 -> 100 ms measured 0.41 -> 0.28 us/packet at 20k pps, and 100 -> 250
    # -> 1000 ms took rate-0.1 sampling at 100k pps from 0.31x to 0.24x to 0.18x the CPU of full
    # capture (docs/benchmarks.md). The cost: up to that long to flush at a stop. Live consumers
    # (-w -, packet lines, entries) keep 20 ms.
    # For the same reason such a capture takes blocks of up to 4 MiB (a quarter of the ring: 4 MiB
    # for the default 32 MiB, 512 KiB for tcpdump's 2 MiB). A wake-up costs this VM 40-100 us of
    # accounted CPU before any Python runs; at 20k pps kept (percentage 10 % of 200k pps), 1 MiB
    # blocks fill 2.8 times a second. 3 rounds side by side: percentage 10 % at 200k pps
    # 0.0184 -> 0.0164 us per offered packet, full 0.0817 -> 0.0846 (noise).
    to_file = settings.output.path not in (None, "-") and settings.entries is None
    live, retire = backends.open_live(backend, settings.interfaces, program, workers=settings.workers,
                                      buffer_mib=settings.buffer_mib, ns=settings.netns,
                                      retire_ms=FILE_RETIRE_MS if to_file else 20, restart_workers=True,
                                      dedup_window_ns=int(settings.dedup_window_ms * 1e6),
                                      block_max=FILE_BLOCK_MAX if to_file else backends.BLOCK_MAX)
    return live, retire, backend, base


def open_sink(settings: TapSettings, interfaces: list[Interface], source: Source, backend: str,
              sampler: FlowSampler | None, seed: int, sink_factory: SinkFactory | None,
              changes: list[str]) -> Sink | None:
    """The -w file(s), the sink a worker streams into, or None (packet lines or counting only).
    ``changes``: the interface changes so far (the loop appends), for the statistics block's comment."""
    out, smp = settings.output, settings.sampling
    if not out.path and sink_factory is None:
        return None
    run = metadata.run_note(smp.mode, sampler.rate if sampler else 1.0, seed_id(seed), settings.bpf_filter)

    def counters() -> list[pcapng.InterfaceCounters]:
        """The interfaces' counters for a file's statistics blocks. The first one's comment carries the
        rate changes no packet has carried yet (so a file's rate timeline ends with the last change),
        what ``-i any`` dedup removed and which interfaces came and went."""
        out = [pcapng.InterfaceCounters(0, 0, s.received, s.dropped, s.delivered,
                                        isb_note(s, changes if i == 0 else []))
               for i, s in enumerate(source.stats())]
        notes = sampler.unwritten_rate_notes() if sampler is not None else []
        if out and notes:
            out[0] = replace(out[0], comment="\n".join([*notes, *([out[0].comment] if out[0].comment else [])]))
        return out

    if sink_factory is not None:
        return sink_factory(interfaces, f"{run}; backend={backend}", counters)
    return PcapngFiles(
        out.path or "-", interfaces, counters=counters,
        rotate_bytes=int(out.rotate_mb * 1_000_000) if out.rotate_mb else None,
        rotate_seconds=out.rotate_seconds, ring_files=out.ring_files,
        with_queue=settings.workers > 1,
        comment=f"{run}; backend={backend}",
    )


def isb_note(stats: SourceStats, changes: list[str]) -> str:
    """The ISB comment: what ``-i any`` dedup removed and which interfaces came and went."""
    parts = []
    if stats.duplicates:
        parts.append(f"kstap: {stats.duplicates} duplicate copies removed (the same packet seen on another "
                     "interface of the node)")
    if changes:
        more = f" (+{len(changes) - 50} earlier)" if len(changes) > 50 else ""
        parts.append("kstap: " + "; ".join(changes[-50:]) + more)
    return "\n".join(parts)


def open_consumers(settings: TapSettings, interfaces: list[Interface], has_sink: bool, lines: TextIO | None,
                   seed: int, *, upstream: bool = False) -> Consumers:
    """Packet lines (tcpdump's default without -w) and the dissector with its entries (--entries).

    ``upstream``: the source's flows were dissected where they were captured (remote workers):
    their entries are written as they come, nothing is dissected here a second time.
    """
    consumers = Consumers()
    if lines is not None and not has_sink and settings.entries != "-":
        consumers.text = TextLines(lines, [i.linktype for i in interfaces])
    if settings.entries:
        consumers.entries = EntryWriter(settings.entries or "-", stdout=lines)
        consumers.upstream = upstream
        if not upstream:
            cap = settings.dissect_memory_mib << 20
            emit = consumers.emit

            def emit_entry(entry: Entry) -> None:
                emit(entry.to_json())

            consumers.dissect = DissectStage(seed=seed, memory_cap=cap, flow_cap=default_flow_cap(cap),
                                             idle_timeout=DEFAULT_IDLE_TIMEOUT, emit=emit_entry)
    return consumers


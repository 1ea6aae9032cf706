"""Plain-text reporting on stderr, tcpdump style (the live dashboard comes later)."""

from __future__ import annotations

import sys
from typing import TextIO

from kstap.contracts import AlertRaised, Event
from kstap.model import CaptureSummary, Interface, StatsSnapshot


class TextReporter:
    """Implements :class:`kstap.pipeline.Reporter` with short lines on a text stream."""

    def __init__(self, stream: TextIO | None = None, *, progress: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.show_progress = progress

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        from kstap.pipeline import LINKTYPE_NAMES  # here, not at import: keeps 'kstap --help' fast

        for i in interfaces:
            link = LINKTYPE_NAMES.get(i.linktype, str(i.linktype))
            if backend == "file":
                self._say(f"kstap: reading from file (interface {i.name}), link-type {link}, "
                          f"snapshot length {i.snaplen} bytes")
                continue
            extra = f", {workers} workers" if workers > 1 else ""
            self._say(f"kstap: listening on {i.name}, link-type {link}, snapshot length {i.snaplen} bytes"
                      f" ({backend}{extra})")

    def progress(self, snapshot: StatsSnapshot) -> None:
        if self.show_progress:
            s = snapshot
            self._say(f"kstap: {s.elapsed:6.1f}s  {s.captured} captured  {s.received} received"
                      f"  {s.dropped} dropped  {s.packets_per_second:.0f} pkt/s")

    def event(self, event: Event) -> None:
        if isinstance(event, AlertRaised):
            self._say(f"kstap: {event.level}: {event.message}")
        elif self.show_progress:
            self._say(f"kstap: sampling rate {event.old:.3g} -> {event.new:.3g} ({event.reason})")

    def warning(self, message: str) -> None:
        self._say(f"kstap: warning: {message}")

    def summary(self, s: CaptureSummary) -> None:
        """tcpdump's closing lines, plus files and per-worker shares."""
        if s.files and s.files != ["-"]:
            self._say(f"kstap: wrote {', '.join(s.files)}")
        if len(s.per_worker) > 1 or any(w > 0 for w in s.per_worker):
            shares = ", ".join(f"worker {w}: {n}" for w, n in sorted(s.per_worker.items()))
            self._say(f"kstap: per-worker packets: {shares}")
        for line in sampling_lines(s):
            self._say(line)
        if s.duplicates:
            self._say(f"kstap: {s.duplicates} duplicate copies removed (the same packet seen on another interface)")
        if s.interface_changes:
            self._say(f"kstap: {len(s.interface_changes)} interface change(s) during the capture: "
                      + "; ".join(s.interface_changes[-5:]))
        if s.entries or s.dissect_evictions:
            evicted = ", ".join(f"{k} {v}" for k, v in sorted(s.dissect_evictions.items()) if v)
            self._say(f"kstap: {s.entries} entries dissected" + (f" (evictions: {evicted})" if evicted else ""))
        self._say(f"{s.captured} packet{'s' if s.captured != 1 else ''} captured")
        self._say(f"{s.received} packet{'s' if s.received != 1 else ''} received by filter")
        self._say(f"{s.dropped} packet{'s' if s.dropped != 1 else ''} dropped by kernel")


def sampling_lines(s: CaptureSummary) -> list[str]:
    """What sampling kept and what it left out: kept flows, all flows estimated, kernel-side packets.

    When the kernel filter did the sampling, user space only ever sees kept flows, so "kept N of N"
    would say nothing was sampled; the estimate (each kept flow counts 1/rate) and the interface
    counters say what was left out.
    """
    lines = []
    shed = f", {s.shed_flows} shed" if s.shed_flows else ""
    if s.flows_kept or s.flows_seen:
        est = s.flows_estimated
        if s.flows_seen > s.flows_kept:
            kept = f"kept {s.flows_kept:,} of {s.flows_seen:,} flows seen"
        else:
            kept = f"kept {s.flows_kept:,} flows"
        estimate = f"; about {est:,.0f} flows in all (estimated)" if est is not None and est > s.flows_kept else ""
        lines.append(f"kstap: sampling {kept} at a final rate of {s.final_rate:.3g}{shed}{estimate}")
    if s.left_out:
        total = s.left_out + s.received
        lines.append(f"kstap: the kernel filter left out {s.left_out:,} of {total:,} packets on the interfaces "
                     "(interface counters)")
    return lines

"""Read a capture and estimate the traffic it was sampled from (what ``kstap stats`` reports).

A packet belongs to a flow instance: its direction-free flow key (:func:`flow_key`), or the
``id=`` of its ``kstap: flow`` comment when the frame has no key. A ``flow`` comment starts a
new instance (a flow that idled out and came back was decided afresh, perhaps at another rate),
except that it adopts an instance of the same key that had no comment yet. Each instance's
inclusion probability is the ``rate=`` of its ``flow`` comment; an instance without one gets the
section's run rate (``kstap: run … rate=…`` in the SHB), or 1 for a capture kstap did not
sample. Frames without a flow (non-IP) are always kept (p = 1) and count as packets and bytes,
not as flows. Bytes are original lengths, so snaplen truncation does not bias them.

Kernel drops come from the Interface Statistics Blocks (cumulative: the last ISB of each
interface wins) and are reported apart: they are packets lost, not packets sampled away.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from kstap.errors import KstapError, UsageError
from kstap.estimate.horvitz_thompson import FlowSample, TrafficEstimate, estimate_traffic
from kstap.formats.savefile import CaptureFormatError, CaptureReader, Statistics
from kstap.sampling import metadata
from kstap.sampling.flowkey import flow_key

STATS_SCHEMA = 1
"""Version of the ``kstap stats --json`` object, written as its ``"schema"`` field."""

DROPS_NOTE = ("kernel drops are packets of kept flows that the kernel lost (ring full): they are not "
              "sampling, the estimates do not include them, and the flows they hit are incomplete")


@dataclass(frozen=True)
class RunSettings:
    """The run's settings from the SHB comment ``kstap: run mode=… rate=… seed=… filter=…``."""

    mode: str | None
    rate: float | None
    seed: str | None
    filter: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "rate": self.rate, "seed": self.seed, "filter": self.filter}


@dataclass(frozen=True)
class RateChange:
    """The rate in force changed at ``time_ns`` (epoch ns) from ``previous`` to ``rate``."""

    time_ns: int
    rate: float
    previous: float
    reason: str | None
    """The ``reason=`` of a ``kstap: rate`` comment; None when a flow comment revealed it."""


@dataclass(frozen=True)
class RateTimeline:
    """The sampling rate over the capture, as the comments show it."""

    initial: float
    """The rate at the capture's first packet (the run's rate, or the first rate seen)."""
    minimum: float
    mean: float
    """Time-weighted over first to last packet (plain mean of the rates seen if no time passed)."""
    maximum: float
    changes: tuple[RateChange, ...]
    known: bool
    """False when no comment named a rate: the timeline is the assumed constant rate."""


@dataclass(frozen=True)
class KernelDrops:
    """Kernel counters from the ISBs, summed over interfaces (last ISB per interface)."""

    dropped: int | None
    received: int | None
    interfaces: int
    """Interfaces that have an ISB."""


@dataclass
class CaptureStats:
    """Everything ``kstap stats`` reports about one capture file."""

    path: str
    format: str
    packets_read: int
    estimates: TrafficEstimate
    flows_sampled: int
    flows_with_comment: int
    non_ip_packets: int
    p_min: float | None
    p_max: float | None
    run: RunSettings | None
    sampled: bool
    """Whether any kstap sampling metadata (run or flow comment) was found."""
    timeline: RateTimeline
    shed_flows: int
    drops: KernelDrops
    first_ns: int | None
    last_ns: int | None
    error: str | None = None
    """Why reading stopped early (damaged or truncated file); the figures cover what was read."""
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` object (JSON-ready: plain numbers, strings, lists and dicts)."""
        e = self.estimates
        t = self.timeline
        start = self.first_ns
        return {
            "schema": STATS_SCHEMA,
            "file": self.path,
            "format": self.format,
            "complete": self.complete,
            "error": self.error,
            "packets_read": self.packets_read,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "sampled": self.sampled,
            "run": self.run.as_dict() if self.run else None,
            "observed": {
                "packets": int(e.packets.observed),
                "bytes": int(e.bytes.observed),
                "flows": self.flows_sampled,
                "non_ip_packets": self.non_ip_packets,
            },
            "estimates": {"packets": e.packets.as_dict(), "bytes": e.bytes.as_dict(),
                          "flows": e.flows.as_dict(), "confidence": 0.95},
            "flows_sampled": self.flows_sampled,
            "flows_with_comment": self.flows_with_comment,
            "inclusion_probability": {"min": self.p_min, "max": self.p_max},
            "rate_timeline": {
                "known": t.known,
                "initial": t.initial,
                "min": t.minimum,
                "mean": t.mean,
                "max": t.maximum,
                "changes": [{"time_ns": c.time_ns,
                             "offset_s": (c.time_ns - start) / 1e9 if start is not None else None,
                             "rate": c.rate, "previous": c.previous, "reason": c.reason}
                            for c in t.changes],
            },
            "shed_flows": self.shed_flows,
            "kernel_drops": {"dropped": self.drops.dropped, "received": self.drops.received,
                             "interfaces": self.drops.interfaces, "note": DROPS_NOTE},
            "warnings": list(self.warnings),
        }


# -- reading -------------------------------------------------------------------------------------
class _Flow:
    """One flow instance being counted."""

    __slots__ = ("bytes", "commented", "p", "packets", "shed", "uncommented_ok")

    def __init__(self, p: float, commented: bool, uncommented_ok: bool = False) -> None:
        self.p = p
        self.commented = commented
        self.uncommented_ok = uncommented_ok
        """Its section's run is in full mode, which keeps every flow and writes no flow comments."""
        self.packets = 0
        self.bytes = 0
        self.shed = False


def _run_settings(comments: list[str]) -> RunSettings | None:
    for note in _notes(comments):
        if note.event == "run":
            f = note.fields
            return RunSettings(f.get("mode"), _valid_rate(note.rate()), f.get("seed"), f.get("filter"))
    return None


def _valid_rate(rate: float | None) -> float | None:
    """A rate usable as an inclusion probability: in (0, 1] (above 1 means keep all)."""
    if rate is None or math.isnan(rate) or rate <= 0.0:
        return None
    return min(rate, 1.0)


def _default_p(run: RunSettings | None) -> float:
    if run is None or run.rate is None or run.mode == "full":
        return 1.0
    return run.rate


def open_capture(path: str) -> tuple[CaptureReader, Any]:
    """A reader on ``path`` and its open file. Missing/unreadable → UsageError; not a capture → KstapError."""
    hint = "give a pcap or pcapng file, e.g. one written by 'kstap tap -w FILE'"
    try:
        fh = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise UsageError(f"cannot read {path!r}: no such file", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}", hint=hint) from None
    try:
        return CaptureReader(fh, path), fh
    except CaptureFormatError as exc:
        fh.close()
        raise KstapError(str(exc), hint=hint) from None


def read_capture_stats(path: str) -> CaptureStats:
    """Read ``path`` to its end (or to where it stops being valid) and estimate its traffic."""
    reader, fh = open_capture(path)
    with fh:
        return summarize(reader, path)


def summarize(reader: CaptureReader, path: str = "<stream>") -> CaptureStats:
    """Group the reader's packets into flows and estimate the traffic (see the module doc)."""
    current: dict[Hashable, _Flow] = {}
    instances: list[_Flow] = []
    non_ip = _Flow(1.0, True)
    points: list[tuple[int, float, float | None, str | None]] = []  # time, rate, previous, reason
    runs: list[RunSettings] = []
    section: list[str] | None = None
    default_p = 1.0
    full_mode = False
    bad_rates = 0
    first_ns: int | None = None
    last_ns = 0
    error: str | None = None

    def new_section() -> None:
        nonlocal section, default_p, full_mode
        section = reader.shb_comments
        run = _run_settings(section)
        full_mode = run is not None and run.mode == "full"
        if run is not None and run not in runs:
            runs.append(run)
        default_p = _default_p(run)
        current.clear()  # a new section is a new run: flows do not continue across it

    try:
        for rec, info in reader:
            if reader.shb_comments is not section:
                new_section()
            ts, _caplen, origlen, data, if_id, _worker = rec
            if first_ns is None:
                first_ns = ts
            last_ns = max(last_ns, ts)
            notes = _notes(info.comments) if info is not None and info.comments else []
            flow_note = None
            for note in notes:  # a rate change first: a flow note on the same packet shows the new rate
                if note.event == "flow" and flow_note is None:
                    flow_note = note
                elif note.event == "rate" and (rate := _valid_rate(note.rate())) is not None:
                    previous = _valid_rate(_float(note.fields.get("previous")))
                    points.append((ts, rate, previous, note.fields.get("reason")))
            iface = reader.interfaces[if_id] if if_id < len(reader.interfaces) else None
            key: Hashable | None = flow_key(data, iface.linktype if iface else 1)
            if key is None and flow_note is not None and "id" in flow_note.fields:
                key = ("id", flow_note.fields["id"])
            if key is None:
                non_ip.packets += 1
                non_ip.bytes += origlen
                continue
            flow = current.get(key)
            if flow_note is not None:
                rate = _valid_rate(flow_note.rate())
                if rate is None:
                    bad_rates += 1
                else:
                    points.append((ts, rate, None, None))
                p = default_p if rate is None else rate
                if flow is None or flow.commented:
                    flow = current[key] = _Flow(p, True)
                    instances.append(flow)
                else:  # packets of this flow came before its comment: the comment still names its p
                    flow.p, flow.commented = p, True
            elif flow is None:
                flow = current[key] = _Flow(default_p, False, full_mode)
                instances.append(flow)
            flow.packets += 1
            flow.bytes += origlen
            if any(note.event == "shed" for note in notes):
                flow.shed = True
    except CaptureFormatError as exc:
        error = str(exc)
    if reader.shb_comments is not section:  # a file with a section header and no packets
        new_section()
    for st in reader.statistics:  # rate changes no packet carried (the capture ended first)
        for note in _notes(st.comments):
            if note.event == "rate" and (rate := _valid_rate(note.rate())) is not None:
                points.append((st.time_ns, rate, _valid_rate(_float(note.fields.get("previous"))),
                               note.fields.get("reason")))

    samples = [FlowSample(f.packets, f.bytes, f.p) for f in instances]
    if non_ip.packets:
        samples.append(FlowSample(non_ip.packets, non_ip.bytes, 1.0, is_flow=False))
    estimates = estimate_traffic(samples)
    run = runs[0] if runs else None
    sampled = run is not None or any(f.commented for f in instances)
    probabilities = [f.p for f in instances]
    timeline = _timeline(points, run, default_p, first_ns, last_ns)

    warnings: list[str] = []
    uncommented = sum(1 for f in instances if not f.commented)
    unexplained = sum(1 for f in instances if not f.commented and not f.uncommented_ok)
    if sampled and unexplained:
        warnings.append(f"{unexplained} flow(s) have no kstap flow comment (they started before this file, "
                        f"or the capture was edited); they are weighed by the run's rate {default_p:g}")
    if bad_rates:
        warnings.append(f"{bad_rates} flow comment(s) carry no usable rate; those flows are weighed by the "
                        f"run's rate {default_p:g}")
    if len(runs) > 1:
        warnings.append(f"the file holds {len(runs)} sections with different run settings; "
                        "each section's flows are weighed by its own run rate")
    shed = sum(1 for f in instances if f.shed)
    if shed:
        warnings.append(f"{shed} flow(s) were shed under memory pressure: their later packets are missing, "
                        "so packet and byte estimates are low by what those flows lost")
    drops = _drops(reader.statistics)
    if drops.dropped:
        warnings.append(f"the kernel dropped {drops.dropped} packet(s) of kept flows (ring full): drops are "
                        "not sampling and are not in the estimates")
    if error is not None:
        warnings.append(f"the file stops being a valid capture after {reader.packets} packet(s); "
                        "the figures cover those packets only")

    return CaptureStats(
        path=path, format=reader.format, packets_read=reader.packets, estimates=estimates,
        flows_sampled=len(instances), flows_with_comment=len(instances) - uncommented,
        non_ip_packets=non_ip.packets,
        p_min=min(probabilities) if probabilities else None,
        p_max=max(probabilities) if probabilities else None,
        run=run, sampled=sampled, timeline=timeline, shed_flows=shed, drops=drops,
        first_ns=first_ns, last_ns=last_ns if first_ns is not None else None,
        error=error, warnings=warnings,
    )


def _notes(comments: list[str]) -> list[metadata.Note]:
    """The kstap notes of a packet; a comment may hold several, one per line."""
    out = []
    for comment in comments:
        for line in comment.splitlines():
            note = metadata.parse(line.strip())
            if note is not None:
                out.append(note)
    return out


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _timeline(points: list[tuple[int, float, float | None, str | None]], run: RunSettings | None,
              default_p: float, first_ns: int | None, last_ns: int) -> RateTimeline:
    """The rate as a step function over [first packet, last packet] and its changes."""
    run_rate = _default_p(run) if run is not None and run.rate is not None else None
    if not points:
        rate = run_rate if run_rate is not None else default_p
        return RateTimeline(rate, rate, rate, rate, (), known=run_rate is not None)
    points = sorted(points, key=lambda pt: pt[0])  # stable: file order within a timestamp
    start = first_ns if first_ns is not None else points[0][0]
    initial = run_rate if run_rate is not None else points[0][1]
    rate, since = initial, start
    seen = [initial]
    weighted = 0.0
    changes: list[RateChange] = []
    for t, new, previous, reason in points:
        if new == rate:
            continue
        weighted += rate * max(0, t - since)
        changes.append(RateChange(t, new, previous if previous is not None else rate, reason))
        rate, since = new, max(since, t)
        seen.append(new)
    end = max(last_ns, since)
    weighted += rate * (end - since)
    span = end - start
    mean = weighted / span if span > 0 else sum(seen) / len(seen)
    return RateTimeline(initial, min(seen), mean, max(seen), tuple(changes), known=True)


def _drops(statistics: list[Statistics]) -> KernelDrops:
    last: dict[int, Statistics] = {}
    for st in statistics:  # counts are cumulative: the last ISB of an interface has the totals
        last[st.if_id] = st
    dropped = [s.dropped for s in last.values() if s.dropped is not None]
    received = [s.received for s in last.values() if s.received is not None]
    return KernelDrops(sum(dropped) if dropped else None, sum(received) if received else None, len(last))

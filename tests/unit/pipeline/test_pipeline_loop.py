"""The pipeline from in-memory stages: what the loop does with each declared capability.

The source and sink here are plain objects that say what they can do (``capabilities``), as the
real ones do; the loop must act on those flags alone (no class checks, no keyword side doors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memory_stages import T0, MemorySink, MemorySource, dns_exchange, udp_flows

from kstap.config import TapSettings
from kstap.contracts import Event, SourceCapabilities
from kstap.model import CaptureSummary, Interface, StatsSnapshot
from kstap.pipeline import StopFlag, run_tap
from kstap.pipeline.loop import kept
from kstap.sampling import metadata

REMOTE = SourceCapabilities(sampled_upstream=True, packet_comments=True, worker_stats=False)
FILE = SourceCapabilities(finite=True)


class Recorder:
    def __init__(self) -> None:
        self.listened: list[str] = []
        self.snapshots: list[StatsSnapshot] = []
        self.events: list[Event] = []
        self.warnings: list[str] = []

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        self.listened.append(backend)

    def progress(self, snapshot: StatsSnapshot) -> None:
        self.snapshots.append(snapshot)

    def event(self, event: Event) -> None:
        self.events.append(event)

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def run(source: MemorySource, **settings: Any) -> tuple[CaptureSummary, list[MemorySink], Recorder]:
    sinks: list[MemorySink] = []

    def sink_factory(interfaces: list[Interface], comment: str, counters: Any) -> MemorySink:
        sinks.append(MemorySink(list(interfaces), comment))
        return sinks[-1]

    mode = settings.pop("mode", "full")
    rate = settings.pop("rate", 1.0)
    tap = TapSettings(interfaces=["mem0"], **settings)
    tap.sampling.mode, tap.sampling.rate, tap.sampling.seed = mode, rate, 7
    reporter = Recorder()
    summary = run_tap(tap, reporter, StopFlag(), sink_factory=sink_factory, source=source, backend="memory")
    return summary, sinks, reporter


def test_records_and_their_upstream_comments_reach_the_sink_and_the_count_cuts_both(frames: Any) -> None:
    recs = udp_flows(frames.udp, 4, T0)  # 12 records
    src = MemorySource([recs[:5], recs[5:]], REMOTE, comments=[{0: "first", 4: "fifth"}, {0: "sixth", 3: "ninth"}])
    summary, [sink], rec = run(src, count=8)
    assert summary.stopped_by == "count" and summary.captured == 8
    assert sink.records == recs[:8]
    assert sink.notes == {0: "first", 4: "fifth", 5: "sixth"}  # "ninth" was the 9th record: cut with it
    assert rec.listened == ["memory"] and sink.closed and src.closed


def test_a_source_that_sampled_upstream_is_not_sampled_again(frames: Any) -> None:
    recs = udp_flows(frames.udp, 40, T0)
    summary, [sink], _ = run(MemorySource([recs], REMOTE), count=len(recs), mode="percentage", rate=0.25)
    assert summary.sampled_out == 0 and sink.records == recs and sink.notes == {}


def test_a_source_that_did_not_sample_is_sampled_here_whole_flows_with_first_packet_comments(frames: Any) -> None:
    recs = udp_flows(frames.udp, 40, T0)
    summary, [sink], _ = run(MemorySource([recs], FILE), mode="percentage", rate=0.25)
    assert summary.stopped_by == "end" and 0 < len(sink.records) < len(recs)
    assert summary.sampled_out == len(recs) - len(sink.records)
    flows = {r[3] for r in sink.records}  # one frame per flow (the payload repeats)
    assert len(sink.records) == 3 * len(flows)  # every kept flow is kept whole
    notes = sorted(sink.notes.values())
    assert len(notes) == len(flows) and all(metadata.parse(n) is not None for n in notes)


def test_a_finite_source_ends_the_run_and_what_passed_is_what_was_processed(frames: Any) -> None:
    recs = udp_flows(frames.udp, 3, T0)
    summary, [sink], _ = run(MemorySource([recs[:4], recs[4:]], FILE))
    assert summary.stopped_by == "end" and summary.captured == len(recs) == len(sink.records)
    assert summary.received == len(recs) and summary.dropped == 0


def test_entries_dissected_upstream_are_written_once_and_the_packets_are_not_dissected_again(
        tmp_path: Path, frames: Any) -> None:
    packets = dns_exchange(frames.udp, "api.example", 7, T0)
    worker_entry = {"schema": 1, "time": 1.0, "flow_id": "ab", "protocol": "dns", "client": "10.0.0.1:40000",
                    "server": "10.0.0.53:53", "query_name": "api.example", "node": "node-a"}
    caps = SourceCapabilities(sampled_upstream=True, dissected_upstream=True)
    out = tmp_path / "upstream.ndjson"
    summary, _, _ = run(MemorySource([packets], caps, entries=[[worker_entry]]), count=2, entries=str(out))
    assert [json.loads(line) for line in out.read_text().splitlines()] == [worker_entry]
    assert summary.entries == 1

    local = tmp_path / "local.ndjson"  # the same packets from a source that did not dissect: dissected here
    summary, _, _ = run(MemorySource([packets], SourceCapabilities(finite=True)), entries=str(local))
    [entry] = [json.loads(line) for line in local.read_text().splitlines()]
    assert entry["protocol"] == "dns" and entry["query_name"] == "api.example" and summary.entries == 1


def test_snapshots_count_per_worker_and_carry_the_rate(frames: Any) -> None:
    recs = udp_flows(frames.udp, 2, T0)
    clock = iter(float(t) for t in range(100))
    src = MemorySource([recs[:2], [], recs[2:]], REMOTE)
    tap = TapSettings(interfaces=["mem0"], count=len(recs))
    reporter = Recorder()
    run_tap(tap, reporter, StopFlag(), clock=lambda: next(clock), source=src, backend="memory")
    assert reporter.snapshots and reporter.snapshots[-1].rate == 1.0
    assert reporter.snapshots[-1].workers[0].captured > 0


def test_kept_moves_comments_with_their_records(frames: Any) -> None:
    recs = udp_flows(frames.udp, 1, T0, packets_per_flow=4)
    left, notes = kept(recs, {0: "a", 2: "c", 3: "d"}, lambda r: r[0] != recs[1][0])
    assert left == [recs[0], recs[2], recs[3]] and notes == {0: "a", 1: "c", 2: "d"}
    assert kept(recs, None, lambda r: True) == (recs, None)

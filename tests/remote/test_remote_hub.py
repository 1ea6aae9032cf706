"""kstap.remote.hub: the backlog readers follow, the pipeline's streaming sink, live control's inbox."""

from __future__ import annotations

import threading
import time

import pytest

from kstap.formats import pcapng
from kstap.model import Interface, SourceStats
from kstap.remote import protocol
from kstap.remote.hub import (
    ControlInbox,
    ControlRejected,
    ControlRequest,
    EntryLines,
    StreamHub,
    StreamSink,
)

TS = 1_700_000_000_000_000_000
IFACE = Interface("veth0")


def _decode(hub: StreamHub, parts: list[bytes]) -> list[protocol.Frame]:
    assert hub.hello is not None
    dec = protocol.StreamDecoder()
    return dec.feed(protocol.preamble() + protocol.encode_hello(0, hub.hello) + b"".join(parts))[1:]


def test_reader_gets_frames_in_order_then_heartbeats() -> None:
    hub = StreamHub("n1")
    hub.set_hello([IFACE])
    hub.publish_batch(TS, [(TS + 1, 1, 1, b"a", 0, 0)], {0: "first"})
    hub.publish_event("warning", {"message": "hi"})
    parts, last, done = hub.read(0, timeout=0)
    frames = _decode(hub, parts)
    assert [f.seq for f in frames] == [1, 2] and last == 2 and not done
    assert isinstance(frames[0].body, protocol.Batch) and frames[0].body.comments == {0: "first"}
    hub.advance(TS + 50)
    parts, last, done = hub.read(2, timeout=0.01)
    (beat,) = _decode(hub, parts)
    assert beat.seq == 2 and beat.body == protocol.Batch(TS + 50, [], {})


def test_a_reader_behind_the_backlog_gets_a_gap_with_the_packets_it_missed() -> None:
    hub = StreamHub("n1", backlog_bytes=600)
    hub.set_hello([IFACE])
    for i in range(20):
        hub.publish_batch(TS + i, [(TS + i, 40, 40, b"x" * 40, 0, 0)])
    parts, last, _ = hub.read(0, timeout=0)
    frames = _decode(hub, parts)
    gap = frames[0].body
    assert isinstance(gap, protocol.Gap)
    kept = [f for f in frames if isinstance(f.body, protocol.Batch)]
    assert gap.frames == 20 - len(kept) and gap.packets_before == 20 - len(kept)
    assert last == 20 and hub.stats().evicted_frames == gap.frames
    assert 0 < len(kept) < 20


def test_end_is_the_last_frame_and_is_noticed() -> None:
    hub = StreamHub("n1")
    hub.set_hello([IFACE])
    hub.end("signal", {"captured": 0})
    hub.end("again", {})  # ignored
    parts, _, done = hub.read(0, timeout=0)
    assert done and hub.end_delivered and hub.wait_end_delivered(0.1)
    (end,) = _decode(hub, parts)
    assert end.body == protocol.End("signal", {"captured": 0})


def test_big_batches_are_split_into_frames() -> None:
    hub = StreamHub("n1")
    hub.set_hello([Interface("veth0", snaplen=262144)])
    recs = [(TS + i, 200000, 200000, b"\0" * 200000, 0, 0) for i in range(12)]
    hub.publish_batch(TS, recs, {11: "last"})
    parts, _, _ = hub.read(0, timeout=0, max_bytes=1 << 30)
    frames = _decode(hub, parts)
    assert len(frames) > 1
    got = [r for f in frames if isinstance(f.body, protocol.Batch) for r in f.body.records]
    assert got == recs
    assert frames[-1].body.comments == {len(frames[-1].body.records) - 1: "last"}  # type: ignore[union-attr]


class Clock:
    def __init__(self) -> None:
        self.now = TS

    def __call__(self) -> int:
        return self.now


def test_sink_watermark_trails_the_loop_point_before_the_read() -> None:
    hub, clock = StreamHub("n1"), Clock()
    sink = StreamSink(hub, [IFACE], "kstap: run", lambda: [pcapng.InterfaceCounters(0, 0, 7, 1, 0)],
                      lag_ms=100, clock=clock)
    lag = 100_000_000
    clock.now += 10_000_000
    sink.write([(TS + 5, 1, 1, b"a", 0, 0)])  # this read began after the sink was made
    assert hub.stats().watermark == TS - lag
    clock.now += 10_000_000
    sink.tick()  # an empty read that began after the last write
    assert hub.stats().watermark == TS + 10_000_000 - lag
    clock.now += 1_000_000_000
    sink.loop_point()  # progress right after a sink call proves no newer read: no move
    assert hub.stats().watermark == TS + 10_000_000 - lag
    clock.now += 1_000_000_000
    sink.loop_point()  # a second progress: a read (all sampled out) happened in between
    assert hub.stats().watermark == clock.now - 1_000_000_000 - lag
    assert sink.packets_written == 1 and sink.close()
    assert hub.ifstats == [SourceStats(7, 1, 1)]


def test_sink_announces_interfaces_that_appear_later() -> None:
    hub = StreamHub("n1")
    sink = StreamSink(hub, [IFACE], "c")
    sink.ensure_interfaces([IFACE, Interface("veth1")])
    frames = _decode(hub, hub.read(0, timeout=0)[0])
    hello = frames[0].body
    assert isinstance(hello, protocol.Hello) and [i.name for i in hello.interfaces] == ["veth0", "veth1"]


def test_entry_lines_become_entries_frames() -> None:
    hub = StreamHub("n1")
    hub.set_hello([IFACE])
    lines = EntryLines(hub)
    lines.write('{"a":1}\n{"b"')
    lines.write(':2}\n')
    lines.flush()
    frames = _decode(hub, hub.read(0, timeout=0)[0])
    items = [i for f in frames if isinstance(f.body, protocol.Entries) for i in f.body.items]
    assert items == [{"a": 1}, {"b": 2}]


def test_control_inbox_waits_for_the_loop() -> None:
    inbox = ControlInbox()
    assert inbox.take() is None

    def loop() -> None:
        for _ in range(200):
            req = inbox.take()
            if req is not None:
                inbox.done(req, None if req.rate != 0.3 else "kernel said no")
                if req.rate == 0.3:
                    return
            threading.Event().wait(0.01)

    t = threading.Thread(target=loop)
    t.start()
    assert inbox.submit(ControlRequest(rate=0.5), timeout=5) == (True, None)
    assert inbox.current == {"rate": 0.5}
    assert inbox.submit(ControlRequest(rate=0.3), timeout=5) == (True, "kernel said no")
    t.join()
    assert inbox.current == {"rate": 0.5}
    assert inbox.submit(ControlRequest(filter="tcp"), timeout=0.05) == (False, None)  # nobody took it: queued
    assert inbox.submit(ControlRequest(rate=0.2), timeout=0.05) == (False, None)
    assert inbox.take() == ControlRequest(rate=0.2, filter="tcp")  # merged


def test_control_inbox_validator_refuses_before_queueing() -> None:
    def no_rates(req: ControlRequest) -> None:
        if req.rate is not None:
            raise ControlRejected(409, "no")

    inbox = ControlInbox(no_rates)
    with pytest.raises(ControlRejected):
        inbox.submit(ControlRequest(rate=0.5), timeout=0)
    assert inbox.take() is None


def test_a_moved_watermark_wakes_a_waiting_reader_at_once() -> None:
    hub = StreamHub("n1")
    hub.set_hello([IFACE])
    got: list[tuple[list[bytes], float]] = []
    start = time.monotonic()
    reader = threading.Thread(target=lambda: got.append((hub.read(0, timeout=30.0)[0], time.monotonic())))
    reader.start()
    time.sleep(0.2)
    hub.advance(TS + 7)
    reader.join(10)
    assert got, "the reader still waits for its 30 s timeout"
    (beat,) = _decode(hub, got[0][0])
    assert beat.body == protocol.Batch(TS + 7, [], {}) and got[0][1] - start < 10

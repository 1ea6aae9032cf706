"""A worker's stream fed by the C encoders: their EPBs become BATCH bodies (``epb_batch``) that
decode to exactly what the records path (``protocol.encode_batch``) sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.capture.afpacket import epb_batch
from kstap.formats import pcapng
from kstap.model import Interface, PacketRecord
from kstap.remote import protocol
from kstap.remote.hub import StreamHub, StreamSink

TS = 1_700_000_000_000_000_000
needs_c = pytest.mark.skipif(epb_batch is None, reason="the C helper is not built")

record = st.tuples(st.integers(0, 1 << 62), st.binary(max_size=200), st.integers(0, 3000), st.integers(0, 3))
note = st.one_of(st.none(), st.text(max_size=90))


def records_of(drawn: list[tuple[int, bytes, int, int]]) -> list[PacketRecord]:
    return [(ts, len(data), len(data) + extra, data, ifid, 0) for ts, data, extra, ifid in drawn]


@needs_c
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(record, note), max_size=60), st.integers(0, 1 << 62), st.booleans())
def test_the_body_is_the_records_paths(drawn: list[tuple[tuple[int, bytes, int, int], str | None]],
                                       watermark: int, with_queue: bool) -> None:
    assert epb_batch is not None
    records = records_of([r for r, _ in drawn])
    comments = {i: c for i, (_, c) in enumerate(drawn) if c}
    epbs = b"".join(pcapng.enhanced_packets(records, comments=comments, with_queue=with_queue))
    body, n, captured = epb_batch(epbs, watermark)
    assert n == len(records) and captured == sum(r[1] for r in records)
    assert body == protocol.encode_batch(1, watermark, records, comments)[protocol.HEADER.size:]


@needs_c
@pytest.mark.parametrize("damage", ["type", "total", "trailer", "caplen", "cut", "option"])
def test_malformed_epbs_are_refused(damage: str) -> None:
    assert epb_batch is not None
    good = bytearray(b"".join(pcapng.enhanced_packets([(TS, 5, 5, b"hello", 0, 0)], comments={0: "x"})))
    if damage == "type":
        good[0] = 5
    elif damage == "total":
        good[4] += 4
    elif damage == "trailer":
        good[-4] += 4
    elif damage == "caplen":
        good[20] = 200
    elif damage == "cut":
        del good[-8:]
    else:  # an option running past the block
        good[28 + 8 + 2] = 0xF0
    with pytest.raises(ValueError):
        epb_batch(bytes(good), TS)


@needs_c
def test_the_sink_publishes_encoded_blocks_as_batches() -> None:
    assert epb_batch is not None
    hub = StreamHub("n1")
    clock = iter(range(TS, TS + 10_000_000_000, 1_000_000_000))
    sink = StreamSink(hub, [Interface("any", 276)], "c", batch_of_epbs=epb_batch, lag_ms=0,
                      clock=lambda: next(clock))
    assert sink.capabilities.encoded_blocks
    first = [(TS + i, 3, 9, b"abc", 0, 0) for i in range(3)]
    second = [(TS + 10 + i, 2, 2, b"de", 0, 0) for i in range(2)]
    chunks = [b"".join(pcapng.enhanced_packets(first, comments={1: "kstap: flow"})),
              b"".join(pcapng.enhanced_packets(second))]
    sink.write_encoded(chunks, 5)
    sink.write_encoded([], 0)  # an empty read moves the watermark on
    parts, last, _ = hub.read(0, timeout=0)
    assert hub.hello is not None
    frames = protocol.StreamDecoder().feed(protocol.preamble() + protocol.encode_hello(0, hub.hello)
                                           + b"".join(parts))[1:]
    batches = [f.body for f in frames if isinstance(f.body, protocol.Batch)]
    assert [b.records for b in batches] == [first, second]
    assert batches[0].comments == {1: "kstap: flow"} and batches[0].watermark == TS
    assert sink.packets_written == 5 and sink.bytes_written == 13
    assert hub.read(last, timeout=0)[0] == [protocol.encode_batch(last, TS + 1_000_000_000, [])]


def test_without_the_rewriter_the_sink_takes_records() -> None:
    sink = StreamSink(StreamHub("n1"), [Interface("any", 276)], "c")
    assert not sink.capabilities.encoded_blocks

"""kstap.remote.protocol: every frame round-trips, and hostile bytes raise ProtocolError and nothing else."""

from __future__ import annotations

import itertools
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kstap.model import Interface, PacketRecord, SourceStats
from kstap.remote import protocol
from kstap.remote.protocol import ProtocolError, StreamDecoder

TS = 1_700_000_000_123_456_789
IFACES = (Interface("veth0", 1, 262144, "tcp"), Interface("veth1", 101, 1500, ""))
HELLO = protocol.Hello(node="node-a", run="r1", interfaces=IFACES, comment="kstap: run mode=full",
                       mode="percentage", rate=0.25, seed_id="abc", started_ns=TS)


def _stream(*frames: bytes) -> bytes:
    return protocol.preamble() + protocol.encode_hello(0, HELLO) + b"".join(frames)


def _records(n: int = 5) -> list[PacketRecord]:
    return [(TS + i, 10 + i, 100 + i, bytes([i]) * (10 + i), i % 2, 0) for i in range(n)]


def test_every_frame_round_trips() -> None:
    recs = _records()
    body = [
        protocol.encode_batch(1, TS - 5, recs, {0: "kstap: flow id=1", 3: "ünïcode"}),
        protocol.encode_ifstats(2, [SourceStats(5, 1, 4), SourceStats(0, 0, 0)]),
        protocol.encode_event(3, "alert", {"level": "warn", "kind": "drops", "message": "ring full"}),
        protocol.encode_event(4, "stats", {"captured": 5, "rate": 0.5, "elapsed": 1.5}),
        protocol.encode_entries(5, ['{"a":1}', '{"b":"x"}']),
        protocol.encode_gap(6, 3, 40),
        protocol.encode_batch(6, TS, []),  # a heartbeat repeats the seq
        protocol.encode_end(7, "signal", {"captured": 5}),
    ]
    frames = StreamDecoder().feed(_stream(*body))
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 5, 6, 6, 7]
    assert frames[0].body == HELLO
    batch = frames[1].body
    assert isinstance(batch, protocol.Batch)
    assert batch.watermark == TS - 5
    assert batch.records == recs
    assert batch.comments == {0: "kstap: flow id=1", 3: "ünïcode"}
    assert frames[2].body == protocol.IfStats((SourceStats(5, 1, 4), SourceStats(0, 0, 0)))
    assert frames[3].body == protocol.Event("alert", {"level": "warn", "kind": "drops", "message": "ring full"})
    assert frames[5].body == protocol.Entries(({"a": 1}, {"b": "x"}))
    assert frames[6].body == protocol.Gap(3, 40)
    assert frames[7].body == protocol.Batch(TS, [], {})
    assert frames[8].body == protocol.End("signal", {"captured": 5})


def test_generic_encode_matches_the_decoder() -> None:
    bodies: list[protocol.Body] = [
        protocol.Batch(TS, _records(3), {1: "c"}), protocol.IfStats((SourceStats(1, 2, 3), SourceStats())),
        protocol.Event("rate_change", {"old": 0.5, "new": 0.25, "reason": "pi"}),
        protocol.Entries(({"x": [1, 2]},)), protocol.Gap(1, 0), protocol.End("count", {}),
    ]
    data = _stream(*(protocol.encode(i + 1, b) for i, b in enumerate(bodies)))
    assert [f.body for f in StreamDecoder().feed(data)[1:]] == bodies


@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40))
def test_any_split_of_the_bytes_gives_the_same_frames(sizes: list[int]) -> None:
    data = _stream(protocol.encode_batch(1, TS, _records(7), {2: "x"}), protocol.encode_end(2, "end", {}))
    whole = StreamDecoder().feed(data)
    dec = StreamDecoder()
    got = []
    pos = 0
    for n in sizes * (len(data) // sum(sizes) + 1):
        got += dec.feed(data[pos : pos + n])
        pos += n
        assert dec.buffered <= protocol.HEADER.size + protocol.MAX_PAYLOAD + n
        if pos >= len(data):
            break
    assert got == whole


def test_batch_cuts_keep_frames_small_and_cover_everything() -> None:
    recs = [(TS + i, 60000, 60000, b"\0" * 60000, 0, 0) for i in range(40)]
    cuts = protocol.batch_cuts(recs, target=1 << 20)
    assert cuts[0][0] == 0 and cuts[-1][1] == 40
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))
    for start, end in cuts:
        assert len(protocol.encode_batch(1, TS, recs[start:end])) <= (1 << 20) + 64
    assert protocol.batch_cuts([]) == [(0, 0)]


def test_long_comments_are_cut_at_a_character_boundary() -> None:
    note = "é" * 40000  # 80000 bytes of UTF-8
    frames = StreamDecoder().feed(_stream(protocol.encode_batch(1, TS, _records(1), {0: note})))
    got = frames[1].body
    assert isinstance(got, protocol.Batch)
    assert note.startswith(got.comments[0]) and len(got.comments[0].encode()) <= protocol.MAX_COMMENT


def _header(kind: int, length: int, seq: int = 1, flags: int = 0) -> bytes:
    return protocol.HEADER.pack(kind, flags, 0, length, seq)


def _raw(kind: int, payload: bytes) -> bytes:
    return _header(kind, len(payload)) + payload


def _batch_payload(*records: tuple[int, int, int, int, bytes, bytes], count: int | None = None) -> bytes:
    out = [protocol.BATCH_HEAD.pack(TS, len(records) if count is None else count)]
    for ts, caplen, origlen, ifid, data, note in records:
        out.append(protocol.RECORD.pack(ts, caplen, origlen, ifid, len(note)) + data + note)
    return b"".join(out)


BAD = {
    "bad magic": b"HTTP/1.1 200 OK\r\n",
    "bad version": struct.pack("<4sHH", b"KSTP", 2, 0),
    "no hello first": protocol.preamble() + protocol.encode_batch(1, TS, []),
    "unknown frame type": _stream(_header(99, 0)),
    "flags set": _stream(_header(2, 12, flags=1) + protocol.BATCH_HEAD.pack(TS, 0)),
    "oversized frame": _stream(_header(2, protocol.MAX_PAYLOAD + 1)),
    "seq going back": _stream(protocol.encode_end(5, "x", {}))[:0] + protocol.preamble()
    + protocol.encode_hello(9, HELLO) + protocol.encode_batch(3, TS, []),
    "interface id beyond the hello": _stream(_header(2, 12 + 20 + 1) + _batch_payload((TS, 1, 1, 2, b"x", b""))),
    "caplen above origlen": _stream(_header(2, 12 + 20 + 2) + _batch_payload((TS, 2, 1, 0, b"xy", b""))),
    "caplen above the snaplen limit": _stream(_header(2, 12 + 20) + _batch_payload((TS, 300000, 300000, 0, b"", b""))),
    "count larger than the records": _stream(_header(2, 12 + 21) + _batch_payload((TS, 1, 1, 0, b"x", b""),
                                                                                   count=2)),
    "trailing bytes": _stream(_header(2, 13) + protocol.BATCH_HEAD.pack(TS, 0) + b"!"),
    "comment not UTF-8": _stream(_header(2, 12 + 20 + 1 + 2) + _batch_payload((TS, 1, 1, 0, b"x", b"\xff\xfe"))),
    "timestamp above 2^63": _stream(_header(2, 12 + 20) + _batch_payload((1 << 63, 0, 0, 0, b"", b""))),
    "too many records": _stream(_header(2, 12) + protocol.BATCH_HEAD.pack(TS, protocol.MAX_RECORDS + 1)),
    "json not an object": _stream(_header(4, 2) + b"[]"),
    "json not json": _stream(_header(4, 5) + b"{nope"),
    "json NaN": _stream(_raw(4, b'{"kind":"stats","data":{"rate":NaN}}')),
    "deep json": _stream(_header(4, 200000) + b"[" * 200000),
    "unknown event": _stream(protocol.encode_event(1, "alert", {"level": "warn", "kind": "k", "message": "m"})
                             .replace(b'"alert"', b'"alarm"')),
    "alert with a bad level": _stream(protocol.encode_event(1, "alert", {"level": "warn", "kind": "k", "message": "m"})
                                      .replace(b'"warn"', b'"oops"')),
    "ifstats of the wrong length": _stream(protocol.encode_ifstats(1, [SourceStats()])),
    "negative counter": _stream(_raw(3, b'{"interfaces":[[1,2,3],[-1,0,0]]}')),
    "bool as a counter": _stream(_raw(3, b'{"interfaces":[[true,2,3],[1,0,0]]}')),
    "a float as a counter": _stream(_raw(3, b'{"interfaces":[[1.5,2,3],[1,0,0]]}')),
    "a huge integer": _stream(_raw(3, b'{"interfaces":[[' + b"9" * 5000 + b',2,3],[1,0,0]]}')),
    "a hello of another run": _stream(protocol.encode_hello(1, protocol.Hello("n", "r2", IFACES))),
    "a hello of another version": protocol.preamble() + protocol.encode_hello(0, HELLO).replace(
        b'"version":1', b'"version":7'),
    "a hello without interfaces": protocol.preamble() + protocol.encode_hello(0, protocol.Hello("n", "r", ())),
    "data after end": _stream(protocol.encode_end(1, "x", {}), protocol.encode_batch(2, TS, [])),
    "gap of zero frames": _stream(_raw(6, b'{"frames":0,"packets_before":1}')),
    "entries line not an object": _stream(protocol.encode_entries(1, ['{"a":1}', "7"])),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_streams_raise_protocol_error(name: str) -> None:
    dec = StreamDecoder()
    with pytest.raises(ProtocolError):
        dec.feed(BAD[name])
        dec.feed(b"\0" * 64)  # some cases only fail once more bytes prove the frame wrong
    with pytest.raises(ProtocolError):  # and the decoder stays failed
        dec.feed(b"")


def test_a_later_hello_may_add_interfaces() -> None:
    more = protocol.Hello("node-a", "r1", (*IFACES, Interface("eth2")))
    frames = StreamDecoder().feed(_stream(protocol.encode_hello(1, more),
                                          protocol.encode_batch(2, TS, [(TS, 1, 1, b"x", 2, 0)])))
    assert isinstance(frames[2].body, protocol.Batch) and frames[2].body.records[0][4] == 2


def test_protocol_error_is_a_worker_failure() -> None:
    from kstap.errors import ExitCode

    assert ProtocolError("x").code == ExitCode.WORKER


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    dec = StreamDecoder()
    try:
        dec.feed(data)
        dec.feed(protocol.preamble() + data)
    except ProtocolError:
        pass
    assert dec.buffered <= len(data) * 2 + protocol.PREAMBLE.size


VALID = _stream(protocol.encode_batch(1, TS, _records(4), {1: "kstap: flow"}),
                protocol.encode_ifstats(2, [SourceStats(1, 2, 3), SourceStats()]),
                protocol.encode_event(3, "rate_change", {"old": 0.5, "new": 0.25, "reason": "pi"}),
                protocol.encode_entries(4, ['{"a":1}']), protocol.encode_gap(5, 1, 2),
                protocol.encode_end(6, "end", {"captured": 4}))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.integers(min_value=0, max_value=len(VALID)), st.integers(min_value=1, max_value=97))
def test_fuzz_mutated_valid_streams(flips: list[tuple[int, int]], cut: int, step: int) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    data = data[: max(cut, 1)] if cut < len(VALID) // 2 else data
    dec = StreamDecoder()
    try:
        for i in range(0, len(data), step):
            for frame in dec.feed(bytes(data[i : i + step])):
                assert isinstance(frame.body, protocol.Body)  # type: ignore[arg-type]
                if isinstance(frame.body, protocol.Batch):
                    assert all(r[1] <= r[2] and len(r[3]) == r[1] for r in frame.body.records)
    except ProtocolError:
        pass
    assert dec.buffered <= protocol.HEADER.size + protocol.MAX_PAYLOAD + step


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_fuzz_json_payloads(value: object) -> None:
    try:
        payload = json.dumps({"kind": "stats", "data": value}).encode()
    except ValueError:
        return
    data = protocol.preamble() + protocol.encode_hello(0, HELLO) + _header(4, len(payload)) + payload
    try:
        frames = StreamDecoder().feed(data)
    except ProtocolError:
        return
    assert isinstance(frames[-1].body, protocol.Event)


def test_a_batch_body_made_elsewhere_frames_like_encode_batch_and_keeps_the_limit() -> None:
    recs = _records()
    whole = protocol.encode_batch(9, TS, recs, {2: "kstap: flow id=2"})
    body = whole[protocol.HEADER.size:]
    assert protocol.encode_batch_body(9, body) == whole
    with pytest.raises(ValueError, match="above the"):
        protocol.encode_batch_body(10, bytes(protocol.MAX_PAYLOAD + 1))

"""HTTP/1, HTTP/2 and DNS parsers and the dissection stage under fuzzing.

A parser may raise only ParserError (from feed/gap; close never raises), its entries must survive
the NDJSON writer, its memory stays a non-negative int. The stage never raises and never counts an
"internal" error (the stage catches everything, so that counter is how a parser bug shows)."""

from __future__ import annotations

import seeds
import targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutated

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HTTP1_PIECES = [b"GET / HTTP/1.1\r\n", b"POST /u HTTP/1.0\r\n", b"HEAD /h HTTP/1.1\r\n", b"Host: h\r\n",
                b"Content-Length: 5\r\n", b"Content-Length: 99999999999999999\r\n", b"Content-Length: -1\r\n",
                b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"\r\n", b"hello",
                b"5\r\nhello\r\n", b"0\r\n\r\n", b"ffffffffffffffffff\r\n", b"5;ext=1\r\nhello\r\n",
                b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching\r\n",
                b"HTTP/1.1 204 No Content\r\n", b"Upgrade: h2c\r\n", b"Connection: upgrade\r\n",
                b"HTTP/1.0 304 Not Modified\r\n", b"X: " + b"a" * 300 + b"\r\n", b"\r\n\r\n", b"\n", b"\0\xff"]
H2_PIECES = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
             b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x01\x00\x00\xff\xff",
             b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x8a", b"\x00\x00\x03\x00\x01\x00\x00\x00\x01abc",
             b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08",
             b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\0" * 8,
             b"\x00\x00\x02\x09\x04\x00\x00\x00\x01\x88\x40", b"\x00\x00\x01\x01\x00\x00\x00\x00\x03\x3f",
             b"\x00\x40\x00\x00\x00\x00\x00\x00\x01", b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x7f\xff\xff\xff",
             b"\x00\x00\x05\x05\x04\x00\x00\x00\x01\x00\x00\x00\x02\x82", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"]
HTTP1_CONVERSATION = seeds.http1_conversation()
GRPC_CONVERSATION = seeds.h2_conversation(grpc=True)


def ops_from(pieces: list[bytes]) -> st.SearchStrategy[list[targets.Op]]:
    chunk = st.one_of(st.binary(max_size=64), st.lists(st.sampled_from(pieces), min_size=1, max_size=6).map(b"".join))
    feed = st.tuples(st.just("feed"), st.integers(0, 1), chunk)
    gap = st.tuples(st.just("gap"), st.integers(0, 1), st.integers(1, 5000))
    return st.lists(st.one_of(feed, feed, feed, gap), max_size=14)  # type: ignore[return-value]


def untimed(entries: list[targets.Entry]) -> list[dict[str, object]]:
    """Entries without their times (a split adds operations, and every operation advances the clock)."""
    return [{k: v for k, v in e.to_json().items() if k not in ("time", "latency_ms")} for e in entries]


def split(ops: list[targets.Op], draw: st.DataObject) -> list[targets.Op]:
    """The same bytes cut at other places (parsers must not care where segments end)."""
    out: list[targets.Op] = []
    for kind, direction, arg in ops:
        if kind == "feed" and isinstance(arg, bytes) and len(arg) > 1:
            cut = draw.draw(st.integers(0, len(arg)))
            out += [(kind, direction, arg[:cut]), (kind, direction, arg[cut:])]
        else:
            out.append((kind, direction, arg))
    return out


@FAST
@given(ops_from(HTTP1_PIECES))
def test_http1_pieces(ops: list[targets.Op]) -> None:
    targets.run_http1(ops)


@FAST
@given(mutated(seeds.http1_seeds(), max_edits=8))
def test_http1_damaged_conversations(data: bytes) -> None:
    targets.http1(data)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_http1_segment_boundaries_do_not_matter(draw: st.DataObject) -> None:
    ops = HTTP1_CONVERSATION
    assert untimed(targets.run_http1(split(ops, draw))) == untimed(targets.run_http1(ops))


@FAST
@given(ops_from(H2_PIECES), st.booleans())
def test_http2_pieces(ops: list[targets.Op], upgraded: bool) -> None:
    targets.run_http2(ops, upgraded)


@FAST
@given(mutated(seeds.http2_seeds(), max_edits=8))
def test_http2_damaged_conversations(data: bytes) -> None:
    targets.http2(data)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_http2_segment_boundaries_do_not_matter(draw: st.DataObject) -> None:
    ops = GRPC_CONVERSATION
    whole = untimed(targets.run_http2(ops))
    assert len(whole) == 3
    assert untimed(targets.run_http2(split(ops, draw))) == whole


@FAST
@given(st.lists(st.tuples(st.booleans(), st.one_of(st.binary(max_size=80),
                                                   mutated([*seeds.dns_pair(), *seeds.dns_pair("a.b", 9)]))),
                max_size=8))
def test_dns_messages(messages: list[tuple[bool, bytes]]) -> None:
    targets.run_dns_messages(messages)


@FAST
@given(mutated(seeds.dns_seeds(), max_edits=8))
def test_dns_damaged_udp_and_tcp(data: bytes) -> None:
    targets.dns(data)


@FAST
@given(mutated(seeds.stage_seeds(), max_edits=10))
def test_stage_damaged_sessions(data: bytes) -> None:
    targets.stage(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_stage_random_frames(data: bytes) -> None:
    targets.stage(data)

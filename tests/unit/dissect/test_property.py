"""Property tests: random and mutated traffic never makes the stage raise or pass its caps."""

from __future__ import annotations

import json

import dpkt
from dissect_traffic import T0, Conversation, tcp_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http1 import KEY, parser

from kstap.dissect.api import Entry, ParserError
from kstap.dissect.dns import DnsTcpParser
from kstap.dissect.stage import DissectStage
from kstap.model import PacketRecord

ACK, PSH, SYN, FIN, RST = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST
FLAGS = st.sampled_from([ACK, ACK | PSH, SYN, SYN | ACK, FIN | ACK, RST, 0, 0xFF])
FRAGMENTS = [b"GET / HTTP/1.1\r\n", b"Host: h\r\n", b"\r\n", b"Content-Length: 5\r\n", b"HTTP/1.1 200 OK\r\n",
             b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", b"0\r\n\r\n", b"ffffffffffffffff\r\n",
             b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x12\x04\x00\x00\x00\x00\x00", b"\x00\x1d\x12\x34\x01\x00",
             b"Upgrade: h2c\r\n", b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\n\r\n", b"HEAD /x HTTP/1.1\r\n"]
PAYLOAD = st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=6).map(b"".join))


def conversation(n: int, body: int, chunked: bool, pipelined: bool) -> list[PacketRecord]:
    c = Conversation(cseq=0xFFFFFF00, sseq=0x7FFFFFF0).handshake()
    reqs = [b"POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (i, body) + b"b" * body for i in range(n)]
    if chunked:
        resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (body, b"r" * body)
    else:
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (body, b"r" * body)
    if pipelined:
        c.send(b"".join(reqs), mss=700)
        c.reply(resp * n, mss=700)
    else:
        for r in reqs:
            c.send(r, mss=700).reply(resp, mss=700)
    return c.fin().records


@st.composite
def mutated(draw: st.DrawFn) -> list[PacketRecord]:
    recs = conversation(draw(st.integers(1, 4)), draw(st.integers(0, 3000)), draw(st.booleans()),
                        draw(st.booleans()))
    out: list[PacketRecord] = []
    for rec in recs:
        action = draw(st.sampled_from(["keep"] * 6 + ["drop", "dup", "cut", "garbage", "reseq"]))
        ts, _, orig, data, ifid, w = rec
        if action == "drop":
            continue
        if action == "dup":
            out.append(rec)
        elif action == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif action == "garbage" and len(data) > 54:
            data = data[:54] + draw(st.binary(min_size=1, max_size=200))
        elif action == "reseq" and len(data) >= 54:
            data = data[:38] + draw(st.binary(min_size=4, max_size=4)) + data[42:]
        out.append((ts, len(data), max(orig, len(data)), data, ifid, w))
    order = draw(st.permutations(range(len(out)))) if draw(st.booleans()) else range(len(out))
    window = draw(st.integers(1, 8))  # local reordering only: a window of nearby packets
    idx = sorted(range(len(out)), key=lambda i: (i // window, list(order).index(i) if window > 1 else i))
    return [out[i] for i in idx]


@st.composite
def random_segments(draw: st.DrawFn) -> list[PacketRecord]:
    recs: list[PacketRecord] = []
    for i in range(draw(st.integers(1, 40))):
        a_to_b = draw(st.booleans())
        src, dst = ("10.0.0.1", "10.0.0.2") if a_to_b else ("10.0.0.2", "10.0.0.1")
        sport, dport = (40000, 80) if a_to_b else (80, 40000)
        f = tcp_frame(src, dst, sport, dport, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)),
                      draw(FLAGS), draw(PAYLOAD))
        recs.append((T0 + i * 1_000_000, len(f), len(f), f, 0, 0))
    return recs


def check(records: list[PacketRecord], memory_cap: int, flow_cap: int) -> None:
    got: list[Entry] = []
    stage = DissectStage(seed=7, memory_cap=memory_cap, flow_cap=flow_cap, idle_timeout=0.05, emit=got.append)
    for rec in records:
        stage.feed([rec], [1])  # must not raise
        assert stage.memory <= memory_cap
    stage.tick(T0 + 10**12)
    stage.close()
    st_ = stage.stats()
    assert st_.peak_memory_bytes <= memory_cap
    assert st_.memory_bytes == 0 and st_.flows == 0
    assert st_.errors.get("internal", 0) == 0, st_.errors
    for e in got:
        json.dumps(e.to_json())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.sampled_from([16 << 10, 64 << 10, 1 << 20]), st.sampled_from([8 << 10, 32 << 10, 1 << 20]))
def test_mutated_conversations(records: list[PacketRecord], memory_cap: int, flow_cap: int) -> None:
    check(records, memory_cap, flow_cap)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_segments(), st.sampled_from([8 << 10, 1 << 20]))
def test_random_segments(records: list[PacketRecord], memory_cap: int) -> None:
    check(records, memory_cap, memory_cap // 2)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), PAYLOAD, st.booleans()), max_size=20))
def test_http1_parser_raises_only_parser_error(steps: list[tuple[int, bytes, bool]]) -> None:
    p = parser()
    try:
        for i, (direction, data, gap) in enumerate(steps):
            if gap:
                p.gap(direction, len(data) + 1, i)
            else:
                p.feed(direction, data, i)
        p.close(len(steps))
    except ParserError:
        pass
    assert p.memory < 200_000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=80)), max_size=20))
def test_dns_tcp_parser_raises_only_parser_error(steps: list[tuple[int, bytes]]) -> None:
    from kstap.dissect.api import FlowContext

    p = DnsTcpParser(FlowContext("0", "a", "b", KEY))
    try:
        for i, (direction, data) in enumerate(steps):
            p.feed(direction, data, i)
        p.close(99)
    except ParserError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 120), max_size=12), st.booleans(), st.integers(0, 600))
def test_http1_entries_do_not_depend_on_where_the_bytes_were_cut(cuts: list[int], chunked: bool,
                                                                    body: int) -> None:
    """TCP hands the parser arbitrary pieces: any cutting of the same exchange gives the same entry."""
    request = b"POST /items?id=3 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n" % body + b"q" * body
    if chunked:
        response = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            body + 1, b"r" * (body + 1))
    else:
        response = b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % (body + 1) + b"r" * (body + 1)

    def pieces(data: bytes) -> list[bytes]:
        out, pos = [], 0
        for n in cuts:
            if pos >= len(data):
                break
            out.append(data[pos : pos + n])
            pos += n
        return [*out, data[pos:]] if pos < len(data) else out

    def entries(req: list[bytes], resp: list[bytes]) -> list[tuple[object, ...]]:
        p = parser()
        got: list[Entry] = []
        ts = 1_000_000_000
        for direction, parts in ((0, req), (1, resp)):
            for part in parts:
                ts += 1_000_000
                got += p.feed(direction, part, ts)
        got += p.close(ts + 1_000_000)
        return [(e.method, e.path, e.authority, e.status, e.request_bytes, e.response_bytes, e.error) for e in got]

    whole = entries([request], [response])
    assert [(m, path, host, status, err) for m, path, host, status, _, _, err in whole] == [
        ("POST", "/items?id=3", "shop.test", 201, None)]
    assert whole[0][4] == len(request) and whole[0][5] == len(response)
    assert entries(pieces(request), pieces(response)) == whole

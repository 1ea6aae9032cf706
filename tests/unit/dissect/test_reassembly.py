"""TCP reassembly through the stage: order, retransmission, overlap, gaps, wraparound, pickup, ends."""

from __future__ import annotations

import random

import dpkt
import pytest
from dissect_traffic import Conversation, make_run, tcp_frame

from kstap.dissect.api import Entry
from kstap.dissect.reassembly import HalfStream

ACK, PSH, FIN, RST, SYN = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_SYN
GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def brief(entries: list[Entry]) -> list[tuple[object, ...]]:
    return [(e.method, e.path, e.status, e.error) for e in entries]


def exchange(n: int = 3, body: int = 3000, **kw: object) -> Conversation:
    c = Conversation(**kw).handshake()  # type: ignore[arg-type]
    for i in range(n):
        c.send(b"POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (i, body) + bytes([65 + i]) * body,
               mss=500)
        c.reply(b"HTTP/1.1 %d OK\r\nContent-Length: 4\r\n\r\nbody" % (200 + i))
    return c.fin()


EXPECTED = [("POST", f"/{i}", 200 + i, None) for i in range(3)]


def test_in_order() -> None:
    run = make_run()
    assert brief(run.feed(exchange().records).close()) == EXPECTED
    st = run.stage.stats()
    assert st.evictions == {"fin": 1} and st.flows == 0 and st.memory_bytes == 0


@pytest.mark.parametrize("seed", range(5))
def test_reordered_and_duplicated_within_a_direction(seed: int) -> None:
    """Every direction's data segments shuffled (within each exchange) and some sent twice."""
    c = exchange()
    recs = c.records
    rnd = random.Random(seed)
    out = recs[:3]
    i = 3
    while i < len(recs):  # group consecutive same-direction packets, shuffle each group
        j = i
        src = recs[i][3][26:30]
        while j < len(recs) and recs[j][3][26:30] == src:
            j += 1
        group = recs[i:j]
        rnd.shuffle(group)
        out += group + rnd.sample(group, k=min(2, len(group)))
        i = j
    run = make_run()
    assert brief(run.feed(out).close()) == EXPECTED
    assert run.stage.stats().retransmitted > 0


def test_overlap_first_copy_wins() -> None:
    c = Conversation().handshake()
    base = c.cseq
    # a later segment arrives first holding "B" bytes; an overlapping retransmission tries to change them
    c.c(ACK | PSH, b"Host: h\r\n\r\n", seq=base + 19)
    c.c(ACK | PSH, b"/zzz HTTP/1.1\r\nHost: X", seq=base + 4)  # overlaps 19.. with other content
    c.c(ACK | PSH, b"GET ", seq=base)
    c.cseq = base + 19 + len(b"Host: h\r\n\r\n")
    c.reply(OK)
    entries = make_run().feed(c.records).close()
    assert [(e.path, e.authority) for e in entries] == [("/zzz", "h")]


def test_sequence_wraparound() -> None:
    c = exchange(cseq=0xFFFFF000, sseq=0xFFFFFFF0)
    assert brief(make_run().feed(c.records).close()) == EXPECTED


def test_lost_segment_is_a_gap_that_the_body_survives() -> None:
    c = exchange()
    body_packets = [i for i, r in enumerate(c.records) if r[3].endswith(b"B" * 100)]
    victim = body_packets[1]
    run = make_run()
    entries = run.feed(c.records[:victim] + c.records[victim + 1 :]).close()
    assert brief(entries) == [EXPECTED[0], ("POST", "/1", 201, "gap"), EXPECTED[2]]
    assert run.stage.stats().gaps == 1


def test_lost_request_head_resynchronises_on_the_next_request() -> None:
    c = exchange()
    heads = [i for i, r in enumerate(c.records) if b"POST /1 " in r[3]]
    run = make_run()
    entries = run.feed(c.records[: heads[0]] + c.records[heads[0] + 1 :]).close()
    # /1's body is skipped (no segment of it starts a request); its answer stands alone, marked gap
    assert [(*b, e.resynced) for b, e in zip(brief(entries), entries, strict=True)] == [
        (*EXPECTED[0], None), (None, None, 201, "gap", None), (*EXPECTED[2], True)]


def test_lost_response_head_resynchronises_on_the_next_status_line() -> None:
    c = Conversation().handshake()
    for i in range(3):
        c.send(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        c.reply(b"HTTP/1.1 %d OK\r\nContent-Length: 1500\r\n\r\n" % (200 + i) + b"HTTP/1.1 " * 166 + b"xxxxxx", mss=500)
    recs = c.fin().records
    victim = next(i for i, r in enumerate(recs) if b"HTTP/1.1 201 OK" in r[3])
    entries = make_run().feed(recs[:victim] + recs[victim + 1 :]).close()
    # the rest of 201's body starts with "HTTP/1.1 " but not with a status line: never taken for one
    assert [(e.path, e.status, e.error, e.resynced) for e in entries] == [
        ("/0", 200, None, None), ("/1", None, "gap", None), ("/2", 202, None, True)]


def test_gap_with_pipelined_requests_gives_up_without_mispairing() -> None:
    c = Conversation().handshake()
    c.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3)))
    for i in range(3):
        c.reply(b"HTTP/1.1 %d OK\r\nContent-Length: 4\r\n\r\nbody" % (200 + i))
    recs = c.fin().records
    victim = next(i for i, r in enumerate(recs) if b"HTTP/1.1 200 OK" in r[3])
    entries = make_run().feed(recs[:victim] + recs[victim + 1 :]).close()
    assert [(e.path, e.status, e.error) for e in entries] == [(f"/{i}", None, "gap") for i in range(3)]


def test_request_refused_for_its_framing_is_an_entry_with_the_error_kind() -> None:
    c = Conversation().handshake().send(GET).reply(OK)
    c.send(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
    run = make_run()
    entries = run.feed(c.fin().records).close()
    assert brief(entries) == [("GET", "/a", 200, None), ("POST", "/x", None, "malformed")]
    assert run.stage.stats().errors == {"malformed": 1}


def test_gap_declared_when_ahead_buffer_is_full() -> None:
    c = exchange(n=1, body=200_000)
    victim = [i for i, r in enumerate(c.records) if r[3].endswith(b"A" * 100)][1]  # not the head's segment
    recs = [r for r in c.records[: victim + 400] if r is not c.records[victim]]  # the server never acks
    run = make_run(flow_cap=256 << 10)  # 128 KiB may be held ahead
    run.feed(recs, batch=1000)
    assert run.stage.stats().gaps == 1  # declared by the ahead limit, before any acknowledgement
    entries = run.feed(c.records[victim + 400 :]).close()
    assert brief(entries) == [("POST", "/0", 200, "gap")]
    assert run.stage.stats().peak_memory_bytes < 256 << 10


def test_snaplen_cut_is_a_gap() -> None:
    c = exchange(n=2)
    recs = []
    for rec in c.records:
        ts, _, orig, data, ifid, w = rec
        if data.endswith(b"A" * 100):
            data = data[:-100]  # the capture kept only part of this segment
        recs.append((ts, len(data), orig, data, ifid, w))
    assert brief(make_run().feed(recs).close()) == [("POST", "/0", 200, "gap"), ("POST", "/1", 201, None)]


def test_midstream_pickup_skips_answers_to_unseen_requests() -> None:
    c = Conversation().handshake()
    c.send(GET)
    c.send(b"POST /x HTTP/1.1\r\nContent-Length: 2000\r\n\r\n" + b"p" * 2000, mss=500)
    c.reply(OK)
    c.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + b"r" * 3000, mss=500)
    start = len(c.records) - 4  # capture begins inside the second response's body
    c.send(b"GET /seen HTTP/1.1\r\nHost: h\r\n\r\n")
    c.reply(b"HTTP/1.1 203 X\r\nContent-Length: 0\r\n\r\n")
    c.fin()
    run = make_run()
    assert brief(run.feed(c.records[start:]).close()) == [("GET", "/seen", 203, None)]


def test_midstream_starting_in_a_request_body() -> None:
    c = Conversation().handshake()
    c.send(b"POST /x HTTP/1.1\r\nContent-Length: 2000\r\n\r\n" + b"p" * 2000, mss=500)
    start = len(c.records) - 2
    c.reply(OK)
    c.send(GET)
    c.reply(b"HTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n")
    assert brief(make_run().feed(c.records[start:]).close()) == [("GET", "/a", 404, None)]


def test_midstream_client_is_found_by_content_not_port() -> None:
    c = Conversation(cport=80, sport=45000).handshake()  # the client uses a low port
    c.send(GET)
    c.reply(OK)
    entries = make_run().feed(c.records[3:]).close()
    assert [(e.client, e.server, e.status) for e in entries] == [("10.0.0.1:80", "10.0.0.2:45000", 200)]


def test_server_first_protocol_is_unknown() -> None:
    c = Conversation(sport=22).handshake()
    c.reply(b"SSH-2.0-OpenSSH_9.6\r\n")
    c.send(b"SSH-2.0-client\r\n")
    c.send(GET)
    c.reply(OK)
    run = make_run()
    assert run.feed(c.records).close() == []
    st = run.stage.stats()
    assert st.flows_by_protocol == {"unknown": 1} and st.memory_bytes == 0


def test_rst_ends_and_reports_pending() -> None:
    c = Conversation().handshake()
    c.send(GET)
    c.s(RST | ACK)
    run = make_run()
    entries = run.feed(c.records).close()
    assert brief(entries) == [("GET", "/a", None, "no-response")]
    assert run.stage.stats().evictions == {"rst": 1}


def test_late_packets_after_fin_start_nothing() -> None:
    c = exchange(n=1)
    late = c.records[5]  # a body segment retransmitted after the connection closed
    run = make_run()
    entries = run.feed([*c.records, late, late]).close()
    assert brief(entries) == [EXPECTED[0]]


def test_port_reuse_starts_a_new_connection() -> None:
    a = exchange(n=1)
    b = exchange(n=1, cseq=777777, sseq=888888, t=a.t + 10**9)
    assert brief(make_run().feed(a.records[:-3] + b.records).close()) == [EXPECTED[0], EXPECTED[0]]


def test_ipv6() -> None:
    c = exchange(client="fd00::1", server="fd00::2", v6=True)
    entries = make_run().feed(c.records).close()
    assert brief(entries) == EXPECTED
    assert entries[0].client == "[fd00::1]:40000" and entries[0].server == "[fd00::2]:80"


def test_vlan_tagged_frames() -> None:
    recs = []
    for ts, _, _, data, ifid, w in exchange().records:
        tagged = data[:12] + b"\x81\x00\x00\x07" + data[12:]
        recs.append((ts, len(tagged), len(tagged), tagged, ifid, w))
    assert brief(make_run().feed(recs).close()) == EXPECTED


def test_idle_eviction_by_packet_time_and_tick() -> None:
    c = Conversation().handshake()
    c.send(GET)
    run = make_run(idle_timeout=5.0)
    run.feed(c.records)
    assert run.stage.stats().flows == 1
    later = tcp_frame("10.9.9.9", "10.0.0.2", 1234, 80, 1, 0, SYN)
    run.feed([(c.t + 6 * 10**9, len(later), len(later), later, 0, 0)])
    assert brief(run.entries) == [("GET", "/a", None, "no-response")]
    assert run.stage.stats().evictions == {"idle": 1}
    run.stage.tick(c.t + 20 * 10**9)
    assert run.stage.stats().flows == 0 and run.stage.stats().evictions == {"idle": 2}


def test_halfstream_insert_keeps_first_copy() -> None:
    h = HalfStream()
    h.isn = 0
    h.insert(10, b"aaaaa")
    h.insert(8, b"bbbbbbbbbb")  # covers 8..18: only 8..10 and 15..18 are new
    h.insert(12, b"cc")
    assert h.pending == [(8, b"bb"), (10, b"aaaaa"), (15, b"bbb")]
    assert h.pending_bytes == 10

"""The stage: caps and evictions, link types, never raising, stats."""

from __future__ import annotations

import json

import dpkt
from dissect_traffic import T0, Conversation, make_run, tcp_frame
from hypothesis import given
from hypothesis import strategies as st

from kstap.dissect.api import Entry
from kstap.dissect.stage import FLOW_COST, TOMB_COST, DissectStage, default_flow_cap

SYN = dpkt.tcp.TH_SYN
GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"


def syn_flood(n: int, t: int = T0, first: int = 0) -> list[tuple[int, int, int, bytes, int, int]]:
    recs = []
    for i in range(first, first + n):
        f = tcp_frame(f"10.1.{i // 250}.{i % 250 + 1}", "10.0.0.2", 20000 + i % 40000, 80, 1000 + i, 0, SYN)
        recs.append((t + i * 1000, len(f), len(f), f, 0, 0))
    return recs


def test_global_cap_evicts_least_recently_active() -> None:
    cap = 200 * FLOW_COST
    run = make_run(memory_cap=cap, flow_cap=cap)
    busy = Conversation(client="10.9.9.9").handshake()
    busy.send(GET)
    run.feed(busy.records)
    for k in range(10):  # 1000 idle connections arrive; the busy one shows activity every 2 s
        run.feed(syn_flood(100, t=T0 + (2 * k + 1) * 10**9, first=100 * k))
        busy.t = T0 + (2 * k + 2) * 10**9
        run.feed([busy.c(dpkt.tcp.TH_ACK)])
        st = run.stage.stats()
        assert st.memory_bytes <= cap and st.peak_memory_bytes <= cap
    assert st.evictions["global-cap"] >= 800
    assert run.entries == []
    busy.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    run.feed(busy.records[-1:])
    assert [(e.path, e.status) for e in run.close()] == [("/a", 200)]


def test_flow_cap_evicts_one_connection_and_marks_its_entries() -> None:
    run = make_run(flow_cap=32 << 10)
    c = Conversation().handshake()
    c.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n" + b"GET /b HTTP/1.1\r\n" + b"X-Long: " + b"v" * 60000)
    run.feed(c.records)
    st = run.stage.stats()
    assert st.evictions == {"flow-cap": 1}
    assert [(e.path, e.error) for e in run.entries] == [("/a", "evicted")]
    assert st.peak_memory_bytes <= 32 << 10 and st.memory_bytes == TOMB_COST
    c.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    run.feed(c.records[-1:])  # the evicted flow stays out of dissection
    assert len(run.close()) == 1


def test_tombstones_are_bounded() -> None:
    run = make_run(memory_cap=1 << 20)
    recs = syn_flood(3000)
    rsts = [(ts + 10**6, cl, ol, data[:47] + bytes([dpkt.tcp.TH_RST]) + data[48:], i, w)
            for ts, cl, ol, data, i, w in recs]
    run.feed([r for pair in zip(recs, rsts, strict=True) for r in pair])
    st = run.stage.stats()
    assert len(run.stage.tombs) == run.stage.max_tombs < 3000
    assert st.memory_bytes == TOMB_COST * run.stage.max_tombs
    assert st.evictions == {"rst": 3000}


def test_garbage_never_raises() -> None:
    run = make_run()
    junk = [b"", b"\x00", b"\xff" * 13, b"\x00" * 14 + b"\x45", bytes(range(256)),
            b"\x00" * 12 + b"\x08\x00" + b"\x4f" + b"\x00" * 60, b"\x00" * 12 + b"\x86\xdd" + b"\x60" + b"\xff" * 60]
    run.stage.feed([(T0, len(j), len(j), j, 0, 0) for j in junk], [1])
    run.stage.feed([(T0, 3, 3, b"abc", 5, 0)], [1])  # an interface the caller did not describe
    run.stage.feed([(T0, 3, 3, b"abc", 0, 0)], [147])  # an unknown link type
    assert run.close() == []
    assert run.stage.stats().packets_undecoded == len(junk) + 2


def test_emit_errors_are_counted_not_raised() -> None:
    def boom(_: Entry) -> None:
        raise RuntimeError("sink broke")

    stage = DissectStage(seed=0, memory_cap=1 << 20, flow_cap=1 << 18, idle_timeout=10, emit=boom)
    c = Conversation().handshake()
    c.send(GET).reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    stage.feed(c.records, [1])
    stage.close()
    assert stage.stats().errors == {"emit": 1} and stage.stats().entries == 1


def test_raw_ip_and_cooked_link_types() -> None:
    c = Conversation().handshake()
    c.send(GET).reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    for linktype, strip, prefix in ((101, 14, b""), (113, 14, b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 8 + b"\x08\x00"),
                                    (276, 14, b"\x08\x00\x00\x00" + b"\x00" * 16)):
        got: list[Entry] = []
        stage = DissectStage(seed=0, memory_cap=1 << 20, flow_cap=1 << 18, idle_timeout=10, emit=got.append)
        stage.feed([(ts, cl, ol, prefix + d[strip:], i, w) for ts, cl, ol, d, i, w in c.records], [linktype])
        stage.close()
        assert [(e.path, e.status) for e in got] == [("/a", 200)], linktype


def test_flow_id_is_the_samplers() -> None:
    from kstap.sampling.flowhash import flow_id
    from kstap.sampling.flowkey import flow_key

    c = Conversation().handshake()
    c.send(GET).reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    run = make_run(seed=1234)
    entries = run.feed(c.records).close()
    key = flow_key(c.records[0][3])
    assert key is not None
    assert entries[0].flow_id == flow_id(key, 1234)


def test_default_flow_cap() -> None:
    assert default_flow_cap(64 << 20) == 8 << 20
    assert default_flow_cap(1 << 20) == 256 << 10
    assert default_flow_cap(1 << 30) == 16 << 20


def test_entry_json() -> None:
    e = Entry(time=1.5, flow_id="0000abcd", protocol="dns", client="a", server="b", query_name="x.test")
    assert e.to_json() == {"schema": 1, "time": 1.5, "flow_id": "0000abcd", "protocol": "dns", "client": "a",
                           "server": "b", "query_name": "x.test", "request_bytes": 0, "response_bytes": 0}


_text = st.text() | st.sampled_from(["", "é/☃", "\x00\x1f\x7f\"\\", "\ud800", "a\u2028b"])
_number = st.floats() | st.integers(-(2**70), 2**70) | st.booleans() | st.none()


@given(_text, _text, _number, _number, st.none() | st.booleans(), st.none() | _text)
def test_entry_line_is_json_dumps_of_the_object(path: str, client: str, status: object, latency: object,
                                                resynced: bool | None, error: str | None) -> None:
    e = Entry(time=1796169566.1499689, flow_id="dce35ca6", protocol="http/1.1", client=client, server="[::1]:80",
              method="GET", path=path, status=status, latency_ms=latency, error=error,  # type: ignore[arg-type]
              resynced=resynced, request_bytes=87, response_bytes=149)
    assert e.to_line() == json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":"))

"""HTTP/1 parser: pairing, framing, the sniffer's special cases, and hostile input."""

from __future__ import annotations

import pytest

from kstap.dissect.api import Entry, FlowContext, ParserError
from kstap.dissect.http1 import MAX_HEAD, Http1Parser
from kstap.sampling.flowkey import FlowKey

KEY = FlowKey(6, b"\n\0\0\1", 40000, b"\n\0\0\2", 80)


def parser() -> Http1Parser:
    return Http1Parser(FlowContext("deadbeef", "10.0.0.1:40000", "10.0.0.2:80", KEY))


def play(steps: list[tuple[int, bytes]], *, split: int | None = None, close: bool = True) -> list[Entry]:
    """Feed (direction, bytes) steps, optionally cut into ``split``-byte pieces; 1 ms apart."""
    p = parser()
    out: list[Entry] = []
    ts = 1_000_000_000
    for direction, data in steps:
        pieces = [data] if split is None else [data[i : i + split] for i in range(0, len(data), split)]
        for piece in pieces:
            ts += 1_000_000
            out += p.feed(direction, piece, ts)
    if close:
        out += p.close(ts + 1_000_000)
    return out


def brief(entries: list[Entry]) -> list[tuple[object, ...]]:
    return [(e.method, e.path, e.status, e.error) for e in entries]


GET = b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("split", [None, 1, 3, 7, 64])
def test_keep_alive_any_segmentation(split: int | None) -> None:
    post = b"POST /b HTTP/1.1\r\nHost: example.test\r\nContent-Length: 11\r\n\r\nhello world"
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n")
    entries = play([(0, GET), (1, OK), (0, post), (1, chunked)], split=split)
    assert brief(entries) == [("GET", "/a", 200, None), ("POST", "/b", 201, None)]
    a, b = entries
    assert a.request_bytes == len(GET) and a.response_bytes == len(OK)
    assert b.request_bytes == len(post) and b.response_bytes == len(chunked)
    assert a.authority == "example.test" and a.protocol == "http/1.1"
    assert a.flow_id == "deadbeef" and a.client == "10.0.0.1:40000" and a.server == "10.0.0.2:80"
    assert a.latency_ms is not None and a.latency_ms > 0


def test_pipelining_pairs_in_order() -> None:
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
    resps = b"".join(b"HTTP/1.1 %d X\r\nContent-Length: 1\r\n\r\n%d" % (200 + i, i) for i in range(5))
    entries = play([(0, reqs), (1, resps)])
    assert [(e.path, e.status) for e in entries] == [(f"/{i}", 200 + i) for i in range(5)]


def test_head_response_has_no_body() -> None:
    head = b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n"
    entries = play([(0, head), (1, resp), (0, GET), (1, OK)])
    assert brief(entries) == [("HEAD", "/big", 200, None), ("GET", "/a", 200, None)]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    resp = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    assert brief(play([(0, GET), (1, resp), (0, GET), (1, OK)])) == [
        ("GET", "/a", status, None), ("GET", "/a", 200, None)]


def test_100_continue_is_interim() -> None:
    req = b"PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    entries = play([(0, req), (1, cont), (0, b"abc"), (1, OK)])
    assert brief(entries) == [("PUT", "/u", 200, None)]
    assert entries[0].response_bytes == len(cont) + len(OK)
    assert entries[0].request_bytes == len(req) + 3


def test_early_response_waits_for_the_upload() -> None:
    req = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
    deny = b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"
    entries = play([(0, req + b"12345"), (1, deny), (0, b"67890")], close=False)
    assert brief(entries) == [("POST", "/up", 413, None)]
    assert entries[0].request_bytes == len(req) + 10


def test_read_until_close_and_http10() -> None:
    req = b"GET /old HTTP/1.0\r\n\r\n"
    resp = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until the end"
    entries = play([(0, req), (1, resp)])
    assert brief(entries) == [("GET", "/old", 200, None)]
    assert entries[0].protocol == "http/1.0" and entries[0].response_bytes == len(resp)


def test_websocket_upgrade_becomes_a_tunnel() -> None:
    req = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    entries = play([(0, req), (1, resp + b"\x81\x05hello"), (0, b"\x81\x85garbage"), (1, b"HTTP/1.1 nonsense")])
    assert brief(entries) == [("GET", "/ws", 101, None)]


def test_connect_tunnel() -> None:
    req = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
    entries = play([(0, req), (1, b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01"), (0, b"\x16\x03\x01")])
    assert brief(entries) == [("CONNECT", "example.test:443", 200, None)]


def test_h2c_refused_stays_http1() -> None:
    req = b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    entries = play([(0, req), (1, OK), (0, GET), (1, OK)])
    assert brief(entries) == [("GET", "/x", 200, None), ("GET", "/a", 200, None)]


def test_pending_at_close() -> None:
    entries = play([(0, GET), (1, OK), (0, GET), (0, b"POST /p HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc")])
    assert brief(entries) == [("GET", "/a", 200, None), ("GET", "/a", None, "no-response"),
                              ("POST", "/p", None, "incomplete")]


def test_gap_inside_a_body_is_survivable() -> None:
    p = parser()
    out = p.feed(0, GET, 1)
    out += p.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100, 2)
    out += p.gap(1, 800, 3)
    out += p.feed(1, b"y" * 100, 4)
    out += p.feed(0, GET, 5) + p.feed(1, OK, 6)
    assert brief(out) == [("GET", "/a", 200, "gap"), ("GET", "/a", 200, None)]
    assert out[0].response_bytes == len(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") + 1000


def test_gap_in_headers_gives_up_cleanly() -> None:
    p = parser()
    out = p.feed(0, GET + b"GET /b HTTP/1.1\r\nHo", 1)
    out += p.gap(0, 50, 2)
    out += p.feed(0, GET, 3) + p.feed(1, OK + OK, 4) + p.close(5)
    assert brief(out) == [("GET", "/a", None, "gap")]
    assert p.memory < 2000


@pytest.mark.parametrize("bad, kind", [
    (b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "too-large"),
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "malformed"),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "malformed"),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", "too-large"),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed"),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 300 + b"\r\n", "header-flood"),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * (MAX_HEAD + 10), "header-flood"),
    (b"NOT HTTP AT ALL\r\n\r\n", "malformed"),
])
def test_hostile_requests_raise_parser_error(bad: bytes, kind: str) -> None:
    p = parser()
    with pytest.raises(ParserError) as info:
        for i in range(0, len(bad), 1000):
            p.feed(0, bad[i : i + 1000], 1)
    assert info.value.kind == kind
    assert p.memory < MAX_HEAD + 10_000


def test_response_without_request_is_refused() -> None:
    with pytest.raises(ParserError) as info:
        parser().feed(1, OK, 1)
    assert info.value.kind == "unpaired"


def test_pipeline_flood_is_bounded() -> None:
    p = parser()
    with pytest.raises(ParserError) as info:
        for _ in range(2000):
            p.feed(0, GET, 1)
    assert info.value.kind == "pipeline-flood"


def test_memory_tracks_held_bytes() -> None:
    p = parser()
    base = p.memory
    p.feed(0, b"GET /x HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: 1234567890\r\n" * 100, 1)
    assert p.memory >= base + 1900
    p.feed(0, b"\r\n", 2)
    assert p.memory < base + 1000


def test_h2c_upgrade_hands_over_to_http2() -> None:
    """A real h2c exchange written by the h2 library: the upgraded request is HTTP/2 stream 1."""
    h2conn = pytest.importorskip("h2.connection")
    h2config = pytest.importorskip("h2.config")
    pytest.importorskip("kstap.dissect.http2")
    client = h2conn.H2Connection(h2config.H2Configuration(client_side=True))
    server = h2conn.H2Connection(h2config.H2Configuration(client_side=False))
    settings = client.initiate_upgrade_connection()
    upgrade = (b"GET /up HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n")
    switching = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    server.initiate_upgrade_connection(settings)
    c1 = client.data_to_send()
    server.receive_data(c1)
    server.send_headers(1, [(":status", "200"), ("content-length", "2")])
    server.send_data(1, b"ok", end_stream=True)
    s1 = server.data_to_send()
    client.receive_data(s1)
    client.send_headers(3, [(":method", "GET"), (":path", "/second"), (":authority", "example.test"),
                            (":scheme", "http")], end_stream=True)
    c2 = client.data_to_send()
    server.receive_data(c2)
    server.send_headers(3, [(":status", "404")], end_stream=True)
    s2 = server.data_to_send()
    entries = play([(0, upgrade), (1, switching + s1), (0, c1 + c2), (1, s2)])
    assert [(e.protocol, e.method, e.path, e.status) for e in entries] == [
        ("http/2", "GET", "/up", 200), ("http/2", "GET", "/second", 404)]


@pytest.mark.parametrize("split", [None, 1, 7])
def test_bare_lf_line_ends_are_accepted(split: int | None) -> None:
    """RFC 9112 §2.2: a recipient may take a bare LF for a line end (and ignore a CR before it)."""
    steps = [(0, b"GET /lf HTTP/1.1\nHost: lf.test\nContent-Length: 3\n\nabc"),
             (1, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
             (0, b"GET /mixed HTTP/1.1\r\nHost: m.test\n\r\n"),
             (1, b"HTTP/1.0 404 Not Found\r\nTransfer-Encoding: chunked\n\r\n2\nab\n0\n\n"),
             (0, GET), (1, OK)]
    out = play(steps, split=split)
    assert [(e.path, e.authority, e.status, e.error) for e in out] == [
        ("/lf", "lf.test", 200, None), ("/mixed", "m.test", 404, None), ("/a", "example.test", 200, None)]
    assert out[0].request_bytes == len(steps[0][1]) and out[1].response_bytes == len(steps[3][1])


def test_content_length_with_leading_zeros() -> None:
    out = play([(0, b"POST /z HTTP/1.1\r\nContent-Length: 00000000000000000003\r\n\r\nabc"),
                (1, b"HTTP/1.1 200 OK\r\nContent-Length: 0005, 05\r\n\r\nhello"), (0, GET), (1, OK)])
    assert brief(out) == [("POST", "/z", 200, None), ("GET", "/a", 200, None)]


@pytest.mark.parametrize("bad, kind", [
    (b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "malformed"),
    (b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "too-large"),
    (b"POST /x HTTP/1.1\r\n" + b"X: y\r\n" * 300 + b"\r\n", "header-flood"),
])
def test_a_request_refused_for_its_framing_still_has_an_entry(bad: bytes, kind: str) -> None:
    p = parser()
    with pytest.raises(ParserError) as info:
        p.feed(0, bad, 1)
    assert info.value.kind == kind
    assert brief(p.close(2)) == [("POST", "/x", None, "incomplete")]  # the stage then sets error=kind


def test_a_gap_between_sequential_exchanges_resynchronises() -> None:
    p = parser()
    out = p.feed(0, GET, 1) + p.feed(1, OK, 2)
    out += p.feed(0, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n", 3)
    out += p.gap(1, 120, 4)  # /b's response lost
    out += p.feed(1, b"hello, rest of a lost body", 5)  # not a status line: skipped
    out += p.feed(0, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n", 6) + p.feed(1, OK, 7)
    out += p.gap(0, 40, 8)  # a whole request lost
    out += p.feed(1, b"HTTP/1.1 204 No Content\r\n\r\n", 9)  # its answer, alone
    out += p.feed(0, b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n", 10) + p.feed(1, OK, 11) + p.close(12)
    assert [(e.path, e.status, e.error, e.resynced) for e in out] == [
        ("/a", 200, None, None), ("/b", None, "gap", None), ("/c", 200, None, True), (None, 204, "gap", None),
        ("/d", 200, None, True)]


def test_resync_tries_only_segment_starts() -> None:
    p = parser()
    out = p.feed(0, GET, 1) + p.feed(1, OK, 2) + p.feed(0, GET, 3)
    out += p.gap(1, 100, 4)
    out += p.feed(1, b"body that quotes HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5)  # mid-segment: no
    out += p.feed(1, b"HTT", 6)  # a start line cut by the segment is held...
    out += p.gap(1, 50, 7)  # ...and dropped when bytes go missing after it
    out += p.feed(1, b"P/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 8)
    out += p.feed(0, GET, 9) + p.feed(1, b"HT", 10)
    out += p.feed(1, b"TP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello", 11)
    assert [(e.status, e.error, e.resynced) for e in out + p.close(12)] == [
        (200, None, None), (None, "gap", None), (201, None, True)]

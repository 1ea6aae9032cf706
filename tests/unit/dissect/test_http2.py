"""HTTP/2 + gRPC parser on byte streams made by the real ``h2`` library (client and server in memory).

Each test drives an h2 client and an h2 server against each other, records every byte each side sent
(with a fake clock), then feeds the recording to :class:`Http2Parser` and checks the entries. Sizes
are cross-checked against an independent frame walk with ``hyperframe``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kstap.dissect import grpc
from kstap.dissect.api import Entry, FlowContext, ParserError, StreamParser
from kstap.dissect.http2 import _PARSER_BASE, PREFACE, Http2Limits, Http2Parser
from kstap.sampling.flowkey import FlowKey

FLOW = FlowContext("f-test", "10.9.0.1:40000", "10.9.0.2:8080",
                   FlowKey(6, bytes([10, 9, 0, 1]), 40000, bytes([10, 9, 0, 2]), 8080))
T0 = 1_700_000_000 * 10**9
MS = 10**6

Record = tuple[int, bytes, int]  # direction, bytes, ts_ns


# -- a conversation between two real h2 endpoints -------------------------------------------------

@dataclass
class Conv:
    """An h2 client and server wired together; ``records`` is what went over the wire, in order."""

    client: h2.connection.H2Connection = field(default_factory=lambda: h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")))
    server: h2.connection.H2Connection = field(default_factory=lambda: h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")))
    records: list[Record] = field(default_factory=list)
    clock: int = T0

    def start(self) -> Conv:
        self.client.initiate_connection()
        self.pump(client_only=True)
        self.server.initiate_connection()
        self.pump()
        return self

    def tick(self) -> int:
        self.clock += MS
        return self.clock

    def wire(self, direction: int, data: bytes) -> None:
        if data:
            self.records.append((direction, data, self.tick()))

    def pump(self, client_only: bool = False) -> None:
        """Move bytes both ways until both sides are quiet (acknowledging DATA for flow control)."""
        for _ in range(1000):
            moved = False
            for direction, src, dst in ((0, self.client, self.server), (1, self.server, self.client)):
                if client_only and direction == 1:
                    continue
                data = src.data_to_send()
                if data:
                    moved = True
                    self.wire(direction, data)
                    for ev in dst.receive_data(data):
                        if isinstance(ev, h2.events.DataReceived) and ev.flow_controlled_length:
                            dst.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if not moved:
                return
        raise AssertionError("h2 endpoints never went quiet")

    def request(self, path: str = "/", method: str = "GET", *, authority: str = "svc.test",
                extra: Iterable[tuple[str, str]] = (), end_stream: bool = True) -> int:
        sid: int = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(":method", method), (":path", path), (":authority", authority),
                                       (":scheme", "http"), *extra], end_stream=end_stream)
        self.pump()
        return sid

    def respond(self, sid: int, status: int = 200, *, extra: Iterable[tuple[str, str]] = (),
                end_stream: bool = True) -> None:
        self.server.send_headers(sid, [(":status", str(status)), *extra], end_stream=end_stream)
        self.pump()

    def body(self, conn: h2.connection.H2Connection, sid: int, data: bytes, end_stream: bool = True,
             frame: int | None = None, pad: int | None = None) -> None:
        """Send ``data`` in frames of at most ``frame`` bytes (flow control permitting)."""
        step = frame or conn.max_outbound_frame_size
        if pad is not None:
            step = min(step, conn.max_outbound_frame_size - pad - 1)
        pos = 0
        while True:
            chunk = data[pos:pos + step]
            pos += len(chunk)
            last = pos >= len(data)
            conn.send_data(sid, chunk, end_stream=end_stream and last, pad_length=pad)
            self.pump()
            if last:
                return

    def trailers(self, conn: h2.connection.H2Connection, sid: int, fields: list[tuple[str, str]]) -> None:
        conn.send_headers(sid, fields, end_stream=True)
        self.pump()


def parse(records: Iterable[Record], parser: StreamParser | None = None, close: bool = True) -> list[Entry]:
    p = parser if parser is not None else Http2Parser(FLOW)
    out: list[Entry] = []
    for direction, data, ts in records:
        out += p.feed(direction, data, ts)
    if close:
        out += p.close(T0 + 10**12)
    return out


def frames(records: Iterable[Record]) -> list[tuple[int, Frame, int]]:
    """Every frame on the wire as (direction, frame, wire size), read with hyperframe."""
    streams = {0: b"", 1: b""}
    for direction, data, _ in records:
        streams[direction] += data
    out = []
    for direction, raw in streams.items():
        if direction == 0 and raw.startswith(PREFACE):
            raw = raw[len(PREFACE):]
        pos = 0
        while pos < len(raw):
            frame, length = Frame.parse_frame_header(memoryview(raw[pos:pos + 9]))
            frame.parse_body(memoryview(raw[pos + 9:pos + 9 + length]))
            out.append((direction, frame, 9 + length))
            pos += 9 + length
    return out


def wire_bytes(records: list[Record], sid: int, direction: int) -> int:
    """HEADERS, CONTINUATION, PUSH_PROMISE(promised) and DATA bytes of stream ``sid`` one way."""
    total = 0
    for d, frame, size in frames(records):
        if d == direction and frame.stream_id == sid and frame.type in (0x0, 0x1, 0x9):
            total += size
    return total


def grpc_msg(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


GRPC_REQ = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "5S")]
GRPC_RESP = [("content-type", "application/grpc")]


# -- plain HTTP/2 -------------------------------------------------------------------------------------

def test_prior_knowledge_get_and_post() -> None:
    c = Conv().start()
    get = c.request("/index.html", extra=[("user-agent", "kstap-test")])
    c.respond(get, extra=[("content-type", "text/html")], end_stream=False)
    c.body(c.server, get, b"<html>" + b"x" * 40000)
    post = c.request("/upload", "POST", end_stream=False, extra=[("content-type", "application/octet-stream")])
    c.body(c.client, post, b"u" * 70000)
    c.respond(post, 201)
    entries = parse(c.records)
    assert [(e.method, e.path, e.status, e.protocol, e.error) for e in entries] == [
        ("GET", "/index.html", 200, "http/2", None), ("POST", "/upload", 201, "http/2", None)]
    for e, sid in zip(entries, (get, post), strict=True):
        assert e.authority == "svc.test"
        assert (e.flow_id, e.client, e.server) == (FLOW.flow_id, FLOW.client, FLOW.server)
        assert e.request_bytes == wire_bytes(c.records, sid, 0)
        assert e.response_bytes == wire_bytes(c.records, sid, 1)
        assert e.grpc_status is None and e.messages is None
        assert e.latency_ms is not None and e.latency_ms > 0
    assert entries[1].request_bytes > 70000
    # time: the request's first frame; latency: to the response's last frame
    assert entries[0].time == pytest.approx(_first_ts(c.records, get, 0) / 1e9)
    assert entries[0].latency_ms == pytest.approx((_last_ts(c.records, get, 1) - _first_ts(c.records, get, 0)) / 1e6)


def _frame_times(records: list[Record], sid: int, direction: int) -> list[int]:
    """Timestamps of the records carrying frames of ``sid`` (walking each record's frames)."""
    out = []
    pending = {0: b"", 1: b""}
    started = {0: False, 1: True}
    for d, data, ts in records:
        raw = pending[d] + data
        if not started[d]:
            raw = raw[len(PREFACE):]
            started[d] = True
        pos = 0
        while len(raw) - pos >= 9:
            frame, length = Frame.parse_frame_header(memoryview(raw[pos:pos + 9]))
            if len(raw) - pos < 9 + length:
                break
            if d == direction and frame.stream_id == sid and frame.type in (0x0, 0x1, 0x9):
                out.append(ts)
            pos += 9 + length
        pending[d] = raw[pos:]
    return out


def _first_ts(records: list[Record], sid: int, direction: int) -> int:
    return _frame_times(records, sid, direction)[0]


def _last_ts(records: list[Record], sid: int, direction: int) -> int:
    return _frame_times(records, sid, direction)[-1]


def test_multiplexed_interleaved_streams() -> None:
    c = Conv().start()
    sids = [c.request(f"/item/{i}", end_stream=False) for i in range(6)]
    for i, sid in enumerate(sids):  # request bodies interleaved across streams
        c.client.send_data(sid, b"q" * (100 * i), end_stream=False)
    c.pump()
    for sid in sids:
        c.client.end_stream(sid)
    c.pump()
    order = [sids[3], sids[0], sids[5], sids[1], sids[4], sids[2]]
    for sid in order:
        c.respond(sid, 200 + sids.index(sid), end_stream=False, extra=[("content-type", "application/json")])
    for rnd in range(3):  # response bodies interleaved, then finished in `order`
        for sid in order:
            c.server.send_data(sid, b"r" * (1000 + sid), end_stream=False)
            c.pump()
        del rnd
    for sid in order:
        c.server.end_stream(sid)
        c.pump()
    entries = parse(c.records)
    assert [e.path for e in entries] == [f"/item/{sids.index(s)}" for s in order]
    for e in entries:
        i = int(e.path.rsplit("/", 1)[1])  # type: ignore[union-attr]
        assert e.status == 200 + i
        assert e.error is None
        assert e.request_bytes == wire_bytes(c.records, sids[i], 0)
        assert e.response_bytes == wire_bytes(c.records, sids[i], 1)


def test_dynamic_table_reused_across_requests() -> None:
    c = Conv().start()
    cookie = [("cookie", "session=" + "a" * 300), ("x-request-tag", "kstap")]
    sids = []
    for i in range(20):
        sid = c.request(f"/r/{i}", extra=cookie)
        c.respond(sid, extra=[("server", "h2-test"), ("x-big", "b" * 200)])
        sids.append(sid)
    entries = parse(c.records)
    assert [e.path for e in entries] == [f"/r/{i}" for i in range(20)]
    # the cookie was sent literally once, then indexed from the dynamic table
    assert entries[0].request_bytes > 150 and entries[5].request_bytes < 40
    assert entries[0].response_bytes > 100 and entries[5].response_bytes < 40


def test_header_table_size_settings_followed() -> None:
    """A larger table announced by the client, then a zero-size table: the decoder follows both."""
    c = Conv().start()
    c.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 16384})
    c.pump()
    for i in range(3):
        sid = c.request(f"/a/{i}")
        c.respond(sid, extra=[("x-h", "v" * 5000)])
    c.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    c.pump()
    for i in range(3):
        sid = c.request(f"/b/{i}")
        c.respond(sid, extra=[("x-h", "v" * 5000)])
    entries = parse(c.records)
    assert [e.path for e in entries] == [f"/a/{i}" for i in range(3)] + [f"/b/{i}" for i in range(3)]
    assert all(e.status == 200 and e.error is None for e in entries)
    assert entries[1].response_bytes < 100 < entries[4].response_bytes  # indexed, then literal again


def test_response_trailers() -> None:
    c = Conv().start()
    sid = c.request("/t")
    c.respond(sid, end_stream=False, extra=[("trailer", "x-checksum")])
    c.body(c.server, sid, b"data" * 100, end_stream=False)
    c.trailers(c.server, sid, [("x-checksum", "abc")])
    (e,) = parse(c.records)
    assert (e.status, e.error) == (200, None)
    assert e.response_bytes == wire_bytes(c.records, sid, 1)


def test_informational_then_final_status() -> None:
    c = Conv().start()
    sid = c.request("/up", "PUT", end_stream=False, extra=[("expect", "100-continue")])
    c.respond(sid, 100, end_stream=False)
    c.body(c.client, sid, b"z" * 500)
    c.respond(sid, 204)
    (e,) = parse(c.records)
    assert (e.method, e.status, e.error) == ("PUT", 204, None)


def test_rst_stream_variants() -> None:
    c = Conv().start()
    cancelled = c.request("/slow")
    c.respond(cancelled, end_stream=False)
    c.client.reset_stream(cancelled, h2.errors.ErrorCodes.CANCEL)
    c.pump()
    refused = c.request("/refused")
    c.server.reset_stream(refused, h2.errors.ErrorCodes.REFUSED_STREAM)
    c.pump()
    early = c.request("/early", "POST", end_stream=False)
    c.body(c.client, early, b"p" * 100, end_stream=False)
    c.respond(early, 413)
    c.server.reset_stream(early, h2.errors.ErrorCodes.NO_ERROR)
    c.pump()
    entries = parse(c.records)
    assert [(e.path, e.status, e.error) for e in entries] == [
        ("/slow", 200, "reset:CANCEL"), ("/refused", None, "reset:REFUSED_STREAM"), ("/early", 413, None)]
    assert entries[1].latency_ms is None


def test_close_flushes_open_streams() -> None:
    c = Conv().start()
    answered = c.request("/half")
    c.respond(answered, end_stream=False)
    c.request("/none")
    entries = parse(c.records)
    assert {(e.path, e.status, e.error) for e in entries} == {("/half", 200, "incomplete"),
                                                              ("/none", None, "no-response")}


def test_goaway_ends_streams_it_excludes() -> None:
    c = Conv().start()
    done = c.request("/ok")
    pending = c.request("/later")
    c.server.close_connection(last_stream_id=done)
    c.pump()
    entries = parse(c.records, close=False)
    assert [(e.path, e.error) for e in entries] == [("/later", "goaway")]
    del pending


def test_server_push() -> None:
    c = Conv().start()
    sid = c.request("/page")
    pushed = 2
    c.server.push_stream(sid, pushed, [(":method", "GET"), (":path", "/style.css"), (":authority", "svc.test"),
                                       (":scheme", "http")])
    c.respond(sid, end_stream=False)
    c.respond(pushed, extra=[("content-type", "text/css")], end_stream=False)
    c.body(c.server, pushed, b"body{}")
    c.body(c.server, sid, b"<html/>")
    entries = parse(c.records)
    assert sorted((e.path, e.status, e.error) for e in entries) == [("/page", 200, None),
                                                                     ("/style.css", 200, None)]


def test_padded_data() -> None:
    c = Conv().start()
    sid = c.request("/pad", "POST", end_stream=False, extra=GRPC_REQ)
    c.body(c.client, sid, grpc_msg(b"m" * 3000) + grpc_msg(b""), frame=1000, pad=37)
    c.respond(sid, extra=[*GRPC_RESP, ("grpc-status", "0")])
    (e,) = parse(c.records)
    assert (e.protocol, e.messages, e.grpc_status) == ("grpc", 2, 0)
    assert e.request_bytes == wire_bytes(c.records, sid, 0)


# -- hand-made frames: padding/priority on HEADERS, CONTINUATION ---------------------------------------

def _raw_conversation(client_frames: list[Frame], server_frames: list[Frame]) -> list[Record]:
    settings_frame = SettingsFrame(0).serialize()
    return [(0, PREFACE + settings_frame + b"".join(f.serialize() for f in client_frames), T0),
            (1, settings_frame + b"".join(f.serialize() for f in server_frames), T0 + 5 * MS)]


def test_headers_with_padding_priority_and_continuation() -> None:
    enc_c, enc_s = hpack.Encoder(), hpack.Encoder()
    block = enc_c.encode([(":method", "GET"), (":path", "/long"), (":authority", "h"), (":scheme", "http"),
                          ("x-filler", "f" * 3000)])
    head = HeadersFrame(1, block[:1000], flags=["PADDED", "PRIORITY"], pad_length=20, depends_on=0,
                        stream_weight=16)
    conts = [ContinuationFrame(1, block[1000:2000]), ContinuationFrame(1, block[2000:], flags=["END_HEADERS"])]
    head.flags.add("END_STREAM")
    resp = HeadersFrame(1, enc_s.encode([(":status", "404")]), flags=["END_HEADERS"])
    data = DataFrame(1, b"nope", flags=["END_STREAM", "PADDED"], pad_length=100)
    records = _raw_conversation([head, *conts], [resp, data])
    (e,) = parse(records)
    assert (e.method, e.path, e.status, e.error) == ("GET", "/long", 404, None)
    assert e.request_bytes == sum(len(f.serialize()) for f in (head, *conts))
    assert e.latency_ms == 5.0


# -- h2c upgrade ---------------------------------------------------------------------------------------

def _upgrade_conv() -> tuple[Conv, bytes, bytes]:
    c = Conv()
    settings_header = c.client.initiate_upgrade_connection()
    assert settings_header is not None
    c.server.initiate_upgrade_connection(settings_header)
    request = (b"GET /upgraded HTTP/1.1\r\nHost: svc.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: " + settings_header + b"\r\n\r\n")
    response = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    c.clock += MS
    c.respond(1, extra=[("content-type", "text/plain")], end_stream=False)
    c.body(c.server, 1, b"upgraded!")
    sid = c.request("/second")
    c.respond(sid, 202)
    return c, request, response


def test_h2c_upgrade_with_http1_heads_fed() -> None:
    c, request, response = _upgrade_conv()
    records = [(0, request, T0), (1, response, T0 + MS // 2), *c.records]
    entries = parse(records, Http2Parser(FLOW, upgraded=True))
    assert [(e.method, e.path, e.authority, e.status, e.error) for e in entries] == [
        ("GET", "/upgraded", "svc.test", 200, None), ("GET", "/second", "svc.test", 202, None)]
    assert entries[0].time == T0 / 1e9
    assert entries[0].request_bytes == len(request)
    assert entries[0].response_bytes == wire_bytes(c.records, 1, 1)


def test_h2c_upgrade_frames_only() -> None:
    """The stage consumed the HTTP/1.1 exchange: stream 1 is known to exist, its request is not."""
    c, _, _ = _upgrade_conv()
    entries = parse(c.records, Http2Parser(FLOW, upgraded=True))
    assert [(e.path, e.status, e.error) for e in entries] == [(None, 200, None), ("/second", 202, None)]


def test_h2c_upgrade_through_the_http1_parser() -> None:
    """The HTTP/1 parser sees the Upgrade request and the 101, then hands the connection over."""
    from kstap.dissect.http1 import Http1Parser

    c, request, response = _upgrade_conv()
    records = [(0, request, T0), (1, response, T0 + MS // 2), *c.records]
    assert parse(records, Http1Parser(FLOW)) == parse(records, Http2Parser(FLOW, upgraded=True))


def test_upgrade_refused_is_a_parser_error() -> None:
    p = Http2Parser(FLOW, upgraded=True)
    p.feed(0, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", T0)
    with pytest.raises(ParserError):
        p.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", T0 + MS)


# -- gRPC ----------------------------------------------------------------------------------------------

def _grpc_call(c: Conv, method: str, requests: list[bytes], responses: list[bytes], *,
               status: str = "0", message: str | None = None, frame: int | None = None) -> int:
    sid = c.request(method, "POST", end_stream=False, extra=GRPC_REQ)
    c.body(c.client, sid, b"".join(grpc_msg(m) for m in requests), frame=frame)
    c.respond(sid, end_stream=False, extra=GRPC_RESP)
    for m in responses:
        c.body(c.server, sid, grpc_msg(m), end_stream=False, frame=frame)
    trailer = [("grpc-status", status)] + ([("grpc-message", message)] if message is not None else [])
    c.trailers(c.server, sid, trailer)
    return sid


def test_grpc_unary() -> None:
    c = Conv().start()
    sid = _grpc_call(c, "/helloworld.Greeter/SayHello", [b"\x0a\x05world"], [b"\x0a\x0bhello world"])
    (e,) = parse(c.records)
    assert (e.protocol, e.method, e.path, e.status, e.grpc_status, e.grpc_message, e.messages, e.error) == (
        "grpc", "POST", "/helloworld.Greeter/SayHello", 200, 0, None, 2, None)
    assert grpc.service_method(e.path) == ("helloworld.Greeter", "SayHello")
    assert e.request_bytes == wire_bytes(c.records, sid, 0)


def test_grpc_streaming_messages_split_and_packed() -> None:
    c = Conv().start()
    requests = [b"a" * 10, b"b" * 5000, b"", b"c" * 40000]
    responses = [b"r%d" % i * 300 for i in range(7)]
    _grpc_call(c, "/pkg.Chat/Talk", requests, responses, frame=777)  # messages split across frames
    sid = c.request("/pkg.Chat/Batch", "POST", end_stream=False, extra=GRPC_REQ)
    c.body(c.client, sid, b"".join(grpc_msg(b"x" * i) for i in range(50)))  # many to one frame
    c.respond(sid, end_stream=False, extra=GRPC_RESP)
    c.body(c.server, sid, grpc_msg(b"done"), end_stream=False)
    c.trailers(c.server, sid, [("grpc-status", "0")])
    talk, batch = parse(c.records)
    assert (talk.path, talk.messages, talk.grpc_status) == ("/pkg.Chat/Talk", 11, 0)
    assert (batch.path, batch.messages, batch.grpc_status) == ("/pkg.Chat/Batch", 51, 0)


def test_grpc_error_in_trailers_and_trailers_only() -> None:
    c = Conv().start()
    _grpc_call(c, "/pkg.Svc/Fail", [b"x"], [], status="13", message="boom%20%E2%9C%93%0A")
    sid = c.request("/pkg.Svc/Missing", "POST", end_stream=False, extra=GRPC_REQ)
    c.body(c.client, sid, grpc_msg(b"q"))
    c.respond(sid, extra=[*GRPC_RESP, ("grpc-status", "5"), ("grpc-message", "not found")])
    fail, missing = parse(c.records)
    assert (fail.grpc_status, fail.grpc_message, fail.messages, fail.status) == (13, "boom \u2713\n", 1, 200)
    assert (missing.grpc_status, missing.grpc_message, missing.messages) == (5, "not found", 1)
    assert missing.protocol == "grpc" and missing.error is None


def test_grpc_content_type_variants() -> None:
    assert grpc.is_grpc("application/grpc") and grpc.is_grpc("application/grpc+proto")
    assert grpc.is_grpc("Application/GRPC; charset=utf-8")
    assert not grpc.is_grpc("application/grpc-web") and not grpc.is_grpc(None)
    assert grpc.service_method("/a.B/C") == ("a.B", "C")
    assert grpc.service_method("/index.html") is None
    assert grpc.parse_status("14") == 14 and grpc.parse_status("x") is None


def test_message_counter_gaps() -> None:
    m = grpc.MessageCounter()
    m.feed(grpc_msg(b"x" * 100)[:50])
    m.skip(30)  # inside the payload: exact
    m.feed(b"x" * 25)
    assert (m.complete, m.lost) == (1, False)
    m.feed(grpc_msg(b"yy")[:2])
    m.skip(10)  # across a prefix: the count is no longer exact
    assert m.lost


# -- gaps ----------------------------------------------------------------------------------------------

def _split_inside_data(records: list[Record], marker: bytes) -> tuple[list[Record], int, list[Record]]:
    """Cut 1000 bytes out of the first record containing ``marker`` (inside a DATA payload).

    Returns the records before the hole, the hole's direction, and the records after it.
    """
    for i, (d, data, ts) in enumerate(records):
        at = data.find(marker)
        if at >= 0:
            return [*records[:i], (d, data[:at + 10], ts)], d, [(d, data[at + 1010:], ts), *records[i + 1:]]
    raise AssertionError("marker not found")


def test_gap_inside_data_is_absorbed() -> None:
    c = Conv().start()
    sid = c.request("/big", "POST", end_stream=False, extra=GRPC_REQ)
    c.body(c.client, sid, grpc_msg(b"G" * 12000))
    c.respond(sid, end_stream=False, extra=GRPC_RESP)
    c.trailers(c.server, sid, [("grpc-status", "0")])
    head, d, tail = _split_inside_data(c.records, b"GGGG")
    p = Http2Parser(FLOW)
    out = parse(head, p, close=False)
    out += p.gap(d, 1000, T0)
    out += parse(tail, p)
    (e,) = out
    assert (e.error, e.messages, e.grpc_status) == (None, 1, 0)
    assert e.request_bytes == wire_bytes(c.records, sid, 0)


def test_gap_outside_data_gives_up() -> None:
    c = Conv().start()
    first = c.request("/a")
    c.respond(first)
    c.request("/b")
    p = Http2Parser(FLOW)
    done = parse(c.records, p, close=False)
    assert [e.path for e in done] == ["/a"]
    flushed = p.gap(1, 50, T0 + 10**10)
    assert [(e.path, e.error) for e in flushed] == [("/b", "gap")]
    assert p.memory == 0
    with pytest.raises(ParserError) as err:
        p.feed(1, b"\0" * 9, T0 + 10**10)
    assert err.value.kind == "gap"


# -- chunking must not matter ---------------------------------------------------------------------------

def _mixed_conversation() -> list[Record]:
    c = Conv().start()
    a = c.request("/one", extra=[("accept", "*/*")])
    _grpc_call(c, "/pkg.S/Unary", [b"req"], [b"resp"])
    b = c.request("/two", "POST", end_stream=False)
    c.respond(a, end_stream=False)
    c.body(c.client, b, b"B" * 30000)
    c.body(c.server, a, b"A" * 20000, end_stream=False, frame=999)
    c.respond(b, 201)
    c.trailers(c.server, a, [("x-done", "1")])
    _grpc_call(c, "/pkg.S/Stream", [b"m" * 7 for _ in range(5)], [b"n" * 3000 for _ in range(4)], frame=1234)
    d = c.request("/three")
    c.server.reset_stream(d, h2.errors.ErrorCodes.INTERNAL_ERROR)
    c.pump()
    return c.records


MIXED = _mixed_conversation()
MIXED_ENTRIES = parse(MIXED)


def _rechunk(records: list[Record], cuts: Callable[[int], list[int]]) -> list[Record]:
    out = []
    for d, data, ts in records:
        pos = 0
        for size in cuts(len(data)):
            out.append((d, data[pos:pos + size], ts))
            pos += size
        if pos < len(data):
            out.append((d, data[pos:], ts))
    return out


def test_mixed_conversation_entries() -> None:
    assert [(e.path, e.status, e.protocol, e.messages, e.error) for e in MIXED_ENTRIES] == [
        ("/pkg.S/Unary", 200, "grpc", 2, None), ("/two", 201, "http/2", None, None),
        ("/one", 200, "http/2", None, None), ("/pkg.S/Stream", 200, "grpc", 9, None),
        ("/three", None, "http/2", None, "reset:INTERNAL_ERROR")]


def test_one_byte_at_a_time() -> None:
    assert parse(_rechunk(MIXED, lambda n: [1] * n)) == MIXED_ENTRIES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_random_chunking_gives_identical_entries(seed: int) -> None:
    rnd = random.Random(seed)

    def cuts(n: int) -> list[int]:
        out, left = [], n
        while left > 0:
            size = min(left, rnd.choice((1, 2, 3, 5, 8, 9, 10, 17, 100, 1000, 5000)))
            out.append(size)
            left -= size
        return out

    assert parse(_rechunk(MIXED, cuts)) == MIXED_ENTRIES


# -- hostile input --------------------------------------------------------------------------------------

def _settings_pair() -> list[Record]:
    return [(0, PREFACE + SettingsFrame(0).serialize(), T0), (1, SettingsFrame(0).serialize(), T0)]


def _expect_error(records: list[Record], kind: str | None = None, limits: Http2Limits | None = None,
                  seconds: float = 1.0) -> ParserError:
    p = Http2Parser(FLOW, limits=limits or Http2Limits())
    started = time.perf_counter()
    with pytest.raises(ParserError) as err:
        for d, data, ts in records:
            p.feed(d, data, ts)
    assert time.perf_counter() - started < seconds
    if kind is not None:
        assert err.value.kind == kind, err.value
    assert p.memory == _recount(p) == sum(s.memory() for s in p._streams.values())  # buffers, tables freed
    with pytest.raises(ParserError) as again:  # stays dead
        p.feed(0, b"x", T0)
    assert again.value.kind == err.value.kind
    p.close(T0)
    assert p.memory == 0
    return err.value


def _head(length: int, ftype: int, flags: int, sid: int) -> bytes:
    return length.to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big")


def _upload(data_length: int, *, settings: bool) -> list[tuple[int, bytes, int]]:
    enc = hpack.Encoder()
    big = SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 1 << 20}).serialize()
    block = enc.encode([(":method", "POST"), (":path", "/x"), (":authority", "a"), (":scheme", "http")])
    records = [(1, SettingsFrame(0).serialize(), T0),
               (0, PREFACE + SettingsFrame(0).serialize() + HeadersFrame(1, block, flags=["END_HEADERS"]).serialize()
                + DataFrame(1, b"d" * data_length, flags=["END_STREAM"]).serialize(), T0)]
    if settings:
        records.insert(1, (1, big, T0))
    reply = hpack.Encoder().encode([(":status", "200")])
    records.append((1, HeadersFrame(1, reply, flags=["END_HEADERS", "END_STREAM"]).serialize(), T0 + 1000))
    return records


def test_larger_frames_allowed_after_settings() -> None:
    p = Http2Parser(FLOW)
    out = parse(_upload(100000, settings=True), p, close=False)
    assert [(e.path, e.status, e.error) for e in out] == [("/x", 200, None)]
    assert p.memory < 10000 and p.oversized_frames == 0  # the 100 kB DATA frame was counted, not buffered


def test_frames_over_the_seen_maximum_are_read_on() -> None:
    """A SETTINGS we never saw may have allowed them: the connection is not given up for it."""
    p = Http2Parser(FLOW)
    out = parse(_upload(1 << 20, settings=False), p, close=False)
    assert [(e.path, e.status, e.error) for e in out] == [("/x", 200, None)]
    assert out[0].request_bytes >= 1 << 20 and p.oversized_frames == 1 and p.memory < 10000
    # what is kept in memory still has its own caps, whatever the frame size allows
    _expect_error([*_settings_pair(), (1, _head(0xFFFFFF, 1, 4, 1), T0)], "header-flood")


def test_too_many_concurrent_streams() -> None:
    enc = hpack.Encoder()
    frames_ = b"".join(HeadersFrame(2 * i + 1, enc.encode([(":method", "GET"), (":path", f"/{i}")]),
                                    flags=["END_HEADERS"]).serialize() for i in range(60))
    err = _expect_error([*_settings_pair(), (0, frames_, T0)], "too-many-streams",
                        limits=Http2Limits(max_streams=50))
    assert "50" in str(err)


def test_invalid_hpack() -> None:
    bad_index = HeadersFrame(1, b"\xff\x80\x01", flags=["END_HEADERS"]).serialize()  # index far past the tables
    _expect_error([*_settings_pair(), (0, bad_index, T0)], "malformed")
    huff = HeadersFrame(1, b"\x00\x81\xff\x01a", flags=["END_HEADERS"]).serialize()  # bad Huffman
    _expect_error([*_settings_pair(), (0, huff, T0)])
    big_update = HeadersFrame(1, b"\x3f\xe1\xff\x03", flags=["END_HEADERS"]).serialize()  # table 64 KiB > 4096
    _expect_error([*_settings_pair(), (0, big_update, T0)])


def test_continuation_flood() -> None:
    enc = hpack.Encoder()
    head = HeadersFrame(1, enc.encode([(":method", "GET")]), flags=[]).serialize()
    flood = _head(0, 9, 0, 1) * 100000
    _expect_error([*_settings_pair(), (0, head + flood, T0)], "header-flood", seconds=0.5)
    filler = _head(16000, 9, 0, 1) + b"\x00" * 16000
    _expect_error([*_settings_pair(), (0, head + filler * 10, T0)], "header-flood")


def test_header_list_flood() -> None:
    """One 3 kB header put in the table, then a block of 200 one-byte references to it (600 kB)."""
    enc = hpack.Encoder()
    first = HeadersFrame(1, enc.encode([(":method", "GET"), ("x-a", "v" * 3000)]),
                         flags=["END_HEADERS", "END_STREAM"])
    index = 62  # the first dynamic-table entry
    flood = HeadersFrame(3, bytes([0x80 | index]) * 200, flags=["END_HEADERS"])
    _expect_error([*_settings_pair(), (0, first.serialize() + flood.serialize(), T0)], "header-flood")


def test_open_streams_reported_by_close_after_an_error() -> None:
    """The stage closes a parser that raised and marks what it returns with the error kind."""
    c = Conv().start()
    done = c.request("/done")
    c.respond(done)
    c.request("/open")
    p = Http2Parser(FLOW)
    assert [e.path for e in parse(c.records, p, close=False)] == ["/done"]
    with pytest.raises(ParserError):
        p.feed(0, _head(1, 3, 0, 9) + b"x", T0)  # RST_STREAM of one byte
    assert p.memory > 0
    assert [(e.path, e.error) for e in p.close(T0)] == [("/open", "no-response")]
    assert p.memory == 0 and p.close(T0) == []


def test_protocol_violations() -> None:
    _expect_error([(0, b"GET / HTTP/1.1\r\n\r\n", T0)])  # no preface
    _expect_error([(0, PREFACE + _head(0, 6, 0, 0) + b"", T0)])  # PING before SETTINGS
    _expect_error([*_settings_pair(), (0, _head(3, 3, 0, 1) + b"abc", T0)])  # RST_STREAM of 3 bytes
    _expect_error([*_settings_pair(), (0, _head(0, 0, 1, 0), T0)])  # DATA on stream 0
    _expect_error([*_settings_pair(), (0, _head(5, 0, 8, 1) + b"\x09abcd", T0)])  # padding > frame
    _expect_error([*_settings_pair(), (0, _head(1, 5, 4, 1) + b"a", T0)])  # PUSH_PROMISE from client


SEED = _rechunk(MIXED, lambda n: [max(1, n // 3)] * 3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_streams_raise_only_parser_error(data: st.DataObject) -> None:
    records = list(SEED)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(records) - 1))
        d, raw, ts = records[i]
        op = data.draw(st.sampled_from(("flip", "insert", "delete", "truncate", "swap-dir", "dup")))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]
        elif op == "insert":
            raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=40)) + raw[at:]
        elif op == "delete":
            raw = raw[:at] + raw[at + data.draw(st.integers(1, 30)):]
        elif op == "truncate":
            raw = raw[:at]
        elif op == "swap-dir":
            d = 1 - d
        else:
            records.insert(i, (d, raw, ts))
        records[i] = (d, raw, ts)
    p = Http2Parser(FLOW)
    try:
        for d, raw, ts in records:
            p.feed(d, raw, ts)
            assert p.memory == _recount(p) < 400_000
    except ParserError:
        assert p.memory == _recount(p) < 400_000
    p.close(T0)
    assert p.memory == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=300)), max_size=20), st.booleans())
def test_random_bytes_after_preface(chunks: list[tuple[int, bytes]], upgraded: bool) -> None:
    p = Http2Parser(FLOW, upgraded=upgraded)
    try:
        p.feed(0, PREFACE + SettingsFrame(0).serialize(), T0)
        p.feed(1, SettingsFrame(0).serialize(), T0)
        for d, raw in chunks:
            p.feed(d, raw, T0)
            assert p.memory < 400_000
            if chunks and raw[:1] == b"\x01":
                p.gap(d, len(raw), T0)
    except ParserError:
        pass
    p.close(T0)


def _recount(p: Http2Parser) -> int:
    """``memory`` recomputed from scratch (the parser keeps the stream part as a running sum)."""
    if p._dead is not None:
        return sum(s.memory() for s in p._streams.values())
    sides = sum(len(side.buf) + side.table_memory() + len(side.block or b"") for side in p._sides)
    return _PARSER_BASE + sides + sum(s.memory() for s in p._streams.values())


def test_memory_running_sum_stays_exact() -> None:
    c = Conv().start()
    sids = [c.request(f"/m/{i}", "POST", end_stream=False, extra=GRPC_REQ) for i in range(30)]
    for sid in sids:
        c.body(c.client, sid, grpc_msg(b"x"))
    p = Http2Parser(FLOW)
    parse(c.records, p, close=False)
    assert p.memory == _recount(p) > _PARSER_BASE + 30 * 360
    before = p.memory
    start = len(c.records)
    for sid in sids[:20]:
        c.respond(sid, end_stream=False, extra=GRPC_RESP)
        c.trailers(c.server, sid, [("grpc-status", "2"), ("grpc-message", "m" * 50)])
    c.client.reset_stream(sids[20])
    c.pump()
    for d, raw, ts in c.records[start:]:
        p.feed(d, raw, ts)
        assert p.memory == _recount(p)
    assert len(p._streams) == 9
    assert p.memory < before - 21 * 500  # 21 streams ended; the response table grew a little


# -- memory honesty --------------------------------------------------------------------------------------

def test_memory_estimate_tracks_real_allocations() -> None:
    """Open streams + full HPACK tables: ``memory`` within a factor 1.6 of what tracemalloc sees."""
    import gc
    import tracemalloc

    c = Conv().start()
    c.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 65536})
    c.server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 65536,
                              h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    c.pump()
    for i in range(400):
        sid = c.request(f"/stream/{i}/" + "p" * 40, end_stream=False,
                        extra=[(f"x-k{i % 300}", "v" * 150)])
        c.respond(sid, end_stream=False, extra=[(f"x-s{i % 300}", "w" * 150)])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    p = Http2Parser(FLOW)
    for d, raw, ts in c.records:
        p.feed(d, raw, ts)
    gc.collect()
    real = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    reported = p.memory
    assert reported > 100_000
    assert real / 1.6 < reported < real * 1.6, (real, reported)

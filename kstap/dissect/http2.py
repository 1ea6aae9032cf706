"""HTTP/2 cleartext (RFC 9113) and gRPC, read passively from both directions of one TCP connection.

Each direction is a small state machine over the byte stream: the client preface (or, after an h2c
upgrade, the HTTP/1.1 request and ``101`` response), then 9-byte frame headers and their payloads.
DATA payloads are never buffered: they are counted (and scanned for gRPC message prefixes) as they
arrive, so a 16 MiB DATA frame costs no memory. Other frames are buffered whole but are small by
construction: header blocks are capped (:attr:`Http2Limits.max_header_block`), GOAWAY keeps only its
first 8 bytes, unknown frame types are skipped.

Header blocks are decoded with one ``hpack.Decoder`` per direction, in wire order, including blocks of
streams the parser ignores (the dynamic table must stay in step). A peer's SETTINGS_HEADER_TABLE_SIZE
raises the table size the *other* direction's encoder may use (up to :attr:`Http2Limits.max_table_size`).

One :class:`~kstap.dissect.api.Entry` per stream once both sides ended it (END_STREAM each way), or at
RST_STREAM (``error="reset:CODE"``; a ``NO_ERROR`` reset after a complete response is a normal early
response), at a GOAWAY that excludes it (``"goaway"``), at a capture gap (``"gap"``) or at
:meth:`Http2Parser.close` (``"no-response"`` / ``"incomplete"``).

A gap inside a DATA payload (or other skipped bytes) is absorbed exactly: the frame length says where
the next frame starts. Anywhere else the HPACK state is lost, so :meth:`Http2Parser.gap` returns every
open stream as an entry with ``error="gap"`` and the parser becomes unusable: its next ``feed`` raises
:class:`~kstap.dissect.api.ParserError` (kind ``"gap"``) so the stage drops the flow.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import struct
from dataclasses import dataclass

import hpack

from kstap.dissect import grpc
from kstap.dissect.api import Entry, FlowContext, ParserError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_MAX_FRAME_SIZE = 0x5
MAX_SETTINGS = 6 * 64
"""Bytes of one SETTINGS frame (64 parameters; seven are defined, real peers send at most a dozen)."""
DEFAULT_MAX_FRAME = 16384
LARGEST_FRAME = (1 << 24) - 1

ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
               "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")

_FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
_ON_STREAM = (DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION)
_ON_CONNECTION = (SETTINGS, PING, GOAWAY)
_HEAD = struct.Struct(">BBI")  # type, flags, stream id (after the 3-byte length)


@dataclass(frozen=True)
class Http2Limits:
    """Bounds on what one connection may make the parser hold or do."""

    max_streams: int = 1000
    """Streams open at once (started, not yet turned into an entry). Servers advertise 100 to 250."""
    max_header_list: int = 64 << 10
    """Decoded size of one header list (RFC 7541 sizes: name + value + 32 each); hpack's default."""
    max_header_block: int = 64 << 10
    """Compressed bytes of one header block (HEADERS/PUSH_PROMISE + CONTINUATIONs) before decoding."""
    max_continuations: int = 32
    """CONTINUATION frames in one header block (nghttp2 allows 8; the 2024 CONTINUATION floods)."""
    max_table_size: int = 64 << 10
    """Largest HPACK dynamic table a peer may make us keep, per direction (default 4096)."""
    max_upgrade_head: int = 16 << 10
    """Bytes of the HTTP/1.1 upgrade request or 101 response head (h2c upgrade only)."""


DEFAULT_LIMITS = Http2Limits()

# side states
_S_HTTP1 = 0
_S_HTTP1_BODY = 1
_S_PREFACE = 2
_S_HEAD = 3
_S_KEEP = 4
_S_DATA = 5
_S_SKIP = 6

_STREAM_BASE = 360
"""Estimated bytes of one open stream's state (object, slots, dict slot), measured with tracemalloc."""
_TABLE_ENTRY_OVERHEAD = 100
"""Python bytes per dynamic-table entry beyond the RFC's name + value + 32 (tuple, two bytes, deque slot)."""
_PARSER_BASE = 2500
"""The parser, its two sides and their decoders when empty."""


class _Stream:
    """What one stream has shown so far; only the fields an entry needs are kept."""

    __slots__ = ("authority", "content_type", "counters", "grpc_message", "grpc_status", "last_ns", "mem",
                 "method", "path", "req_bytes", "req_done", "resp_bytes", "resp_done", "resp_final", "resp_seen",
                 "sid", "start_ns", "status")

    def __init__(self, sid: int, start_ns: int) -> None:
        self.sid = sid
        self.start_ns = start_ns
        self.last_ns = start_ns
        self.method: str | None = None
        self.path: str | None = None
        self.authority: str | None = None
        self.content_type: str | None = None
        self.status: int | None = None
        self.grpc_status: int | None = None
        self.grpc_message: str | None = None
        self.req_bytes = 0
        self.resp_bytes = 0
        self.req_done = False
        self.resp_done = False
        self.resp_final = False
        self.resp_seen = False
        self.counters: tuple[grpc.MessageCounter, grpc.MessageCounter] | None = None
        self.mem = 0
        """What :meth:`memory` returned when the parser last accounted for this stream."""

    def memory(self) -> int:
        return _STREAM_BASE + sum(len(v) for v in (self.method, self.path, self.authority, self.content_type,
                                                    self.grpc_message) if v) + (200 if self.counters else 0)


class _Side:
    """One direction's reader state: where in the byte stream it is and what it buffers."""

    def __init__(self, direction: int, state: int, limits: Http2Limits) -> None:
        self.direction = direction
        self.state = state
        self.buf = bytearray()
        self.buf_ns = 0
        """Timestamp of the oldest unconsumed byte in ``buf``."""
        self.decoder = hpack.Decoder(max_header_list_size=limits.max_header_list)
        self.max_frame = DEFAULT_MAX_FRAME
        """Largest frame this direction may send (the receiver's SETTINGS_MAX_FRAME_SIZE, as seen)."""
        self.frames = 0
        # current frame
        self.ftype = 0
        self.flags = 0
        self.sid = 0
        self.length = 0
        self.frame_ns = 0
        self.keep = 0
        self.data_left = 0
        self.skip = 0
        self.stream: _Stream | None = None
        """The open stream a DATA frame being read belongs to (None: ignored)."""
        self.counter: grpc.MessageCounter | None = None
        self.body_left = 0
        # header block being assembled (HEADERS or PUSH_PROMISE, then CONTINUATIONs)
        self.block: bytearray | None = None
        self.block_type = 0
        self.block_sid = 0
        self.block_promised = 0
        self.block_end_stream = False
        self.block_ns = 0
        self.block_wire = 0
        self.block_frames = 0

    def table_memory(self) -> int:
        table = self.decoder.header_table
        return int(table._current_size) + _TABLE_ENTRY_OVERHEAD * len(table.dynamic_entries)


class Http2Parser:
    """HTTP/2 + gRPC entries from one connection. See the module docstring for the rules."""

    def __init__(self, flow: FlowContext, *, upgraded: bool = False, limits: Http2Limits = DEFAULT_LIMITS) -> None:
        self.flow = flow
        self.limits = limits
        self.upgraded = upgraded
        first = _S_HTTP1 if upgraded else _S_PREFACE
        self._sides = (_Side(0, first, limits), _Side(1, _S_HTTP1 if upgraded else _S_HEAD, limits))
        self._streams: dict[int, _Stream] = {}
        self._stream_mem = 0
        """Sum of the open streams' accounted memory (kept current so ``memory`` is O(1))."""
        self._last_client_sid = 0
        self._last_server_sid = 0
        self._out: list[Entry] = []
        self._dead: str | None = None
        self._dead_kind = "malformed"
        self._ts = 0
        self._old = 0
        self._pending_start = False
        self.oversized_frames = 0
        """Frames longer than any SETTINGS_MAX_FRAME_SIZE seen (read on: see ``_on_head``)."""
        if upgraded:
            # RFC 9113 §3.2: the upgrade request is stream 1, half-closed from the client's side.
            s = _Stream(1, 0)
            s.req_done = True
            self._streams[1] = s
            self._account(s)
            self._last_client_sid = 1
            self._pending_start = True

    # -- StreamParser --------------------------------------------------------------------------------

    def feed(self, direction: int, data: bytes, ts_ns: int) -> list[Entry]:
        if self._dead is not None:
            raise ParserError(f"HTTP/2 parser unusable: {self._dead}", kind=self._dead_kind)
        if self._pending_start:
            self._streams[1].start_ns = self._streams[1].last_ns = ts_ns
            self._pending_start = False
        self._ts = ts_ns
        side = self._sides[direction]
        try:
            self._run(side, data, ts_ns)
        except ParserError as exc:
            self._die(str(exc), exc.kind, keep_streams=True)
            raise
        except (hpack.OversizedHeaderListError, hpack.InvalidTableSizeError) as exc:
            self._die(str(exc), "header-flood", keep_streams=True)
            raise ParserError(f"HTTP/2 header block too large: {exc}", kind="header-flood") from exc
        except (hpack.HPACKError, IndexError, ValueError, KeyError, OverflowError, struct.error) as exc:
            self._die(str(exc), "malformed", keep_streams=True)
            raise ParserError(f"invalid HTTP/2 or HPACK data: {exc!s:.200}") from exc
        out, self._out = self._out, []
        return out

    def gap(self, direction: int, nbytes: int, ts_ns: int) -> list[Entry]:
        if self._dead is not None or nbytes <= 0:
            return []
        self._ts = ts_ns
        side = self._sides[direction]
        if not side.buf and side.state == _S_DATA and nbytes <= side.data_left + side.skip:
            in_data = min(nbytes, side.data_left)
            side.data_left -= in_data
            side.skip -= nbytes - in_data
            if side.counter is not None:
                side.counter.skip(in_data)
            self._data_progress(side, ts_ns)
            out, self._out = self._out, []
            return out
        if not side.buf and side.state == _S_SKIP and nbytes <= side.skip:
            side.skip -= nbytes
            if not side.skip:
                self._frame_done(side, ts_ns)
            out, self._out = self._out, []
            return out
        # HPACK state (or frame alignment) is lost: report what is open, then stop.
        out = self._out + [self._entry(s, "gap") for s in self._streams.values()]
        self._out = []
        self._die("state lost at a capture gap", "gap")
        return out

    def close(self, ts_ns: int) -> list[Entry]:
        out = self._out
        self._out = []
        for s in self._streams.values():
            if not s.resp_seen and s.req_done:
                out.append(self._entry(s, "no-response"))
            else:
                out.append(self._entry(s, "incomplete"))
        self._die(self._dead or "connection closed", self._dead_kind if self._dead else "closed")
        return out

    @property
    def memory(self) -> int:
        if self._dead is not None:
            return self._stream_mem  # after a ParserError: the open streams kept for close()
        total = _PARSER_BASE
        for side in self._sides:
            total += len(side.buf) + side.table_memory()
            if side.block is not None:
                total += len(side.block)
        return total + self._stream_mem

    # -- byte stream → frames ------------------------------------------------------------------------

    def _die(self, why: str, kind: str, *, keep_streams: bool = False) -> None:
        """Stop for good: free every buffer and table; later feeds raise ``kind``.

        After a ParserError the open streams are kept (a few hundred bytes each) so that ``close`` can
        still report them, as the stage does when a parser fails; otherwise they go too.
        """
        self._dead, self._dead_kind = why, kind
        if not keep_streams:
            self._streams.clear()
            self._stream_mem = 0
        for side in self._sides:
            side.buf = bytearray()
            side.block = None
            side.decoder = hpack.Decoder(max_header_list_size=self.limits.max_header_list)

    def _run(self, side: _Side, data: bytes, ts: int) -> None:
        """Append ``data`` and take every whole piece; each branch consumes, moves on, or waits."""
        buf = side.buf
        old = self._old = len(buf)
        if not old:
            side.buf_ns = ts
        buf += data
        pos = 0
        n = len(buf)
        while True:
            state = side.state
            if state == _S_HEAD:
                if n - pos < 9:
                    break
                length = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
                ftype, flags, sid = _HEAD.unpack_from(buf, pos + 3)
                side.frame_ns = side.buf_ns if pos < old else ts
                pos += 9
                self._on_head(side, length, ftype, flags, sid & 0x7FFFFFFF)
            elif state == _S_DATA:
                take = min(n - pos, side.data_left)
                if take:
                    if side.counter is not None:
                        with memoryview(buf) as mv:
                            side.counter.feed(mv[pos:pos + take])
                    pos += take
                    side.data_left -= take
                if side.data_left:
                    break
                self._data_progress(side, ts)
            elif state == _S_SKIP:
                take = min(n - pos, side.skip)
                pos += take
                side.skip -= take
                if side.skip:
                    break
                self._frame_done(side, ts)
            elif state == _S_KEEP:
                if n - pos < side.keep:
                    break
                payload = bytes(buf[pos:pos + side.keep])
                pos += side.keep
                side.skip = side.length - side.keep
                side.state = _S_SKIP
                self._on_payload(side, payload, ts)
            elif state == _S_PREFACE:
                have = min(n - pos, len(PREFACE))
                if buf[pos:pos + have] != PREFACE[:have]:
                    raise ParserError("no HTTP/2 client preface")
                if have < len(PREFACE):
                    break
                pos += have
                side.state = _S_HEAD
            elif state == _S_HTTP1:
                used = self._http1_head(side, buf, pos, ts)
                if used is None:
                    break
                pos += used
            else:  # _S_HTTP1_BODY
                take = min(n - pos, side.body_left)
                pos += take
                side.body_left -= take
                if side.body_left:
                    break
                side.state = _S_PREFACE
        del buf[:pos]
        if buf and pos >= old:
            side.buf_ns = ts

    def _on_head(self, side: _Side, length: int, ftype: int, flags: int, sid: int) -> None:
        """A frame header: check it, then choose how its payload is read."""
        if side.frames == 0 and ftype != SETTINGS:
            raise ParserError("HTTP/2 connection does not start with SETTINGS")
        side.frames += 1
        if length > side.max_frame:
            # Legal once a SETTINGS_MAX_FRAME_SIZE allowed it, and that SETTINGS may be one we never saw
            # (capture began late, a segment was lost, the peer's settings were still in flight). The
            # length costs nothing by itself: DATA is counted, never buffered, and every frame kept in
            # memory has its own cap below (header block, SETTINGS, GOAWAY's 8 bytes, fixed lengths).
            self.oversized_frames += 1
        if side.block is not None and (ftype != CONTINUATION or sid != side.block_sid):
            raise ParserError("header block interrupted before END_HEADERS")
        if ftype in _ON_STREAM and sid == 0:
            raise ParserError(f"HTTP/2 frame type {ftype} on stream 0")
        if ftype in _ON_CONNECTION and sid != 0:
            raise ParserError(f"HTTP/2 frame type {ftype} on stream {sid}")
        fixed = _FIXED_LENGTH.get(ftype)
        if fixed is not None and length != fixed:
            raise ParserError(f"HTTP/2 frame type {ftype} with length {length}")
        side.ftype, side.flags, side.sid, side.length = ftype, flags, sid, length
        if ftype == DATA:
            stream = self._streams.get(sid)
            side.stream = stream
            side.counter = None
            if stream is not None:
                if side.direction == 0:
                    stream.req_bytes += 9 + length
                else:
                    stream.resp_bytes += 9 + length
                    stream.resp_seen = True
                if stream.counters is not None:
                    side.counter = stream.counters[side.direction]
            if flags & PADDED:
                if length < 1:
                    raise ParserError("padded DATA frame without a pad length")
                side.keep = 1
                side.state = _S_KEEP
            else:
                side.data_left, side.skip = length, 0
                side.state = _S_DATA
            return
        if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
            if ftype == CONTINUATION:
                if side.block is None:
                    raise ParserError("CONTINUATION without a header block")
                side.block_frames += 1
                if side.block_frames > self.limits.max_continuations:
                    raise ParserError("too many CONTINUATION frames", kind="header-flood")
                have = len(side.block)
            else:
                if ftype == PUSH_PROMISE and side.direction == 0:
                    raise ParserError("PUSH_PROMISE from the client")
                have = 0
            if have + length > self.limits.max_header_block + 261:  # + padding and priority fields
                raise ParserError("HTTP/2 header block too large", kind="header-flood")
            side.keep = length
        elif ftype == GOAWAY:
            if length < 8:
                raise ParserError("GOAWAY shorter than 8 bytes")
            side.keep = 8
        elif ftype == SETTINGS:
            if flags & ACK and length:
                raise ParserError("SETTINGS ACK with a payload")
            if length % 6:
                raise ParserError("SETTINGS length not a multiple of 6")
            if length > MAX_SETTINGS:
                raise ParserError(f"SETTINGS frame of {length} bytes", kind="too-large")
            side.keep = length
        elif fixed is not None:
            side.keep = length
        else:
            side.keep = 0  # unknown extension frame: skipped
        side.state = _S_KEEP

    def _data_progress(self, side: _Side, ts: int) -> None:
        """After DATA payload bytes were taken: move on to the padding, then to the frame's end."""
        if side.data_left:
            return
        if side.skip:
            side.state = _S_SKIP
        else:
            self._frame_done(side, ts)

    def _frame_done(self, side: _Side, ts: int) -> None:
        side.state = _S_HEAD
        if side.ftype != DATA:
            return
        stream = side.stream
        side.stream = side.counter = None
        if stream is None or self._streams.get(stream.sid) is not stream:
            return
        if side.direction == 1:
            stream.last_ns = ts
        if side.flags & END_STREAM:
            self._end_stream(stream, side.direction)

    def _on_payload(self, side: _Side, p: bytes, ts: int) -> None:
        ftype = side.ftype
        if ftype == DATA:  # the pad length byte of a PADDED frame
            pad = p[0]
            if pad > side.length - 1:
                raise ParserError("DATA padding longer than the frame")
            side.data_left, side.skip = side.length - 1 - pad, pad
            side.state = _S_DATA
        elif ftype in (HEADERS, PUSH_PROMISE):
            self._start_block(side, p)
        elif ftype == CONTINUATION:
            assert side.block is not None
            side.block += p
            side.block_wire += 9 + len(p)
            if side.flags & END_HEADERS:
                self._end_block(side, ts)
        elif ftype == SETTINGS:
            if not side.flags & ACK:
                self._on_settings(side, p)
        elif ftype == RST_STREAM:
            self._on_reset(side, int.from_bytes(p, "big"), ts)
        elif ftype == GOAWAY:
            self._on_goaway(side, int.from_bytes(p[:4], "big") & 0x7FFFFFFF)
        # PRIORITY, PING, WINDOW_UPDATE: length checked, nothing to record

    def _start_block(self, side: _Side, p: bytes) -> None:
        off, end = 0, len(p)
        if side.flags & PADDED:
            if end < 1:
                raise ParserError("padded frame without a pad length")
            end -= p[0]
            off = 1
        promised = 0
        if side.ftype == PUSH_PROMISE:
            if end - off < 4:
                raise ParserError("PUSH_PROMISE without a promised stream id")
            promised = int.from_bytes(p[off:off + 4], "big") & 0x7FFFFFFF
            off += 4
        elif side.flags & PRIORITY_FLAG:
            off += 5
        if off > end:
            raise ParserError("HTTP/2 padding longer than the frame")
        side.block = bytearray(p[off:end])
        side.block_type = side.ftype
        side.block_sid = side.sid
        side.block_promised = promised
        side.block_end_stream = bool(side.flags & END_STREAM) and side.ftype == HEADERS
        side.block_ns = side.frame_ns
        side.block_wire = 9 + side.length
        side.block_frames = 0
        if len(side.block) > self.limits.max_header_block:
            raise ParserError("HTTP/2 header block too large", kind="header-flood")
        if side.flags & END_HEADERS:
            self._end_block(side, self._ts)

    def _end_block(self, side: _Side, ts: int) -> None:
        block = bytes(side.block or b"")
        side.block = None
        if len(block) > self.limits.max_header_block:
            raise ParserError("HTTP/2 header block too large", kind="header-flood")
        headers = side.decoder.decode(block, raw=True)
        fields: dict[bytes, bytes] = {}
        for name, value in headers:
            if name in _WANTED and name not in fields:
                fields[name] = value
        if side.block_type == PUSH_PROMISE:
            self._on_push(side, fields)
        elif side.direction == 0:
            self._on_request_headers(side, fields)
        else:
            self._on_response_headers(side, fields, ts)

    # -- streams --------------------------------------------------------------------------------------

    def _new_stream(self, sid: int, start_ns: int) -> _Stream:
        if len(self._streams) >= self.limits.max_streams:
            raise ParserError(f"more than {self.limits.max_streams} concurrent HTTP/2 streams",
                              kind="too-many-streams")
        s = _Stream(sid, start_ns)
        self._streams[sid] = s
        return s

    def _account(self, s: _Stream) -> None:
        mem = s.memory()
        self._stream_mem += mem - s.mem
        s.mem = mem

    def _remove(self, sid: int) -> _Stream | None:
        s = self._streams.pop(sid, None)
        if s is not None:
            self._stream_mem -= s.mem
        return s

    def _on_request_headers(self, side: _Side, f: dict[bytes, bytes]) -> None:
        sid = side.block_sid
        s = self._streams.get(sid)
        if s is None:
            if not sid % 2:
                raise ParserError(f"client HEADERS on even stream {sid}")
            if sid <= self._last_client_sid:
                return  # a stream already closed (its entry is out); the block was still decoded
            self._last_client_sid = sid
            s = self._new_stream(sid, side.block_ns)
            _request_fields(s, f)
            self._account(s)
        elif s.req_done:
            return
        s.req_bytes += side.block_wire
        if side.block_end_stream:
            self._end_stream(s, 0)

    def _on_response_headers(self, side: _Side, f: dict[bytes, bytes], ts: int) -> None:
        s = self._streams.get(side.block_sid)
        if s is None or s.resp_done:
            return
        s.resp_bytes += side.block_wire
        s.resp_seen = True
        s.last_ns = ts
        if not s.resp_final:
            status = _int(f.get(b":status"))
            if status is not None and 100 <= status < 200 and not side.block_end_stream:
                s.status = status  # informational; replaced by the final status
            else:
                s.resp_final = True
                s.status = status
                ct = f.get(b"content-type")
                if ct is not None and s.content_type is None:
                    s.content_type = _text(ct)
                    if grpc.is_grpc(s.content_type) and s.counters is None:
                        s.counters = (grpc.MessageCounter(), grpc.MessageCounter())
                _trailer_fields(s, f)  # a trailers-only gRPC response
        else:
            _trailer_fields(s, f)
        self._account(s)
        if side.block_end_stream:
            self._end_stream(s, 1)

    def _on_push(self, side: _Side, f: dict[bytes, bytes]) -> None:
        promised = side.block_promised
        if promised == 0 or promised % 2:
            raise ParserError(f"PUSH_PROMISE of invalid stream {promised}")
        if promised <= self._last_server_sid:
            return
        self._last_server_sid = promised
        s = self._new_stream(promised, side.block_ns)
        _request_fields(s, f)
        self._account(s)
        s.req_bytes = side.block_wire
        s.req_done = True

    def _end_stream(self, s: _Stream, direction: int) -> None:
        if direction == 0:
            s.req_done = True
        else:
            s.resp_done = True
        if s.req_done and s.resp_done:
            self._remove(s.sid)
            self._out.append(self._entry(s, None))

    def _on_reset(self, side: _Side, code: int, ts: int) -> None:
        s = self._remove(side.sid)
        if s is None:
            return
        if side.direction == 1 and s.resp_seen:
            s.last_ns = ts
        if code == 0 and s.resp_done:
            self._out.append(self._entry(s, None))  # an early response, then NO_ERROR (RFC 9113 §8.1)
        else:
            name = ERROR_CODES[code] if code < len(ERROR_CODES) else f"0x{code:x}"
            self._out.append(self._entry(s, f"reset:{name}"))

    def _on_goaway(self, side: _Side, last: int) -> None:
        parity = 1 if side.direction == 1 else 0  # a server's GOAWAY names client (odd) streams
        for sid in [sid for sid in self._streams if sid % 2 == parity and sid > last]:
            s = self._remove(sid)
            if s is not None:
                self._out.append(self._entry(s, "goaway"))

    def _on_settings(self, side: _Side, p: bytes | bytearray) -> None:
        peer = self._sides[1 - side.direction]
        for off in range(0, len(p), 6):
            ident = int.from_bytes(p[off:off + 2], "big")
            value = int.from_bytes(p[off + 2:off + 6], "big")
            if ident == SETTINGS_HEADER_TABLE_SIZE:
                # The peer's encoder may now use up to `value`. Only ever raised here: a lower value
                # takes effect through the encoder's own size update, which the decoder follows.
                allowed = min(max(peer.decoder.max_allowed_table_size, value), self.limits.max_table_size)
                peer.decoder.max_allowed_table_size = allowed
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= LARGEST_FRAME:
                    raise ParserError(f"invalid SETTINGS_MAX_FRAME_SIZE {value}")
                peer.max_frame = max(peer.max_frame, value)

    # -- h2c upgrade ---------------------------------------------------------------------------------

    def _http1_head(self, side: _Side, buf: bytearray, pos: int, ts: int) -> int | None:
        """The HTTP/1.1 upgrade request (client) or 101 response (server), if it was fed at all.

        Returns the bytes used (0 when the side turns out to start with HTTP/2 right away), or None
        when more bytes are needed.
        """
        avail = len(buf) - pos
        if side.direction == 0:
            k = min(avail, 4)
            if buf[pos:pos + k] == PREFACE[:k]:
                if avail < 4:
                    return None
                side.state = _S_PREFACE
                return 0
        else:
            k = min(avail, 5)
            if buf[pos:pos + k] != b"HTTP/"[:k]:
                side.state = _S_HEAD
                return 0
            if avail < 5:
                return None
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0 or end + 4 - pos > self.limits.max_upgrade_head:
            if avail > self.limits.max_upgrade_head:
                raise ParserError("HTTP/1.1 upgrade head too long", kind="too-large")
            return None
        used = end + 4 - pos
        lines = bytes(buf[pos:end]).decode("latin-1").split("\r\n")
        if side.direction == 1:
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or parts[1] != "101":
                raise ParserError("h2c upgrade was not accepted (no 101 response)")
            side.state = _S_HEAD
            return used
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ParserError("not an HTTP/1.1 upgrade request")
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                hdrs.setdefault(name.strip().lower(), value.strip())
        length = _int(hdrs.get("content-length", "0").encode()) or 0
        encoded = hdrs.get("http2-settings", "").encode()
        with contextlib.suppress(binascii.Error, ValueError):  # RFC 9113 3.2.1: base64url SETTINGS payload
            payload = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
            if len(payload) % 6 == 0 and len(payload) <= MAX_SETTINGS:
                self._on_settings(side, payload)
        s = self._streams.get(1)
        if s is not None:
            s.method, s.path, s.authority = parts[0], parts[1], hdrs.get("host")
            s.content_type = hdrs.get("content-type")
            s.start_ns = s.last_ns = side.buf_ns if pos < self._old else ts
            s.req_bytes += used + length
            self._account(s)
        side.body_left = length
        side.state = _S_HTTP1_BODY if length else _S_PREFACE
        return used

    # -- entries ---------------------------------------------------------------------------------------

    def _entry(self, s: _Stream, error: str | None) -> Entry:
        is_grpc = s.counters is not None or grpc.is_grpc(s.content_type)
        messages = None
        if s.counters is not None:
            req, resp = s.counters
            messages = req.complete + resp.complete
            if (req.lost or resp.lost) and error is None:
                error = "gap"
        latency = round((s.last_ns - s.start_ns) / 1e6, 3) if s.resp_seen else None
        return Entry(time=s.start_ns / 1e9, flow_id=self.flow.flow_id, protocol="grpc" if is_grpc else "http/2",
                     client=self.flow.client, server=self.flow.server, method=s.method, path=s.path,
                     authority=s.authority, status=s.status, grpc_status=s.grpc_status if is_grpc else None,
                     grpc_message=s.grpc_message if is_grpc else None, request_bytes=s.req_bytes,
                     response_bytes=s.resp_bytes, latency_ms=latency, messages=messages, error=error)


_WANTED = frozenset((b":method", b":path", b":authority", b":status", b"content-type", b"host",
                     b"grpc-status", b"grpc-message"))


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _int(value: bytes | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 10:
        return None
    return int(value)


def _request_fields(s: _Stream, f: dict[bytes, bytes]) -> None:
    for attr, name in (("method", b":method"), ("path", b":path"), ("content_type", b"content-type")):
        value = f.get(name)
        if value is not None:
            setattr(s, attr, _text(value))
    authority = f.get(b":authority", f.get(b"host"))
    if authority is not None:
        s.authority = _text(authority)
    if grpc.is_grpc(s.content_type):
        s.counters = (grpc.MessageCounter(), grpc.MessageCounter())


def _trailer_fields(s: _Stream, f: dict[bytes, bytes]) -> None:
    status = f.get(b"grpc-status")
    if status is not None:
        s.grpc_status = grpc.parse_status(_text(status))
    message = f.get(b"grpc-message")
    if message is not None:
        s.grpc_message = grpc.decode_message(_text(message))

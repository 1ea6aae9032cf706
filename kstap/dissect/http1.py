"""HTTP/1.x: requests paired with responses, without ever holding a body.

An incremental parser written for passive observation (the choice against httptools and dpkt.http is
measured in ``benchmarks/dissect_parsers.py`` and written down in ``docs/dissection.md``): it only
buffers message heads and chunk-size lines, counts body bytes by arithmetic, and knows what a
sniffer must know that a server-side parser does not — the response to a HEAD request has no body,
1xx responses are interim, 101 hands the connection to HTTP/2 (h2c) or to an opaque tunnel.

Lines may end in a bare LF (RFC 9112 §2.2 lets a recipient accept it, and real servers answer such
requests); a head is normalised to CRLF before its fields are read.

Pairing is FIFO (pipelining is ordered in HTTP/1.1). A gap inside a body of known length is
survivable (the exchange is marked ``error: "gap"``). Any other gap resynchronises when that is
safe — at most one exchange was outstanding, so no answer can slip onto the wrong request: the
exchanges the gap touched are flushed as ``gap``, the direction waits for a segment that starts
with a request (status) line, a response whose request was lost becomes an entry of its own
(status only, ``gap``), and every exchange after the gap is marked ``resynced``. With more
exchanges in flight (pipelining) the connection is given up cleanly instead.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from kstap.dissect.api import Entry, FlowContext, ParserError, StreamParser

MAX_HEAD = 64 * 1024
"""Bytes of one message head (start line + headers); nginx's large buffers are 4 x 8 KiB."""
MAX_HEADER_LINES = 256
"""Header (or trailer) lines in one message; more is a header flood."""
MAX_LINE = 4096
"""Bytes of a chunk-size or trailer line."""
MAX_BODY = 1 << 40
"""Content-Length or chunk size above 1 TiB is hostile (and near the 2^53 float limit of JSON)."""
MAX_PENDING = 1024
"""Requests waiting for their responses (pipelining depth)."""
MAX_UPGRADE_HOLD = 64 * 1024
"""Client bytes held between an h2c Upgrade request and the server's answer."""

EXCHANGE_COST = 360
"""Bytes one pending exchange costs (its object plus the decoded strings; see test_memory)."""
BASE_COST = 900
"""Bytes of the parser itself with its two direction states."""

# direction states
HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILERS, UNTIL_CLOSE, TUNNEL, UPGRADE_WAIT, RESYNC = range(9)

_REQUEST_LINE = re.compile(rb"([A-Z][A-Z0-9_-]{0,31}) ([^ \r\n]+) HTTP/1\.([01])\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?:[ \t][^\r\n]*)?\r?\n")
_STATUS_START = re.compile(rb"HTTP/1\.[01] [0-9]{3}[ \t\r\n]")
_STATUS_PREFIX = re.compile(rb"H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01](?: [0-9]{0,3})?)?)?)?)?)?)?)?$")
_REQUEST_PREFIX = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}(?: [^ \r\n]*(?: H[A-Z/0-9.]*\r?)?)?$")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _head_end(data: bytes, pos: int) -> int:
    """The position after the empty line that ends the head, looked for from ``pos`` (-1: not there yet).

    ``\n\r\n`` finds both CRLF CRLF and a bare LF followed by CRLF; ``\n\n`` (bare LFs) is looked for
    only before that, so the common case costs one extra bounded scan.
    """
    end = data.find(b"\n\r\n", pos)
    lf = data.find(b"\n\n", pos, end + 1 if end >= 0 else len(data))
    if lf >= 0:
        return lf + 2
    return end + 3 if end >= 0 else -1


def _crlf(head: bytes) -> bytes:
    """``head`` with every line ending in CRLF (bare LFs are legal line ends for a recipient)."""
    if head.count(b"\n") == head.count(b"\r\n"):
        return head
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _digits(value: bytes) -> bytes:
    """A decimal number without its leading zeros ("007" is 7: leading zeros are legal)."""
    return value.lstrip(b"0") or b"0"


class _Exchange:
    __slots__ = ("authority", "body_length", "error", "method", "path", "raw_head", "req_bytes", "req_done",
                 "resp_bytes", "resp_done", "resynced", "status", "t0", "t_end", "version")

    def __init__(self, method: str, path: str, version: str, t0: int) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.authority: str | None = None
        self.t0 = t0
        self.t_end = 0
        self.req_bytes = 0
        self.resp_bytes = 0
        self.req_done = False
        self.resp_done = False
        self.status: int | None = None
        self.error: str | None = None
        self.raw_head: bytes | None = None
        """The request head, kept only for an h2c Upgrade request (HTTP/2 makes it stream 1)."""
        self.body_length = 0
        self.resynced = False
        """Begun after a gap the connection resynchronised from (its pairing is the parser's best guess)."""


class _Dir:
    __slots__ = ("buf", "chunked", "ex", "lines", "remaining", "state")

    def __init__(self) -> None:
        self.state = HEAD
        self.buf = b""
        self.remaining = 0
        self.ex: _Exchange | None = None
        self.lines = 0
        self.chunked = False


class _Head:
    """The framing-relevant fields of one message head (names matched case-insensitively)."""

    __slots__ = ("chunked", "host", "length", "upgrade")

    def __init__(self, head: bytes, request: bool = True) -> None:
        # a line takes at least its CRLF, so a head this short cannot hold too many
        if len(head) > 2 * (MAX_HEADER_LINES + 2) and head.count(b"\r\n") > MAX_HEADER_LINES + 2:
            raise ParserError("too many header lines", "header-flood")
        low = head.lower()  # same length: positions found in ``low`` index ``head`` too
        self.length: int | None = None
        cl = low.find(b"\r\ncontent-length:")
        if cl >= 0:
            start = cl + 17
            value = low[start : low.find(b"\r\n", start)].strip()
            if value.isdigit() and len(value.lstrip(b"0")) <= 15 and low.find(b"\r\ncontent-length:", start) < 0:
                self.length = int(value)  # the usual case: one plain number
                if self.length > MAX_BODY:
                    raise ParserError(f"absurd Content-Length {self.length}", "too-large")
            else:
                self.length = _length(low)
        te = b"\r\ntransfer-encoding:"
        self.chunked = te in low and _values(low, te)[-1].endswith(b"chunked")
        self.host = _host(head, low) if request else None
        """The Host header's value (requests only)."""
        self.upgrade = _values(low, b"\r\nupgrade:")[0] if b"\r\nupgrade:" in low else None


def _host(head: bytes, low: bytes) -> bytes | None:
    """The Host header's value (``low`` is ``head`` lower-cased)."""
    host = low.find(b"\r\nhost:")
    if host < 0:
        return None
    start = host + 7
    return head[start : low.find(b"\r\n", start)].strip()


def _values(low: bytes, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (given lower-case with its leading CRLF and colon)."""
    pos = low.find(name)
    if pos < 0:
        return []
    out = []
    while pos >= 0:
        start = pos + len(name)
        end = low.find(b"\r\n", start)
        out.append(low[start:end].strip())
        pos = low.find(name, end)
    return out


def _length(low: bytes) -> int:
    numbers = set()
    for value in _values(low, b"\r\ncontent-length:"):
        for part in value.split(b","):  # "5, 5" is legal when the values agree
            part = part.strip()
            if not part.isdigit() or len(_digits(part)) > 15:
                raise ParserError(f"absurd Content-Length {part[:20]!r}", "too-large" if part.isdigit() else
                                  "malformed")
            numbers.add(int(part))
    if len(numbers) != 1:
        raise ParserError("conflicting Content-Length headers")
    n = numbers.pop()
    if n > MAX_BODY:
        raise ParserError(f"absurd Content-Length {n}", "too-large")
    return n


class Http1Parser:
    """One HTTP/1.x connection: ``feed`` bytes per direction, get finished exchanges back."""

    def __init__(self, flow: FlowContext) -> None:
        self.flow = flow
        self._dirs = (_Dir(), _Dir())
        self._pending: deque[_Exchange] = deque()
        self._out: list[Entry] = []
        self._dead = False
        self._h2: StreamParser | None = None
        self._hold = b""  # client bytes after an h2c Upgrade request, before the answer
        self._raw_held = 0  # bytes of upgrade request heads kept
        self._resynced = False  # a gap was resynchronised: later exchanges are marked

    # -- StreamParser ----------------------------------------------------------------------------
    def feed(self, direction: int, data: bytes, ts_ns: int) -> list[Entry]:
        if self._h2 is not None:
            return self._h2.feed(direction, data, ts_ns)
        if self._dead or not data:
            return []
        d = self._dirs[direction]
        st = d.state
        if st in (BODY, CHUNK_DATA) and len(data) < d.remaining:  # inside a body: count
            ex = d.ex
            assert ex is not None
            d.remaining -= len(data)
            if direction:
                ex.resp_bytes += len(data)
                ex.t_end = ts_ns
            else:
                ex.req_bytes += len(data)
            return []
        if st == BODY and len(data) == d.remaining:  # the segment ends the body, as most do
            ex = d.ex
            assert ex is not None
            d.remaining, d.state = 0, HEAD
            if direction:
                ex.resp_bytes += len(data)
                d.ex = None
                ex.resp_done, ex.t_end = True, ts_ns
                self._finish_response(ex)
            else:
                ex.req_bytes += len(data)
                self._request_done(d, ts_ns)
            out, self._out = self._out, []
            return out
        if direction == 0:
            self._client(data, ts_ns)
        else:
            self._server(data, ts_ns)
        out, self._out = self._out, []
        return out

    def gap(self, direction: int, nbytes: int, ts_ns: int) -> list[Entry]:
        if self._h2 is not None:
            return self._h2.gap(direction, nbytes, ts_ns)
        if self._dead:
            return []
        d = self._dirs[direction]
        if d.state in (BODY, CHUNK_DATA) and nbytes <= d.remaining and d.ex is not None:
            # the framing survives: only body bytes are missing
            d.ex.error = "gap"
            if direction == 0:
                self._client(b"", ts_ns, skip=nbytes)
            else:
                self._server(b"", ts_ns, skip=nbytes)
        elif d.state == UNTIL_CLOSE and d.ex is not None:
            d.ex.error = "gap"
            d.ex.resp_bytes += nbytes
        elif d.state == TUNNEL:
            pass
        elif d.state == RESYNC:
            d.buf = b""  # still looking for a start line; a start held so far no longer joins what follows
        elif self._can_resync(direction):
            self._lose(direction, ts_ns)
        else:
            self._give_up("gap")
        out, self._out = self._out, []
        return out

    def close(self, ts_ns: int) -> list[Entry]:
        if self._h2 is not None:
            return self._h2.close(ts_ns)
        if not self._dead:
            server = self._dirs[1]
            if server.state == UNTIL_CLOSE and server.ex is not None:  # the body ends with the connection
                ex = server.ex
                ex.resp_done, ex.t_end = True, ts_ns
                self._finish_response(ex)
            self._give_up(None)
        out, self._out = self._out, []
        return out

    @property
    def memory(self) -> int:
        if self._h2 is not None:
            return BASE_COST + self._h2.memory
        a, b = self._dirs
        return (BASE_COST + len(a.buf) + len(b.buf) + len(self._hold) + self._raw_held
                + EXCHANGE_COST * (len(self._pending) + 1))

    # -- resynchronising after a gap ------------------------------------------------------------
    def _can_resync(self, direction: int) -> bool:
        """Whether bytes lost in ``direction`` cannot make a later answer pair with the wrong request."""
        client = self._dirs[0]
        if client.state in (UPGRADE_WAIT, TUNNEL):
            return False
        if direction == 0:  # no request but the one being read may still be waiting for its answer
            return all(ex is client.ex for ex in self._pending)
        return len(self._pending) <= 1  # the lost bytes answered at most that one request

    def _lose(self, direction: int, ts: int) -> None:
        """Flush what the gap touched as ``gap``; the direction waits for its next start line."""
        self._resynced = True
        d = self._dirs[direction]
        if direction == 0:
            ex = d.ex
            if ex is not None:
                ex.error = "gap"
                self._request_done(d, ts)
        else:
            while self._pending:
                ex = self._pending.popleft()
                ex.error, ex.resp_done = "gap", True
                if ex.t_end < ex.t0:
                    ex.t_end = ts
                if ex.req_done:
                    self._emit(ex)
            d.ex = None
        d.state, d.buf, d.chunked = RESYNC, b"", False

    @staticmethod
    def _resync_at(d: _Dir, data: bytes, request: bool) -> bytes | None:
        """``data`` when this segment starts a message (the direction reads on from it), else None.

        Only a segment's start is tried, never the middle of one, so a body that quotes HTTP is not
        taken for a message; a start too short to tell (a start line cut by the segment) is held.
        """
        if d.buf:
            data, d.buf = d.buf + data, b""
        start = data.lstrip(b"\r\n") if request else data
        if request:
            end = start.find(b"\n")
            ok = end >= 0 and _REQUEST_LINE.match(start, 0, end + 1) is not None
            undecided = end < 0 and len(start) < MAX_LINE and _REQUEST_PREFIX.match(start) is not None
        else:
            ok = _STATUS_START.match(start) is not None
            undecided = _STATUS_PREFIX.match(start) is not None
        if ok:
            d.state = HEAD
            return data
        if undecided:
            d.buf = data
        return None

    # -- the client direction --------------------------------------------------------------------
    def _client(self, data: bytes, ts: int, skip: int = 0) -> None:
        d = self._dirs[0]
        pos, n = 0, len(data)
        if skip:  # a gap inside a body: consume it as if it had been seen
            data, n = b"", skip
        if d.state == RESYNC:
            found = self._resync_at(d, data, True)
            if found is None:
                return
            data, n = found, len(found)
        while pos < n:
            st = d.state
            if st == HEAD:
                scan = 0
                if d.buf:  # a head begun earlier: its end can only be in (or just before) the new bytes
                    scan = len(d.buf) - 3
                    data, pos, n, d.buf = d.buf + data[pos:], 0, len(d.buf) + n - pos, b""
                while data.startswith(b"\r\n", pos) or data.startswith(b"\n", pos):
                    pos += 2 if data[pos] == 13 else 1
                end = _head_end(data, max(pos, scan))
                if end < 0:
                    self._keep(d, data, pos)
                    return
                self._request_head(d, data[pos:end], ts)
                pos = end
            elif st == UPGRADE_WAIT:
                if len(self._hold) + n - pos > MAX_UPGRADE_HOLD:
                    raise ParserError("client kept sending after an h2c Upgrade request", "malformed")
                self._hold += data[pos:n]
                return
            elif st == TUNNEL:
                return
            else:
                pos = self._body(d, data, pos, n, True)
                if d.state == HEAD and d.ex is not None:
                    self._request_done(d, ts)

    def _request_head(self, d: _Dir, head: bytes, ts: int) -> None:
        m = _REQUEST_LINE.match(head)
        if m is None:
            raise ParserError(f"not an HTTP/1 request line: {head[:60]!r}")
        if len(self._pending) >= MAX_PENDING:
            raise ParserError("too many pipelined requests without a response", "pipeline-flood")
        method, target, minor = m.groups()
        ex = _Exchange(method.decode("ascii"), _text(target), "http/1.0" if minor == b"0" else "http/1.1", ts)
        ex.req_bytes = len(head)
        ex.resynced = self._resynced
        self._pending.append(ex)  # before its framing is judged: a refused request still gets its entry
        head = _crlf(head)
        try:
            h = _Head(head)
        except ParserError:  # refused for its framing: its entry still names the host
            host = _host(head, head.lower())
            ex.authority = _text(host) if host is not None else None
            raise
        if h.host is not None:
            ex.authority = _text(h.host)
        if h.upgrade is not None and b"h2c" in h.upgrade:
            ex.raw_head = head
            ex.body_length = h.length or 0
            self._raw_held += len(head)
        d.ex = ex
        if h.chunked:
            d.state, d.chunked = CHUNK_SIZE, True
        elif h.length:
            d.state, d.remaining, d.chunked = BODY, h.length, False
        else:
            self._request_done(d, ts)

    def _request_done(self, d: _Dir, ts: int) -> None:
        ex = d.ex
        assert ex is not None
        ex.req_done = True
        d.ex = None
        if ex.resp_done:  # the server answered before the upload ended
            self._emit(ex)
        elif ex.raw_head is not None or ex.method == "CONNECT":
            d.state = UPGRADE_WAIT  # wait for the answer before reading more from the client

    # -- the server direction --------------------------------------------------------------------
    def _server(self, data: bytes, ts: int, skip: int = 0) -> None:
        d = self._dirs[1]
        pos, n = 0, len(data)
        if skip:
            data, n = b"", skip
        if d.state == RESYNC:
            found = self._resync_at(d, data, False)
            if found is None:
                return
            data, n = found, len(found)
        while pos < n:
            st = d.state
            if st == HEAD:
                scan = 0
                if d.buf:
                    scan = len(d.buf) - 3
                    data, pos, n, d.buf = d.buf + data[pos:], 0, len(d.buf) + n - pos, b""
                end = _head_end(data, max(pos, scan))
                if end < 0:
                    self._keep(d, data, pos)
                    return
                rest = self._response_head(d, data[pos:end], ts)
                pos = end
                if rest:  # handed over to HTTP/2: the remaining bytes are its
                    assert self._h2 is not None
                    self._out.extend(self._h2.feed(1, data[pos:n], ts))
                    return
            elif st == UNTIL_CLOSE:
                assert d.ex is not None
                d.ex.resp_bytes += n - pos
                d.ex.t_end = ts
                return
            elif st == TUNNEL:
                return
            else:
                pos = self._body(d, data, pos, n, False)
                if d.state == HEAD and d.ex is not None:
                    ex, d.ex = d.ex, None
                    ex.resp_done, ex.t_end = True, ts
                    self._finish_response(ex)

    def _response_head(self, d: _Dir, head: bytes, ts: int) -> bool:
        """Parse a status line + headers; True when the connection was handed to HTTP/2."""
        m = _STATUS_LINE.match(head)
        if m is None:
            raise ParserError(f"not an HTTP/1 status line: {head[:60]!r}")
        if not self._pending:
            if not self._resynced:
                raise ParserError("a response without a request", "unpaired")
            orphan = _Exchange("", "", "http/1.1", ts)  # answers a request lost in the gap
            orphan.req_done, orphan.error = True, "gap"
            self._pending.append(orphan)
        status = int(m.group(1))
        ex = self._pending[0]
        ex.resp_bytes += len(head)
        ex.t_end = ts
        if 100 <= status < 200 and status != 101:  # interim: the final response follows
            _Head(_crlf(head), request=False)
            return False
        ex.status = status
        head = _crlf(head)
        h = _Head(head, request=False)
        if status == 101:
            self._pending.popleft()
            ex.resp_done = True
            if ex.raw_head is not None and h.upgrade == b"h2c":
                return self._to_http2(ex, head, ts)
            self._emit(ex)
            self._tunnel()
            return False
        chunked, length = h.chunked, h.length
        if ex.method == "CONNECT" and 200 <= status < 300:
            self._pending.popleft()
            ex.resp_done = True
            self._emit(ex)
            self._tunnel()
            return False
        if ex.method == "HEAD" or status in (204, 304):
            no_body = True
        elif chunked:
            d.state, d.chunked, d.ex = CHUNK_SIZE, True, ex
            no_body = False
        elif length is not None:
            no_body = length == 0
            d.state, d.remaining, d.chunked, d.ex = BODY, length, False, ex
        else:
            d.state, d.ex = UNTIL_CLOSE, ex
            no_body = False
        if no_body:
            d.state, d.ex = HEAD, None
            ex.resp_done = True
            self._finish_response(ex)
        if self._dirs[0].state == UPGRADE_WAIT:  # an h2c/CONNECT request refused: back to HTTP/1
            self._dirs[0].state = HEAD
            held, self._hold = self._hold, b""
            if held:
                self._client(held, ts)
        return False

    def _finish_response(self, ex: _Exchange) -> None:
        if self._pending and self._pending[0] is ex:
            self._pending.popleft()
        if ex.req_done:
            self._emit(ex)

    # -- bodies ----------------------------------------------------------------------------------
    def _body(self, d: _Dir, data: bytes, pos: int, n: int, request: bool) -> int:
        """Consume body bytes from ``data[pos:n]``; returns the new position (state HEAD when done)."""
        ex = d.ex
        assert ex is not None
        start = pos
        while pos < n and d.state != HEAD:
            st = d.state
            if st in (BODY, CHUNK_DATA):
                k = min(d.remaining, n - pos)
                d.remaining -= k
                pos += k
                if d.remaining == 0:
                    d.state = CHUNK_SIZE if st == CHUNK_DATA else HEAD
            else:  # CHUNK_SIZE or TRAILERS: a line at a time
                if d.buf:  # a line begun in an earlier segment: its first bytes are counted already
                    counted = pos - start
                    if request:
                        ex.req_bytes += counted
                    else:
                        ex.resp_bytes += counted
                    held = d.buf
                    data, d.buf = held + data[pos:n], b""
                    pos, n, start = 0, len(data), len(held)
                end = data.find(b"\n", pos, n)
                if end < 0:
                    if n - pos > MAX_LINE:
                        raise ParserError("chunk-size or trailer line too long", "too-large")
                    d.buf = data[pos:n]
                    pos = n
                    break
                line = data[pos:end - 1] if end > pos and data[end - 1] == 13 else data[pos:end]
                pos = end + 1
                if st == CHUNK_SIZE:
                    if not line and d.lines < 0:  # the line end after a chunk's data
                        d.lines = 0
                        continue
                    size_text = line.split(b";", 1)[0].strip()
                    if not size_text or len(size_text) > 12 or not _HEX.issuperset(size_text):
                        raise ParserError(f"bad chunk size {size_text[:20]!r}",
                                          "too-large" if _HEX.issuperset(size_text) and size_text else "malformed")
                    size = int(size_text, 16)
                    if size > MAX_BODY:
                        raise ParserError(f"absurd chunk size {size}", "too-large")
                    if size:
                        d.state, d.remaining, d.lines = CHUNK_DATA, size, -1
                    else:
                        d.state, d.lines = TRAILERS, 0
                elif line:
                    d.lines += 1
                    if d.lines > MAX_HEADER_LINES:
                        raise ParserError("too many trailer lines", "header-flood")
                else:
                    d.state = HEAD
        if request:
            ex.req_bytes += pos - start
        else:
            ex.resp_bytes += pos - start
        return pos

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _keep(d: _Dir, data: bytes, pos: int) -> None:
        if len(data) - pos > MAX_HEAD:
            raise ParserError("message head larger than 64 KiB", "header-flood")
        d.buf = data[pos:]

    def _tunnel(self) -> None:
        for d in self._dirs:
            d.state, d.buf, d.ex = TUNNEL, b"", None
        self._hold = b""

    def _to_http2(self, ex: _Exchange, response_head: bytes, ts: int) -> bool:
        """Hand the connection to the HTTP/2 parser, which reports the upgraded request as stream 1."""
        cls = _http2_parser_class()
        if cls is None or ex.raw_head is None or ex.body_length > MAX_UPGRADE_HOLD:
            # no HTTP/2 dissector here (or an odd upgrade with a large body): report the upgrade, go opaque
            self._emit(ex)
            self._tunnel()
            return False
        h2: StreamParser = cls(self.flow, upgraded=True)
        self._h2 = h2
        self._raw_held = 0
        self._dirs[0].state = TUNNEL
        # replay the upgrade exchange so HTTP/2 knows stream 1 (a body, rare here, is only counted)
        out = h2.feed(0, ex.raw_head + b"\0" * ex.body_length, ex.t0)
        out += h2.feed(1, response_head, ts)
        held, self._hold = self._hold, b""
        if held:
            out += h2.feed(0, held, ts)
        self._out.extend(out)
        return True

    def _emit(self, ex: _Exchange) -> None:
        if ex.raw_head is not None:
            self._raw_held -= len(ex.raw_head)
            ex.raw_head = None
        f = self.flow
        latency = (ex.t_end - ex.t0) / 1e6 if ex.status is not None and ex.t_end >= ex.t0 and ex.method else None
        self._out.append(Entry(
            time=ex.t0 / 1e9, flow_id=f.flow_id, protocol=ex.version, client=f.client, server=f.server,
            method=ex.method or None, path=ex.path or None, authority=ex.authority, status=ex.status,
            request_bytes=ex.req_bytes, response_bytes=ex.resp_bytes,
            latency_ms=round(latency, 3) if latency is not None else None, error=ex.error,
            resynced=True if ex.resynced else None))

    def _give_up(self, why: str | None) -> None:
        """Flush every exchange still open (marked ``why``, or by what is missing) and stop."""
        seen: set[int] = set()
        opened = [*self._pending]
        current = self._dirs[0].ex
        if current is not None and current not in opened:
            opened.append(current)
        for ex in opened:
            if id(ex) in seen:
                continue
            seen.add(id(ex))
            if why is not None:
                ex.error = why
            elif ex.error is None:
                ex.error = "no-response" if ex.status is None and ex.req_done else "incomplete"
            self._emit(ex)
        self._pending.clear()
        self._dead = True
        for d in self._dirs:
            d.buf, d.ex = b"", None
        self._hold = b""


def _http2_parser_class() -> Any:
    """The HTTP/2 dissector for an h2c upgrade, or None when that module is absent or broken
    (the connection is then reported up to the upgrade and followed as opaque)."""
    try:
        from kstap.dissect.http2 import Http2Parser
    except ImportError:
        return None
    return Http2Parser

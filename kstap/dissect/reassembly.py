"""TCP reassembly for dissection: one :class:`TcpConn` per connection, one :class:`HalfStream` per direction.

Positions are unbounded integers counted from each direction's first byte, so 32-bit sequence
wraparound is just arithmetic: a segment's position is the signed 32-bit distance of its sequence
number from the next expected one. Rules:

- **In order** data goes to the protocol parser at once; **ahead** data is buffered (sorted, trimmed
  so that the *first* copy of any byte wins); data **behind** (retransmissions, overlaps) is trimmed
  away. Segments more than 1 GiB ahead (the largest TCP window) are garbage and dropped.
- A **gap** is declared as soon as the peer acknowledges bytes that were never captured (so one
  direction never runs ahead of the other), when the data buffered ahead passes ``ahead_limit`` bytes
  or :data:`MAX_SEGMENTS` segments, and on close/eviction: the parser is told how many bytes are
  missing and reading goes on after them. Bytes cut by the snaplen are a gap at once.
- **SYN** fixes the initial sequence number and tells the client (SYN without ACK); SYN data (TFO) is
  data. **FIN** ends a direction once every byte before it arrived; both ended, or **RST**, ends the
  connection. Without a SYN (**mid-stream pickup**) a direction starts at the other side's ACK
  number, or at its first segment; the client is the side whose data starts like a request (ports
  only break a tie), and the server's bytes before that are dropped — they answer requests never
  seen, and pairing them would be wrong.
- **Detection**: client bytes are held (at most :data:`~kstap.dissect.detect.DETECT_LIMIT`) until
  :func:`~kstap.dissect.detect.detect_client` decides; then the parser replays them in arrival order.

Parser failures never leave this module: a :class:`~kstap.dissect.api.ParserError` (or any bug)
marks the connection failed with an error kind, and the stage drops it.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable
from typing import Any

from kstap.dissect import detect
from kstap.dissect.api import Entry, FlowContext, ParserError, StreamParser, endpoint
from kstap.sampling.flowhash import flow_id
from kstap.sampling.flowkey import FlowKey

M32 = 0xFFFFFFFF
HALF = 1 << 31
WINDOW = 1 << 30
"""Farthest ahead a segment may start (RFC 7323's largest window); beyond it, it is garbage."""
MAX_SEGMENTS = 256
"""Out-of-order segments held per direction before a gap is declared."""
SEG_COST = 100
"""Bytes one held segment costs beyond its payload (tuple, bytes header, list slot)."""
MIDSTREAM_TRIES = 32
"""Segments looked at, mid-stream, for one that starts like a request before giving up on a flow."""

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10



def _context_cost() -> int:
    """Bytes of a connection's FlowContext: the object, its FlowKey, flow id and endpoint strings."""
    import sys

    key = FlowKey(6, b"\x0a\0\0\x01", 40000, b"\x0a\0\0\x02", 80)
    ctx = FlowContext("0123abcd", "10.100.200.101:40000", "10.100.200.102:8080", key)
    return sum(sys.getsizeof(o) for o in (ctx, key, ctx.flow_id, ctx.client, ctx.server))


CONTEXT_COST = _context_cost()
"""Bytes a connection's :class:`~kstap.dissect.api.FlowContext` costs once a parser runs (~350)."""

# connection states
DETECT, ACTIVE, IGNORE = 0, 1, 2


class HalfStream:
    """One direction: the next expected position and the segments buffered ahead of it."""

    __slots__ = ("done", "fin", "isn", "next", "pending", "pending_bytes")

    def __init__(self) -> None:
        self.isn: int | None = None
        """Sequence number of position 0."""
        self.next = 0
        """Position of the next byte to deliver."""
        self.pending: list[tuple[int, bytes]] = []
        """(position, bytes), sorted, non-overlapping, all ahead of ``next``."""
        self.pending_bytes = 0
        self.fin: int | None = None
        """Position of the FIN (one past the last byte), once seen."""
        self.done = False

    def pos(self, seq: int) -> int:
        assert self.isn is not None
        delta = (seq - self.isn - self.next) & M32
        if delta >= HALF:
            delta -= 1 << 32
        return self.next + delta

    def insert(self, pos: int, data: bytes) -> None:
        """Buffer ``data`` at ``pos`` (> next), keeping only bytes no earlier segment holds."""
        end = pos + len(data)
        cur = pos
        pieces = []
        for s, d in self.pending:
            e = s + len(d)
            if e <= cur:
                continue
            if s >= end:
                break
            if s > cur:
                pieces.append((cur, data[cur - pos : s - pos]))
            cur = e
            if cur >= end:
                break
        if cur < end:
            pieces.append((cur, data[cur - pos :] if cur > pos else data))
        for piece in pieces:
            insort(self.pending, piece)
            self.pending_bytes += len(piece[1])

    @property
    def memory(self) -> int:
        return self.pending_bytes + SEG_COST * len(self.pending)


class Sink:
    """Where connections put what they produce: entries, error counts, events the stage counts."""

    __slots__ = ("entries", "errors", "gaps", "retransmitted")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.errors: dict[str, int] = {}
        self.gaps = 0
        self.retransmitted = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class TcpConn:
    """One TCP connection being dissected (or waiting for its protocol to be recognised)."""

    __slots__ = ("ahead_limit", "client_side", "ctx", "early", "early_bytes", "failed", "halves", "key",
                 "last_ts", "mem", "midstream", "parser", "protocol", "reset", "seed", "sink", "state",
                 "tries")

    def __init__(self, key: tuple[int, bytes, int, bytes, int], seed: int, sink: Sink, ahead_limit: int,
                 ts: int) -> None:
        self.key = key
        self.seed = seed
        self.sink = sink
        self.ahead_limit = ahead_limit
        self.halves = (HalfStream(), HalfStream())
        """Indexed by side: 0 carries bytes from endpoint A (the key's first), 1 from B."""
        self.client_side: int | None = None
        self.midstream = True
        self.state = DETECT
        self.parser: StreamParser | None = None
        self.ctx: FlowContext | None = None
        self.protocol = ""
        self.early: list[tuple[int, bytes, int]] = []
        self.early_bytes = 0
        self.tries = 0
        self.last_ts = ts
        self.mem = 0
        self.reset = False
        self.failed: str | None = None

    # -- packets ---------------------------------------------------------------------------------
    def segment(self, side: int, flags: int, seq: int, ack: int, data: bytes, wire_len: int, ts: int) -> None:
        """One TCP segment from ``side``; ``wire_len`` is its payload length before any snaplen cut."""
        self.last_ts = ts
        if flags & RST:
            self.reset = True
        h = self.halves[side]
        if flags & SYN:
            if h.isn is None:
                h.isn, h.next = (seq + 1) & M32, 0
            if self.client_side is None and not self.early:
                self.client_side = 1 - side if flags & ACK else side
                self.midstream = False
            seq = (seq + 1) & M32
        if self.state == IGNORE:
            return
        if flags & ACK:
            other = self.halves[1 - side]
            if other.isn is None:  # mid-stream: the other direction resumes where this one acknowledged
                other.isn, other.next = ack & M32, 0
            else:
                acked = (ack - other.isn - other.next) & M32  # other.pos(ack), inlined: every packet has one
                acked = other.next + (acked - (1 << 32) if acked >= HALF else acked)
                if other.fin is not None and acked > other.fin:
                    acked = other.fin  # the FIN takes one sequence number, not a byte
                if acked > other.next and acked - other.next <= WINDOW:
                    self._acked(other, 1 - side, acked, ts)
        if h.isn is None:
            if not wire_len and not flags & FIN:
                return
            h.isn, h.next = seq, 0
        if wire_len:
            delta = (seq - h.isn - h.next) & M32  # h.pos(seq), inlined
            self._add(h, side, h.next + (delta - (1 << 32) if delta >= HALF else delta), data, wire_len, ts)
        if flags & FIN:
            if h.fin is None:
                h.fin = h.pos(seq) + wire_len
            self._fin_check(h, side, ts)

    @property
    def finished(self) -> bool:
        return self.reset or (self.halves[0].done and self.halves[1].done)

    def memory(self) -> int:
        """Bytes held for this connection beyond its fixed cost (buffers + parser)."""
        a, b = self.halves
        total = 0
        if a.pending or b.pending:  # most of the time nothing waits ahead
            total = a.pending_bytes + b.pending_bytes + SEG_COST * (len(a.pending) + len(b.pending))
        if self.early:
            total += self.early_bytes + SEG_COST * len(self.early)
        parser = self.parser
        if parser is not None:
            try:
                total += CONTEXT_COST + parser.memory
            except Exception:
                self._fail("internal")
        return total

    def flush(self, ts: int) -> None:
        """Declare every remaining hole a gap so all buffered bytes reach the parser."""
        for side, h in enumerate(self.halves):
            while h.pending and self.state != IGNORE:
                self._force(h, side, ts)
            if self.state == IGNORE:
                h.pending.clear()
                h.pending_bytes = 0

    def close(self, ts: int) -> list[Entry]:
        """The connection is over (or evicted): flush, let the parser report what is pending."""
        self.flush(ts)
        parser, self.parser = self.parser, None
        self.state = IGNORE
        self.early = []
        if parser is None:
            return []
        try:
            return parser.close(ts)
        except Exception as exc:
            self.sink.error(exc.kind if isinstance(exc, ParserError) else "internal")
            return []

    # -- reassembly ------------------------------------------------------------------------------
    def _add(self, h: HalfStream, side: int, pos: int, data: bytes, wire_len: int, ts: int) -> None:
        nxt = h.next
        end = pos + wire_len
        if end <= nxt:
            self.sink.retransmitted += 1
            return
        if pos - nxt > WINDOW:
            self.sink.error("out-of-window")
            return
        if pos < nxt:  # overlaps what was delivered: the first copy won
            data = data[nxt - pos :]
            pos = nxt
        if pos == nxt:
            if data:
                h.next += len(data)
                if self.state == ACTIVE:  # self._deliver, inlined for the common case
                    self._call(self.parser.feed, side, data, ts)  # type: ignore[union-attr]
                else:
                    self._deliver(side, data, ts)
            if end > h.next:  # cut by the snaplen
                self._lost(side, end - h.next, ts)
                h.next = end
            if h.pending:
                self._drain(h, side, ts)
        elif data:
            h.insert(pos, data)
            if h.pending_bytes > self.ahead_limit or len(h.pending) > MAX_SEGMENTS:
                while h.pending and (h.pending_bytes > self.ahead_limit // 2 or len(h.pending) > MAX_SEGMENTS // 2):
                    self._force(h, side, ts)

    def _acked(self, h: HalfStream, side: int, acked: int, ts: int) -> None:
        """The peer acknowledged bytes never captured: they are lost to us, declare the gap now.

        Waiting would let the other direction run ahead (a response parsed before the rest of its
        request), which is how a sniffer ends up pairing the wrong messages.
        """
        while h.next < acked and self.state != IGNORE:
            if h.pending and h.pending[0][0] <= acked:
                self._force(h, side, ts)
            else:
                missing = acked - h.next
                h.next = acked
                self._lost(side, missing, ts)
                break

    def _drain(self, h: HalfStream, side: int, ts: int) -> None:
        pending = h.pending
        while pending and pending[0][0] <= h.next:
            p, d = pending.pop(0)
            h.pending_bytes -= len(d)
            if p + len(d) <= h.next:
                continue
            if p < h.next:
                d = d[h.next - p :]
            h.next += len(d)
            self._deliver(side, d, ts)
        if self.state == IGNORE:
            pending.clear()
            h.pending_bytes = 0

    def _force(self, h: HalfStream, side: int, ts: int) -> None:
        """Skip the hole before the first buffered segment (a gap), then deliver what follows."""
        first = h.pending[0][0]
        if first > h.next:
            missing = first - h.next
            h.next = first
            self._lost(side, missing, ts)
        self._drain(h, side, ts)
        self._fin_check(h, side, ts)

    def _fin_check(self, h: HalfStream, side: int, ts: int) -> None:
        if h.fin is not None and h.next >= h.fin:
            h.done = True

    # -- to the parser ---------------------------------------------------------------------------
    def _deliver(self, side: int, data: bytes, ts: int) -> None:
        if self.state == ACTIVE:
            assert self.parser is not None
            self._call(self.parser.feed, side, data, ts)
        elif self.state == DETECT:
            self._detect(side, data, ts)

    def _call(self, method: Callable[[int, Any, int], list[Entry]], side: int, arg: Any, ts: int) -> None:
        """Run a parser's feed or gap for ``side``: keep its entries; a refusal ends dissection."""
        try:
            out = method(0 if side == self.client_side else 1, arg, ts)
        except ParserError as exc:
            self._fail(exc.kind)
            return
        except Exception:
            self._fail("internal")
            return
        if out:
            self.sink.entries.extend(out)

    def _lost(self, side: int, nbytes: int, ts: int) -> None:
        self.sink.gaps += 1
        if self.state == ACTIVE:
            assert self.parser is not None
            self._call(self.parser.gap, side, nbytes, ts)
        elif self.state == DETECT:
            if self.midstream and self.client_side is None:
                self.early, self.early_bytes = [], 0  # still looking for a request start
            else:
                self._give_up(detect.UNKNOWN)

    def _detect(self, side: int, data: bytes, ts: int) -> None:
        if self.client_side is None:  # mid-stream: the client is the side that starts a request
            if not detect.request_like(data):
                self.tries += 1
                if self.tries > MIDSTREAM_TRIES:
                    self._give_up(detect.UNKNOWN)
                return
            self.client_side = side
        elif self.client_side != side and not self.early and self.midstream:
            return  # answers to requests before the capture: dropped
        # With the handshake seen, the server may speak first: an HTTP/2 server's SETTINGS often
        # beats the client's preface. Its bytes wait (bounded below) until the client's decide.
        self.early.append((side, data, ts))
        self.early_bytes += len(data)
        client = b"".join(d for s, d, _ in self.early if s == self.client_side)
        verdict = detect.detect_client(client)
        if verdict.protocol == detect.NEED_MORE:
            if self.early_bytes > 2 * detect.DETECT_LIMIT:
                self._give_up(detect.UNKNOWN)
            return
        if verdict.factory is None:
            if self.midstream and self.tries < MIDSTREAM_TRIES:  # try the next segment boundary
                self.tries += 1
                self.client_side = None
                self.early, self.early_bytes = [], 0
                return
            self._give_up(verdict.protocol)
            return
        self._start(verdict, ts)

    def _start(self, verdict: detect.Detection, ts: int) -> None:
        a_addr, a_port, b_addr, b_port = self.key[1:]
        ends = (endpoint(a_addr, a_port), endpoint(b_addr, b_port))
        key = FlowKey(*self.key)
        assert self.client_side is not None and verdict.factory is not None
        self.ctx = FlowContext(flow_id(key, self.seed), ends[self.client_side], ends[1 - self.client_side], key,
                               self.midstream)
        self.protocol = verdict.protocol
        try:
            self.parser = verdict.factory(self.ctx)
        except Exception:
            self._fail("internal")
            return
        self.state = ACTIVE
        early, self.early, self.early_bytes = self.early, [], 0
        for side, data, t in early:
            if self.state != ACTIVE:
                break
            self._deliver(side, data, t)

    def _give_up(self, protocol: str) -> None:
        self.protocol = protocol
        self.state = IGNORE
        self.early, self.early_bytes = [], 0
        for h in self.halves:
            h.pending.clear()
            h.pending_bytes = 0

    def _fail(self, kind: str) -> None:
        """The parser refused the stream: count it, report what it had (marked), stop dissecting."""
        self.sink.error(kind)
        self.failed = kind
        parser, self.parser = self.parser, None
        self._give_up(self.protocol)
        if parser is None:
            return
        try:
            out = parser.close(self.last_ts)
        except Exception:
            return
        for e in out:
            e.error = kind
        self.sink.entries.extend(out)


def side_of(src: bytes, sport: int, dst: bytes, dport: int) -> tuple[tuple[int, bytes, int, bytes, int], int]:
    """The symmetric key of a TCP packet and its side (0: sent by the key's first endpoint)."""
    if (src, sport) <= (dst, dport):
        return (6, src, sport, dst, dport), 0
    return (6, dst, dport, src, sport), 1


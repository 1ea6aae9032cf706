"""DNS over UDP and TCP: queries paired with responses by (flow, id), decoded with dpkt.dns.

Nothing raises out of here but :class:`~kstap.dissect.api.ParserError` (from the TCP parser, which the
stage turns into a counted error): every dpkt failure — truncated messages, compression pointers
that loop or point forward, bad label lengths, undecodable names — becomes :class:`DnsError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dpkt

from kstap.dissect.api import Entry, FlowContext, ParserError, endpoint

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
          50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY",
          257: "CAA"}
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET",
          "NOTAUTH", "NOTZONE")
DNS_PORTS = frozenset((53,))
"""UDP ports whose traffic is always tried as DNS; elsewhere only plausible datagrams are, and only
answered queries become entries (so stray UDP that happens to parse never shows up)."""

PENDING_COST = 560
"""Bytes one pending query costs: its objects, the name, the flow key with its addresses, the dict slot
(tracemalloc measures ~490; tests/unit/dissect/test_memory.py keeps the two within 25 %)."""
MAX_PENDING_PER_CONN = 1024
"""Queries waiting for an answer on one TCP connection."""


class DnsError(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    response: bool
    rcode: int
    name: str | None
    qtype: int | None
    answers: int


def qtype_name(qtype: int | None) -> str | None:
    if qtype is None:
        return None
    return QTYPES.get(qtype, f"TYPE{qtype}")


def rcode_name(rcode: int) -> str:
    return RCODES[rcode] if rcode < len(RCODES) else f"RCODE{rcode}"


def decode(msg: bytes) -> DnsMessage:
    """Header, first question and answer count of one DNS message; DnsError when malformed."""
    if len(msg) < 12:
        raise DnsError("DNS message shorter than its header", "dns-malformed")
    try:
        d = dpkt.dns.DNS(msg)
        q = d.qd[0] if d.qd else None
        name = q.name if q is not None else None
        qtype = q.type if q is not None else None
    except dpkt.UnpackError as exc:
        kind = "dns-compression" if "compression" in str(exc) else "dns-malformed"
        raise DnsError(f"malformed DNS message: {exc}", kind) from None
    except Exception as exc:  # dpkt raises NeedData, IndexError, struct.error, UnicodeError, …
        raise DnsError(f"malformed DNS message: {type(exc).__name__}", "dns-malformed") from None
    ancount = (msg[6] << 8) | msg[7]
    return DnsMessage(d.id, bool(d.qr), d.rcode, name, qtype, ancount)


def plausible(payload: bytes) -> bool:
    """A cheap look at a UDP payload on a non-DNS port: one question and sane counts."""
    if len(payload) < 17:
        return False
    flags = (payload[2] << 8) | payload[3]
    qd = (payload[4] << 8) | payload[5]
    opcode = (flags >> 11) & 0xF
    if qd != 1 or opcode not in (0, 1, 2, 4, 5) or payload[12] > 63:
        return False
    if not flags & 0x8000:  # a query: no answers, at most EDNS + TSIG
        return payload[6:10] == b"\0\0\0\0" and ((payload[10] << 8) | payload[11]) <= 2
    return True


class _Query:
    __slots__ = ("client_is_a", "flow", "known_port", "msg", "size", "t0")

    def __init__(self, msg: DnsMessage, size: int, t0: int, flow: UdpKey | None, client_is_a: bool,
                 known_port: bool) -> None:
        self.msg = msg
        self.size = size
        self.t0 = t0
        self.flow = flow
        self.client_is_a = client_is_a
        self.known_port = known_port


def _entry(q: _Query, flow_id: str, client: str, server: str, transport: str, resp: DnsMessage | None,
           resp_size: int, t_end: int, error: str | None = None) -> Entry:
    return Entry(time=q.t0 / 1e9, flow_id=flow_id, protocol="dns", client=client, server=server,
                 query_name=q.msg.name, query_type=qtype_name(q.msg.qtype),
                 rcode=rcode_name(resp.rcode) if resp is not None else None,
                 answers=resp.answers if resp is not None else None,
                 request_bytes=q.size, response_bytes=resp_size,
                 latency_ms=round((t_end - q.t0) / 1e6, 3) if resp is not None else None,
                 transport=transport, error=error if resp is not None else error or "no-response")


# -- UDP ---------------------------------------------------------------------------------------------

UdpKey = tuple[int, bytes, int, bytes, int]
"""The stage's symmetric flow tuple ``(17, a_addr, a_port, b_addr, b_port)``."""


class DnsUdpTracker:
    """Pending UDP queries of every flow, paired with their responses, expired after a timeout.

    ``flow_id_of(key)`` names a flow (the stage computes it with the run's seed). Keys are the
    stage's symmetric tuples ``(17, a_addr, a_port, b_addr, b_port)``.
    """

    def __init__(self, flow_id_of: Callable[[UdpKey], str], max_pending: int = 65536) -> None:
        self._flow_id_of = flow_id_of
        self.pending: dict[tuple[UdpKey, int], _Query] = {}
        self.max_pending = max_pending
        self.errors: dict[str, int] = {}
        self.dropped = 0
        """Unanswered queries on non-DNS ports dropped at expiry (never reported)."""

    @property
    def memory(self) -> int:
        return PENDING_COST * len(self.pending)

    def datagram(self, key: UdpKey, src: bytes, sport: int, dst: bytes, dport: int,
                 payload: bytes, ts: int) -> list[Entry]:
        known = sport in DNS_PORTS or dport in DNS_PORTS
        if not known and not plausible(payload):
            return []
        try:
            msg = decode(payload)
        except DnsError as exc:
            if known:
                self.errors[exc.kind] = self.errors.get(exc.kind, 0) + 1
            return []
        if not msg.response:
            pk = (key, msg.id)
            if pk in self.pending:  # a retransmitted query: the first one counts
                return []
            out = self._make_room() if len(self.pending) >= self.max_pending else []
            self.pending[pk] = _Query(msg, len(payload), ts, key, key[1] == src and key[2] == sport, known)
            return out
        q = self.pending.pop((key, msg.id), None)
        if q is None:
            return []  # an answer to a query not seen (or seen twice): nothing to pair
        return [self._entry(q, msg, len(payload), ts)]

    def _entry(self, q: _Query, resp: DnsMessage | None, size: int, ts: int, error: str | None = None) -> Entry:
        assert q.flow is not None
        _, a_addr, a_port, b_addr, b_port = q.flow
        a, b = endpoint(a_addr, a_port), endpoint(b_addr, b_port)
        client, server = (a, b) if q.client_is_a else (b, a)
        return _entry(q, self._flow_id_of(q.flow), client, server, "udp", resp, size, ts, error)

    def _make_room(self) -> list[Entry]:
        pk = next(iter(self.pending))
        q = self.pending.pop(pk)
        return [self._entry(q, None, 0, q.t0, "evicted")] if q.known_port else []

    def expire(self, before_ns: int) -> list[Entry]:
        """Queries sent before ``before_ns`` get no answer any more: report them (DNS ports only)."""
        out = []
        while self.pending:
            pk, q = next(iter(self.pending.items()))
            if q.t0 >= before_ns:
                break
            del self.pending[pk]
            if q.known_port:
                out.append(self._entry(q, None, 0, q.t0))
            else:
                self.dropped += 1
        return out

    def evict(self, nbytes: int) -> tuple[list[Entry], int]:
        """Drop the oldest queries until ``nbytes`` are freed; returns entries and how many were dropped."""
        out: list[Entry] = []
        n = 0
        while self.pending and n * PENDING_COST < nbytes:
            out += self._make_room()
            n += 1
        return out, n

    def close(self) -> list[Entry]:
        return self.expire(1 << 63)


# -- TCP ---------------------------------------------------------------------------------------------

class DnsTcpParser:
    """DNS over TCP (RFC 7766): 2-byte length framing, several queries per connection, any order."""

    BASE_COST = 600

    def __init__(self, flow: FlowContext) -> None:
        self.flow = flow
        self._buf = [b"", b""]
        self._pending: dict[int, _Query] = {}
        self._dead = False

    def feed(self, direction: int, data: bytes, ts_ns: int) -> list[Entry]:
        if self._dead:
            return []
        buf = self._buf[direction] + data if self._buf[direction] else data
        pos, out = 0, []
        while len(buf) - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if len(buf) - pos - 2 < length:
                break
            msg = buf[pos + 2 : pos + 2 + length]
            pos += 2 + length
            try:
                m = decode(msg)
            except DnsError as exc:
                raise ParserError(str(exc), exc.kind) from None
            if direction == 0:
                if m.response:
                    raise ParserError("a DNS response from the client side", "dns-malformed")
                if len(self._pending) >= MAX_PENDING_PER_CONN:
                    raise ParserError("too many DNS queries without an answer", "pipeline-flood")
                self._pending.setdefault(m.id, _Query(m, length, ts_ns, None, True, True))
            else:
                q = self._pending.pop(m.id, None)
                if q is not None:
                    f = self.flow
                    out.append(_entry(q, f.flow_id, f.client, f.server, "tcp", m, length, ts_ns))
        self._buf[direction] = buf[pos:]
        return out

    def gap(self, direction: int, nbytes: int, ts_ns: int) -> list[Entry]:
        """Framing is lost: report the open queries and stop."""
        out = self.close(ts_ns)
        for e in out:
            e.error = "gap"
        return out

    def close(self, ts_ns: int) -> list[Entry]:
        f = self.flow
        out = [_entry(q, f.flow_id, f.client, f.server, "tcp", None, 0, q.t0) for q in self._pending.values()]
        self._pending.clear()
        self._buf = [b"", b""]
        self._dead = True
        return out

    @property
    def memory(self) -> int:
        return self.BASE_COST + len(self._buf[0]) + len(self._buf[1]) + PENDING_COST * len(self._pending)

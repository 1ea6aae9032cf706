"""DNS over UDP and TCP: queries paired with responses by (flow, id).

An entry needs only the header, the first question and the counts, so :func:`decode` reads just
those and walks every resource record by its RDLENGTH without looking inside: any record type
(DNSSEC, SVCB/HTTPS, TSIG, TKEY, types not yet assigned), EDNS and non-UTF-8 bytes decode alike.
A name's bytes are shown as tshark shows them (``format_text``: C escapes and octal for control
bytes, U+FFFD for bytes that are not UTF-8, ``<Root>`` for the root). A message whose header and
is damaged past its header (a question cut short, a compression pointer that loops or points
forward, records that overrun it) is still a message (``DnsMessage.problem`` names the damage):
its entry keeps the rcode and counts of the header, as tshark still shows them, and is marked
``malformed``. Only a message shorter than its header is no message (:class:`DnsError`).

Nothing raises out of here but :class:`~kstap.dissect.api.ParserError` (from the TCP parser, which the
stage turns into a counted error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kstap.dissect.api import Entry, FlowContext, ParserError, endpoint

QTYPES = {1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR", 10: "NULL",
          11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB",
          24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 36: "KX", 37: "CERT",
          39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC",
          48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP",
          59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
          99: "SPF", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 255: "ANY", 256: "URI", 257: "CAA"}
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET",
          "NOTAUTH", "NOTZONE", "DSOTYPENI")
DNS_PORTS = frozenset((53,))
"""UDP ports whose traffic is always tried as DNS; elsewhere only plausible datagrams are, and only
answered queries become entries (so stray UDP that happens to parse never shows up)."""

PENDING_COST = 560
"""Bytes one pending query costs: its objects, the name, the flow key with its addresses, the dict slot
(tracemalloc measures ~490; tests/unit/dissect/test_memory.py keeps the two within 25 %)."""
MAX_PENDING_PER_CONN = 1024
"""Queries waiting for an answer on one TCP connection."""
MAX_POINTERS = 128
"""Compression pointers followed in one name; a name has at most 127 labels, so more is a loop
(a pointer may point forward, as tshark allows, so loops are caught by counting)."""

ROOT = "<Root>"
"""The root name as tshark writes it."""


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
    problem: str | None = None
    """The error kind when the message is damaged past its header (the header's figures still hold)."""


def qtype_name(qtype: int | None) -> str | None:
    if qtype is None:
        return None
    return QTYPES.get(qtype, f"TYPE{qtype}")


def rcode_name(rcode: int) -> str:
    return RCODES[rcode] if rcode < len(RCODES) else f"RCODE{rcode}"


_C_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}
_SHOW = {b: _C_ESCAPES.get(b, f"\\{b:03o}") for b in (*range(0x20), 0x7F)}
_CONTROL = frozenset(_SHOW)


def show_label(raw: bytes) -> str:
    """A label's bytes as tshark shows them (its ``format_text``): UTF-8 kept, control bytes as C or
    octal escapes, each broken sequence as one U+FFFD (a well-formed but overlong one is decoded)."""
    if _CONTROL.isdisjoint(raw):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch < 0x80:
            out.append(_SHOW.get(ch) or chr(ch))
            i += 1
            continue
        need = 1 if 0xC0 <= ch < 0xE0 else 2 if 0xE0 <= ch < 0xF0 else 3 if 0xF0 <= ch < 0xF8 else 0
        code = ch & (0x3F >> need)
        i += 1
        got = 0
        while got < need and i < n and raw[i] & 0xC0 == 0x80:
            code = (code << 6) | (raw[i] & 0x3F)
            i += 1
            got += 1
        if need == 0 or got < need or 0xD800 <= code < 0xE000 or code > 0x10FFFF:
            out.append("\ufffd")
        else:
            out.append(_SHOW.get(code) or chr(code))
    return "".join(out)


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """The name at ``pos`` (compression followed) and the position after it; DnsError when bad."""
    labels: list[str] = []
    end = -1
    jumps = 0
    n = len(msg)
    while True:
        if pos >= n:
            raise DnsError("DNS name runs past the message", "dns-malformed")
        length = msg[pos]
        if length == 0:
            pos += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise DnsError("DNS compression pointer cut short", "dns-malformed")
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > MAX_POINTERS:
                raise DnsError("DNS name contains a pointer that loops", "dns-compression")
            pos = target
            continue
        if kind:
            raise DnsError(f"DNS label type {length >> 6} unsupported", "dns-malformed")
        if pos + 1 + length > n:
            raise DnsError("DNS label runs past the message", "dns-malformed")
        labels.append(show_label(msg[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return (".".join(labels) if labels else ROOT), (end if end >= 0 else pos)


def skip_name(msg: bytes, pos: int) -> int:
    """The position after the name at ``pos`` without reading it; -1 when it overruns the message."""
    n = len(msg)
    while pos < n:
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            return pos + 2 if pos + 2 <= n else -1
        if length > 63:
            return -1
        pos += 1 + length
    return -1


def _records_fit(msg: bytes, pos: int, questions: int, records: int) -> bool:
    """Whether ``questions`` more questions and then ``records`` RRs lie within ``msg`` from ``pos``."""
    n = len(msg)
    for _ in range(questions):
        pos = skip_name(msg, pos)
        if pos < 0 or pos + 4 > n:
            return False
        pos += 4
    for _ in range(records):
        pos = skip_name(msg, pos)
        if pos < 0 or pos + 10 > n:
            return False
        pos += 10 + ((msg[pos + 8] << 8) | msg[pos + 9])
        if pos > n:
            return False
    return True


def decode(msg: bytes) -> DnsMessage:
    """Header, first question and answer count of one DNS message.

    Only a message shorter than its header raises DnsError: past the header, a bad question (cut
    short, a looping pointer) leaves ``name``/``qtype`` None, and records that overrun the message
    leave the header's figures; both set ``problem`` to the error kind.
    """
    n = len(msg)
    if n < 12:
        raise DnsError("DNS message shorter than its header", "dns-malformed")
    qid = (msg[0] << 8) | msg[1]
    flags = (msg[2] << 8) | msg[3]
    qd = (msg[4] << 8) | msg[5]
    an = (msg[6] << 8) | msg[7]
    records = an + ((msg[8] << 8) | msg[9]) + ((msg[10] << 8) | msg[11])
    name: str | None = None
    qtype: int | None = None
    problem: str | None = None
    pos = 12
    if qd:
        try:
            name, pos = read_name(msg, 12)
        except DnsError as exc:
            problem = exc.kind
        else:
            if pos + 4 > n:
                name, problem = None, "dns-malformed"
            else:
                qtype = (msg[pos] << 8) | msg[pos + 1]
                pos += 4
    if problem is None and not _records_fit(msg, pos, max(qd - 1, 0), records):
        problem = "dns-malformed"
    return DnsMessage(qid, bool(flags & 0x8000), flags & 0xF, name, qtype, an, problem)


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
    e = Entry(time=q.t0 / 1e9, flow_id=flow_id, protocol="dns", client=client, server=server,
                 query_name=q.msg.name, query_type=qtype_name(q.msg.qtype),
                 rcode=rcode_name(resp.rcode) if resp is not None else None,
                 answers=resp.answers if resp is not None else None,
                 request_bytes=q.size, response_bytes=resp_size,
                 latency_ms=round((t_end - q.t0) / 1e6, 3) if resp is not None else None,
                 transport=transport, error=error if resp is not None else error or "no-response")
    if e.error is None and (q.msg.problem is not None or (resp is not None and resp.problem is not None)):
        e.error = "malformed"
    return e


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
        if msg.problem is not None:
            if not known:
                return []
            self.errors[msg.problem] = self.errors.get(msg.problem, 0) + 1
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

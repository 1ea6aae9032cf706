"""The dissection stage: packets of sampled flows in, NDJSON entries out, its memory under a cap.

    stage = DissectStage(seed=seed, memory_cap=64 << 20, flow_cap=default_flow_cap(64 << 20),
                         idle_timeout=60.0, emit=writer.write)
    stage.feed(records, linktypes)   # per batch; never raises
    stage.tick(time.time_ns())        # idle eviction (feed also runs it on packet time)
    stage.close()                     # flush everything left
    stage.stats()                     # DissectStats for the worker's stats

Link layers and tunnels (Ethernet + VLAN/QinQ, Linux cooked v1/v2, raw IP, BSD loopback, NFLOG,
VXLAN/Geneve inner frames) are located by :mod:`kstap.linklayer`, the one frame decoder the flow
key uses too; from there a minimal parser reads IPv4 without fragments, IPv6 with
hop-by-hop/routing/destination headers skipped, TCP and UDP: dpkt builds a full object tree per
packet and is ~10x slower for this (``benchmarks/dissect_parsers.py``). DNS messages are read by
:mod:`kstap.dissect.dns` (header, first question, counts; every record skipped by its length).

**Memory** is accounted as: a fixed cost per tracked connection (:data:`FLOW_COST`, from
``sys.getsizeof`` of its objects, checked against tracemalloc by a test) + bytes buffered ahead in
reassembly and held for detection (+ a per-segment cost) + what each parser reports
(:attr:`~kstap.dissect.api.StreamParser.memory`) + pending DNS queries + tombstones of closed
flows. Over ``flow_cap`` a connection is evicted ("flow-cap"); over ``memory_cap`` the least recently
active connections are evicted ("global-cap") until the total is back under 90 % of the cap.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from kstap.dissect.api import Entry
from kstap.dissect.dns import PENDING_COST, DnsUdpTracker, UdpKey
from kstap.dissect.reassembly import ACK, FIN, IGNORE, RST, SYN, Sink, TcpConn
from kstap.linklayer import network
from kstap.model import PacketRecord
from kstap.sampling.flowhash import flow_id
from kstap.sampling.flowkey import FlowKey

DEFAULT_MEMORY_MIB = 64
"""--dissect-memory default: 64 MiB holds ~50,000 idle connections or a few hundred busy ones."""
DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds without a packet after which a connection is closed (Linux keep-alive probes are rarer)."""
TICK_NS = 1_000_000_000
"""Idle eviction runs at most once per second of packet time."""

_TCP = struct.Struct("!HHIIBB")
_IPV4_TCP = struct.Struct("!BxHxxHxBxx4s4sHHIIBB")
"""An option-less IPv4 header and the TCP header after it, read in one call (the common case)."""
_PORTS = struct.Struct("!HH")
_IPV6_SKIP = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options


def _measure_flow_cost() -> int:
    """Bytes one tracked connection costs: its objects, key, addresses and table slot."""
    key = (6, b"\x0a\0\0\x01", 40000, b"\x0a\0\0\x02", 80)
    conn = TcpConn(key, 0, Sink(), 1, 0)
    objects: list[object] = [conn, conn.halves, *conn.halves, *(h.pending for h in conn.halves), conn.early,
                             key, key[1], key[3], key[2], key[4], 1 << 40, 1 << 40, 1 << 62]
    dict_slot = 3 * 8 * 3  # hash, key, value pointers at the table's ~1/3 load (+ the index array)
    return sum(sys.getsizeof(o) for o in objects) + dict_slot


FLOW_COST = _measure_flow_cost()
"""Fixed bytes per tracked connection (~1 KiB on CPython 3.11, x86-64)."""
TOMB_COST = 260
"""Bytes per tombstone (a closed flow's key kept so late packets do not start a mid-stream flow)."""


def default_flow_cap(memory_cap: int) -> int:
    """A connection may use 1/8 of the budget, at least 256 KiB, at most 16 MiB."""
    return max(256 << 10, min(16 << 20, memory_cap // 8))


@dataclass
class DissectStats:
    """What the dissection stage reports (the worker stats and ``kstap dissect``'s summary)."""

    memory_bytes: int = 0
    """Accounted bytes now (see the module docstring for what is counted)."""
    peak_memory_bytes: int = 0
    memory_cap: int = 0
    flows: int = 0
    """TCP connections tracked now."""
    entries: int = 0
    entries_by_protocol: dict[str, int] = field(default_factory=dict)
    flows_by_protocol: dict[str, int] = field(default_factory=dict)
    """Connections by what detection decided: http/1, http/2, dns, unknown, unsupported."""
    evictions: dict[str, int] = field(default_factory=dict)
    """Connections ended by reason: fin, rst, idle, flow-cap, global-cap, error."""
    errors: dict[str, int] = field(default_factory=dict)
    """Malformed or hostile input by kind (malformed, too-large, header-flood, dns-malformed, …)."""
    packets_seen: int = 0
    packets_undecoded: int = 0
    """Frames that were not TCP/UDP over IP (ARP, fragments, unknown link types, truncated)."""
    gaps: int = 0
    retransmitted: int = 0


class DissectStage:
    """TCP reassembly + protocol parsers + DNS over UDP, under ``memory_cap`` bytes."""

    def __init__(self, *, seed: int, memory_cap: int, flow_cap: int, idle_timeout: float,
                 emit: Callable[[Entry], None]) -> None:
        self.seed = seed
        self.memory_cap = max(1, memory_cap)
        self.flow_cap = max(1, min(flow_cap, self.memory_cap))
        self.idle_ns = int(idle_timeout * 1e9)
        self.emit = emit
        self.flows: dict[tuple[int, bytes, int, bytes, int], TcpConn] = {}
        self.tombs: dict[tuple[int, bytes, int, bytes, int], int] = {}
        self.max_tombs = max(16, min(65536, self.memory_cap // 16 // TOMB_COST))
        self.sink = Sink()
        self.dns = DnsUdpTracker(self._flow_id, max_pending=max(16, min(65536, self.memory_cap // 16 // PENDING_COST)))
        self.total = 0
        """Accounted bytes of the TCP side (connections + tombstones); DNS is added in :attr:`memory`."""
        self._stats = DissectStats(memory_cap=self.memory_cap)
        self._ahead = max(4096, self.flow_cap // 2)
        self._now = 0
        self._last_tick = 0
        self._peak = 0

    # -- the public surface ----------------------------------------------------------------------
    @property
    def memory(self) -> int:
        return self.total + self.dns.memory

    def feed(self, records: Sequence[PacketRecord], linktypes: Sequence[int]) -> None:
        """Dissect a batch of packets. Never raises: a failure is counted and its flow dropped."""
        packet, sink = self._packet, self.sink
        for rec in records:
            try:
                packet(rec, linktypes)
            except Exception:  # a bug must not stop capture: count it, drop the flow if any
                sink.error("internal")
            if sink.entries:
                self._emit_pending()
        if self._now - self._last_tick >= TICK_NS:
            self.tick(self._now)

    def tick(self, now_ns: int) -> None:
        """Close connections (and expire DNS queries) idle since ``now_ns - idle_timeout``."""
        self._last_tick = max(self._last_tick, now_ns)
        cutoff = now_ns - self.idle_ns
        try:
            while self.flows:
                key, conn = next(iter(self.flows.items()))
                if conn.last_ts >= cutoff:
                    break
                self._end(key, conn, "idle", tomb=False)
            while self.tombs:
                key, ts = next(iter(self.tombs.items()))
                if ts >= cutoff:
                    break
                del self.tombs[key]
                self.total -= TOMB_COST
            self.sink.entries.extend(self.dns.expire(cutoff))
        except Exception:
            self.sink.error("internal")
        self._emit_pending()

    def close(self) -> None:
        """Flush every connection and pending DNS query as entries."""
        for key, conn in list(self.flows.items()):
            try:
                self._end(key, conn, None, tomb=False)
            except Exception:
                self.sink.error("internal")
        self.sink.entries.extend(self.dns.close())
        self.total -= TOMB_COST * len(self.tombs)
        self.tombs.clear()
        self._emit_pending()

    def stats(self) -> DissectStats:
        st = self._stats
        st.memory_bytes = self.memory
        st.peak_memory_bytes = max(self._peak, st.memory_bytes)
        st.flows = len(self.flows)
        st.errors = dict(self.sink.errors)
        for kind, n in self.dns.errors.items():
            st.errors[kind] = st.errors.get(kind, 0) + n
        st.gaps = self.sink.gaps
        st.retransmitted = self.sink.retransmitted
        return replace(st, entries_by_protocol=dict(st.entries_by_protocol),
                       flows_by_protocol=dict(st.flows_by_protocol), evictions=dict(st.evictions))

    # -- one packet ------------------------------------------------------------------------------
    def _packet(self, rec: PacketRecord, linktypes: Sequence[int]) -> None:
        ts, _caplen, origlen, data, if_id, _ = rec
        st = self._stats
        st.packets_seen += 1
        if ts > self._now:
            self._now = ts
        lt = linktypes[if_id] if if_id < len(linktypes) else 1
        n = len(data)
        # link layer (and VXLAN/Geneve) → the innermost network header: the one decoder
        etype, off = network(data, lt)
        if etype == 0x0800 and n >= off + 40:  # the fast path: IPv4 without options, not a fragment, TCP
            vihl, total, frag, proto, src, dst, sport, dport, seq, ack, doff, flags = _IPV4_TCP.unpack_from(data, off)
            if vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
                end = off + total if total >= 20 else off + max(origlen - off, 0)
                start = off + 20 + (doff >> 4) * 4
                wire_len = end - start
                if wire_len < 0:
                    st.packets_undecoded += 1
                    return
                self._tcp(src, sport, dst, dport, flags, seq, ack, data[start:end] if wire_len else b"", wire_len, ts)
                return
        # network layer
        if etype == 0x0800:
            if n < off + 20:
                st.packets_undecoded += 1
                return
            ihl = (data[off] & 0x0F) * 4
            total = (data[off + 2] << 8) | data[off + 3]
            if ((data[off + 6] & 0x3F) << 8) | data[off + 7] or ihl < 20:
                st.packets_undecoded += 1  # a fragment (or a broken header): not reassembled here
                return
            proto = data[off + 9]
            src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
            l4 = off + ihl
            end = off + total if total >= ihl else off + max(origlen - off, 0)  # TSO super-packets say 0
        elif etype == 0x86DD:
            if n < off + 40:
                st.packets_undecoded += 1
                return
            plen = (data[off + 4] << 8) | data[off + 5]
            proto = data[off + 6]
            src, dst = data[off + 8 : off + 24], data[off + 24 : off + 40]
            l4 = off + 40
            end = l4 + plen if plen else off + max(origlen - off, 40)
            hops = 0
            while proto in _IPV6_SKIP and hops < 4 and n >= l4 + 2:
                proto = data[l4]
                l4 += (data[l4 + 1] + 1) * 8
                hops += 1
        else:
            st.packets_undecoded += 1
            return
        # transport layer; ``end`` is where the IP payload ends on the wire (captured or not)
        if proto == 6:
            if n < l4 + 20:
                st.packets_undecoded += 1
                return
            sport, dport, seq, ack, doff, flags = _TCP.unpack_from(data, l4)
            start = l4 + (doff >> 4) * 4
            wire_len = end - start
            if wire_len < 0:
                st.packets_undecoded += 1
                return
            payload = data[start:end] if wire_len else b""
            self._tcp(src, sport, dst, dport, flags, seq, ack, payload, wire_len, ts)
        elif proto == 17:
            if n < l4 + 8:
                st.packets_undecoded += 1
                return
            sport, dport = _PORTS.unpack_from(data, l4)
            payload = data[l4 + 8 : end]
            if (src, sport) <= (dst, dport):
                ukey: UdpKey = (17, src, sport, dst, dport)
            else:
                ukey = (17, dst, dport, src, sport)
            before = len(self.dns.pending)
            out = self.dns.datagram(ukey, src, sport, dst, dport, payload, ts)
            if out:
                self.sink.entries.extend(out)
            if len(self.dns.pending) > before:
                if self.memory > self.memory_cap:
                    self._global_evict()
                self._peak = max(self._peak, self.memory)
        else:
            st.packets_undecoded += 1

    def _tcp(self, src: bytes, sport: int, dst: bytes, dport: int, flags: int, seq: int, ack: int,
             payload: bytes, wire_len: int, ts: int) -> None:
        if src < dst or (src == dst and sport <= dport):  # (src, sport) <= (dst, dport), without the tuples
            key, side = (6, src, sport, dst, dport), 0
        else:
            key, side = (6, dst, dport, src, sport), 1
        flows = self.flows
        conn = flows.get(key)
        opening = flags & (SYN | ACK) == SYN
        if conn is None:
            if key in self.tombs:
                if not opening:  # a late packet of a flow that ended or was dropped
                    return
                del self.tombs[key]
                self.total -= TOMB_COST
            if not (flags & SYN or wire_len) or flags & RST:
                return  # a bare ACK/FIN/RST starts nothing
            conn = TcpConn(key, self.seed, self.sink, self._ahead, ts)
            conn.mem = FLOW_COST
            flows[key] = conn
            self.total += FLOW_COST
        else:
            if opening and conn.halves[side].isn is not None and conn.halves[side].pos((seq + 1) & 0xFFFFFFFF):
                self._end(key, conn, "fin", tomb=False)  # the port pair is reused by a new connection
                self._tcp(src, sport, dst, dport, flags, seq, ack, payload, wire_len, ts)
                return
            if ts - conn.last_ts > TICK_NS:  # keep the table in (approximate) least-recently-active order
                del flows[key]
                flows[key] = conn
        gaps = self.sink.gaps
        try:
            conn.segment(side, flags, seq, ack, payload, wire_len, ts)
        except Exception:  # a reassembly bug: count it and drop this flow, not the batch
            self.sink.error("internal")
            conn.failed = "internal"
            conn.state = IGNORE
        if conn.state == IGNORE:
            # failed (counted as an "error" eviction) or not a protocol dissected here (not an eviction)
            self._end(key, conn, "error" if conn.failed else None, tomb=True)
            return
        if conn.reset or (conn.halves[0].done and conn.halves[1].done):  # conn.finished
            self._end(key, conn, "rst" if conn.reset else "fin", tomb=True)
            return
        if not wire_len and not flags & (SYN | FIN) and gaps == self.sink.gaps:
            return  # a bare acknowledgement that declared no gap moved no byte: the memory is as it was
        mem = FLOW_COST + conn.memory()
        self.total += mem - conn.mem
        conn.mem = mem
        dns = self.dns.memory
        if mem > self.flow_cap:
            self._end(key, conn, "flow-cap", tomb=True)
        elif self.total + dns > self.memory_cap:
            self._global_evict()
            dns = self.dns.memory
        now = self.total + dns
        if now > self._peak:
            self._peak = now

    # -- eviction --------------------------------------------------------------------------------
    def drop(self, keys: Iterable[tuple[int, bytes, int, bytes, int]], reason: str = "shed") -> int:
        """Stop dissecting these flows now (the sampler shed them): free their memory, report what
        they had pending (marked), count the reason. Returns how many were dissected."""
        n = 0
        for key in keys:
            conn = self.flows.get(key)
            if conn is not None:
                self._end(key, conn, reason, tomb=True)
                n += 1
        if n:
            self._emit_pending()
        return n

    def _global_evict(self) -> None:
        """Evict the least recently active connections until 90 % of the cap, then old DNS queries."""
        target = self.memory_cap * 9 // 10
        while self.flows and self.memory > target:
            key, conn = next(iter(self.flows.items()))
            self._end(key, conn, "global-cap", tomb=True)
        while self.tombs and self.memory > target:
            del self.tombs[next(iter(self.tombs))]
            self.total -= TOMB_COST
        if self.memory > target:
            out, n = self.dns.evict(self.memory - target)
            self.sink.entries.extend(out)
            if n:
                ev = self._stats.evictions
                ev["global-cap"] = ev.get("global-cap", 0) + n

    def _end(self, key: tuple[int, bytes, int, bytes, int], conn: TcpConn, reason: str | None, *,
             tomb: bool) -> None:
        """Remove a connection: its parser reports what is pending; count the reason."""
        del self.flows[key]
        self.total -= conn.mem
        proto = conn.protocol
        out = conn.close(conn.last_ts)
        if reason in ("flow-cap", "global-cap"):
            for e in out:
                if e.error in (None, "no-response", "incomplete"):
                    e.error = "evicted"
        self.sink.entries.extend(out)
        st = self._stats
        if proto:
            st.flows_by_protocol[proto] = st.flows_by_protocol.get(proto, 0) + 1
        if reason is not None:
            st.evictions[reason] = st.evictions.get(reason, 0) + 1
        if tomb:
            if len(self.tombs) >= self.max_tombs:
                del self.tombs[next(iter(self.tombs))]
                self.total -= TOMB_COST
            self.tombs[key] = conn.last_ts
            self.total += TOMB_COST

    def _emit_pending(self) -> None:
        entries, self.sink.entries = self.sink.entries, []
        st = self._stats
        by = st.entries_by_protocol
        for e in entries:
            st.entries += 1
            by[e.protocol] = by.get(e.protocol, 0) + 1
            try:
                self.emit(e)
            except Exception:
                self.sink.error("emit")

    def _flow_id(self, key: UdpKey) -> str:
        return flow_id(FlowKey(*key), self.seed)

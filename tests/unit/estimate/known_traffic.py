"""Synthetic "known traffic" and the kernel sampler's decision on it, for the estimator's tests.

A population of flows (Ethernet/IPv4 and IPv6, TCP and UDP, both directions, random packet
counts and sizes, built with dpkt) whose true totals are known. :func:`sample` keeps a flow iff
``flow_hash(key, seed) < threshold(rate at its first packet)`` — what the kernel tail and the
flow table do — and :func:`write_sampled` writes the kept packets with kstap's pcapng sink and
its metadata comments, as a real run would.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from kstap.formats import pcapng
from kstap.model import Interface, PacketRecord
from kstap.sampling import metadata
from kstap.sampling.flowhash import flow_hash, flow_id, seed_id, threshold
from kstap.sampling.flowkey import FlowKey, flow_key
from kstap.sinks.files import PcapngFiles

T0 = 1_700_000_000_000_000_000
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def _eth(ethertype: int, payload: bytes, reply: bool) -> bytes:
    src, dst = (MAC_B, MAC_A) if reply else (MAC_A, MAC_B)
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=ethertype, data=payload))


def _frame(v6: bool, tcp: bool, a: bytes, b: bytes, aport: int, bport: int, size: int, reply: bool) -> bytes:
    src, dst, sport, dport = (b, a, bport, aport) if reply else (a, b, aport, bport)
    l4: dpkt.Packet
    if tcp:
        l4 = dpkt.tcp.TCP(sport=sport, dport=dport, seq=1, ack=1, flags=dpkt.tcp.TH_ACK, win=65535,
                          data=b"\x00" * size)
    else:
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=b"\x00" * size)
        l4.ulen = len(l4)
    proto = dpkt.ip.IP_PROTO_TCP if tcp else dpkt.ip.IP_PROTO_UDP
    if v6:
        ip6 = dpkt.ip6.IP6(src=src, dst=dst, nxt=proto, hlim=64, data=l4)
        ip6.plen = len(l4)
        return _eth(dpkt.ethernet.ETH_TYPE_IP6, bytes(ip6), reply)
    ip = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=64, data=l4)
    ip.len = len(ip)
    return _eth(dpkt.ethernet.ETH_TYPE_IP, bytes(ip), reply)


def _arp(i: int) -> bytes:
    arp = dpkt.arp.ARP(sha=MAC_A, spa=socket.inet_aton("10.0.0.1"), tha=b"\0" * 6,
                       tpa=socket.inet_aton(f"10.0.{i // 250}.{i % 250 + 1}"))
    return _eth(dpkt.ethernet.ETH_TYPE_ARP, bytes(arp), False)


@dataclass
class Flow:
    key: FlowKey
    records: list[PacketRecord]
    """Time-ordered, both directions."""

    @property
    def start(self) -> int:
        return self.records[0][0]


@dataclass
class Traffic:
    flows: list[Flow]
    non_ip: list[PacketRecord] = field(default_factory=list)

    @property
    def packets(self) -> int:
        return sum(len(f.records) for f in self.flows) + len(self.non_ip)

    @property
    def bytes(self) -> int:
        return sum(r[2] for f in self.flows for r in f.records) + sum(r[2] for r in self.non_ip)

    @property
    def end(self) -> int:
        return max(r[0] for f in self.flows for r in f.records)


def make_traffic(n_flows: int, rng: random.Random, *, duration_s: float = 60.0, non_ip: int = 5,
                 mean_packets: float = 10.0) -> Traffic:
    """``n_flows`` distinct flows starting uniformly over ``duration_s``, each lasting up to 5 s.

    Packets per flow: 1 + exponential (mean ``mean_packets``); sizes: a mixture of bare
    headers, small and full-size payloads (0..1400 bytes).
    """
    flows: list[Flow] = []
    seen: set[FlowKey] = set()
    while len(flows) < n_flows:
        v6 = rng.random() < 0.2
        tcp = rng.random() < 0.6
        if v6:
            a = b"\xfd\x00" + rng.randbytes(14)
            b = b"\xfd\x00" + rng.randbytes(14)
        else:
            a = bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
            b = bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
        aport, bport = rng.randrange(1024, 65536), rng.choice([53, 80, 443, 8080, rng.randrange(1024, 65536)])
        start = T0 + int(rng.uniform(0, duration_s) * 1e9)
        length = max(1, int(rng.uniform(0, 5) * 1e9))
        count = 1 + int(rng.expovariate(1 / mean_packets))
        times = sorted(start + rng.randrange(length) for _ in range(count - 1))
        records: list[PacketRecord] = []
        for i, ts in enumerate([start, *times]):
            size = rng.choice([0, 0, rng.randrange(1, 200), rng.randrange(200, 1401), 1400])
            data = _frame(v6, tcp, a, b, aport, bport, size, reply=i % 2 == 1)
            records.append((ts, len(data), len(data), data, 0, 0))
        key = flow_key(records[0][3])
        assert key is not None and key == flow_key(records[-1][3])
        if key in seen:
            continue
        seen.add(key)
        flows.append(Flow(key, records))
    extra = []
    for i in range(non_ip):
        data = _arp(i)
        extra.append((T0 + int(rng.uniform(0, duration_s) * 1e9), len(data), len(data), data, 0, 0))
    return Traffic(flows, extra)


Schedule = Callable[[int], float]
"""The rate in force at a time (epoch ns)."""


def constant(rate: float) -> Schedule:
    return lambda _ts: rate


def step(before: float, after: float, at_ns: int) -> Schedule:
    return lambda ts: before if ts < at_ns else after


@dataclass
class Sampled:
    records: list[PacketRecord]
    comments: dict[int, str]
    kept_flows: int


def sample(traffic: Traffic, seed: int, schedule: Schedule, mode: str = "percentage",
           change_at: Sequence[tuple[int, float, float]] = ()) -> Sampled:
    """The kept packets in time order, with kstap's comments by packet index.

    ``change_at``: (time, new rate, previous rate) of each rate change, for ``rate`` comments on
    the first kept packet at or after it.
    """
    sid = seed_id(seed)
    tagged: list[tuple[int, int, PacketRecord, str | None, str]] = []  # ts, order, record, note, flow id
    kept = 0
    for n, flow in enumerate(traffic.flows):
        rate = schedule(flow.start)
        if flow_hash(flow.key, seed) >= threshold(rate):
            continue
        kept += 1
        fid = flow_id(flow.key, seed)
        for i, rec in enumerate(flow.records):
            note = metadata.flow_note(fid, mode, rate, sid) if i == 0 else None
            tagged.append((rec[0], n, rec, note, fid))
    for rec in traffic.non_ip:
        tagged.append((rec[0], -1, rec, None, ""))
    tagged.sort(key=lambda t: (t[0], t[1]))
    records = [t[2] for t in tagged]
    comments = {i: t[3] for i, t in enumerate(tagged) if t[3] is not None}
    for when, new, previous in change_at:
        first = next((i for i, t in enumerate(tagged) if t[0] >= when and t[4]), None)
        if first is not None:  # one comment may carry two notes, one per line
            note = metadata.rate_note(tagged[first][4], new, previous, "pi")
            comments[first] = f"{comments[first]}\n{note}" if first in comments else note
    return Sampled(records, comments, kept)


def write_sampled(path: Path, sampled: Sampled, *, seed: int, rate: float, mode: str = "percentage",
                  dropped: int = 0) -> Path:
    """The kept packets as kstap writes them: run note in the SHB, notes on packets, an ISB."""
    end = sampled.records[-1][0] if sampled.records else T0
    n = len(sampled.records)

    def counters() -> list[pcapng.InterfaceCounters]:
        return [pcapng.InterfaceCounters(T0, end, n + dropped, dropped, n)]

    sink = PcapngFiles(str(path), [Interface("veth0", filter="ip or ip6")], counters=counters,
                       comment=metadata.run_note(mode, rate, seed_id(seed), "ip or ip6"))
    sink.write(sampled.records, comments=sampled.comments)
    assert sink.close()
    return path
